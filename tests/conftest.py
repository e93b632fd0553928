import pytest
import torch

from layeract_patch._kernels import cpu_kernel


@pytest.fixture(autouse=True)
def one_thread():
    """Run every test on one thread: these ops are small, and on a 2-core machine shared with other work
    OpenMP's spinning workers make tiny ops an order of magnitude slower. A test may raise it for itself."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def compiled():
    """The C kernel's library; a machine without a C compiler skips (the fallback has its own test)."""
    try:
        return cpu_kernel.library()
    except RuntimeError as err:
        pytest.skip(f"the CPU kernel cannot be built here: {err}")
