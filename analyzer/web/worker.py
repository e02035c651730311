"""Background analysis: a pool of worker threads that take queued captures from the database; each job runs the
pipeline in its own child process, outside any request.

Why a child process per job (forked from a ``forkserver`` that has the pipeline already imported, so a job starts
in milliseconds, not the ~1 s of a fresh interpreter):
* a time limit can really be enforced (a thread cannot be killed), so a capture that makes the dissector spin
  cannot wedge a worker;
* a crash or an out-of-memory kill ends that one job as ``failed``, never the server;
* analyses run on several cores at once (threads would share one under the GIL).
The worker threads only wait on the child, move progress messages along and record the outcome.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import threading
import time
import traceback
from pathlib import Path

from sqlalchemy import select

from analyzer.web import logs
from analyzer.web.db import DONE, FAILED, MAX_ATTEMPTS, QUEUED, RUNNING, Capture, Database
from analyzer.web.jobs import SERVER_PID_ENV, JobRegistry, enter_job_process, kill_group
from analyzer.web.scheduler import claim_next_fair, mark_not_saved, requeue_unsaved
from analyzer.web.storage import Store

log = logging.getLogger("mailpush.web.worker")

# matplotlib's pyplot state is global and not thread-safe: workers draw one capture's plots at a time.
_PLOT_LOCK = threading.Lock()

DEFAULT_JOB_TIMEOUT_S = 900.0
# Imported once in the fork server so that every job's child process starts with them loaded (modules that do
# not import are skipped by multiprocessing).
_PRELOAD = ["analyzer.web.forkserver_guard", "analyzer.pipeline", "analyzer.ingest", "analyzer.dissect", "analyzer.correlate", "analyzer.verdict",
            "analyzer.report", "analyzer.web.worker", "pandas", "numpy", "matplotlib", "matplotlib.pyplot"]
_MP = multiprocessing.get_context("forkserver")  # never plain fork: this process has threads (uvicorn, workers)
_MP.set_forkserver_preload(_PRELOAD)

# More analyses at once than this only queue for the same cores (and each worker thread costs a process slot).
MAX_WORKERS = max(4, 2 * (os.cpu_count() or 1))
IDLE_POLL_MAX_S = 30.0  # idle workers wait for notify(), re-checking the database at most this often
HOUSEKEEPING_S = 5.0


class WorkerPool:
    metrics = None  # analyzer.web.metrics.ServiceMetrics, set by create_app

    def __init__(self, db: Database, store: Store, workers: int, job_timeout_s: float = DEFAULT_JOB_TIMEOUT_S,
                 plots_in_job: bool = True, limits: dict | None = None):
        self.db = db
        self.plots_in_job = plots_in_job
        self.job_timeout_s = job_timeout_s
        self.store = store
        self.limits = limits  # analyzer.ingest.limits.Limits as a dict, applied in every job's process
        requested = max(0, int(workers))
        self.workers = min(requested, MAX_WORKERS)
        if requested > MAX_WORKERS:
            log.warning("--workers %d capped at %d (2 per core): more would only queue for the same cores",
                        requested, MAX_WORKERS)
        self.registry = JobRegistry(store.root)
        self._cond = threading.Condition()
        self._pending = 0  # notify() calls not yet taken by a worker
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._children: dict[str, multiprocessing.process.BaseProcess] = {}
        self._cancelled: set[str] = set()
        self._unsaved: dict[str, str] = {}  # capture id -> why its outcome could not be written (retried)
        self._lock = threading.Lock()
        # capture id -> fraction of the file read, for running jobs (in memory: it only matters while running)
        self.progress: dict[str, float] = {}
        # capture id -> Secrets uploaded with it. Never written anywhere: handed to the job's child process and
        # forgotten when the job starts or the capture is deleted; a restart before that loses them (the job then
        # runs without, and its sealed sessions stay encrypted).
        self._secrets: dict = {}
        self._secrets_lock = threading.Lock()

    def start(self) -> None:
        self.registry.lock()  # DataDirInUse: another server runs these jobs already
        reaped = self.registry.reap_orphans()
        removed = self.store.clean_partials()
        if removed:
            log.warning("removed %d partial upload(s) left by an interrupted server", removed)
        with self.db.session() as s:  # which jobs recover_interrupted will move, for their log lines
            interrupted = s.execute(select(Capture.id, Capture.attempts).where(Capture.status == RUNNING)).all()
        requeued, gave_up = self.db.recover_interrupted()
        for capture_id, attempts in interrupted:
            logs.job_state(capture_id, FAILED if attempts >= MAX_ATTEMPTS else QUEUED,
                           reason="interrupted by a server stop", attempts=attempts)
        if requeued or gave_up or reaped:
            log.warning("resuming after restart: %d interrupted job(s) re-queued, %d given up, %d orphaned "
                        "analysis process(es) killed", requeued, gave_up, len(reaped),
                        extra={"event": "job_recovery", "requeued": requeued, "given_up": gave_up,
                               "orphans_killed": len(reaped)})
        requeue_unsaved(self.db)
        if self.workers:
            # The fork server is started here, by the thread that lives as long as the server, and dies with it
            # (forkserver_guard): every analysis forked from it dies with the fork server in turn.
            os.environ[SERVER_PID_ENV] = str(os.getpid())
            from multiprocessing import forkserver

            forkserver.ensure_running()
        for i in range(self.workers):
            t = threading.Thread(target=self._loop, name=f"mailpush-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self._housekeeping, name="mailpush-housekeeping", daemon=True)
        t.start()
        self._threads.append(t)

    def hold_secrets(self, capture_id: str, secrets) -> None:
        with self._secrets_lock:
            self._secrets[capture_id] = secrets

    def drop_secrets(self, capture_id: str) -> None:
        with self._secrets_lock:
            self._secrets.pop(capture_id, None)

    def notify(self) -> None:
        """A job was queued: wake one idle worker now."""
        with self._cond:
            self._pending += 1
            self._cond.notify()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the workers to stop after their current job. A job still running when the process exits stays
        ``running`` in the database and is re-queued by the next start (daemon threads do not block exit)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._threads = [t for t in self._threads if t.is_alive()]
        self.registry.unlock()

    def cancel(self, capture_id: str) -> bool:
        """Stop the analysis of ``capture_id`` if it is running (its process group killed, waited for); True if
        it was running."""
        with self._lock:
            self._cancelled.add(capture_id)
            child = self._children.get(capture_id)
        if child is None:
            return False
        if child.pid is not None:
            kill_group(child.pid)
        child.join(10)
        return True

    def _loop(self) -> None:
        idle = 1.0
        while not self._stop.is_set():
            try:
                job = claim_next_fair(self.db)
            except Exception:  # database briefly unavailable/locked: keep the worker alive and retry
                log.exception("could not take a job from the queue")
                job = None
                self._stop.wait(2.0)
            if job is not None:
                idle = 1.0
                logs.job_state(job, RUNNING, worker=threading.current_thread().name)
                self.run_job(job)
                continue
            # Nothing queued: sleep until notify(), re-checking now and then (another server process sharing a
            # PostgreSQL database may queue jobs), backing off to IDLE_POLL_MAX_S.
            with self._cond:
                if self._pending == 0 and not self._stop.is_set():
                    self._cond.wait(idle)
                if self._pending:
                    self._pending -= 1
                    idle = 1.0
                else:
                    idle = min(IDLE_POLL_MAX_S, idle * 2)

    def _housekeeping(self) -> None:
        """Outcomes that could not be written are written again; jobs whose result could not be saved are
        re-queued once the disk has room."""
        backoff, next_retry = HOUSEKEEPING_S, 0.0
        while not self._stop.wait(HOUSEKEEPING_S):
            for capture_id, reason in list(self._unsaved.items()):
                try:
                    mark_not_saved(self.db, capture_id, reason)
                    self._unsaved.pop(capture_id, None)
                except Exception:
                    pass
            if time.monotonic() < next_retry:
                continue
            try:
                if self.store.has_room() and requeue_unsaved(self.db):
                    self.notify()
                    # the database itself may still be full: retry less and less often (5 s .. 5 min)
                    next_retry = time.monotonic() + backoff
                    backoff = min(300.0, backoff * 2)
                else:
                    backoff = HOUSEKEEPING_S
            except Exception:
                pass

    def run_job(self, capture_id: str) -> None:
        started = time.monotonic()
        try:
            result_doc, error = self._run_child(capture_id)
        except _Stopped:
            return  # server shutting down: the job stays "running" and is re-queued by the next start
        except Exception as exc:  # e.g. cannot start a process (out of PIDs or memory)
            log.error("analysis of capture %s failed:\n%s", capture_id, traceback.format_exc())
            result_doc, error = None, f"internal error while analysing the capture ({type(exc).__name__}: {exc})"
        finally:
            self.progress.pop(capture_id, None)
            with self._lock:
                self._children.pop(capture_id, None)
                cancelled = capture_id in self._cancelled
                self._cancelled.discard(capture_id)
        seconds, outcome = time.monotonic() - started, FAILED if error else DONE
        if not cancelled:
            try:
                self.db.finish_job(capture_id, result=result_doc, error=error)
            except Exception as exc:  # "database or disk is full", database gone: never leave it "running"
                reason = _short_reason(exc)
                log.error("could not record the result of capture %s: %s", capture_id, reason)
                try:
                    mark_not_saved(self.db, capture_id, reason)
                except Exception:
                    self._unsaved[capture_id] = reason  # written by the housekeeping thread when it can
            else:
                logs.job_state(capture_id, outcome, seconds=round(seconds, 3), error=error)
            if self.metrics is not None:
                self.metrics.analysis_finished(outcome, seconds)
        if cancelled or not self._exists(capture_id):  # deleted while it was being analysed: leave nothing
            self.store.remove(capture_id)

    def _run_child(self, capture_id: str) -> tuple[dict | None, str | None]:
        with self.db.session() as s:
            row = s.get(Capture, capture_id)
            if row is None:
                return None, "capture was deleted"
            display_name = row.filename
        path = self.store.capture_path(capture_id)
        if not path.is_file():
            return None, "the uploaded file is missing from the server's data directory"
        with self._secrets_lock:
            secrets = self._secrets.pop(capture_id, None)
        receiver, sender = _MP.Pipe(duplex=False)
        child = _MP.Process(target=analyse_in_child, name=f"mailpush-analyse-{capture_id}",
                            args=(str(path), display_name,
                                  str(self.store.plot_dir(capture_id)) if self.plots_in_job else None, sender,
                                  self.limits, secrets))
        deadline = time.monotonic() + self.job_timeout_s  # the limit includes starting the process
        with self._lock:
            if capture_id in self._cancelled:
                return None, "capture was deleted"
            child.start()
            self._children[capture_id] = child
        self.registry.record(capture_id, child.pid)
        sender.close()  # the child holds the only write end: EOF here means it is gone
        outcome = None
        try:
            while outcome is None:
                if self._stop.is_set():
                    raise _Stopped()
                if time.monotonic() > deadline:
                    return None, (f"analysis stopped after the time limit of {self.job_timeout_s:g} s; "
                                  "try a shorter capture or filter it to the Exchange traffic")
                if not receiver.poll(max(0.0, min(0.25, deadline - time.monotonic()))):
                    if not child.is_alive() and not receiver.poll(0):
                        break
                    continue
                try:
                    message = receiver.recv()
                except (EOFError, OSError):
                    break
                if message[0] == "progress":
                    self.progress[capture_id] = message[1]
                else:
                    outcome = message
        finally:
            if child.is_alive():
                kill_group(child.pid)
            child.join(10)
            receiver.close()
            self.registry.forget(capture_id)
        if outcome is None:
            code = child.exitcode
            why = "it was killed, probably for lack of memory" if code == -9 else f"exit status {code}"
            return None, f"the analysis process ended without a result ({why})"
        if outcome[0] == "crash":
            log.error("analysis of capture %s raised:\n%s", capture_id, outcome[2])
            return None, f"internal error while analysing the capture ({outcome[1]})"
        _, result_json, error = outcome
        return json.loads(result_json), error

    def _exists(self, capture_id: str) -> bool:
        with self.db.session() as s:
            return s.get(Capture, capture_id) is not None


class _Stopped(Exception):
    pass


def _short_reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)  # SQLAlchemy wraps the driver's error
    return str(orig or exc).splitlines()[0][:200] or type(exc).__name__


def apply_job_limits(limits: dict | None) -> None:
    """In a job's child process: the server's decompression limits (--max-capture-gb, --max-compression-ratio,
    its temporary directory), as ``analyzer.ingest.limits.Limits`` fields."""
    if limits is not None:
        from analyzer.ingest.limits import Limits, configure

        configure(Limits(**limits))


def analyse_in_child(path: str, display_name: str, plot_dir: str | None, conn, limits: dict | None = None,
                     secrets=None) -> None:
    """Body of a job's child process: run the pipeline, draw the plots, send the outcome back over ``conn``:
    ("progress", fraction)*, then ("result", capture-object JSON, error or None) or ("crash", text, traceback).

    The process first makes itself a process group of its own with a parent-death signal (analyzer.web.jobs):
    a deleted job's whole group is killed, and nothing survives the fork server (nor, through it, the server)."""
    enter_job_process()
    try:
        apply_job_limits(limits)
        last = [-1.0]

        def progress(done: int, total: int) -> None:
            fraction = min(1.0, done / total) if total > 0 else 0.0
            if fraction - last[0] >= 0.01:  # at most ~100 messages per job
                last[0] = fraction
                conn.send(("progress", round(fraction, 3)))

        from analyzer.pipeline import analyze_capture

        result = analyze_capture(path, progress=progress, secrets=secrets)
        # The capture object's "file" is the name the user knows, never the server's storage path.
        result.file = display_name
        if result.error is None and plot_dir is not None:  # (None: drawn when the report is first viewed)
            problem = draw_plots_to(Path(plot_dir), result)
            if problem:
                result.warnings.append(problem)
        conn.send(("result", json.dumps(result.to_dict()), result.error))
    except BaseException as exc:  # noqa: BLE001 - anything at all is reported to the parent as this job's failure
        conn.send(("crash", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
    finally:
        conn.close()


def draw_plots(store: Store, capture_id: str, result, *, only_if_missing: bool = False) -> str | None:
    return draw_plots_to(store.plot_dir(capture_id), result, only_if_missing=only_if_missing)


def draw_plots_to(out: Path, result, *, only_if_missing: bool = False) -> str | None:
    """Write the timing plots of ``result`` into ``out``; returns a warning text when they could not be drawn.

    Drawn into a temporary sibling directory and renamed into place, so a reader never sees half of the plots
    (a browser asks for both images of a lazily drawn report at the same moment).
    """
    if not result.clients:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")  # a server has no display
        from analyzer.report import write_plots
    except ImportError as exc:
        return f"timing plots are not available on this server ({exc})"
    with _PLOT_LOCK:
        if only_if_missing and out.is_dir():
            return None  # another request drew them while this one waited for the lock
        tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            write_plots(result, tmp)
            if out.is_dir():
                shutil.rmtree(out)
            tmp.rename(out)
        except Exception as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            log.error("plots in %s failed:\n%s", out, traceback.format_exc())
            return f"timing plots could not be drawn ({type(exc).__name__}: {exc})"
    return None
