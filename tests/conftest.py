import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Every test's torch work runs on one thread: the tests' models are tiny and gain nothing
    from intra-op threads, the CI machine's 2 cores are shared (more threads only contend), and
    float results depend on the thread count, so runs that are compared (determinism, resume, the
    local vs Flower engines, whose SuperNodes also train on one thread) must use the same.
    Session scope, so module-scoped reference runs use it too. Restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
