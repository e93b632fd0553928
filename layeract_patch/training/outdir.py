"""The output folder of a run: one writer at a time, no litter from a killed one.

`claim_output(out)` holds an exclusive `fcntl.flock` on `out/.lock` while the run writes there, so a
second run given the same --out refuses at once instead of silently interleaving its files with the
first. The kernel drops the lock when the process dies, so a killed run never leaves a stale lock.
Once the lock is held no other live run writes there, so leftover `.*.tmp` files (a checkpoint write
that was killed) are stale and removed. A run that fails before writing anything leaves no trace:
the lock file and any folders the claim made are removed again.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, List

__all__ = ["claim_output", "check_output_path", "OutputBusy"]

LOCK_NAME = ".lock"


class OutputBusy(ValueError):
    """Another live run holds the lock on this output folder."""


def check_output_path(out: Path, flag: str = "--out") -> Path:
    """ValueError when `out` exists and is not a folder, or cannot be written (a read-only folder or file
    system): both would fail only at the first write."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"{flag} {str(out)!r} is a file, not a folder; give a folder path for the results")
    existing = next(folder for folder in (out, *out.absolute().parents) if folder.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == out else f" (its folder {str(existing)!r} is not writable)"
        raise ValueError(f"{flag} {str(out)!r} cannot be written{where}; give a folder you can write to")
    return out


@contextlib.contextmanager
def claim_output(out: Path, flag: str = "--out") -> Iterator[Path]:
    """Create `out` if needed and hold its lock for the body; OutputBusy when another run holds it."""
    out = check_output_path(out, flag)
    created = _missing_folders(out)
    out.mkdir(parents=True, exist_ok=True)
    lock = out / LOCK_NAME
    fd = _lock(lock, out, flag, created)
    try:
        for stale in out.rglob(".*.tmp"):
            stale.unlink(missing_ok=True)
        yield out
    finally:
        # Unlink while still holding the lock, then close (which releases it): a run that opened the old
        # file meanwhile finds, after locking it, that it is no longer the file at that path, and retries.
        lock.unlink(missing_ok=True)
        os.close(fd)
        for folder in created:  # deepest first; only folders still empty (the run wrote nothing) go
            with contextlib.suppress(OSError):
                folder.rmdir()


def _lock(lock: Path, out: Path, flag: str, created: List[Path]) -> int:
    try:
        import fcntl
    except ImportError:  # not POSIX (Windows): no advisory locks; runs are not protected from each other
        return os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputBusy(f"{flag} {str(out)!r} is in use by another run (pid {holder}); wait for it to finish, "
                             f"or choose another {flag}") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            return fd
        os.close(fd)  # the previous holder removed the file between our open and our lock: take the new one


def _missing_folders(out: Path) -> List[Path]:
    """`out` and its parents that do not exist yet, deepest first."""
    missing = []
    for folder in (out, *out.parents):
        if folder.exists():
            break
        missing.append(folder)
    return missing
