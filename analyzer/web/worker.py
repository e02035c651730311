"""Background analysis: a pool of worker threads that take queued captures from the database and run the
pipeline on them, outside any request.

Threads, not processes: the pipeline streams the capture (constant memory) and the pool mostly needs to keep the
HTTP server responsive while analyses run; a thread never takes the server down with it because every failure
of one job (bad capture, pipeline bug) is caught and recorded as ``failed`` with its message.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback

from analyzer.web.db import Capture, Database
from analyzer.web.storage import Store

log = logging.getLogger("mailpush.web.worker")

# matplotlib's pyplot state is global and not thread-safe: workers draw one capture's plots at a time.
_PLOT_LOCK = threading.Lock()


class WorkerPool:
    def __init__(self, db: Database, store: Store, workers: int):
        self.db = db
        self.store = store
        self.workers = max(0, int(workers))
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        # capture id -> fraction of the file read, for running jobs (in memory: it only matters while running)
        self.progress: dict[str, float] = {}

    def start(self) -> None:
        requeued, gave_up = self.db.recover_interrupted()
        if requeued or gave_up:
            log.warning("resuming after restart: %d interrupted job(s) re-queued, %d given up", requeued, gave_up)
        for i in range(self.workers):
            t = threading.Thread(target=self._loop, name=f"mailpush-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def notify(self) -> None:
        """A job was queued: wake an idle worker now instead of at its next poll."""
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the workers to stop after their current job. A job still running when the process exits stays
        ``running`` in the database and is re-queued by the next start (daemon threads do not block exit)."""
        self._stop.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._threads = [t for t in self._threads if t.is_alive()]

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                job = self.db.claim_next_job()
            except Exception:  # database briefly unavailable/locked: keep the worker alive and retry
                log.exception("could not take a job from the queue")
                job = None
                self._stop.wait(2.0)
            if job is not None:
                self.run_job(job)
                continue
            # Poll as well as wait for notify(): another server process sharing the database may queue jobs.
            self._wake.wait(1.0)
            self._wake.clear()

    def run_job(self, capture_id: str) -> None:
        result_doc, error = None, None
        def progress(done: int, total: int) -> None:
            if total > 0:
                self.progress[capture_id] = min(1.0, done / total)

        try:
            result_doc, error = analyze_upload(self.db, self.store, capture_id, progress)
        except Exception as exc:
            log.error("analysis of capture %s failed:\n%s", capture_id, traceback.format_exc())
            error = f"internal error while analysing the capture ({type(exc).__name__}: {exc})"
        try:
            self.db.finish_job(capture_id, result=result_doc, error=error)
        except Exception:
            log.exception("could not record the result of capture %s", capture_id)
        self.progress.pop(capture_id, None)
        if not self._exists(capture_id):  # deleted while it was being analysed: leave nothing behind
            self.store.remove(capture_id)

    def _exists(self, capture_id: str) -> bool:
        with self.db.session() as s:
            return s.get(Capture, capture_id) is not None


def analyze_upload(db: Database, store: Store, capture_id: str, progress=None) -> tuple[dict | None, str | None]:
    """Run the pipeline on one stored upload; returns (capture object, error message or None)."""
    from analyzer.pipeline import analyze_capture

    with db.session() as s:
        row = s.get(Capture, capture_id)
        if row is None:
            return None, "capture was deleted"
        display_name = row.filename
    path = store.capture_path(capture_id)
    if not path.is_file():
        return None, "the uploaded file is missing from the server's data directory"
    result = analyze_capture(str(path), progress=progress)
    # The capture object's "file" is the name the user knows, never the server's storage path.
    result.file = display_name
    if result.error is None:
        problem = draw_plots(store, capture_id, result)
        if problem:
            result.warnings.append(problem)
    return result.to_dict(), result.error


def draw_plots(store: Store, capture_id: str, result) -> str | None:
    """Write the timing plots of ``result``; returns a warning text when they could not be drawn."""
    if not result.clients:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")  # a server has no display
        from analyzer.report import write_plots
    except ImportError as exc:
        return f"timing plots are not available on this server ({exc})"
    out = store.plot_dir(capture_id)
    out.mkdir(parents=True, exist_ok=True)
    try:
        with _PLOT_LOCK:
            write_plots(result, out)
    except Exception as exc:
        log.error("plots of capture %s failed:\n%s", capture_id, traceback.format_exc())
        return f"timing plots could not be drawn ({type(exc).__name__}: {exc})"
    return None
