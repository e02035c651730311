# SPDX-License-Identifier: GPL-2.0-or-later
"""How busy the rest of the machine is, for the benchmarks (not a test).

On a shared 2-core VM a run measured while a neighbour computes measures the neighbour. The load average lags by
a minute and counts the benchmark's own previous run; these figures come from /proc instead: the CPU time of the
whole machine minus that of this process tree.
"""

from __future__ import annotations

import os
import time


def machine_cpu() -> float:
    """CPU seconds all processes of the machine have used since boot (busy time in /proc/stat)."""
    with open("/proc/stat") as fh:
        ticks = [int(x) for x in fh.readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


def own_cpu() -> float:
    """CPU seconds of this process, its reaped children and its live descendants (pool and Dask workers)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        parents[int(entry)] = int(fields[1])
        # utime, stime, and for this process also cutime, cstime (children it has reaped)
        times[int(entry)] = sum(int(x) for x in fields[11:15])
    me = os.getpid()
    tree, frontier = {me}, [me]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in tree:
                tree.add(pid)
                frontier.append(pid)
    return sum(times.get(pid, 0) for pid in tree) / os.sysconf("SC_CLK_TCK")


def others_cores(seconds: float = 2.0) -> float:
    """Cores the rest of the machine keeps busy right now (this benchmark idle meanwhile)."""
    m0, o0 = machine_cpu(), own_cpu()
    time.sleep(seconds)
    return max(0.0, (machine_cpu() - m0) - (own_cpu() - o0)) / seconds


def wait_quiet(max_others: float, deadline: float, max_load: float = 0.0) -> float:
    """Wait until the rest of the machine uses fewer than ``max_others`` cores (and, with ``max_load``, the
    1-minute load average is below it), or ``deadline`` (a time.monotonic() value) passes; returns the cores it
    used in the last 2 s sample."""
    while True:
        others = others_cores()
        if (others < max_others and (not max_load or os.getloadavg()[0] < max_load)) \
                or time.monotonic() >= deadline:
            return others
