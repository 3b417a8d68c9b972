"""Progress of long steps: a bar on a terminal, a few plain lines in a log, nothing for short work.

A step shows nothing during its first ``delay`` seconds (2 by default), so quick calls stay quiet. On a
terminal the display is a tqdm bar; when standard error is not a terminal (a log file, CI,
``make run > file``) it is at most one line per 10% of the work. ``CINCER_PROGRESS=0`` turns it off.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO, TypeVar

T = TypeVar("T")
DELAY = 2.0


def enabled() -> bool:
    return os.environ.get("CINCER_PROGRESS", "1") not in ("0", "false", "no", "off")


class Progress:
    """``update(n)`` as work gets done; ``close()`` (or ``with``) when it is over."""

    def __init__(self, total: int, desc: str, *, unit: str = "it", disable: bool = False, delay: float = DELAY,
                 stream: TextIO | None = None) -> None:
        self.total, self.desc, self.unit = max(int(total), 0), desc, unit
        self.stream = stream or sys.stderr
        self.done, self._decile, self._start, self.delay = 0, 0, time.perf_counter(), delay
        self._bar: Any = None
        self.disabled = disable or not enabled() or self.total == 0
        if not self.disabled and self.stream.isatty():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=desc, unit=unit, delay=delay, leave=False, file=self.stream)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.disabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        decile = min(10, self.done * 10 // self.total)
        elapsed = time.perf_counter() - self._start
        if decile > self._decile and elapsed >= self.delay:
            self._decile = decile
            print(f"{self.desc}: {decile * 10}% ({self.done}/{self.total} {self.unit}, {elapsed:.0f} s)",
                  file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def track(items: Iterable[T], *, total: int, desc: str, unit: str = "it") -> Iterator[T]:
    """``items``, reporting progress as each is consumed."""
    with Progress(total, desc, unit=unit) as progress:
        for item in items:
            yield item
            progress.update()
