"""The pipeline: ingest -> dissect -> correlate -> verdict, for one capture or many.

This is the one entry point the CLI, batch scoring, the web service and the notebooks use::

    result = analyze_capture("x.pcap")                  # CaptureResult; never raises for a bad capture
    results = analyze(["a.pcap", "b.cap.gz"])           # list[CaptureResult]
    df = results_dataframe(results)                      # one row per (capture, client)
    doc = results_document(results)                      # the `mailpush analyze --format json` document
"""

from __future__ import annotations

import os
import stat
from typing import Callable, Iterable

from analyzer.gcpause import paused_gc
from analyzer.stagetimes import stage
from analyzer.verdict.model import CaptureResult
from analyzer.verdict.results import (  # noqa: F401  (re-exported: the pipeline's public API)
    RESULT_COLUMNS,
    result_rows,
    results_dataframe,
    results_document,
)


def not_a_regular_file(path) -> str | None:
    """A user-facing reason why ``path`` must not be opened as a capture, or None.

    Only regular files are read: opening a FIFO with no writer blocks forever, and a FIFO with a writer, a
    character device (``/dev/zero``) or a socket has no size and cannot be mapped, so the readers would either
    hang or call it an "empty file". ``os.stat`` itself never blocks on a FIFO. Missing files and directories are
    left to the reader, which already names them.
    """
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):  # missing / bad path: the reader reports it in its own words
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a character device" if stat.S_ISCHR(mode)
            else "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "a special file")
    return f"is {kind}, not a capture file: save the capture to a regular file first"


def analyze_capture(
    path: str,
    engine: str = "native",
    vantage: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    secrets=None,
    jobs: int = 1,
    notice: Callable[[str], None] | None = None,
) -> CaptureResult:
    """Analyse one capture. Unreadable input gives a CaptureResult with ``error`` set (never an exception).
    ``secrets`` (:class:`analyzer.dissect.secrets.Secrets`) decrypt NTLMSSP-sealed sessions.

    ``progress(bytes_done, bytes_total)`` is called now and then while reading (for progress bars).

    ``jobs`` > 1 splits the dissection of the capture over that many worker processes, with the same result
    (:mod:`analyzer.dissect.parallel`); ``notice(text)`` hears why a capture was read on one core all the same.
    """
    return analyze_capture_detailed(path, engine=engine, vantage=vantage, progress=progress, secrets=secrets,
                                    jobs=jobs, notice=notice)[0]


def analyze_capture_detailed(path: str, engine: str = "native", vantage: str = "auto",
                             progress: Callable[[int, int], None] | None = None, secrets=None, jobs: int = 1,
                             notice: Callable[[str], None] | None = None):
    """(CaptureResult, CorrelationResult or None): the correlation is what :func:`merge_pair` needs besides the
    file, so a caller that may merge keeps it instead of dissecting the capture twice. ``jobs``, ``notice``: as
    :func:`analyze_capture`."""
    problem = not_a_regular_file(path)
    if problem:
        return CaptureResult(file=str(path), error=problem), None
    with paused_gc():  # next to no reference cycles are made here, and the collector's passes cost ~10 %
        return _analyse(path, engine, vantage, progress, secrets, jobs, notice)


def _analyse(path, engine, vantage, progress, secrets, jobs, notice):
    from analyzer.correlate import correlate
    from analyzer.ingest import CaptureError
    from analyzer.verdict import build_capture_result, judge_clients

    try:
        # --profile: the native engine charges its layers to their own stages; what is left (opening and sniffing
        # the file) is ingest. tshark's dissection is one stage of its own.
        with stage("tshark" if engine == "tshark" else "ingest"):
            events, info = _dissect(path, engine, progress, secrets, jobs, notice)
    except CaptureError as exc:
        return CaptureResult(file=str(path), error=str(exc)), None
    except OSError as exc:
        return CaptureResult(file=str(path), error=f"cannot read {path}: {exc.strerror or exc}"), None
    with stage("correlate"):
        mark_mapi_warnings(info.warnings, events)
        correlation = correlate(events, info, vantage=vantage)
    with stage("verdict"):
        verdicts = judge_clients(correlation)
        return build_capture_result(info, correlation, verdicts), correlation


def _dissect(path, engine: str, progress, secrets, jobs: int, notice):
    from analyzer.dissect import dissect_capture

    if jobs > 1:
        from analyzer.dissect.parallel import split_refusal

        refusal = split_refusal(path, jobs, secrets)
        if refusal is None and engine != "native":
            refusal = f"--engine {engine} reads the capture on one core"
        if refusal is None:
            from analyzer.dissect.parallel import dissect_split

            return dissect_split(path, jobs, progress=progress, notice=notice)
        if refusal and notice is not None:
            notice(f"--jobs {jobs}: {refusal}")
    return dissect_capture(path, engine=engine, progress=progress, secrets=secrets)


def mark_mapi_warnings(warnings: list, events) -> None:
    """Annotate the dissection's per-connection warnings (``ConnectionWarning``): ``mapi`` True when the
    connection carries EMSMDB/AsyncEMSMDB/NSPI PDUs, else False, and ``affects`` = that connection's client
    address. Only the events table is used (which interface each connection carried), never a verdict."""
    from analyzer.dissect.interfaces import MAPI_INTERFACES
    from analyzer.dissect.model import ConnectionWarning

    concerned = [w for w in warnings if isinstance(w, ConnectionWarning)]
    if not concerned:
        return
    wanted = {w.conn for w in concerned}
    mapi = {}
    for e in events:
        if e.conn in wanted and e.interface in MAPI_INTERFACES and e.conn not in mapi:
            mapi[e.conn] = e.src if e.kind in ("request", "bind", "alter_context", "auth3") else e.dst
    for w in concerned:
        w.mapi = w.conn in mapi
        w.affects = mapi.get(w.conn) or w.client.rsplit(":", 1)[0]


def analyze(paths: Iterable[str], engine: str = "native", vantage: str = "auto") -> list[CaptureResult]:
    return [analyze_capture(p, engine=engine, vantage=vantage) for p in paths]




def merge_pair(path_a: str, path_b: str, engine: str = "native", vantage: str = "auto", detailed=None):
    """Merge a client-side and a server-side capture of one incident (either order: the sides are inferred).

    ``detailed``: optional ``{path: (CaptureResult, CorrelationResult)}`` already computed (the CLI passes what it
    analysed, so nothing is dissected twice). Returns an :class:`analyzer.verdict.transit.MergedIncident`; never
    raises for bad input (a capture that cannot be read gives a not-merged incident with the reason).
    """
    from analyzer.merge import merge_captures
    from analyzer.verdict.transit import judge_merged

    detailed = dict(detailed or {})
    for p in (path_a, path_b):
        if p not in detailed:
            detailed[p] = analyze_capture_detailed(p, engine=engine, vantage=vantage)
    (res_a, corr_a), (res_b, corr_b) = detailed[path_a], detailed[path_b]
    if corr_a is None or corr_b is None:
        from analyzer.merge import NOT_READ, MergeResult

        bad = res_a if corr_a is None else res_b
        merge = MergeResult(client_file=str(path_a), server_file=str(path_b), status=NOT_READ,
                            message=f"not merged: {bad.file} could not be read ({bad.error})")
    else:
        merge = merge_captures(path_a, corr_a, path_b, corr_b)
    by_file = {str(path_a): res_a, str(path_b): res_b}
    return judge_merged(merge, by_file.get(merge.client_file, res_a), by_file.get(merge.server_file, res_b))


def propose_pairs(results) -> list[tuple[int, int, str]]:
    """Pairs of captures (indexes into ``results``) that look like two sides of one MAPI session: a client with
    the same mailbox, or the same registration callback, or the same client and server addresses, in captures
    whose time spans overlap within a day (clocks of two machines may differ by time zones). The merge itself then
    checks that they share packets; this only proposes."""
    out = []
    for i, a in enumerate(results):
        for j in range(i + 1, len(results)):
            b = results[j]
            if a.error or b.error or a.start is None or b.start is None:
                continue
            if a.start > b.end + 86400 or b.start > a.end + 86400:
                continue
            why = _shared_session(a, b)
            if why:
                out.append((i, j, why))
    return out


def _shared_session(a, b) -> str:
    for ca in a.clients:
        for cb in b.clients:
            if ca.mailbox and ca.mailbox == cb.mailbox:
                return f"mailbox {ca.mailbox}"
            if ca.callback and ca.callback == cb.callback:
                return f"callback {ca.callback}"
            if (ca.client, ca.server) == (cb.client, cb.server):
                return f"client {ca.client} and server {ca.server}"
    return ""
