import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Run every test on one thread: these ops are small, and on a 2-core machine shared with other work
    OpenMP's spinning workers make tiny ops an order of magnitude slower. A test may raise it for itself."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
