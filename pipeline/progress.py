"""Progress and time-to-finish of one generation, over every kind of work it does after the encoders.

A job's remaining time is not only denoising steps: each chunk is also VAE-decoded (and all but the last
re-encoded for the next chunk's motion frames), and the finished clip is muxed. On the tiny CPU preset
those dominate; on a GPU the steps do. So the tracker counts three kinds of unit (a denoising step, a
chunk's decode, the final write), measures the mean duration of each kind as it goes, and estimates what
is left from those means. A kind not measured yet is estimated at the mean unit duration seen so far.
``fraction`` counts units (every step, every decode and the write count one), so it reaches 1.0 only when
the output is written.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum


class Work(Enum):
    STEP = "step"
    DECODE = "decode"
    WRITE = "write"


@dataclass(frozen=True)
class Progress:
    chunk: int
    chunks: int
    step: int
    steps: int
    units_done: int
    units_total: int
    eta_seconds: float | None
    elapsed_seconds: float

    @property
    def fraction(self) -> float:
        return self.units_done / self.units_total if self.units_total else 1.0


ProgressCallback = Callable[[Progress], None]


class ProgressTracker:
    """Counts finished units of work and reports a ``Progress`` after each one."""

    def __init__(
        self, chunks: int, steps: int, callback: ProgressCallback | None, *, writes_output: bool
    ) -> None:
        self._callback = callback
        self._chunks, self._steps = chunks, steps
        self._remaining = {
            Work.STEP: chunks * steps,
            Work.DECODE: chunks,
            Work.WRITE: 1 if writes_output else 0,
        }
        self._total = sum(self._remaining.values())
        self._spent = {kind: 0.0 for kind in Work}
        self._done = {kind: 0 for kind in Work}
        self._started = time.perf_counter()
        self._last = self._started
        self._position = (0, 0)

    def restart_clock(self) -> None:
        """Start timing now (work before this, such as encoding the inputs, is not a unit)."""
        self._started = self._last = time.perf_counter()

    def done(self, kind: Work, chunk: int, step: int = 0) -> None:
        now = time.perf_counter()
        self._spent[kind] += now - self._last
        self._done[kind] += 1
        self._remaining[kind] -= 1
        self._last = now
        if kind is Work.STEP:
            self._position = (chunk, step)
        if self._callback is not None:
            self._callback(self.snapshot(now))

    def snapshot(self, now: float | None = None) -> Progress:
        now = time.perf_counter() if now is None else now
        finished = self._total - sum(self._remaining.values())
        chunk, step = self._position
        return Progress(
            chunk=chunk,
            chunks=self._chunks,
            step=step,
            steps=self._steps,
            units_done=finished,
            units_total=self._total,
            eta_seconds=self._eta(),
            elapsed_seconds=now - self._started,
        )

    def _eta(self) -> float | None:
        units = sum(self._done.values())
        if units == 0:
            return None
        overall = sum(self._spent.values()) / units
        left = 0.0
        for kind, remaining in self._remaining.items():
            mean = self._spent[kind] / self._done[kind] if self._done[kind] else overall
            left += remaining * mean
        return left
