"""The progress line drawn in place when the driver writes to a terminal: a
tqdm bar of the seeds that ended, with the heartbeat's status beside it,
redrawn twice a second; each trial's ending prints above it and stays.
Written to a log file or under CI, the heartbeat stays plain lines (a bar's
carriage returns would fill a log with half-drawn copies)."""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

REDRAW_SECONDS = 0.5


def wanted(stream: TextIO) -> bool:
    """A live display on stream: a terminal that can redraw a line, not CI's."""
    tty = getattr(stream, "isatty", lambda: False)()
    return tty and os.environ.get("TERM") != "dumb" and not os.environ.get("CI")


class LiveBar:
    """tqdm's bar, made when first drawn (Tune pickles the callback that
    holds this with its state: `__getstate__` leaves the bar out)."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total, self.stream = total, stream
        self.bar = None
        self.drawn = 0.0

    def __getstate__(self) -> dict:
        return {**self.__dict__, "bar": None, "stream": None}

    def _bar(self):
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(
                total=self.total, file=self.stream or sys.stdout, dynamic_ncols=True,
                bar_format="{bar:20} {n_fmt}/{total_fmt} done{desc}", leave=True,
            )  # fmt: skip
        return self.bar

    def show(self, done: int, status: str, *, now: bool = True) -> None:
        """Redraw with `done` seeds ended and `status` beside the bar; unless
        `now`, at most every REDRAW_SECONDS."""
        if not now and time.monotonic() - self.drawn < REDRAW_SECONDS:
            return
        bar = self._bar()
        bar.n = min(done, self.total)
        bar.set_description_str(status, refresh=False)
        bar.refresh()
        self.drawn = time.monotonic()

    def write(self, text: str) -> None:
        """Lines printed above the bar, which is redrawn below them."""
        self._bar().write(text, file=self.stream or sys.stdout)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
