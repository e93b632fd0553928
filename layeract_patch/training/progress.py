"""A dependency-free progress display: a one-line bar on a terminal, periodic log lines in files and CI logs.

Every line says where the work stands and how long the rest will take (`0:12 elapsed, ETA 0:45`, as tqdm's
`[00:12<00:45]`), so a person waiting knows whether to wait. `say` is for the one-off steps around it
("evaluating on 10000 test images").
"""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Iterator, Optional, TextIO

__all__ = ["Progress", "say", "duration"]


def say(message: str, stream: Optional[TextIO] = None) -> None:
    """One status line on stderr (stdout stays clean for results), flushed at once."""
    print(message, file=sys.stderr if stream is None else stream, flush=True)


def duration(seconds: float) -> str:
    """`0:07`, `12:34`, `1:02:03`: minutes and seconds, with hours when there are any."""
    minutes, secs = divmod(int(round(max(seconds, 0.0))), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Shows `step/total`, the metrics passed to `update` (e.g. loss, lr), images/s, elapsed time and an ETA.

    Args:
        total: the last step (e.g. max iterations).
        desc: a prefix such as "seed 0".
        stream: where to write (stderr by default, so stdout stays clean for results).
        interval: seconds between plain log lines when `stream` is not a terminal; the first and the
            last step are always logged. On a terminal the bar is redrawn at most every 0.1 s.
        delay: show nothing until this many seconds have passed (as tqdm's `delay`): work that ends sooner
            stays silent, work that takes longer says so.
        unit: what `images` counts, for the rate (`img/s`).

    `update(step, images=n, **metrics)`: `step` is the step just finished, `images` the number of images
    processed since the previous update (for images/s), metrics are shown as `name=value`. The ETA is the
    remaining steps at the pace of the steps done so far by this display (a resumed run counts from its
    first step here); time inside `paused()` counts for neither the ETA nor images/s.
    """

    def __init__(self, total: int, desc: str = "", stream: Optional[TextIO] = None, interval: float = 10.0,
                 delay: float = 0.0, unit: str = "img") -> None:
        self.total = int(total)
        self.desc = desc
        self.unit = unit
        self.stream = sys.stderr if stream is None else stream
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty and isatty())
        self.interval = 0.1 if self.tty else float(interval)
        self.delay = float(delay)
        self.start = self._rate_time = time.perf_counter()
        self._paused = 0.0
        self._first_step: Optional[int] = None  # the step before this display's first update
        self._last_draw = None
        self._images = 0
        self._rate = None
        self._width = 0
        self.closed = False

    def update(self, step: int, images: Optional[int] = None, **metrics) -> None:
        now = time.perf_counter()
        if self._first_step is None:
            self._first_step = step - 1
        if images is not None:
            self._images += int(images)
        if now - self.start < self.delay:
            return
        due = self._last_draw is None or step >= self.total or now - self._last_draw >= self.interval
        if not due:
            return
        if self._images and now > self._rate_time:
            # Rate over the window since the last display, so a slow first (compiling) step fades out.
            self._rate = self._images / (now - self._rate_time)
            self._images, self._rate_time = 0, now
        self._last_draw = now
        line = self._format(step, now, metrics)
        if self.tty:
            pad = " " * max(0, self._width - len(line))
            self._width = len(line)
            self.stream.write("\r" + line + pad)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Work that is not the counted steps (an evaluation, a checkpoint): its time is left out of the ETA and
        of images/s, and on a terminal the bar's line is ended first, so the work's own messages get lines."""
        if self.tty and self._last_draw is not None and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0
        start = time.perf_counter()
        try:
            yield
        finally:
            spent = time.perf_counter() - start
            self._paused += spent
            self._rate_time += spent

    def close(self) -> None:
        """End the bar's line on a terminal; safe to call twice."""
        if self.closed:
            return
        self.closed = True
        if self.tty and self._last_draw is not None and self._width:
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _format(self, step: int, now: float, metrics: dict) -> str:
        width = len(str(self.total))
        head = f"{self.desc} " if self.desc else ""
        text = f"{head}{step:>{width}}/{self.total}"
        if self.tty:
            filled = int(20 * min(step, self.total) / max(self.total, 1))
            text = f"{head}[{'#' * filled}{'.' * (20 - filled)}] {step:>{width}}/{self.total}"
        parts = [text] + [f"{name}={_fmt(value)}" for name, value in metrics.items()]
        if self._rate is not None:
            parts.append(f"{self._rate:.0f} {self.unit}/s")
        elapsed = now - self.start
        timing = f"{duration(elapsed)} elapsed"
        done = step - (self._first_step or 0)
        if step < self.total and done > 0:
            active = max(elapsed - self._paused, 0.0)
            timing += f", ETA {duration(active / done * (self.total - step))}"
        return " ".join(parts) + f" ({timing})"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if hasattr(value, "item"):  # a 0-d tensor: the caller pays the device sync, not us silently
        return _fmt(value.item())
    return str(value)
