import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def one_torch_thread():
    """Tiny models train fastest on one thread, and the CI machine's 2 cores are shared: more
    threads only contend. Package scope, so module-scoped runs (references of the determinism
    and resume tests) use it too: float results depend on the thread count. Restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
