"""One checkpoint format and one resume rule, for every recipe.

Files survive a crash mid-write: a temp file in the same directory, fsync, os.replace. The content
is `spine.Run.state_dict()`: step, model, optimizer, scheduler, loss scaler, RNG states, the run's
records, and its `settings` (every setting that decides what is computed).

The resume rule (`check_resume`): every stored setting must match the resuming command's, except
the settings a config declares run-only (output folder, device, ...: they are not stored) and the
deliberate extensions it declares (a larger --max-iter), which are applied and recorded.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import re
import tempfile
import warnings
from pathlib import Path
from typing import IO, Iterator, List, Mapping, Optional, Sequence, Union

import torch

__all__ = ["atomic_write", "save_checkpoint", "load_checkpoint", "get_rng_state", "set_rng_state", "check_resume",
           "flag"]

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temp file beside `path`; on success it replaces `path`, so readers see the old or the new file.

    On any error (Ctrl-C, a full disk) the previous file stays as it was and the temp file is removed; an error
    of the file system (torch.save wraps it in a RuntimeError) comes out as one OSError naming `path`.
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
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        cause = _os_error(err)
        if cause is not None:
            raise OSError(cause.errno, f"cannot write {str(path)!r} ({cause.strerror or cause}); the file there "
                                       f"before, if any, is unchanged") from None
        raise
    _fsync_dir(path.parent)


def _os_error(err: BaseException) -> Optional[OSError]:
    """The OSError that `err` is, or was raised while handling (a full disk under torch.save's RuntimeError)."""
    while err is not None and not isinstance(err, OSError):
        err = err.__cause__ or err.__context__
    return err


def save_checkpoint(state: dict, path: PathLike) -> Path:
    """Write `state` with torch.save so that `path` holds either the old or the new file, never half of one."""
    with atomic_write(path) as f:
        torch.save(state, f)
    return Path(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_checkpoint(path: PathLike, map_location="cpu", format: Optional[int] = None) -> dict:
    """Read a checkpoint written by save_checkpoint; FileNotFoundError / ValueError naming the file otherwise.

    With `format` (a training state's, see spine.Run.checkpoint_format) a checkpoint of another format is
    refused: its state would not load into this version's optimizer or scheduler."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist; check the path (or start without --resume)")
    try:
        # weights_only: unpickling rebuilds tensors and plain data only (what Run.state_dict holds: RNG states
        # are tensors, settings and records plain python) and never calls what a file names, so a planted
        # checkpoint cannot run code.
        with warnings.catch_warnings():  # a foreign file's pickle protocol: the error below says enough
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        if isinstance(err, pickle.UnpicklingError) and "weights only" in str(err).lower():
            # torch's message: what it refused (a GLOBAL such as posix.system, or an opcode) after its boilerplate
            found = re.search(r"GLOBAL [\w.]+|Unsupported [^.\n]*", str(err))
            raise ValueError(f"checkpoint {str(path)!r} is corrupt or holds more than tensors and plain data"
                             f"{f' ({found.group(0)})' if found else ''}; refused, nothing in it was run (checkpoints "
                             f"are loaded weights-only, as a pickle can run code): delete it, or give a checkpoint "
                             f"these recipes wrote") from None
        raise ValueError(f"checkpoint {str(path)!r} is corrupt or not a torch checkpoint ({type(err).__name__}: "
                         f"{lines[0] if lines else ''}); delete it to start over") from err
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {str(path)!r} holds a {type(state).__name__}, expected a dict")
    if format is not None and state.get("format") != format:
        raise ValueError(f"{str(path)!r} was written by another version of this package; continue it with that "
                         f"version, or choose another --out")
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


def flag(key: str) -> str:
    """The command-line spelling of a setting: max_iter -> --max-iter."""
    return "--" + key.replace("_", "-")


def _shown(value) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return str(value)


def check_resume(saved: Mapping, current: Mapping, path: PathLike, extendable: Sequence[str] = (),
                 keys: Optional[Sequence[str]] = None) -> List[str]:
    """The resume rule. ValueError listing every setting of `current` that differs from `saved` (the
    settings stored with the checkpoint at `path`), except a larger value of an `extendable` setting,
    which is allowed: those come back as `["max_iter 8 -> 12", ...]` for the caller to apply and record.
    `keys` limits the comparison (e.g. the data fingerprint, known only after loading the data).
    """
    names = keys if keys is not None else sorted(set(saved) | set(current))
    differ, extended = [], []
    for key in names:
        before, now = saved.get(key), current.get(key)
        if before == now:
            continue
        if key in extendable and isinstance(before, int) and isinstance(now, int) and now > before:
            extended.append(f"{key} {before} -> {now}")
            continue
        if key == "data":  # not a flag: the fingerprint of the data set found under --data-dir
            differ.append(f"the data set {_shown(before)}, not {_shown(now)}")
        else:
            differ.append(f"{flag(key)} {_shown(before)}, not {_shown(now)}")
    if differ:
        more = (f" (a larger {', '.join(flag(k) for k in extendable)} may extend a run)" if extendable else "")
        raise ValueError(f"{str(path)!r} was written by a run with other settings: {'; '.join(differ)}; resume with "
                         f"those settings{more}, or choose another --out")
    return extended
