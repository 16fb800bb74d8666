import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def one_torch_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a shared 2-core machine spinning
    OpenMP workers slow these tests many times over; restore the setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
