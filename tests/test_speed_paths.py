"""The speed work's code paths give the same results as the plain ones (issue 14): the orjson writer of the JSON
report, ISA-L's inflate for gzip input and the `--profile` stage clock. Speed itself is measured in benchmarks/,
never here."""

import json
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from analyzer import stagetimes
from analyzer.ingest import open_capture
from analyzer.ingest import reader
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
