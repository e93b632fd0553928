"""A dependency-free progress display: a one-line bar on a terminal, periodic log lines in files and CI logs."""
from __future__ import annotations

import sys
import time
from typing import Optional, TextIO

__all__ = ["Progress"]


class Progress:
    """Shows `step/total`, the metrics passed to `update` (e.g. loss, lr) and images/s.

    Args:
        total: the last step (e.g. max iterations).
        desc: a prefix such as "seed 0".
        stream: where to write (stderr by default, so stdout stays clean for results).
        interval: seconds between plain log lines when `stream` is not a terminal; the first and the
            last step are always logged. On a terminal the bar is redrawn at most every 0.1 s.

    `update(step, images=n, **metrics)`: `step` is the step just finished, `images` the number of images
    processed since the previous update (for images/s), metrics are shown as `name=value`.
    """

    def __init__(self, total: int, desc: str = "", stream: Optional[TextIO] = None, interval: float = 10.0) -> None:
        self.total = int(total)
        self.desc = desc
        self.stream = sys.stderr if stream is None else stream
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty and isatty())
        self.interval = 0.1 if self.tty else float(interval)
        self.start = self._rate_time = time.perf_counter()
        self._last_draw = None
        self._images = 0
        self._rate = None
        self._width = 0
        self.closed = False

    def update(self, step: int, images: Optional[int] = None, **metrics) -> None:
        now = time.perf_counter()
        if images is not None:
            self._images += int(images)
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

    def close(self) -> None:
        """End the bar's line on a terminal; safe to call twice."""
        if self.closed:
            return
        self.closed = True
        if self.tty and self._last_draw is not None:
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
            parts.append(f"{self._rate:.0f} img/s")
        parts.append(f"{now - self.start:.0f}s")
        return " ".join(parts)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if hasattr(value, "item"):  # a 0-d tensor: the caller pays the device sync, not us silently
        return _fmt(value.item())
    return str(value)
