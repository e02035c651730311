# SPDX-License-Identifier: GPL-2.0-or-later
"""Bad input across the product: never a traceback, unreadable input is a clear error (exit 3), damaged but
readable input gives what could be read plus a warning (exit 0), output that cannot be written is a usage error
(exit 2).

Everything runs on the real sample captures (``captures/``) and the real public captures, cut and corrupted with
a seeded random generator so that a failure can be replayed. The in-process part goes through the native engine
and the pipeline; a handful of cases go through the ``mailpush`` command as a subprocess.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from analyzer.dissect import dissect_capture, events_to_dataframe
from analyzer.ingest import CaptureError, open_capture
from analyzer.pipeline import analyze_capture, not_a_regular_file

SEED = 20261125
CUTS_PER_FILE = 20
FLIP_VARIANTS = 240
# A single capture takes milliseconds; anything near this is a hang (a FIFO opened for reading, /dev/zero read
# to the end), which must fail the test instead of stalling the suite.
HANG_SECONDS = 20
MAILPUSH = [sys.executable, "-m", "analyzer"]


class InputHang(Exception):
    """Not an OSError (TimeoutError is one), so that no reader's ``except OSError`` turns it into a message."""


@contextlib.contextmanager
def no_hang(seconds: int = HANG_SECONDS):
    def alarm(_signum, _frame):
        raise InputHang(f"still running after {seconds} s: the input made it hang")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def sample_files(captures_dir: Path, public_dir: Path | None) -> list[Path]:
    names = sorted(p for p in captures_dir.iterdir() if p.suffix in (".pcap", ".pcapng", ".cap", ".gz"))
    if public_dir is not None:
        names += sorted(p for p in public_dir.iterdir() if p.suffix in (".pcap", ".pcapng", ".cap"))
    assert len(names) >= 20, names
    return names


def plain_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def frame_ends(path: Path) -> list[int]:
    """File offset where each frame's captured bytes end (uncompressed files: batch offsets are file offsets)."""
    ends = []
    with open_capture(path) as cap:
        for batch in cap.batches():
            ends.extend(int(o + c) for o, c in zip(batch.offset, batch.caplen))
    return ends


def pcapng_block_ends(data: bytes) -> set[int]:
    """File offsets where pcapng blocks end: a cut there leaves a valid, shorter file (no damage to report)."""
    ends, pos = set(), 0
    while pos + 8 <= len(data):
        (length,) = struct.unpack_from("<I" if data[8:12] == b"\x4d\x3c\x2b\x1a" else ">I", data, pos + 4)
        if length < 12:
            break
        pos += length
        ends.add(pos)
    return ends


def event_keys(events, up_to_frame: int | None = None) -> set:
    return {(e.frame, e.kind, e.opnum) for e in events
            if e.kind in ("bind", "alter_context", "request", "response")
            and (up_to_frame is None or e.frame <= up_to_frame)}


def run_mailpush(*args, timeout: int = 60) -> subprocess.CompletedProcess:
    proc = subprocess.run([*MAILPUSH, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.fixture(scope="module")
def samples(captures_dir, request) -> list[Path]:
    try:
        public = request.getfixturevalue("public_dir")
    except pytest.skip.Exception:
        public = None
    return sample_files(captures_dir, public)


@pytest.fixture
def hostile(tmp_path) -> dict[str, Path]:
    """Inputs that are not captures at all, or only a file header."""
    d = tmp_path
    (d / "empty").write_bytes(b"")
    (d / "text.txt").write_text("Subject: new mail\n\nthis is not a capture\n")
    (d / "folder").mkdir()
    os.mkfifo(d / "fifo")
    return {
        "missing": d / "no-such-file.pcap",
        "folder": d / "folder",
        "empty": d / "empty",
        "text": d / "text.txt",
        "fifo": d / "fifo",
        "dev_zero": Path("/dev/zero"),
        "corrupt_gzip": _write(d / "corrupt.gz", b"\x1f\x8b\x08\x00" + random.Random(SEED).randbytes(300)),
    }


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------------------------------------- not a capture


@pytest.mark.parametrize("engine", ["native", "tshark"])
@pytest.mark.parametrize("name", ["missing", "folder", "empty", "text", "fifo", "dev_zero", "corrupt_gzip"])
def test_unreadable_input_is_an_error_result_not_an_exception(hostile, name, engine):
    if engine == "tshark" and not shutil.which("tshark"):
        pytest.skip("tshark not installed")
    with no_hang():
        result = analyze_capture(str(hostile[name]), engine=engine)
    assert result.error, name
    assert "analysis failed" not in result.error  # an expected refusal, not a caught crash
    assert result.clients == []
    expected_words = {
        "missing": "no such file", "folder": "directory", "empty": "not a capture file",
        "text": "not a capture file", "fifo": "fifo", "dev_zero": "device", "corrupt_gzip": "gzip",
    }[name]
    assert expected_words in result.error.lower(), result.error
    doc = result.to_dict()
    assert doc["error"] == result.error and doc["clients"] == []


def test_special_files_are_named_before_anything_opens_them(hostile):
    assert "FIFO" in not_a_regular_file(hostile["fifo"])
    assert "character device" in not_a_regular_file("/dev/zero")
    for name in ("missing", "folder", "empty", "text"):
        assert not_a_regular_file(hostile[name]) is None  # left to the reader, which names them itself


def test_native_api_raises_only_capture_error(hostile):
    for name in ("missing", "folder", "empty", "text", "corrupt_gzip"):
        with pytest.raises(CaptureError):
            dissect_capture(hostile[name])


def test_file_header_only_gives_no_frames_and_no_error(tmp_path, captures_dir):
    pcap = plain_bytes(captures_dir / "push_working.pcap")[:24]
    ng = (captures_dir / "alter_context.pcapng").read_bytes()
    shb_len = struct.unpack_from("<I", ng, 4)[0]
    idb_len = struct.unpack_from("<I", ng, shb_len + 4)[0]
    for name, data in [("hdr.pcap", pcap), ("shb.pcapng", ng[:shb_len]), ("shb_idb.pcapng", ng[:shb_len + idb_len])]:
        result = analyze_capture(str(_write(tmp_path / name, data)))
        assert result.error is None, (name, result.error)
        assert result.frames == 0 and result.clients == []
    netmon = (captures_dir / "netmon2_push_working.cap").read_bytes()[:128]
    result = analyze_capture(str(_write(tmp_path / "hdr.cap", netmon)))
    assert result.error is None and result.frames == 0
    assert any("truncated at byte 128" in w for w in result.warnings), result.warnings


# ------------------------------------------------------------------------------------------------- truncation


def test_truncated_capture_keeps_every_frame_and_event_before_the_cut(samples, tmp_path):
    """Every sample and public capture cut at ~20 seeded points: the frames whose bytes end before the cut are
    all delivered (pcap: exactly those), the DCE/RPC events up to the last delivered frame equal the full file's,
    and a cut inside a record is reported with its byte offset."""
    rng = random.Random(SEED)
    checked = 0
    for path in samples:
        data = plain_bytes(path)
        if path.suffix == ".gz":
            path = _write(tmp_path / path.stem, data)
        ends = set(frame_ends(path))
        full_events, full_info = dissect_capture(path)
        clean_cuts = ends | (pcapng_block_ends(data) if full_info.format == "pcapng" else set())
        cuts = sorted({len(data) - 1, *(rng.randrange(1, len(data)) for _ in range(CUTS_PER_FILE - 1))})
        for cut in cuts:
            cut_path = _write(tmp_path / f"cut{cut}-{path.name}", data[:cut])
            with no_hang():
                try:
                    events, info = dissect_capture(cut_path)
                except CaptureError as exc:  # only a cut inside the file header makes it no capture at all
                    assert cut < 256 or full_info.format.startswith("netmon"), (path.name, cut, exc)
                    continue
            whole = sum(1 for end in ends if end <= cut)
            if full_info.format == "pcap":
                assert info.frames == whole, (path.name, cut)
            elif not full_info.format.startswith("netmon"):  # pcapng: a block's trailer may follow its data
                assert whole - 1 <= info.frames <= whole, (path.name, cut, info.frames, whole)
            else:  # NetMon without its frame table: read in file order, all whole frames that precede the cut
                assert info.frames >= whole - 1, (path.name, cut, info.frames, whole)
            assert event_keys(events) >= event_keys(full_events, up_to_frame=info.frames - 1), (path.name, cut)
            # A cut inside a record loses frames and says where (a cut between two records is a valid shorter
            # file; a cut in NetMon's trailing metadata, after its frame table, loses no frame)
            if cut not in clean_cuts and info.frames < full_info.frames:
                assert info.truncated or info.warnings, (path.name, cut)
                assert any("byte" in w for w in info.warnings), (path.name, cut, info.warnings)
            checked += 1
    assert checked >= 20 * len(samples) * 0.8


def test_gzip_of_a_truncated_file_reads_like_the_truncated_file(tmp_path, captures_dir):
    data = plain_bytes(captures_dir / "push_working.pcap")
    cut = data[: len(data) * 2 // 3]
    plain_events, plain_info = dissect_capture(_write(tmp_path / "cut.pcap", cut))
    gz_events, gz_info = dissect_capture(_write(tmp_path / "cut.pcap.gz", gzip.compress(cut)))
    assert gz_info.compressed and gz_info.frames == plain_info.frames > 0
    assert event_keys(gz_events) == event_keys(plain_events)
    assert any("byte" in w for w in gz_info.warnings)

    cut_gzip = gzip.compress(data)[:-200]  # the compressed stream itself ends early
    events, info = dissect_capture(_write(tmp_path / "cutstream.pcap.gz", cut_gzip))
    assert 0 < info.frames and info.truncated and info.warnings


# ------------------------------------------------------------------------------------------------ corruption


def test_random_byte_flips_never_raise(samples, tmp_path):
    """Seeded random corruption (single bytes and extreme 32-bit words, often in the headers where lengths
    live): the native engine and the pipeline return a result or a CaptureError, never another exception."""
    rng = random.Random(SEED)
    extreme = [0, 1, 12, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]
    originals = [plain_bytes(p) for p in samples]
    refused = 0
    for i in range(FLIP_VARIANTS):
        k = rng.randrange(len(samples))
        data = bytearray(originals[k])
        for _ in range(rng.choice([1, 3, 10, 40])):
            if rng.random() < 0.5:
                data[rng.randrange(len(data))] = rng.randrange(256)
            else:
                at = rng.randrange(min(len(data) - 4, 512) if rng.random() < 0.5 else len(data) - 4)
                data[at:at + 4] = struct.pack("<I", rng.choice(extreme))
        path = _write(tmp_path / f"flip{i}-{samples[k].name.removesuffix('.gz')}", bytes(data))
        with no_hang():
            try:
                events, info = dissect_capture(path)
            except CaptureError:
                refused += 1
                continue
            events_to_dataframe(events)
            if i % 4 == 0:  # the later stages on a quarter of them (correlate and verdict on damaged events)
                result = analyze_capture(str(path))
                assert result.error is None or "analysis failed" not in result.error, (path.name, result.error)
    assert refused < FLIP_VARIANTS // 2  # most damage is inside a readable file


def test_absurd_record_length_and_unknown_link_type_are_warnings(tmp_path, captures_dir):
    data = bytearray(plain_bytes(captures_dir / "push_working.pcap"))
    ends = frame_ends(captures_dir / "push_working.pcap")
    second = ends[0]  # second record header starts where the first frame's bytes end
    data[second + 8:second + 12] = struct.pack("<I", 0xFFFFFFF0)
    events, info = dissect_capture(_write(tmp_path / "absurd.pcap", bytes(data)))
    assert info.frames == 1
    assert any(f"byte {second}" in w and "record length" in w for w in info.warnings), info.warnings

    ng = bytearray((captures_dir / "alter_context.pcapng").read_bytes())
    shb_len = struct.unpack_from("<I", ng, 4)[0]
    ng[shb_len + 8:shb_len + 10] = struct.pack("<H", 4242)  # first IDB's link type
    events, info = dissect_capture(_write(tmp_path / "unknown-link.pcapng", bytes(ng)))
    assert info.frames > 0 and events == []
    assert any("link type 4242" in w for w in info.warnings), info.warnings


def test_zero_length_frames_are_read_and_skipped(tmp_path, captures_dir):
    data = plain_bytes(captures_dir / "push_working.pcap")
    header, first = data[:24], data[24:24 + 16]
    empty_record = first[:8] + struct.pack("<II", 0, 0)
    body = header + empty_record + data[24:] + empty_record
    events, info = dissect_capture(_write(tmp_path / "zero.pcap", body))
    full_events, full_info = dissect_capture(captures_dir / "push_working.pcap")
    assert info.frames == full_info.frames + 2
    assert {(e.frame - 1, e.kind, e.opnum) for e in events} == {(e.frame, e.kind, e.opnum) for e in full_events}


# --------------------------------------------------------------------------------------------- the command


def test_cli_analyze_mixed_good_and_bad_captures(hostile, captures_dir, tmp_path):
    good = captures_dir / "server_refused.pcap"
    cut = _write(tmp_path / "cut.pcap", plain_bytes(captures_dir / "push_working.pcap")[:20000])
    proc = run_mailpush("analyze", "--format", "json", hostile["text"], good, cut, hostile["fifo"])
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    by_file = {c["file"]: c for c in doc["captures"]}
    assert by_file[str(hostile["text"])]["error"] == "not a capture file (pcap, pcapng, NetMon)"
    assert "FIFO" in by_file[str(hostile["fifo"])]["error"]
    assert by_file[str(good)]["error"] is None
    assert [c["cause"] for c in by_file[str(good)]["clients"]] == ["server_refused"]
    assert by_file[str(cut)]["error"] is None and by_file[str(cut)]["frames"] > 0
    assert any("truncated at byte" in w for w in by_file[str(cut)]["warnings"])
    assert f"{hostile['text']}: error: not a capture file" in proc.stderr
    assert f"{cut}: warning: file truncated at byte" in proc.stderr


def run_in_process(capsys, *args) -> tuple[int, str, str]:
    """``mailpush ARGS`` through the CLI's main() in this process (no interpreter start-up: ~1 s saved per case);
    any exception escaping main() fails the test just as a traceback on stderr would."""
    from analyzer.cli import main

    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("fmt", ["text", "csv", "html", "json"])
def test_cli_analyze_nothing_readable_exits_3(hostile, fmt, capsys):
    status, out, err = run_in_process(capsys, "analyze", "--format", fmt, hostile["empty"], hostile["dev_zero"],
                                      hostile["folder"])
    assert status == 3, err
    assert "character device" in err and "is a directory" in err
    assert out  # the report still lists the three captures and their errors


def test_cli_analyze_fail_on_still_wins_over_a_bad_capture(hostile, captures_dir):
    proc = run_mailpush("analyze", "--fail-on", "not_registered", hostile["text"],
                        captures_dir / "server_refused.pcap")
    assert proc.returncode == 1, proc.stderr


def test_cli_output_that_cannot_be_written_is_a_usage_error(captures_dir, tmp_path, capsys):
    good = captures_dir / "server_refused.pcap"
    for args in (["analyze", "-o", tmp_path / "missing" / "r.html", "--format", "html", good],
                 ["analyze", "-o", tmp_path, good],
                 ["events", "-o", tmp_path, good],
                 ["events", "--format", "parquet", "-o", tmp_path / "missing" / "e.parquet", good]):
        status, _out, err = run_in_process(capsys, *args)
        assert status == 2, (args, err)
        assert "cannot write" in err, err
    assert not (tmp_path / "missing").exists()


def test_cli_events_bad_and_damaged_input(hostile, captures_dir, tmp_path):
    proc = run_mailpush("events", hostile["fifo"], timeout=HANG_SECONDS)
    assert proc.returncode == 3 and "FIFO" in proc.stderr
    proc = run_mailpush("events", "--format", "json", hostile["text"])
    assert proc.returncode == 3 and "not a capture file (pcap, pcapng, NetMon)" in proc.stderr
    cut = _write(tmp_path / "cut.pcap.gz", gzip.compress(plain_bytes(captures_dir / "push_working.pcap")[:20000]))
    proc = run_mailpush("events", "--format", "json", cut)
    assert proc.returncode == 0 and "warning" in proc.stderr and "truncated at byte" in proc.stderr
    assert len(json.loads(proc.stdout)) > 0


def test_cli_events_tshark_engine_on_bad_input(hostile, tshark):
    for name, words in (("folder", "is a directory"), ("fifo", "FIFO"), ("text", "not a capture file")):
        proc = run_mailpush("events", "--engine", "tshark", hostile[name], timeout=HANG_SECONDS)
        assert proc.returncode == 3 and words in proc.stderr, (name, proc.stderr)


def test_cli_full_disk_on_standard_output_is_a_clear_error(captures_dir):
    good = captures_dir / "server_refused.pcap"
    for args in (["analyze", good], ["events", "--format", "json", good]):
        with open("/dev/full", "w") as full:
            proc = subprocess.run([*MAILPUSH, *map(str, args)], stdout=full, stderr=subprocess.PIPE, text=True,
                                  timeout=60)
        assert "Traceback" not in proc.stderr, proc.stderr
        assert proc.returncode == 2 and "cannot write standard output: No space left on device" in proc.stderr


def test_file_names_that_are_not_utf8(tmp_path, captures_dir):
    """A file name in another encoding arrives with lone surrogates: every report format shows it as \\xNN
    (the CSV writer died on it), and the tshark engine still reads the file (pyshark died decoding tshark's
    message that names it)."""
    folder = os.fsencode(tmp_path)
    cut = folder + b"/cut\xff.pcap"
    with open(cut, "wb") as fh:
        fh.write(plain_bytes(captures_dir / "push_working.pcap")[:20000])
    text = folder + b"/notes\xfe.pcap"
    with open(text, "wb") as fh:
        fh.write(b"not a capture\n")
    for fmt in ("csv", "json"):  # text and HTML show result.file too, fixed at the same place
        proc = subprocess.run([*MAILPUSH, "analyze", "--format", fmt, cut, text], capture_output=True, timeout=60)
        stderr = proc.stderr.decode("utf-8", "replace")
        assert "Traceback" not in stderr and proc.returncode == 0, (fmt, stderr)
        shown = (" ".join(c["file"] for c in json.loads(proc.stdout)["captures"]) if fmt == "json"
                 else proc.stdout.decode("utf-8"))
        assert "cut\\xff.pcap" in shown and "notes\\xfe.pcap" in shown, (fmt, shown[:300])
        assert "notes\\xfe.pcap: error: not a capture file" in stderr
    if shutil.which("tshark"):
        proc = subprocess.run([*MAILPUSH, "events", "--engine", "tshark", cut], capture_output=True, timeout=60)
        stderr = proc.stderr.decode("utf-8", "replace")
        assert "Traceback" not in stderr and proc.returncode == 0, stderr
        assert "tshark stopped after frame" in stderr and "cut short" in stderr
        assert proc.stdout.count(b"\n") > 5


def test_mailbox_dn_with_control_bytes_cannot_reach_the_terminal(tmp_path, captures_dir, capsys):
    """The EcDoConnect user DN comes from capture bytes: an ESC sequence or a newline in it is shown escaped in
    the events table and every report, and HTML markup in it is escaped in the HTML report."""
    data = (captures_dir / "server_refused.pcap").read_bytes()
    at = data.index(b"/o=Contoso")
    length = data.index(b"\x00", at) - at
    hostile = b"/o=X\x1b[2J\x1b]0;owned\x07\nline2<script>x</script>"
    assert len(hostile) <= length
    path = _write(tmp_path / "dn.pcap", data[:at] + hostile.ljust(length, b"A") + data[at + length:])
    events, _info = dissect_capture(path)
    dns = [e.user_dn for e in events if e.user_dn]
    assert dns and dns[0].startswith("/o=X\\x1b[2J\\x1b]0;owned\\x07\\x0aline2<script>"), dns
    for fmt in ("text", "csv", "html"):
        status, out, err = run_in_process(capsys, "analyze", "--format", fmt, path)
        assert status == 0, err
        assert "\x1b" not in out and "\x07" not in out, fmt
        if fmt == "csv":
            assert len(out.strip().splitlines()) == 2  # header and the one client: no line split
        if fmt == "html":
            assert "<script>x</script>" not in out and "&lt;script&gt;x" in out


def test_one_absurd_timestamp_does_not_blow_up_the_plots(tmp_path, captures_dir):
    """One record's time set to 2106 and one to 1970 (a damaged header): the timeline keeps a bounded grid (a
    fixed one-day step drew 50,000 lines: 100 s and 500 MB for a 40 KB capture)."""
    from analyzer.report.plots import plot_intervals, plot_timeline

    source = captures_dir / "push_working.pcap"
    data = bytearray(source.read_bytes())
    headers = []
    with open_capture(source) as cap:
        for batch in cap.batches():
            headers.extend(int(o) - 16 for o in batch.offset)  # pcap record header: 16 bytes before the data
    struct.pack_into("<I", data, headers[-1], 0xFFFFFFF0)
    struct.pack_into("<I", data, headers[len(headers) // 2], 0)
    result = analyze_capture(str(_write(tmp_path / "timewarp.pcap", bytes(data))))
    assert result.error is None and result.clients
    assert result.duration_s > 50 * 365 * 86400  # first frame (2026) to the last (2106)
    with no_hang(10):
        timeline = plot_timeline(result, result.clients[0])
        plot_intervals(result, result.clients[0])
    grid_lines = [line for line in timeline.axes[0].get_lines() if line.get_color() == "#cfcfcf"]
    assert 0 < len(grid_lines) <= 70  # ~60 cells plus the 2 % margins on both sides


def _pcapng_blocks(data: bytes) -> list[tuple[int, int, int]]:
    blocks, at = [], 0
    while at < len(data):
        kind, length = struct.unpack_from("<II", data, at)
        blocks.append((at, kind, length))
        at += length
    return blocks


def test_times_that_are_no_calendar_date(tmp_path, captures_dir, capsys):
    """pcapng timestamps are 64-bit: a damaged one (or if_tsresol 0 = whole seconds) says year 586524, which
    datetime cannot hold. Every report still renders, start/end that are no date are null in JSON, with a
    warning."""
    from analyzer.report.formats import render_csv, render_json, render_text
    from analyzer.report.html import render_html
    from analyzer.report.plots import plot_timeline

    data = (captures_dir / "alter_context.pcapng").read_bytes()
    blocks = _pcapng_blocks(data)
    last_packet = [at for at, kind, _ in blocks if kind == 6][-1]
    far = bytearray(data)
    struct.pack_into("<I", far, last_packet + 12, 0xFFFFFFFF)  # high half of the timestamp
    shb_end, (idb_at, _, idb_len) = blocks[0][2], blocks[1]
    body = struct.pack("<HHI", 1, 0, 65535) + struct.pack("<HHB3x", 9, 1, 0) + struct.pack("<HH", 0, 0)
    idb = struct.pack("<II", 1, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))
    seconds = data[:shb_end] + idb + data[idb_at + idb_len:]  # if_tsresol 0: the microsecond counts as seconds
    for name, capture in (("far.pcapng", bytes(far)), ("tsresol0.pcapng", seconds)):
        result = analyze_capture(str(_write(tmp_path / name, capture)))
        assert result.error is None and result.frames == 75 and result.clients, name
        assert any("outside years 1-9999" in w for w in result.warnings), (name, result.warnings)
        doc = json.loads(render_json([result]))["captures"][0]
        assert doc["end"] is None and doc["warnings"], name
        assert "not a date" in render_text([result]) and render_csv([result]) and render_html([result])
        with no_hang(10):
            plot_timeline(result, result.clients[0])
    status, out, err = run_in_process(capsys, "analyze", "--format", "html", tmp_path / "far.pcapng")
    assert status == 0 and "outside years 1-9999" in err
