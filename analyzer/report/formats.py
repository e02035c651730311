"""Text, JSON and CSV renderings of analysis results.

JSON and CSV are the pipeline's own contract objects serialised (``results_document`` and ``results_dataframe``),
so the CLI, batch scoring and the web service agree byte for byte on the same results.
"""

from __future__ import annotations

import json
import re
import textwrap
from typing import Iterable

from analyzer.report.safe_text import escape_controls
from analyzer.verdict.model import CaptureResult, ClientVerdict, utc_datetime

TEXT_WIDTH = 100
MAILBOX_COLUMN = 30  # widest mailbox shown in the table (the full DN is in the detail block)
_NUMBER_UNIT = re.compile(r"(\d) (s\b|ms\b|notification|unprompted|call)")


def render_json(results: Iterable[CaptureResult], incidents=None, proposals=None) -> str:
    """The ``mailpush analyze --format json`` document: exactly ``analyzer.pipeline.results_document``, plus
    ``merges`` (merged client/server captures, ``--merge``) and ``merge_proposals`` when there are any."""
    from analyzer.verdict.results import results_document

    doc = results_document(results)
    if incidents is not None:
        from analyzer.report.merged import merges_document

        doc["merges"] = merges_document(incidents)
    if proposals:
        doc["merge_proposals"] = [{"files": [a, b], "why": why} for a, b, why in proposals]
    return dump_json(doc)


def dump_json(doc) -> str:
    """``json.dumps(doc, indent=2, ensure_ascii=False) + "\\n"``, byte for byte, written by orjson: 0.02 s against
    0.5 s for the standard library on the 1000-client document of the benchmark capture (benchmarks/results.md).
    Where orjson would write other bytes the standard encoder writes the document: a float that Python spells
    with an exponent (1e-07 / 1e-7) or NaN/Infinity, found by one walk over the document (0.06 s there), and what
    orjson refuses (a non-string key, an integer beyond 64 bits, a lone surrogate)."""
    try:
        import orjson
    except ImportError:  # optional speed-up: the standard library writes the same bytes
        orjson = None
    if orjson is not None and _floats_spelled_alike(doc):
        try:
            return orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE).decode("utf-8")
        except TypeError:  # orjson.JSONEncodeError
            pass
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def _floats_spelled_alike(doc) -> bool:
    """True when every float in ``doc`` is written without an exponent by Python (1e-4 <= |x| < 1e16, or 0): there
    orjson and ``json`` spell it the same. NaN and infinities fail the test too."""
    stack = [doc]
    pop, extend = stack.pop, stack.extend
    while stack:
        item = pop()
        kind = type(item)
        if kind is str or kind is int or item is None or kind is bool:  # most leaves: one test each
            continue
        if kind is dict:
            extend(item.values())
        elif kind is list or kind is tuple:
            extend(item)
        elif isinstance(item, float):
            size = abs(item)
            if not 1e-4 <= size < 1e16 and size != 0.0:
                return False
    return True


def render_csv(results: Iterable[CaptureResult]) -> str:
    """One row per (capture, client), columns ``analyzer.pipeline.RESULT_COLUMNS``; a capture without clients
    (or unreadable) still gets one row so that nothing silently disappears from a spreadsheet. Formula injection
    is neutralised."""
    from analyzer.report.safe_text import neutralise_frame
    from analyzer.verdict.results import results_dataframe

    # text cells that a spreadsheet would run as a formula (a mailbox DN or file name starting with '=') get a
    # leading apostrophe (analyzer.report.safe_text)
    return neutralise_frame(results_dataframe(list(results))).to_csv(index=False, lineterminator="\n")


def _utc(t: float | None) -> str:
    if t is None:
        return "?"
    when = utc_datetime(t)
    return f"epoch {t:.0f} s (not a date)" if when is None else when.strftime("%Y-%m-%d %H:%M:%S UTC")


def _rel(t: float, start: float | None) -> str:
    """Time as Wireshark's default Time column shows it: seconds since the first frame."""
    if start is None:
        return _utc(t)
    return f"+{t - start:.3f} s"


def _short_mailbox(mailbox: str | None) -> str:
    if not mailbox:
        return "-"
    if len(mailbox) <= MAILBOX_COLUMN:
        return mailbox
    return "\u2026" + mailbox[-(MAILBOX_COLUMN - 1):]  # the tail (cn=user) is the part that identifies


def capture_summary(r: CaptureResult) -> str:
    """One line: format, frames, time span, vantage."""
    if r.error and r.format is None:
        return "not analysed"
    fmt = (r.format or "?") + (" (gzip)" if r.compressed else "")
    end = _utc(r.end)
    same_day = utc_datetime(r.end) is not None and end[:10] == _utc(r.start)[:10]
    span = f"{_utc(r.start)} .. {end[11:] if same_day else end}, {r.duration_s:.1f} s" if r.start is not None \
        else "no frames"
    vantage = f"vantage {r.vantage}" + (f" ({r.vantage_reason})" if r.vantage_reason else "")
    return f"{fmt}, {r.frames} frames, {span}, {vantage}"


def _table(clients: list[ClientVerdict]) -> list[str]:
    header = ("CLIENT", "MAILBOX", "SERVER", "VERDICT", "CAUSE", "CONF")
    rows = [(c.client, _short_mailbox(c.mailbox), c.server, c.verdict, c.cause, f"{c.confidence:.2f}")
            for c in clients]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header).rstrip(), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*row).rstrip() for row in rows]
    return ["  " + ln for ln in lines]


def _wrap(label: str, text: str, indent: int = 4) -> list[str]:
    prefix = " " * indent + label
    # keep a number with its unit ("60 s", "3 notification(s)") on one line: glue them for textwrap
    glued = _NUMBER_UNIT.sub(lambda m: m.group(1) + "\0" + m.group(2), text)
    lines = textwrap.wrap(glued, width=TEXT_WIDTH, initial_indent=prefix,
                          subsequent_indent=" " * (indent + len(label)), break_on_hyphens=False,
                          break_long_words=False) or [prefix.rstrip()]
    return [ln.replace("\0", " ") for ln in lines]


def _client_detail(c: ClientVerdict, start: float | None) -> list[str]:
    lines = [f"  {c.client} \u2192 {c.server}: {c.verdict} / {c.cause} (confidence {c.confidence:.2f})"]
    if c.mailbox:
        lines.append(f"    mailbox:  {c.mailbox}")
    facts = []
    if c.callback:
        facts.append(f"callback {c.callback}")
    if c.register_status is not None:
        facts.append(f"register status 0x{c.register_status & 0xFFFFFFFF:08x}")
    facts.append(f"{c.notifications} notification(s)")
    polls = f"{c.polls} unprompted call(s)"
    if c.poll_interval_s is not None:
        polls += f" every {c.poll_interval_s:.1f} s (median)"
    facts.append(polls)
    if c.server_poll_interval_s is not None:
        facts.append(f"server pcmsPollsMax {c.server_poll_interval_s:.0f} s")
    lines += _wrap("facts:    ", ", ".join(facts))
    lines += _wrap("reason:   ", c.reason or "-")
    if c.evidence:
        lines.append("    evidence:")
        width = max(len(str(e.frame)) for e in c.evidence)
        tw = max(len(_rel(e.time, start)) for e in c.evidence)
        for e in c.evidence:
            lines += _wrap(f"  frame {e.frame:>{width}}  {_rel(e.time, start):>{tw}}  ", e.what, indent=4)
        lines.append(f"    filter:   {c.filter}")
    lines += _wrap("remedy:   ", c.remedy or "-")
    return lines


def capture_problems(r: CaptureResult, verbose: bool = False) -> list[str]:
    """Error and warnings of one capture, one line each (prefixed 'error:' / 'warning:'), control characters
    escaped.

    Warnings the pipeline marked as concerning a connection without MAPI traffic (EMSMDB, AsyncEMSMDB, NSPI) are
    counted in one line unless ``verbose``; a warning about a MAPI connection names the client it affects (capture
    loss there is always shown). Unmarked warnings (about the file, or read back from JSON) are shown as they are.
    """
    out = [f"error: {r.error}"] if r.error else []
    others = [w for w in r.warnings if getattr(w, "mapi", None) is False]
    for w in r.warnings:
        mapi = getattr(w, "mapi", None)
        if mapi is False and not verbose:
            continue
        if mapi:
            what = "capture loss" if getattr(w, "capture_loss", False) else "problem"
            out.append(f"warning: {what} on a MAPI connection of client {w.affects}: {w}")
        else:
            out.append(f"warning: {w}")
    if others and not verbose:
        conns = len({getattr(w, "conn", None) for w in others})
        out.append(f"warning: {len(others)} warning(s) about {conns} connection(s) without MAPI traffic "
                   "(EMSMDB, AsyncEMSMDB, NSPI) not shown: details with --verbose or in --format json")
    return [escape_controls(line) for line in out]


def _overview(results: list[CaptureResult], merged_rows=()) -> list[str]:
    """Several captures: one table of every client first (the verdicts at a glance), details below. Merged
    captures (--merge) add a row per client they share, named "client file + server file"."""
    header = ("CAPTURE", "CLIENT", "VERDICT", "CAUSE", "CONF")
    rows = []
    for r in results:
        if r.error and not r.clients:
            rows.append((r.file, "-", "not analysed", "(error)", ""))
        elif not r.clients:
            rows.append((r.file, "-", "inconclusive", "no_emsmdb_session", ""))
        rows += [(r.file, c.client, c.verdict, c.cause, f"{c.confidence:.2f}") for c in r.clients]
    rows += list(merged_rows)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [f"{len(results)} captures, {sum(len(r.clients) for r in results)} client(s)",
             fmt.format(*header).rstrip(), fmt.format(*("-" * w for w in widths))]
    return lines + [fmt.format(*row).rstrip() for row in rows] + ["", ""]


def render_text(results: Iterable[CaptureResult], include_problems: bool = True, verbose: bool = False,
                incidents=None) -> str:
    """A readable report: per capture a summary line, a verdict table (client, mailbox, server, verdict, cause,
    confidence) and per client its reason, evidence frames (times since capture start, as Wireshark shows them),
    display filter and remedy. ``include_problems=False`` leaves out errors/warnings (the CLI prints those on
    stderr); ``verbose`` lists every warning instead of counting those about non-MAPI connections."""
    results = list(results)
    merged_rows = [(f"{inc.merge.client_file} + {inc.merge.server_file}", v.client, v.verdict, v.cause,
                    f"{v.confidence:.2f}") for inc in incidents or [] for v in inc.verdicts]
    out: list[str] = _overview(results, merged_rows) if len(results) > 1 else []
    for r in results:
        if r.error and r.format is None:  # nothing read: the error is the whole story, on stdout too
            out.append(f"{r.file}: not analysed: {r.error}")
            if include_problems:
                out += [f"  warning: {w}" for w in r.warnings]
            out.append("")
            continue
        out.append(f"{r.file}: {capture_summary(r)}")
        if include_problems:
            out += ["  " + p for p in capture_problems(r, verbose=verbose)]
        if not r.clients:
            if not r.error:  # with an error, the error (above, or on stderr) is the story
                out.append("  no Outlook (EMSMDB) client in this capture (inconclusive / no_emsmdb_session)")
            out.append("")
            continue
        out += _table(r.clients)
        for c in r.clients:
            out.append("")
            out += _client_detail(c, r.start)
        out.append("")
    if incidents:  # merged client/server captures (--merge): after the captures they were made of
        from analyzer.report.merged import render_merges_text

        out += render_merges_text(incidents, _client_detail)
    # file names, mailbox DNs, warnings... come from the capture or the file system: no control character (an ESC
    # sequence, a newline forging a line) reaches the terminal raw. Each element of `out` is one line.
    return "\n".join(escape_controls(line) for line in out).rstrip("\n") + "\n"
