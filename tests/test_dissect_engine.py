"""The dissect stage's entry points (analyzer.dissect.engine) end to end: real public captures and the samples in
captures/, read through the ingest reader, the native transport and the EventCollector."""

import random
import shutil
import subprocess
from pathlib import Path

import pytest

from analyzer.dissect import EVENT_COLUMNS, dissect_batches, dissect_capture, events_dataframe
from analyzer.ingest import CaptureError, open_capture


def _capture_files(public_dir: Path, captures_dir: Path) -> list[Path]:
    files = sorted(p for p in public_dir.iterdir() if p.suffix in (".cap", ".pcap", ".pcapng", ".gz"))
    if captures_dir.is_dir():
        files += sorted(p for p in captures_dir.iterdir() if p.suffix in (".cap", ".pcap", ".pcapng", ".gz"))
    return files


def test_short_mapi_session(public_dir):
    events, info = dissect_capture(public_dir / "wiki-ShortMAPI.pcapng")
    assert info.frames == 22
    emsmdb = [e for e in events if e.interface == "EMSMDB"]
    bind = [e for e in emsmdb if e.kind == "bind"]
    assert [(e.frame, e.interface_uuid, e.dport) for e in bind] == [
        (7, "a4f1db00-ca47-1067-b31f-00dd010662da", 1293)]
    calls = [(e.frame, e.kind, e.opnum, e.opname) for e in emsmdb if e.kind in ("request", "response")]
    assert calls == [(12, "request", 10, "EcDoConnectEx"), (13, "response", 10, "EcDoConnectEx"),
                     (14, "request", 11, "EcDoRpcExt2"), (15, "response", 11, "EcDoRpcExt2"),
                     (16, "request", 1, "EcDoDisconnect"), (17, "response", 1, "EcDoDisconnect")]
    # the EPM connection started before the capture, at a PDU boundary: its ept_map call is still found
    assert [(e.frame, e.kind, e.interface, e.opnum) for e in events[:2]] == [
        (1, "request", "EPM", 3), (2, "response", "EPM", 3)]


# public captures with several TCP connections (some started before the capture) and samples with several clients,
# reordered segments and mid-session starts; tshark costs ~1 s a file here, so not every sample
STREAM_CHECKED = ("wiki-ShortMAPI.pcapng", "netmon23-authsod-ex3-2.cap", "zeek-bind-ack-no-inband-null.pcap",
                  "three_clients.pcap", "segmented_reordered_opnum4.pcap", "mid_session_notified.pcap",
                  "vlan_ipv6.pcap")


def test_connection_numbers_are_tshark_streams(public_dir, captures_dir, tshark):
    checked = 0
    for path in _capture_files(public_dir, captures_dir):
        if path.name not in STREAM_CHECKED:
            continue
        events, _ = dissect_capture(path)
        tcp_events = [e for e in events if e.conn is not None]
        if not tcp_events:
            continue
        out = subprocess.run([tshark, "-r", str(path), "-Y", "tcp", "-T", "fields", "-e", "frame.number", "-e",
                              "tcp.stream"], capture_output=True, text=True).stdout
        stream = {}
        for line in out.splitlines():
            frame, _, number = line.partition("\t")
            stream[int(frame)] = int(number)
        for e in tcp_events:
            assert e.conn == stream[e.frame], f"{path.name} frame {e.frame}"
            checked += 1
    assert checked >= 60


def test_dataframe_and_custom_sink(captures_dir):
    path = captures_dir / "push_working.pcap"
    if not path.exists():
        pytest.skip("captures/ samples not generated")
    df = events_dataframe(path)
    assert list(df.columns) == list(EVENT_COLUMNS)
    assert (df["kind"] == "udp").sum() == 3  # the manifest's three notifications
    register = df[(df["interface"] == "EMSMDB") & (df["opnum"] == 4) & (df["kind"] == "request")]
    assert register["callback"].tolist() == ["10.1.20.31:2512"]

    class Counting:  # a PacketSink with a finish(): dissect_batches returns what it returns
        def __init__(self):
            self.udp_frames = []

        def is_interesting_tcp(self, payload, sport, dport):
            return False

        def udp(self, frame, *rest):
            self.udp_frames.append(frame)

        def icmp_error(self, *args):
            pass

        def warn(self, message):
            pass

        def finish(self):
            return self.udp_frames

    with open_capture(path) as cap:
        frames = dissect_batches(cap.batches(), cap.info, sink=Counting())
    assert frames == df.loc[df["kind"] == "udp", "frame"].tolist()


def test_progress_reaches_the_file_size(captures_dir):
    path = captures_dir / "three_clients.pcap"
    if not path.exists():
        pytest.skip("captures/ samples not generated")
    seen = []
    dissect_capture(path, progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1] == (path.stat().st_size, path.stat().st_size)


def test_bad_input_is_an_error_not_a_traceback(tmp_path, captures_dir):
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a capture\n" * 10)
    with pytest.raises(CaptureError, match="not a capture file"):
        dissect_capture(text)
    with pytest.raises(ValueError, match="unknown engine"):
        dissect_capture(text, engine="wireshark")
    truncated = captures_dir / "truncated.pcap"
    if truncated.exists():
        events, info = dissect_capture(truncated)
        assert any("truncated at byte" in w for w in info.warnings)
        assert events  # every frame before the cut is dissected


@pytest.mark.parametrize("name", ["segmented_reordered_opnum4.pcap", "three_clients.pcap", "vlan_ipv6.pcap"])
def test_random_corruption_never_raises(tmp_path, captures_dir, name):
    """Flip bytes inside frames (past the 24-byte pcap header, so the file stays readable): headers claiming
    impossible lengths, bad IP versions, odd TCP offsets must become warnings or skipped frames."""
    source = captures_dir / name
    if not source.exists():
        pytest.skip("captures/ samples not generated")
    original = source.read_bytes()
    rng = random.Random(name)
    for trial in range(10):
        data = bytearray(original)
        for _ in range(rng.randint(1, 40)):
            data[rng.randrange(24, len(data))] = rng.randrange(256)
        path = tmp_path / f"{trial}.pcap"
        path.write_bytes(bytes(data))
        events, info = dissect_capture(path)  # must not raise
        assert info.frames > 0 or info.warnings  # a record header hit: the reader says where it stopped


def test_tshark_engine_is_reached_lazily(captures_dir):
    """engine="tshark" imports analyzer.dissect.tshark_engine only when asked (it needs tshark on the PATH)."""
    path = captures_dir / "push_working.pcap"
    if not path.exists() or not shutil.which("tshark"):
        pytest.skip("needs captures/ samples and tshark")
    try:
        import analyzer.dissect.tshark_engine  # noqa: F401
    except ModuleNotFoundError:
        pytest.skip("tshark engine not written yet")
    events, info = dissect_capture(path, engine="tshark")
    native, _ = dissect_capture(path)
    assert {(e.frame, e.kind, e.opnum) for e in events} == {(e.frame, e.kind, e.opnum) for e in native}


def _events_with(path, use_prefilter):
    from analyzer.dissect.collector import EventCollector
    from analyzer.dissect.transport import Transport

    with open_capture(path) as cap:
        collector = EventCollector(warn=cap.info.warnings.append)
        transport = Transport(collector, use_prefilter=use_prefilter)
        for batch in cap.batches():
            transport.feed(batch)
        transport.finish()
        return [vars(e) if hasattr(e, "__dict__") else {k: getattr(e, k) for k in e.__slots__}
                for e in collector.finish()]


def test_prefilter_changes_no_event_on_any_capture(public_dir, captures_dir):
    """The numpy pre-filter only skips frames: with and without it, every capture gives the same events."""
    compared = 0
    for path in _capture_files(public_dir, captures_dir):
        fast, slow = _events_with(path, True), _events_with(path, False)
        assert fast == slow, path.name
        compared += len(fast)
    assert compared > 300


def test_prefilter_on_a_benchmark_style_capture(tmp_path):
    """30,000 frames of the benchmark generator (30 Outlook clients among bulk TCP and DNS): same events with and
    without the pre-filter, and the per-frame path sees only a small part of the frames."""
    import sys

    from analyzer.dissect.collector import EventCollector
    from analyzer.dissect.transport import Transport

    generator = Path(__file__).resolve().parent.parent / "benchmarks" / "make_big_capture.py"
    if not generator.exists():
        pytest.skip("benchmarks/make_big_capture.py not there")
    path = tmp_path / "b30k.pcap"
    subprocess.run([sys.executable, str(generator), "--frames", "30000", "--clients", "30", str(path)], check=True,
                   capture_output=True)
    fast = _events_with(path, True)
    assert fast == _events_with(path, False)
    registrations = sorted(e["frame"] for e in fast if e["kind"] == "request" and e["opnum"] == 4)
    if shutil.which("tshark"):  # the generator mixes in clients that never register: count with tshark
        out = subprocess.run(["tshark", "-r", str(path), "-o", "tcp.reassemble_out_of_order:TRUE", "-Y",
                              "dcerpc.pkt_type == 0 && dcerpc.opnum == 4", "-T", "fields", "-e", "frame.number"],
                             capture_output=True, text=True, check=True).stdout
        assert registrations == sorted(int(x) for x in out.split())
    assert len(registrations) >= 20
    with open_capture(path) as cap:
        transport = Transport(EventCollector())
        for batch in cap.batches():
            transport.feed(batch)
        transport.finish()
    assert transport.frames_seen == 30000
    assert transport.frames_parsed < 0.15 * transport.frames_seen, transport.frames_parsed
