import os

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Every test's torch work runs on one thread: the tests' models are tiny and gain nothing
    from intra-op threads, the CI machine's 2 cores are shared (more threads only contend), and
    float results depend on the thread count, so runs that are compared (determinism, resume, the
    local vs Flower engines, whose SuperNodes also train on one thread) must use the same.
    Session scope, so module-scoped reference runs use it too. ``CMI_THREADS=1`` gives the same to
    what the tests run through `cmi train` / `cmi experiment`, whose default is every core.
    Restored after."""
    before, env = torch.get_num_threads(), os.environ.get("CMI_THREADS")
    torch.set_num_threads(1)
    os.environ["CMI_THREADS"] = "1"
    yield
    torch.set_num_threads(before)
    if env is None:
        os.environ.pop("CMI_THREADS")
    else:
        os.environ["CMI_THREADS"] = env
