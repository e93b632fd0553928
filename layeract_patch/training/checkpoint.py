"""Checkpoints that survive a crash mid-write: temp file in the same directory, fsync, os.replace."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Union

import torch

__all__ = ["save_checkpoint", "load_checkpoint"]

PathLike = Union[str, os.PathLike]


def save_checkpoint(state: dict, path: PathLike) -> Path:
    """Write `state` with torch.save so that `path` holds either the old or the new file, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same directory as the target: os.replace is only atomic within one file system.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Ctrl-C or a full disk mid-write: leave the previous checkpoint as it was, and no litter.
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


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
