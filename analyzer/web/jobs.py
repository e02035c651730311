"""Life cycle of the analysis processes: nothing outlives the server, nothing runs twice.

* Each analysis child puts itself in its **own process group** (so the whole group can be killed) and asks the
  kernel for a **parent-death signal** (SIGKILL when its parent, the fork server, dies). The fork server itself
  gets the same signal tied to the server (:mod:`analyzer.web.forkserver_guard`), so ``kill -9`` of the server
  takes the fork server and then every analysis with it.
* Every running analysis has a **pid file** ``DATA_DIR/jobs/<capture id>.pid`` (pid and the process start time,
  so a recycled pid is never mistaken for it). At start the server kills the process groups those files name
  (orphans of a previous server on this data directory), before it re-queues their jobs.
* One server per data directory: an exclusive ``flock`` on ``DATA_DIR/server.lock`` (released by the kernel when
  the server dies, however it dies). A second server on the same directory refuses to start instead of running
  the same jobs a second time.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import time
from pathlib import Path

log = logging.getLogger("mailpush.web.jobs")

from analyzer.lifetime import set_parent_death_signal  # noqa: F401  (used by forkserver_guard too)

SERVER_PID_ENV = "MAILPUSH_SERVER_PID"


class DataDirInUse(RuntimeError):
    pass


def enter_job_process(expected_parent: int | None = None) -> None:
    """First thing an analysis child does: die with the parent (already gone: exit now), then its own process
    group. In that order, so that a process that leads its own group has its parent-death signal armed."""
    set_parent_death_signal()
    if (expected_parent is not None and os.getppid() != expected_parent) or os.getppid() == 1:
        os._exit(1)  # the parent died before the signal was armed
    try:
        os.setpgid(0, 0)
    except OSError:
        pass


def process_start_time(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/PID/stat), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


class JobRegistry:
    """Pid files of the running analyses of one data directory."""

    def __init__(self, data_dir: Path):
        self.dir = Path(data_dir) / "jobs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = None
        self._lock_path = Path(data_dir) / "server.lock"

    # -- one server per data directory -------------------------------------------------------------------------

    def lock(self) -> None:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataDirInUse(f"another mailpush server is using the data directory {self._lock_path.parent}")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    # -- pid files ---------------------------------------------------------------------------------------------

    def _file(self, capture_id: str) -> Path:
        return self.dir / f"{capture_id}.pid"

    def record(self, capture_id: str, pid: int) -> None:
        start = process_start_time(pid) or "?"
        tmp = self._file(capture_id).with_suffix(".tmp")
        tmp.write_text(f"{pid} {start}\n")
        tmp.replace(self._file(capture_id))

    def forget(self, capture_id: str) -> None:
        self._file(capture_id).unlink(missing_ok=True)

    def reap_orphans(self) -> list[str]:
        """Kill the analyses a previous server left running on this data directory; their capture ids."""
        reaped = []
        for f in sorted(self.dir.glob("*.pid")):
            try:
                pid_text, start = f.read_text().split()
                pid = int(pid_text)
            except (OSError, ValueError):
                f.unlink(missing_ok=True)
                continue
            if start != "?" and process_start_time(pid) == start:
                kill_group(pid)
                log.warning("killed orphaned analysis of capture %s (pid %d) left by a previous server",
                            f.stem, pid)
                reaped.append(f.stem)
            f.unlink(missing_ok=True)
        for f in self.dir.glob("*.tmp"):
            f.unlink(missing_ok=True)
        return reaped


def kill_group(pid: int, wait_s: float = 5.0) -> None:
    """SIGKILL the process group led by ``pid`` (an analysis child) and wait until the leader is gone."""
    for target in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
        try:
            target()
        except (ProcessLookupError, PermissionError):
            continue
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and process_start_time(pid) is not None:
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                break
        except ChildProcessError:
            pass  # not our child (the fork server's): its parent reaps it
        state = _state(pid)
        if state in (None, "Z"):
            break
        time.sleep(0.02)


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().decode("ascii", "replace").rsplit(")", 1)[-1].split()[0]
    except OSError:
        return None
