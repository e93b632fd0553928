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


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Tests never reach the network: the pretrained-weights look-up asks a server only through
    `pretrained._reachable`, and a test that gets there without replacing it fails, naming the fix."""
    from layeract_patch.training import pretrained

    def probe(host):
        raise AssertionError(f"a test asked whether {host} answers; monkeypatch pretrained._reachable")

    monkeypatch.setattr(pretrained, "_reachable", probe)


@pytest.fixture
def compiled():
    """The C kernel's library; a machine without a C compiler skips (the fallback has its own test)."""
    try:
        return cpu_kernel.library()
    except RuntimeError as err:
        pytest.skip(f"the CPU kernel cannot be built here: {err}")
