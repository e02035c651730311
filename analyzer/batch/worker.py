"""The unit of batch work: one capture -> its result rows. Runs in a pool process or on a Dask worker.

``score_one`` never raises: a capture that cannot be read, hashed or analysed becomes one row with ``error``
set, so one bad file never stops a batch.
"""

from __future__ import annotations

import hashlib
import os
import tempfile

from analyzer.pipeline import RESULT_COLUMNS

# The required columns are all in RESULT_COLUMNS except sha256, which batch adds after `file`. No
# timing column: the table must be identical whichever executor produced it.
BATCH_COLUMNS = ["file", "sha256"] + [c for c in RESULT_COLUMNS if c != "file"]

HASH_CHUNK = 1 << 20


def sha256_file(path: str) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (constant memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _fetch(url: str) -> tuple[str, str]:
    """Copy a remote (fsspec) capture to a local temporary file, hashing it on the way.

    The readers mmap local files; a capture behind an fsspec URL (s3://, gcs://, http://, ... with the matching
    filesystem package installed on the worker) is streamed to local disk first, 1 MiB at a time.
    """
    import fsspec

    from analyzer.ingest.limits import current

    h = hashlib.sha256()
    fd, local = tempfile.mkstemp(prefix="mailpush-batch-", dir=current().temp_dir())  # --tmp-dir / TMPDIR
    try:
        with fsspec.open(url, "rb") as src, os.fdopen(fd, "wb") as dst:
            while chunk := src.read(HASH_CHUNK):
                h.update(chunk)
                dst.write(chunk)
    except BaseException:
        os.unlink(local)
        raise
    return local, h.hexdigest()


def error_row(path: str, sha256: str | None, message: str) -> dict:
    """The row of a capture that could not be analysed: the same cells the pipeline gives its own error
    results (``result_rows`` of a CaptureResult with ``error`` set), plus sha256."""
    from analyzer.pipeline import result_rows
    from analyzer.verdict.model import CaptureResult

    row = dict.fromkeys(BATCH_COLUMNS)
    try:
        row.update(result_rows(CaptureResult(file=path, error=message))[0])
    except Exception:  # keep error rows possible even when the pipeline itself is broken
        pass
    row.update(file=path, sha256=sha256, error=message)
    return row


def score_one(path: str, display: str | None = None, secrets=None, sha256: str | None = None) -> list[dict]:
    """Analyse one capture; its rows (``BATCH_COLUMNS``). Never raises.

    ``display`` is the name the rows carry in ``file`` (the path as the user gave it) when ``path`` is another
    spelling of it, e.g. the absolute path a Dask worker in another working directory needs. ``sha256``: the
    file's hash when the caller has just computed it (``--resume`` hashes every capture to find the done ones),
    so that it is not computed twice; hashing is ~40 % of the work on a 100,000-frame capture (0.11 of ~0.25 s)."""
    rows = _score(str(path), secrets, sha256)
    if display is not None:
        for row in rows:
            row["file"] = display
    return rows


def score_one_limited(path: str, display: str | None = None, sha256: str | None = None, *, limits: dict,
                      secrets=None) -> list[dict]:
    """``score_one`` under the batch's decompression limits (Dask workers do not inherit the environment of the
    process that runs ``mailpush batch``). The temporary directory stays the worker's own."""
    from analyzer.ingest.limits import Limits, configure

    configure(Limits(**{**limits, "tmp_dir": None}))
    return score_one(path, display, secrets=secrets, sha256=sha256)


def _score(path: str, secrets=None, known_sha256: str | None = None) -> list[dict]:
    sha = None
    local = path
    if not is_url(path):
        from analyzer.pipeline import not_a_regular_file

        # before anything opens it: reading a FIFO blocks forever, a device never ends
        problem = not_a_regular_file(path[len("file://"):] if path.startswith("file://") else path)
        if problem:
            return [error_row(path, None, problem)]
    try:
        if is_url(path):
            local, sha = _fetch(path)
        else:
            if path.startswith("file://"):
                local = path[len("file://"):]
            sha = known_sha256 or sha256_file(local)
    except OSError:
        if is_url(path):
            return [error_row(path, None, f"cannot fetch {path}")]
        # unreadable local file: no hash; the pipeline reports why, in the same words as `analyze` does
    except Exception as exc:  # fsspec: unknown protocol, missing filesystem package, network errors
        return [error_row(path, None, f"cannot fetch: {type(exc).__name__}: {exc}")]
    try:
        from analyzer.pipeline import analyze_capture, result_rows

        result = analyze_capture(local, secrets=secrets)
        result.file = path
        _claims_but_is_not(result, path)
        rows = result_rows(result)
    except Exception as exc:  # a bug in a stage must not stop the batch; the message says which
        return [error_row(path, sha, f"analysis failed: {type(exc).__name__}: {exc}")]
    finally:
        if local != path and is_url(path):
            try:
                os.unlink(local)
            except OSError:
                pass
    out = []
    for row in rows:
        full = dict.fromkeys(BATCH_COLUMNS)
        full.update(row)
        full["file"] = path
        full["sha256"] = sha
        out.append(full)
    return out


def _claims_but_is_not(result, path: str) -> None:
    """A file that claims to be a capture but is not gets an error that says why: a capture extension on other
    content, or a capture magic number followed by nothing readable."""
    from analyzer.ingest.reader import NOT_A_CAPTURE

    name = os.path.basename(path)
    if result.error and NOT_A_CAPTURE in result.error:
        from analyzer.batch.runner import has_capture_suffix

        if has_capture_suffix(name):
            head = b""
            try:
                with open(path, "rb") as fh:
                    head = fh.read(8)
            except OSError:
                pass
            result.error = (f"the name says capture ({name}) but the content is not a capture file (pcap, pcapng, "
                            f"NetMon): it starts with bytes {head.hex(' ') or '(none)'}")
    elif result.error is None and not result.frames and result.warnings:
        result.error = (f"starts like a {result.format or 'capture'} file but no frame could be read after its "
                        f"header: {result.warnings[0]}")


def score_chunk(paths: list[str], secrets=None, hashes: dict[str, str] | None = None) -> list[tuple[str, list[dict]]]:
    """Several captures in one task: sample-sized captures take ~4 ms each, comparable to a pool round trip.
    ``hashes``: sha256 already known, by path (see ``score_one``)."""
    hashes = hashes or {}
    return [(p, score_one(p, secrets=secrets, sha256=hashes.get(p))) for p in paths]


def preload() -> None:
    """Import the pipeline stages once per worker process (pool initializer / Dask worker start), so the first
    capture of each worker does not pay for importing scapy, pandas and the stages."""
    try:
        import analyzer.pipeline  # noqa: F401
        from analyzer import correlate, dissect, ingest, verdict  # noqa: F401
        import analyzer.dissect.engine  # noqa: F401
    except Exception:
        pass  # score_one reports any import failure per capture


