# SPDX-License-Identifier: GPL-2.0-or-later
"""Wall time per pipeline stage, for ``mailpush analyze --profile`` and the benchmarks.

Stages nest (the DCE/RPC analyser is called from inside the TCP reassembly, which runs inside the transport's
batch loop), so the clock keeps a stack and charges every interval to the innermost open stage only: the
figures are exclusive and add up to the time measured. Nothing is timed unless :func:`profiling` is active; the
stages then cost two ``perf_counter`` calls per entry (per batch, per PDU), a few percent at most.

This module imports no stage (each stage imports it), so it sits beside them in the layer table.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

# Stage names in pipeline order (the report lists them in this order, then anything else)
STAGES = ("ingest", "pre-filter", "TCP", "DCE/RPC", "tshark", "correlate", "verdict", "output")


class StageClock:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}  # wall
        self.cpu: dict[str, float] = {}  # CPU time of this process (on a shared machine: the steadier figure)
        self._stack: list[str] = []
        self._mark = 0.0
        self._cpu_mark = 0.0
        self.frames: int | None = None  # frames read, for the report's frames/s (set by the caller)
        # when the clock started: what came before it (interpreter, imports, argument parsing) is the start-up;
        # what runs under it outside every stage is reported on a line of its own
        self.started = time.perf_counter()
        self.startup = since_process_start()

    def _charge(self) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        if self._stack:
            top = self._stack[-1]
            self.seconds[top] = self.seconds.get(top, 0.0) + (now - self._mark)
            self.cpu[top] = self.cpu.get(top, 0.0) + (cpu - self._cpu_mark)
        self._mark, self._cpu_mark = now, cpu

    def enter(self, name: str) -> None:
        self._charge()
        self._stack.append(name)

    def leave(self) -> None:
        self._charge()
        self._stack.pop()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.enter(name)
        try:
            yield
        finally:
            self.leave()

    def wrap(self, name: str, func: Callable) -> Callable:
        """``func`` with its calls charged to ``name``."""
        enter, leave = self.enter, self.leave

        def timed(*args, **kwargs):
            enter(name)
            try:
                return func(*args, **kwargs)
            finally:
                leave()

        return timed

    def iterate(self, name: str, items: Iterable) -> Iterator:
        """``items`` with the time spent producing each one charged to ``name`` (a generator's own work)."""
        it = iter(items)
        while True:
            self.enter(name)
            try:
                item = next(it)
            except StopIteration:
                return
            finally:
                self.leave()
            yield item

    def report(self, frames: int | None = None, startup: bool = True) -> str:
        """The table; ``startup``: add this process's start-up line (off for clocks summed over workers)."""
        total = sum(self.seconds.values())
        names = [s for s in STAGES if s in self.seconds] + sorted(set(self.seconds) - set(STAGES))
        lines = [f"{'stage':<12} {'wall s':>8} {'share':>6} {'CPU s':>8}"]
        for name in names:
            sec = self.seconds[name]
            lines.append(f"{name:<12} {sec:8.3f} {100 * sec / total if total else 0:5.1f}% {self.cpu.get(name, 0):8.3f}")
        if startup and self.startup is not None:
            lines.append(f"{'(start-up)':<12} {self.startup:8.3f}         {'':8}  interpreter start, imports, argument "
                         "parsing: before the clock started (not in the total)")
        outside = time.perf_counter() - self.started - total
        if startup and outside > 0.0005:
            lines.append(f"{'(other)':<12} {outside:8.3f}         {'':8}  under the clock, in no stage: opening the "
                         "file, the command's own work (not in the total)")
        tail = f"{'total':<12} {total:8.3f}        {sum(self.cpu.values()):8.3f}"
        if frames and total:
            tail += f"  ({frames:,} frames, {frames / total:,.0f} frames/s)"
        lines.append(tail)
        return "\n".join(lines)


def since_process_start() -> float | None:
    """Wall seconds since this process started (Linux; 10 ms resolution), or None where unknown: the start-up
    and import time that no stage sees is this minus the stages."""
    try:
        import os

        with open("/proc/self/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start time, ticks after boot
        return time.clock_gettime(time.CLOCK_BOOTTIME) - started
    except (OSError, ValueError, IndexError, AttributeError):
        return None


_active: StageClock | None = None


def active() -> StageClock | None:
    """The clock of the running :func:`profiling` block, or None (then nothing is timed)."""
    return _active


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Charge the block to ``name`` when profiling; a no-op otherwise."""
    clock = _active
    if clock is None:
        yield
        return
    with clock.stage(name):
        yield


@contextmanager
def profiling() -> Iterator[StageClock]:
    global _active
    previous, _active = _active, StageClock()
    try:
        yield _active
    finally:
        _active = previous
