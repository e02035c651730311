"""Processes that must not outlive the one that started them (web analyses, batch pool workers)."""

from __future__ import annotations

import ctypes
import signal

PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Linux: deliver ``sig`` to this process when the thread that forked it dies. False where unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False
