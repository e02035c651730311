# SPDX-License-Identifier: GPL-2.0-or-later
"""One capture split over worker processes (``mailpush analyze --jobs N``), with the events and warnings one core
produces.

The calling process analyses share 0 itself and N-1 forked workers the other shares. Each reads the whole capture
(an mmap: the pages are shared) through the same transport as one core and keeps one share of the address pairs
(:mod:`analyzer.dissect.share` says why the transport, the ports and the endpoints learnt stay identical in every
worker). The progress bar and ``--profile``'s stage clock follow share 0, in the calling process; the workers'
stage times are summed into ``clock.workers``. The parent then merges:

* **events**: every event comes from exactly one worker; all events of one frame come from one connection (one
  frame is one segment, and buffered segments keep their own frame numbers), so a stable sort by frame of the
  concatenated lists is the one-core order;
* **warnings**: one core appends them in processing order. Each worker tags its warnings with a position that is
  the same in every worker: the count of per-frame transport steps so far (all warnings of one step concern one
  connection, hence one worker), then, at the end, the index of the connection being closed (the TCP table closes
  flows in creation order, which is index order), then the capture-wide ones. The reader's warnings and the
  transport's capture-wide ones come from worker 0 only;
* ``CaptureInfo``: worker 0's, with the merged warnings.

Every worker also reports what must agree if the split is exact (connections numbered, ports learnt, malformed
frames, frames read) and anything that rules the split out (:attr:`ShareCollector.unsplittable`, the labeller's
capture-wide decoding budget); then the capture is analysed again on one core, with a notice saying why. A worker
that dies or fails raises :class:`SplitError` (no hang: the parent waits on the workers' pipes and process
sentinels); a ``CaptureError`` or ``OSError`` inside a worker is raised again in the parent, as one core raises
it. Workers die with the parent (parent-death signal, :mod:`analyzer.lifetime`) and inherit its resource limits
(:mod:`analyzer.ingest.limits`: the environment).

Not split (one core, with a notice): gzip input (every worker would inflate the whole stream), ``--secrets`` (the
NTLMSSP decryptor bounds its contexts capture-wide), and captures under :data:`MIN_SPLIT_BYTES`.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
from multiprocessing.connection import wait
from typing import Callable

from analyzer.ingest import CaptureError, CaptureInfo, open_capture
from analyzer.stagetimes import StageClock, profiling
from analyzer.stagetimes import active as active_clock

# Captures smaller than this are read on one core whatever --jobs says. The split did not pay on any capture
# measured (big.pcap, 920 MB: --jobs 2 at 1.0-2.0x the wall time of --jobs 1, load 2.5-2.8 on 2 cores;
# benchmarks/results.md), and on a sample capture forking and merging alone take ~0.1 s, more than its whole
# analysis: so small files never pay for a fork. MAILPUSH_SPLIT_MIN_BYTES overrides it (the tests split the small
# sample captures with it).
MIN_SPLIT_BYTES = 64 * 1024 * 1024


class SplitError(RuntimeError):
    """A worker of a split analysis died or failed (the message says which and how)."""


def jobs_count(text: str) -> int:
    """``--jobs`` value: a positive integer or ``auto`` (the cores this process may use)."""
    if str(text).strip().lower() == "auto":
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except (AttributeError, OSError):
            return max(1, os.cpu_count() or 1)
    n = int(text)
    if n < 1:
        raise ValueError("--jobs must be 1 or more, or auto")
    return n


def split_refusal(path, jobs: int, secrets=None) -> str | None:
    """Why ``path`` is read on one core despite ``jobs`` > 1 (a notice for the user), '' when it is too small to
    be worth a split (no notice), None when it is split."""
    if jobs <= 1:
        return ""
    try:
        size = os.path.getsize(path)
    except OSError:
        return ""  # the reader names the problem
    if size < int(os.environ.get("MAILPUSH_SPLIT_MIN_BYTES") or MIN_SPLIT_BYTES):
        return ""
    if secrets:
        return "--secrets: NTLMSSP decryption keeps capture-wide state, so the capture is read on one core"
    try:
        with open(path, "rb") as fh:
            if fh.read(2) == b"\x1f\x8b":
                return ("gzip input is read on one core (each worker would inflate the whole stream); "
                        "decompress it first to use --jobs")
    except OSError:
        return ""
    return None


def dissect_split(path, jobs: int, progress: Callable[[int, int], None] | None = None,
                  notice: Callable[[str], None] | None = None) -> tuple[list, CaptureInfo]:
    """(events, CaptureInfo) of ``path`` as :func:`analyzer.dissect.dissect_capture` gives them, computed by
    ``jobs`` worker processes. Falls back to one core (with ``notice``) when the split cannot be exact."""
    from analyzer.dissect.engine import dissect_capture

    # The parent opens the file first: a file that is no capture fails here exactly as on one core.
    with open_capture(path):
        pass
    outcomes = _run_workers(path, jobs, progress)
    merged, reason = _merge(outcomes)
    if merged is not None:
        return merged
    if notice is not None:
        notice(f"--jobs {jobs}: the split would not be exact ({reason}); analysed on one core")
    return dissect_capture(path, progress=progress)


# ---------------------------------------------------------------------------------------------- workers


def _run_workers(path, jobs: int, progress) -> list[dict]:
    """The outcomes of shares 0..jobs-1: share 0 is this process's own (it would only wait otherwise, and its
    events need no pickling), shares 1.. are forked workers'."""
    ctx = multiprocessing.get_context("fork")
    clock = active_clock()
    parent = os.getpid()
    procs, pipes = [], []
    try:
        for share in range(1, jobs):
            reader, writer = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_worker_main, args=(path, share, jobs, writer, parent, clock is not None),
                               name=f"mailpush-share-{share}", daemon=True)
            proc.start()
            writer.close()
            procs.append(proc)
            pipes.append(reader)
        outcomes: list = [_dissect_share_timed(path, 0, jobs, progress, clock)]
        outcomes += _collect(procs, pipes, jobs, clock)
        if clock is not None:
            for outcome in outcomes[1:]:
                add_profile(clock, outcome["profile"])
        return outcomes
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
            proc.join()
        for pipe in pipes:
            pipe.close()


def _collect(procs, pipes, jobs: int, clock) -> list[dict]:
    """The workers' outcomes, waiting on their pipes and process sentinels (a dead worker is an error, never a
    hang)."""
    outcomes: list = [None] * len(procs)
    waiting = {pipe: i for i, pipe in enumerate(pipes)}
    sentinels = {proc.sentinel: i for i, proc in enumerate(procs)}
    if clock is not None:
        clock.enter("workers")  # waiting for the forked workers, after share 0
    try:
        while waiting:
            for ready in wait(list(waiting) + [s for s, i in sentinels.items() if outcomes[i] is None]):
                i = waiting.get(ready)
                if i is None:  # a sentinel: the process ended; its pipe may still hold the result
                    i = sentinels[ready]
                    if pipes[i] in waiting and not pipes[i].poll():
                        raise SplitError(f"worker {i + 2} of {jobs} died (exit status {procs[i].exitcode}; out of "
                                         "memory or killed?) while reading the capture")
                    continue
                try:
                    message = pickle.loads(ready.recv_bytes())
                except (EOFError, OSError):
                    raise SplitError(f"worker {i + 2} of {jobs} died (exit status {procs[i].exitcode}) before it "
                                     "sent its result") from None
                del waiting[ready]
                if message[0] == "error":
                    _raise_worker_error(i + 1, jobs, message)
                outcomes[i] = message[1]
    finally:
        if clock is not None:
            clock.leave()
    return outcomes


def _raise_worker_error(share: int, jobs: int, message) -> None:
    _kind, exc_type, text, exc = message
    if exc is not None and isinstance(exc, (CaptureError, OSError)):
        raise exc
    raise SplitError(f"worker {share + 1} of {jobs} failed: {exc_type}: {text}")


def _worker_main(path, share: int, shares: int, pipe, parent: int, profile: bool) -> None:
    from analyzer.lifetime import set_parent_death_signal

    set_parent_death_signal()
    if os.getppid() != parent:
        os._exit(1)  # the parent died before the signal was armed
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it kills the workers
    status = 0
    try:
        outcome = _dissect_share(path, share, shares, profile)
        pipe.send_bytes(pickle.dumps(("result", outcome), protocol=pickle.HIGHEST_PROTOCOL))
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent, which decides
        status = 1
        try:
            sendable = exc if isinstance(exc, (CaptureError, OSError)) else None
            pipe.send_bytes(pickle.dumps(("error", type(exc).__name__, str(exc), sendable)))
        except Exception:  # noqa: BLE001 - the parent then reports the worker as dead
            pass
    finally:
        pipe.close()
        os._exit(status)  # no atexit handlers or inherited buffers of the parent run twice


def _dissect_share(path, share: int, shares: int, profile: bool) -> dict:
    """A worker's share, with its own stage clock for --profile (the parent's clock is not this process's)."""
    if not profile:
        return _dissect_share_timed(path, share, shares, None, None)
    with profiling() as clock:
        outcome = _dissect_share_timed(path, share, shares, None, clock)
    outcome["profile"] = (clock.seconds, clock.cpu)
    return outcome


def _dissect_share_timed(path, share: int, shares: int, progress, clock: StageClock | None) -> dict:
    from analyzer.dissect.engine import _timed
    from analyzer.dissect.share import ShareCollector
    from analyzer.dissect.transport import Transport

    tagged: list = []  # (position, warning): position as the module doc says
    where = [0, 0, 0]  # phase (0 frames, 1 closing at the end, 2 capture-wide), step or connection, 0

    def warn(message: str) -> None:
        tagged.append(((where[0], where[1], where[2], len(tagged)), message))

    sink = ShareCollector(share, shares, warn)
    with open_capture(path) as cap:
        info = cap.info
        transport = Transport(sink)
        tcp = transport.tcp
        # Instance wrappers (as the --profile clock does): the classes stay untouched for one-core runs
        segment, frame, close = tcp.segment, transport.frame, tcp._close

        def counted_segment(*args):
            where[1] += 1
            return segment(*args)

        def counted_frame(*args):
            where[1] += 1
            return frame(*args)

        def closing(flow, *args):
            if where[0] == 1:
                where[1] = flow.index
            return close(flow, *args)

        tcp.segment, transport.frame, tcp._close = counted_segment, counted_frame, closing
        batches = cap.batches(progress=progress)
        if clock is not None:
            batches, _sink = _timed(clock, batches, transport, sink)
        seen = 0
        feed = transport.feed
        for batch in batches:
            seen = _reader_warnings(info, seen, tagged, where, share)
            feed(batch)
        seen = _reader_warnings(info, seen, tagged, where, share)
        where[0] = 1
        tcp_finish = tcp.finish

        def finishing(*args):
            tcp_finish(*args)
            where[0], where[1] = 2, 0  # the transport's own warnings follow: capture-wide

        tcp.finish = finishing
        transport.finish()
        leftover = sink.open_connections
        events = sink.finish()
        reader = [(key, w) for key, w in tagged if key[0] == 0 and key[2] == 1]
        own = [(key, w) for key, w in tagged if not (key[0] == 0 and key[2] == 1)
               and (key[0] != 2 or share == 0)]
        info.warnings = []
        labels = sink.labels
        return {
            "events": events,
            "warnings": reader + own,
            "info": info if share == 0 else None,
            "checks": (tcp.count, tuple(sorted(sink.known_ports)), transport.malformed,
                       tuple(transport.malformed_reasons), transport.frames_seen, transport.frames_parsed),
            "decoded": labels.decoded,
            "unsplittable": sink.unsplittable or (
                f"{leftover} connections still open after the transport's end" if leftover else None),
            "profile": None,
        }


def _reader_warnings(info: CaptureInfo, seen: int, tagged: list, where: list, share: int) -> int:
    """Tag the warnings the reader added to ``info.warnings`` since the last look (worker 0 keeps them)."""
    new = info.warnings[seen:]
    if new and share == 0:
        for w in new:
            tagged.append(((0, where[1], 1, len(tagged)), w))
    return len(info.warnings)


# ---------------------------------------------------------------------------------------------- merging


def _merge(outcomes: list[dict]):
    """((events, info), None) when the workers agree, else (None, reason)."""
    from analyzer.dissect.session import MAX_DEFERRED

    first = outcomes[0]["checks"]
    for i, o in enumerate(outcomes):
        if o["unsplittable"]:
            return None, o["unsplittable"]
        if o["checks"] != first:
            return None, f"worker {i + 1} saw the capture differently from worker 1 (a bug: please report it)"
    if sum(o["decoded"] for o in outcomes) >= MAX_DEFERRED:
        return None, f"more than {MAX_DEFERRED} PDUs wait for their interface: a capture-wide budget"
    events = [e for o in outcomes for e in o["events"]]
    events.sort(key=lambda e: e.frame)  # stable: ties are one connection's, in one worker's order
    tagged = [item for o in outcomes for item in o["warnings"]]
    # Positions are unique across workers except for the per-worker sequence number, which only orders the
    # warnings of one worker at one position (the module doc says why no position is shared by two workers).
    tagged.sort(key=lambda item: item[0][:3])
    info = outcomes[0]["info"]
    info.warnings = [w for _key, w in tagged]
    return (events, info), None


def add_profile(clock: StageClock, profile) -> None:
    """Add a worker's stage times (``(seconds, cpu)`` dicts) to ``clock.workers``, the summed clock --profile
    prints below the calling process's own."""
    if profile is None:
        return
    workers = getattr(clock, "workers", None)
    if workers is None:
        workers = clock.workers = StageClock()
    seconds, cpu = profile
    for name, value in seconds.items():
        workers.seconds[name] = workers.seconds.get(name, 0.0) + value
    for name, value in cpu.items():
        workers.cpu[name] = workers.cpu.get(name, 0.0) + value
