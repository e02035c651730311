"""The speed work's code paths give the same results as the plain ones (issue 14): the compiled record walks
(analyzer/ingest/_recordwalk.c) against the Python walks they replace, the orjson writer of the JSON report, ISA-L's
inflate for gzip input and the `--profile` stage clock. (The compiled pre-filter is compared with the numpy one in
tests/test_transport.py.) Speed itself is measured in benchmarks/, never here."""

import gzip
import json
import os
import random
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from analyzer import stagetimes
from analyzer.ingest import open_capture
from analyzer.ingest import pcap as pcap_walk
from analyzer.ingest import pcapng as pcapng_walk
from analyzer.ingest import reader
from analyzer.ingest.model import CaptureInfo
from analyzer.ingest.walk import MORE
from analyzer.pipeline import analyze_capture, results_document
from analyzer.report.formats import dump_json, render_json

ROOT = Path(__file__).resolve().parent.parent
CAPTURES = ROOT / "captures"
SAMPLES = sorted(p for p in CAPTURES.iterdir() if p.suffix in (".pcap", ".pcapng", ".cap", ".gz"))
MAILPUSH = Path(sys.executable).parent / "mailpush"


def test_there_are_samples_of_every_format():
    names = [p.name for p in SAMPLES]
    assert any(n.endswith(".pcapng") for n in names) and any(n.endswith(".gz") for n in names)
    assert any(n.endswith(".cap") for n in names)


@pytest.fixture(scope="module")
def sample_results():
    return [analyze_capture(str(p)) for p in SAMPLES]


def test_json_report_is_byte_for_byte_what_the_standard_encoder_writes(sample_results):
    doc = results_document(sample_results)
    assert sum(len(r.clients) for r in sample_results) > 10  # real verdict documents, not empty ones
    assert dump_json(doc) == json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    for result in sample_results:  # one capture at a time too (non-ASCII, empty lists, nulls, floats)
        single = results_document([result])
        assert dump_json(single) == json.dumps(single, indent=2, ensure_ascii=False) + "\n"
    assert json.loads(render_json(sample_results)) == json.loads(json.dumps(doc))


@pytest.mark.parametrize("doc", [
    {1: "integer key"},  # orjson refuses non-string keys
    {"big": 1 << 70},  # and integers beyond 64 bits
    {"name": "caf\udce9.pcap"},  # and lone surrogates (a file name that is not UTF-8)
    {"text": "Stra\u00dfe \u2013 \u65e5\u672c", "f": [0.1, 12345.678, -0.0, 0.0], "none": None, "empty": {}},
    {"tiny": 1e-7, "huge": [1e16, -2.5e20]},  # Python writes 1e-07 / 1e+16, orjson 1e-7 / 1e16
    {"nan": float("nan"), "inf": [float("inf"), float("-inf")]},  # orjson writes null
])
def test_json_writer_falls_back_to_the_standard_encoder_where_orjson_refuses(doc):
    assert dump_json(doc) == json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


PUBLIC = sorted(p for p in (ROOT.parent / "shared" / "captures" / "public").glob("*")
                if p.suffix in (".pcap", ".pcapng", ".gz")) if (ROOT.parent / "shared").is_dir() else []


def test_the_c_extensions_are_built():
    """make test builds them (setup.py; the Makefile installs gcc and the Python headers first). Without them
    mailpush runs on the slower Python/numpy paths, and this test says so."""
    from analyzer.dissect import transport

    assert pcap_walk._recordwalk is not None, "analyzer.ingest._recordwalk not built: see the pip install output"
    assert pcapng_walk._recordwalk is pcap_walk._recordwalk
    assert transport._compiled is not None, "analyzer.dissect._prefilter not built: see the pip install output"


# analyze / events on a pcap in a fresh interpreter, then whether numpy was imported (the last line of stderr)
_NO_NUMPY_RUN = """\
import sys
from analyzer.cli import main
status = main(sys.argv[1:])
print("numpy imported:", "numpy" in sys.modules, file=sys.stderr)
sys.exit(status)
"""


@pytest.mark.parametrize("command", [["analyze", "--format", "json"], ["analyze"], ["events", "--format", "csv"]],
                         ids=" ".join)
@pytest.mark.parametrize("name", ["server_refused.pcap", "icmp_unreachable.pcap.gz"])
def test_a_pcap_is_analysed_without_importing_numpy(command, name):
    """With the compiled walk and pre-filter, a pcap (plain or gzip) is read, dissected and reported without numpy
    (issue 14: importing it costs 0.10-0.12 s, ~10 % of the 1 M-frame budget). Its batch columns are array.array
    objects; numpy stays for the Python walk, the numpy pre-filter, pcapng and NetMon, imported where they run."""
    if pcap_walk._recordwalk is None:
        pytest.skip("the C extensions are not built (test_the_c_extensions_are_built fails)")
    from analyzer.dissect import transport

    if transport._compiled is None:
        pytest.skip("the C extensions are not built (test_the_c_extensions_are_built fails)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    proc = subprocess.run([sys.executable, "-c", _NO_NUMPY_RUN, command[0], str(CAPTURES / name), *command[1:]],
                          capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout) > 100
    assert proc.stderr.splitlines()[-1] == "numpy imported: False", proc.stderr


def test_the_compiled_pcap_walk_gives_array_columns():
    from array import array

    if pcap_walk._recordwalk is None:
        pytest.skip("the C extensions are not built (test_the_c_extensions_are_built fails)")
    with open_capture(CAPTURES / "server_refused.pcap") as cap:
        batches = list(cap.batches(7))
    assert len(batches) > 2
    for batch in batches:
        columns = (batch.offset, batch.caplen, batch.origlen, batch.time, batch.linktype)
        assert [(type(c), c.typecode) for c in columns] == [(array, t) for t in "qqqdi"]


def test_the_compiled_pcap_walk_reuses_only_columns_nothing_refers_to():
    """The compiled walk refills the columns of an earlier batch (array.array zero-fills new ones) only once
    nothing refers to them: batches, single columns, memoryviews and numpy views kept by the caller keep their
    values while the walk goes on; dropped batches' columns are reused."""
    import weakref

    if pcap_walk._recordwalk is None:
        pytest.skip("the C extensions are not built (test_the_c_extensions_are_built fails)")
    kept, seen, reused = [], [], 0
    with open_capture(CAPTURES / "three_clients.pcap") as cap:
        for i, batch in enumerate(cap.batches(3)):
            if any(ref() is batch.offset for ref in seen):
                reused += 1
            seen.append(weakref.ref(batch.offset))
            columns = (batch.offset, batch.caplen, batch.origlen, batch.time)
            values = [c.tolist() for c in columns]
            held = [batch, batch.time, memoryview(batch.caplen), np.asarray(batch.origlen), None, None][i % 6]
            if held is batch:
                kept.append((columns, values))
            elif held is not None:
                kept.append(([held], [values[[3, 1, 2][i % 6 - 1]]]))
    assert reused > 5 and len(kept) > 20
    for columns, values in kept:
        assert [c.tolist() for c in columns] == values


def _item_types(batch):
    """The item type of every column, numpy arrays (Python walks, pcapng) and array.array (the compiled pcap walk)
    alike."""
    return [np.asarray(c).dtype for c in (batch.offset, batch.caplen, batch.origlen, batch.time, batch.linktype)]


COLUMN_TYPES = [np.int64, np.int64, np.int64, np.float64, np.int32]


def _columns(path, compiled, monkeypatch, batch_size=65536):
    """Every batch's columns and bytes, and what the reader learned, with the compiled or the Python walk."""
    monkeypatch.setattr(pcap_walk.PcapWalker, "compiled", compiled)
    monkeypatch.setattr(pcapng_walk.PcapngWalker, "compiled", compiled)
    out = []
    with open_capture(path) as cap:
        for batch in cap.batches(batch_size):
            assert _item_types(batch) == COLUMN_TYPES
            frames = [bytes(batch.buf[o:o + c]) for o, c in zip(batch.offset.tolist(), batch.caplen.tolist())]
            out.append((batch.first_number, batch.caplen.tolist(), batch.origlen.tolist(),
                        np.asarray(batch.time).view(np.uint64).tolist(), batch.linktype.tolist(), frames))
        info = cap.info
        return out, (info.frames, info.start, info.end, info.linktypes, info.warnings, info.truncated)


@pytest.mark.parametrize("path", [p for p in SAMPLES + PUBLIC if ".cap" not in p.suffixes],
                         ids=lambda p: p.name)
def test_compiled_record_walk_reads_what_the_python_walk_reads(path, monkeypatch):
    """Same batches (times bit for bit), frames and reader state on every pcap/pcapng sample and public capture,
    with the usual batch size and with tiny batches (every batch boundary, gzip windows)."""
    for batch_size in (65536, 7):
        compiled = _columns(path, True, monkeypatch, batch_size)
        assert compiled[0], path.name
        assert compiled == _columns(path, False, monkeypatch, batch_size)


def _pcap_bytes(records, order="<", nsec=False, modified=False, snaplen=65535, linktype=1):
    """A pcap file from (seconds, fraction, data, origlen) records, in either byte order, usec or nsec, or
    Kuznetzov's modified format (24-byte record headers)."""
    magic = 0xA1B2CD34 if modified else 0xA1B23C4D if nsec else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for sec, frac, data, orig in records:
        out.append(struct.pack(order + "IIII", sec, frac, len(data), orig))
        if modified:
            out.append(struct.pack(order + "IHBB", 7, 2, 1, 0))
        out.append(data)
    return b"".join(out)


def _walk_steps(walker_class, head, buf, final, limit, base=1000):
    """Every next_batch call over one window until it stops, as comparable values."""
    info = CaptureInfo(path="x", format="pcap", compressed=base != 0)
    walker = walker_class(head, info)
    walker.reset()
    pos, number, steps = walker.start(), 1, []
    for _ in range(10_000):
        batch, pos, status = walker.next_batch(buf, pos, final, base, limit, number)
        cols = None
        if batch is not None and len(batch):  # (the Python walk returns an empty batch before an absurd record)
            assert _item_types(batch) == COLUMN_TYPES
            cols = (batch.first_number, batch.offset.tolist(), batch.caplen.tolist(), batch.origlen.tolist(),
                    np.asarray(batch.time).view(np.uint64).tolist(), batch.linktype.tolist())
            number += len(batch)
        steps.append((cols, pos, status))
        if status != MORE:
            break
    return steps, info.warnings, info.truncated


def _both_walks(monkeypatch, walker_class, head, buf, final, limit):
    monkeypatch.setattr(walker_class, "compiled", True)
    compiled = _walk_steps(walker_class, head, buf, final, limit)
    monkeypatch.setattr(walker_class, "compiled", False)
    python = _walk_steps(walker_class, head, buf, final, limit)
    assert compiled == python, (len(buf), final, limit)
    return compiled


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("kind", ["usec", "nsec", "modified"])
def test_compiled_pcap_walk_equals_the_python_walk_at_every_cut_and_on_damage(order, kind, monkeypatch):
    """Both byte orders, usec/nsec/modified pcap, the window cut at every byte of the last records (header cut,
    length word cut, data cut, exact end; final or not), limits 1/2/3/64, an absurd record length, a zero-length
    record and a length past the end of the buffer: same batches, positions, statuses and warnings."""
    rng = random.Random(14)
    sizes = [60, 0, 1, 14, 200, 61, 0, 60, 1, 0, 14, 0]  # zero-length records in the middle and at the very end
    records = [(1_700_000_000 + i, rng.randrange(10**9 if kind == "nsec" else 10**6),
                bytes(rng.randrange(256) for _ in range(size)), 1500) for i, size in enumerate(sizes)]
    data = _pcap_bytes(records, order, nsec=kind == "nsec", modified=kind == "modified", snaplen=256)
    head = data[:24]
    seen = set()
    for cut in list(range(24, 120)) + list(range(len(data) - 300, len(data) + 1)):
        for final in (True, False):
            for limit in (1, 2, 3, 64):
                steps, warnings, _ = _both_walks(monkeypatch, pcap_walk.PcapWalker, head, data[:cut], final, limit)
                seen.add(steps[-1][2])
                seen.update(w.split(" at ")[0] for w in warnings)
    assert seen >= {"done", "need_data", "stop", "file truncated"}
    hs = 24 if kind == "modified" else 16
    damaged = bytearray(data)
    at = 24 + sum(hs + len(r[2]) for r in records[:5])
    for value in (600, 65536, 65537, 262145, 0xFFFFFFFF, 0):  # (the maximum here: max(2 * snaplen, 65536))
        damaged[at + 8:at + 12] = struct.pack(order + "I", value)
        for limit in (3, 64):
            steps, warnings, _ = _both_walks(monkeypatch, pcap_walk.PcapWalker, head, bytes(damaged), True, limit)
            if value > 65536:
                assert any("exceeds the maximum" in w for w in warnings)


def test_compiled_walks_read_generated_files_of_every_pcap_kind_as_the_python_walks(tmp_path, monkeypatch):
    """Whole files through open_capture, plain and gzip (1 MiB windows: records cut by window ends), cut short."""
    rng = random.Random(5)
    records = [(1_700_000_000 + i // 10, rng.randrange(10**6), bytes(rng.randrange(256) for _ in range(
        rng.randrange(0, 1600))), 1600) for i in range(3000)]
    for n, (order, kind) in enumerate([("<", "usec"), (">", "nsec"), ("<", "modified"), (">", "modified")]):
        data = _pcap_bytes(records, order, nsec=kind == "nsec", modified=kind == "modified")
        for cut in (len(data), len(data) - 7, len(data) // 2 + 3):
            plain = tmp_path / f"f{n}-{cut}.pcap"
            plain.write_bytes(data[:cut])
            packed = tmp_path / f"f{n}-{cut}.pcap.gz"
            packed.write_bytes(gzip.compress(data[:cut], compresslevel=1))
            for path in (plain, packed):
                compiled = _columns(path, True, monkeypatch)
                assert compiled == _columns(path, False, monkeypatch)
                assert sum(len(b[1]) for b in compiled[0]) >= 1400


def test_compiled_pcapng_run_equals_the_python_run_at_every_cut_and_on_damage(monkeypatch):
    """The pcapng walk with the compiled Enhanced Packet Block run: every cut of the last blocks, a damaged
    block length, a second section and blocks of other kinds between the EPBs."""
    sample = next(p for p in SAMPLES if p.suffix == ".pcapng")
    data = sample.read_bytes()
    head = data[:64]
    assert len(data) > 600
    for cut in list(range(0, 200, 3)) + list(range(len(data) - 400, len(data) + 1)):
        for final in (True, False):
            for limit in (1, 3, 64):
                _both_walks(monkeypatch, pcapng_walk.PcapngWalker, head, data[:cut], final, limit)
    # the file twice (two sections), then damage at a block length inside the first section's packets
    twice = data + data
    for limit in (2, 5, 65536):
        _both_walks(monkeypatch, pcapng_walk.PcapngWalker, head, twice, True, limit)
    first_epb = _first_block(data, 6)
    for value in (8, 13, 1 << 25, 0xFFFFFFF0):
        damaged = bytearray(twice)
        damaged[first_epb + 4:first_epb + 8] = struct.pack("<I", value)
        steps, warnings, _ = _both_walks(monkeypatch, pcapng_walk.PcapngWalker, head, bytes(damaged), True, 64)
        assert warnings


def _first_block(data, wanted):
    """Offset of the first pcapng block of type ``wanted`` (little-endian file)."""
    p = 0
    while p + 8 <= len(data):
        btype, blen = struct.unpack_from("<II", data, p)
        if btype == wanted:
            return p
        p += blen
    raise AssertionError(f"no block of type {wanted}")


def _frames(path):
    out = []
    with open_capture(path) as cap:
        for batch in cap.batches():
            for i in range(len(batch)):
                start = int(batch.offset[i])
                out.append((batch.first_number + i, float(batch.time[i]),
                            bytes(batch.buf[start:start + int(batch.caplen[i])])))
        return out, list(cap.info.warnings)


@pytest.mark.parametrize("path", [p for p in SAMPLES if p.suffix == ".gz"], ids=lambda p: p.name)
def test_gzip_input_reads_the_same_frames_with_isal_as_with_zlib(path, monkeypatch):
    from isal import isal_zlib  # a dependency: a broken install fails
    assert reader.inflate is isal_zlib  # the installed speed-up is the one in use
    with_isal = _frames(path)
    monkeypatch.setattr(reader, "inflate", zlib)
    with_zlib = _frames(path)
    assert with_isal[0] and with_isal == with_zlib


def test_a_cut_gzip_file_gives_the_same_frames_and_warning_kind_with_isal_and_zlib(tmp_path, monkeypatch):
    source = next(p for p in SAMPLES if p.suffix == ".gz")
    cut = tmp_path / "cut.pcap.gz"
    data = source.read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    frames_isal, warnings_isal = _frames(cut)
    monkeypatch.setattr(reader, "inflate", zlib)
    frames_zlib, warnings_zlib = _frames(cut)
    assert frames_isal == frames_zlib
    assert warnings_isal and warnings_isal == warnings_zlib


class FakeTime:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_stage_clock_charges_nested_time_to_the_innermost_stage(monkeypatch):
    fake = FakeTime()
    monkeypatch.setattr(stagetimes.time, "perf_counter", fake)
    monkeypatch.setattr(stagetimes.time, "process_time", fake)
    clock = stagetimes.StageClock()
    with clock.stage("TCP"):
        fake.now += 2.0
        with clock.stage("DCE/RPC"):
            fake.now += 3.0
        fake.now += 1.0
    fake.now += 50.0  # outside every stage: not charged
    timed = clock.wrap("output", lambda: setattr(fake, "now", fake.now + 0.5))
    timed()
    assert clock.seconds == clock.cpu == {"TCP": 3.0, "DCE/RPC": 3.0, "output": 0.5}


def test_stage_clock_charges_a_generators_own_work_to_its_stage(monkeypatch):
    fake = FakeTime()
    monkeypatch.setattr(stagetimes.time, "perf_counter", fake)
    monkeypatch.setattr(stagetimes.time, "process_time", fake)
    clock = stagetimes.StageClock()

    def batches():
        for n in range(3):
            fake.now += 1.0  # reading a batch
            yield n

    got = []
    with clock.stage("TCP"):
        for n in clock.iterate("ingest", batches()):
            fake.now += 10.0  # the consumer's work
            got.append(n)
    assert got == [0, 1, 2]
    assert clock.seconds == clock.cpu == {"ingest": 3.0, "TCP": 30.0}


def test_nothing_is_timed_without_profiling(sample_results):
    assert stagetimes.active() is None
    with stagetimes.stage("ingest"):  # a no-op
        pass
    assert stagetimes.active() is None


def test_analyze_profile_reports_every_stage_and_leaves_the_report_unchanged():
    if not MAILPUSH.exists():
        pytest.skip("mailpush console script not installed in this environment")
    sample = CAPTURES / "server_refused.pcap"
    if not sample.exists():
        sample = next(p for p in SAMPLES if p.suffix == ".pcap")
    plain = subprocess.run([str(MAILPUSH), "analyze", str(sample), "--format", "json"], capture_output=True,
                           text=True, timeout=120)
    profiled = subprocess.run([str(MAILPUSH), "analyze", str(sample), "--format", "json", "--profile"],
                              capture_output=True, text=True, timeout=120)
    assert plain.returncode == profiled.returncode == 0, profiled.stderr
    assert profiled.stdout == plain.stdout
    lines = profiled.stderr.splitlines()
    for name in (s for s in stagetimes.STAGES if s != "tshark"):
        assert any(line.split()[:1] == [name] for line in lines), (name, profiled.stderr)
    total = next(line for line in lines if line.startswith("total"))
    frames = json.loads(plain.stdout)["captures"][0]["frames"]
    assert f"{frames:,} frames" in total
    assert "time per stage" not in plain.stderr
    # the start-up before the clock: an interpreter start and the imports take more than 10 ms, less than the run
    startup = float(next(line for line in lines if line.startswith("(start-up)")).split()[1])
    assert 0.01 < startup < 10


def test_profile_with_the_tshark_engine_charges_the_dissection_to_a_tshark_stage():
    import shutil

    if not MAILPUSH.exists() or not shutil.which("tshark"):
        pytest.skip("needs the mailpush console script and tshark")
    sample = next(p for p in SAMPLES if p.suffix == ".pcap")
    proc = subprocess.run([str(MAILPUSH), "analyze", str(sample), "--engine", "tshark", "--format", "json",
                           "--profile"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    stages = {line.split()[0] for line in proc.stderr.splitlines() if line.strip()}
    assert {"tshark", "correlate", "verdict", "output"} <= stages
    assert not {"pre-filter", "TCP", "DCE/RPC"} & stages  # the native engine's layers did not run
