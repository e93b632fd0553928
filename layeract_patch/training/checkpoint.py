"""Checkpoints that survive a crash mid-write: temp file in the same directory, fsync, os.replace."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator, Union

import torch

__all__ = ["atomic_write", "save_checkpoint", "load_checkpoint", "get_rng_state", "set_rng_state"]

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temp file beside `path`; on success it replaces `path`, so readers see the old or the new file.

    On any error (Ctrl-C, a full disk) the previous file stays as it was and the temp file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same directory as the target: os.replace is only atomic within one file system.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, mode, **({} if "b" in mode else {"newline": ""})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def save_checkpoint(state: dict, path: PathLike) -> Path:
    """Write `state` with torch.save so that `path` holds either the old or the new file, never half of one."""
    with atomic_write(path) as f:
        torch.save(state, f)
    return Path(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_checkpoint(path: PathLike, map_location="cpu") -> dict:
    """Read a checkpoint written by save_checkpoint; FileNotFoundError / ValueError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist; check the path (or start without --resume)")
    try:
        # weights_only=False: our checkpoints hold RNG states and plain-python history next to the tensors.
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:
        raise ValueError(f"checkpoint {str(path)!r} is corrupt or not a torch checkpoint ({type(err).__name__}: "
                         f"{err}); delete it to start over") from err
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {str(path)!r} holds a {type(state).__name__}, expected a dict")
    return state


def _fsync_dir(directory: Path) -> None:
    # Make the rename itself durable; not possible on every platform (Windows), where it is skipped.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def get_rng_state() -> dict:
    """The RNG states a resumed run must restore to continue exactly (CPU, and CUDA once initialised)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
