"""The tshark engine (analyzer.dissect.tshark_engine.dissect_with_tshark, pyshark over tshark 4.0).

A session capture is written with scapy from the docs/protocol.md §1.10 vector and the PDU builders of test_dcerpc:
EMSMDB bind over two segments, a two-fragment opnum 4 with NTLM integrity trailers cut across three segments, its
two-fragment refused response in one segment, NSPI added by alter_context, an NSPI opnum 4 decoy and an EMSMDB
opnum 4 answered by a fault in shared segments, a packet-privacy call, an accepted registration, the UDP
notification, an ICMP administratively-prohibited error quoting it and a DNS reply (never a row).

The pyshark faults the engine contains are tested for real: a cut file, leftover tshark processes (checked in
/proc: psutil is not installed), a caller that is itself inside a running asyncio loop (as in Jupyter), and a PATH
without tshark.
"""

import asyncio
import os
import sys
from pathlib import Path

import pytest

from analyzer.dissect.tshark_engine import TSHARK_NOT_FOUND, TsharkNotFound, dissect_with_tshark  # noqa: E402
from analyzer.ingest import CaptureError  # noqa: E402

import test_dcerpc as T  # noqa: E402

CLIENT, SERVER = ("10.0.0.5", 50000), ("10.0.0.10", 49155)


def eth():
    """Ethernet header with fixed addresses (scapy would otherwise resolve MACs via ARP, slowly)."""
    from scapy.all import Ether

    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def write_session(path: Path) -> None:
    """The session described in the module doc. Frame numbers are fixed (the tests below rely on them)."""
    from scapy.all import ICMP, IP, TCP, UDP, Ether, wrpcap

    seq = {True: 1000, False: 5000}
    packets = [eth() / IP(src=CLIENT[0], dst=SERVER[0]) / TCP(sport=CLIENT[1], dport=SERVER[1], flags="S", seq=999),
               eth() / IP(src=SERVER[0], dst=CLIENT[0]) / TCP(sport=SERVER[1], dport=CLIENT[1], flags="SA",
                                                                seq=4999, ack=1000)]

    def send(from_client, data, cut=None):
        for piece in [data] if cut is None else T._cut(data, cut):
            (s, sp), (d, dp) = (CLIENT, SERVER) if from_client else (SERVER, CLIENT)
            packets.append(eth() / IP(src=s, dst=d) / TCP(sport=sp, dport=dp, flags="PA", seq=seq[from_client],
                                                            ack=seq[not from_client]) / piece)
            seq[from_client] += len(piece)

    zero = "00000000-0000-0000-0000-000000000000"
    verifier = bytes(range(16))
    send(True, T.bind(1, [(0, T.EMSMDB, 0, 81, [T.NDR64]), (1, T.EMSMDB, 0, 81, [T.NDR])]), cut=[50])  # 3, 4
    send(False, T.bind_ack(1, b"49155\x00", [(2, 2, zero), (0, 0, T.NDR)]))  # 5: ctx 0 rejected, ctx 1 accepted
    first = T.request(9, 1, 4, T.VECTOR_STUB[:40], flags=0x01, auth=(10, 5, verifier), alloc_hint=74)
    last = T.request(9, 1, 4, T.VECTOR_STUB[40:], flags=0x02, auth=(10, 5, verifier), alloc_hint=34)
    send(True, first + last, cut=[30, len(first) - 30 + 20])  # 6, 7, 8
    send(False, T.response(9, 1, bytes(20), flags=0x01, auth=(10, 5, verifier), alloc_hint=28)  # 9: both fragments
         + T.response(9, 1, bytes(4) + bytes.fromhex("02010480"), flags=0x02, auth=(10, 5, verifier), alloc_hint=8))
    send(True, T.bind(2, [(3, T.NSPI, 56, 0, [T.NDR])], ptype=14))  # 10
    send(False, T.bind_ack(2, b"", [(0, 0, T.NDR)], ptype=15))  # 11
    send(True, T.request(10, 3, 4, T.VECTOR_STUB) + T.request(11, 1, 4, T.VECTOR_STUB))  # 12: decoy + EMSMDB
    send(False, T.response(10, 3, bytes(40)) + T.fault(11, 1, 0x1C010002))  # 13
    send(True, T.request(12, 1, 4, bytes(74), auth=(10, 6, verifier), alloc_hint=74))  # 14: packet privacy
    send(False, T.response(12, 1, bytes(28), auth=(10, 6, verifier), alloc_hint=28))  # 15
    send(True, T.request(13, 1, 4, T.VECTOR_STUB))  # 16
    send(False, T.response(13, 1, bytes(28)))  # 17: accepted, status 0
    notification = bytes(range(16))
    packets.append(eth() / IP(src=SERVER[0], dst=CLIENT[0]) / UDP(sport=60000, dport=1234) / notification)  # 18
    packets.append(eth() / IP(src=CLIENT[0], dst=SERVER[0]) / ICMP(type=3, code=13)  # 19
                   / IP(src=SERVER[0], dst=CLIENT[0]) / UDP(sport=60000, dport=1234) / notification)
    packets.append(eth() / IP(src=SERVER[0], dst=CLIENT[0]) / UDP(sport=53, dport=1234) / b"x")  # 20: not a row
    for i, p in enumerate(packets):
        p.time = 1_700_000_000 + i * 0.01
    wrpcap(str(path), packets)


@pytest.fixture
def session(tmp_path, tshark) -> Path:
    path = tmp_path / "session.pcap"
    write_session(path)
    return path


def tshark_children() -> list[int]:
    """pids of live tshark processes whose parent is this test process (from /proc: psutil is not installed)."""
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1: stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        state, ppid = fields[0], int(fields[1])
        if ppid == me and comm.startswith("tshark"):
            found.append((int(entry), state))
    return found


def test_session_rows(session):
    events, info = dissect_with_tshark(session)
    assert (info.format, info.frames, info.warnings, info.truncated) == ("pcap", 20, [], False)
    keys = [(e.frame, e.kind, e.call_id) for e in events]
    assert keys == [(4, "bind", 1), (5, "bind_ack", 1), (7, "request", 9), (8, "request", 9), (9, "response", 9),
                    (9, "response", 9), (10, "alter_context", 2), (11, "alter_context_resp", 2),
                    (12, "request", 10), (12, "request", 11), (13, "response", 10), (13, "fault", 11),
                    (14, "request", 12), (15, "response", 12), (16, "request", 13), (17, "response", 13),
                    (18, "udp", None), (19, "icmp_unreachable", None)]
    bind, ack = events[0], events[1]
    assert (bind.interface, bind.interface_uuid, bind.interface_ver, bind.ctx_id) == (
        "EMSMDB", T.EMSMDB, "0.81", 0)
    assert (ack.interface, ack.ctx_id) == ("EMSMDB", 1)  # ctx 0 (NDR64 only) rejected, ctx 1 accepted

    frag1, register = events[2], events[3]
    assert (frag1.opnum, frag1.stub_len, frag1.callback) == (4, 40, None)
    assert (register.interface, register.opname, register.ctx_id, register.auth_level) == (
        "EMSMDB", "EcRRegisterPushNotification", 1, 5)
    assert (register.stub_len, register.callback, register.context_hex, register.advise_bits) == (
        74, "10.0.0.5:1234", bytes(range(16)).hex(), 0xFFFFFFFF)
    refused = events[5]
    assert (refused.status, refused.request_frame, refused.stub_len, refused.opnum) == (0x80040102, 8, 28, 4)

    decoy, emsmdb_call = events[8], events[9]
    assert (decoy.interface, decoy.opname, decoy.callback) == ("NSPI", "NspiSeekEntries", None)
    assert (emsmdb_call.interface, emsmdb_call.callback) == ("EMSMDB", "10.0.0.5:1234")
    fault = events[11]
    assert (fault.status, fault.request_frame, fault.opnum) == (0x1C010002, 12, 4)

    private = events[12]
    assert (private.encrypted, private.auth_level, private.stub_len, private.callback) == (True, 6, 74, None)
    accepted = events[15]
    assert (accepted.status, accepted.hnotification, accepted.request_frame) == (0, 0, 16)

    udp, icmp = events[16], events[17]
    assert (udp.src, udp.sport, udp.dst, udp.dport, udp.context_hex, udp.stub_len) == (
        SERVER[0], 60000, CLIENT[0], 1234, bytes(range(16)).hex(), 16)
    assert (icmp.icmp_type, icmp.icmp_code, icmp.quoted_src, icmp.quoted_dst, icmp.quoted_sport,
            icmp.quoted_dport) == (3, 13, SERVER[0], CLIENT[0], 60000, 1234)
    assert icmp.time == pytest.approx(1_700_000_000 + 18 * 0.01)


def test_truncated_file_keeps_events_before_the_cut(session, tmp_path):
    full, _ = dissect_with_tshark(session)
    data = session.read_bytes()
    cut = tmp_path / "cut.pcap"
    # cut inside frame 14's record: frames 1-13 are whole
    offset = 24
    for _ in range(13):
        offset += 16 + int.from_bytes(data[offset + 8: offset + 12], "little")
    cut.write_bytes(data[: offset + 30])
    events, info = dissect_with_tshark(cut)
    assert info.truncated and info.frames == 13
    assert any("cut short" in w for w in info.warnings), info.warnings
    assert any(f"byte {offset}" in w for w in info.warnings), info.warnings  # ingest's warning names the offset
    before = [(e.frame, e.kind, e.call_id, e.callback, e.status) for e in full if e.frame <= 13]
    assert [(e.frame, e.kind, e.call_id, e.callback, e.status) for e in events] == before
    assert not tshark_children()


def test_no_tshark_process_survives(session, public_dir):
    for path in [session, public_dir / "wiki-ShortMAPI.pcapng", public_dir / "zeek-netlogon.pcapng"]:
        dissect_with_tshark(path)
        assert tshark_children() == [], path.name  # neither running nor an unreaped zombie


def test_runs_inside_a_running_event_loop(session):
    """Jupyter runs cells inside a running asyncio loop; pyshark's sync API alone fails there with "This event
    loop is already running". The engine is called synchronously from a coroutine, as a notebook cell does."""
    reference, _ = dissect_with_tshark(session)

    async def cell():
        assert asyncio.get_running_loop().is_running()
        return dissect_with_tshark(session)

    events, info = asyncio.run(cell())
    assert [(e.frame, e.kind, e.callback) for e in events] == [(e.frame, e.kind, e.callback) for e in reference]
    assert info.frames == 20 and not tshark_children()


def test_missing_tshark_is_a_clear_error(session, tmp_path, monkeypatch):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(TsharkNotFound) as raised:
        dissect_with_tshark(session)
    assert str(raised.value) == TSHARK_NOT_FOUND
    assert isinstance(raised.value, CaptureError)  # handled by the CLI like any unreadable capture


def test_not_a_capture_is_a_clear_error(tmp_path, tshark):
    junk = tmp_path / "notes.cap"
    junk.write_text("these are not packets\n" * 20)
    with pytest.raises(CaptureError, match="not a capture file"):
        dissect_with_tshark(junk)
    with pytest.raises(CaptureError, match="no such file"):
        dissect_with_tshark(tmp_path / "missing.pcap")
    assert not tshark_children()


def test_progress_reports_bytes_as_the_native_engine(session, monkeypatch):
    """progress(bytes_done, bytes_total), as the ingest reader reports it: rising, ending at (size, size)."""
    from analyzer.dissect import tshark_engine

    monkeypatch.setattr(tshark_engine, "PROGRESS_EVERY", 5)  # every 5 frames instead of 1000: a small file will do
    seen = []
    events, info = dissect_with_tshark(session, progress=lambda done, total: seen.append((done, total)))
    size = session.stat().st_size
    assert info.frames == 20 and len(events) == 18
    assert len(seen) == 5 and seen[-1] == (size, size)  # after frames 5, 10, 15, 20, then the end
    assert all(total == size for _, total in seen)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen) and seen[0][0] == size * 5 // 20


def test_cli_without_tshark_says_so_without_a_traceback(session, tmp_path):
    import subprocess

    empty = tmp_path / "bin"
    empty.mkdir()
    done = subprocess.run([sys.executable, "-m", "analyzer", "events", str(session), "--engine", "tshark"],
                          env={**os.environ, "PATH": str(empty)}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 3
    assert TSHARK_NOT_FOUND in done.stderr and "Traceback" not in done.stderr
    assert done.stdout == ""


def test_ctrl_c_stops_tshark(tmp_path, tshark):
    """KeyboardInterrupt in the caller while tshark is still reading: raised to the caller, and the worker closes
    the capture so that no tshark process is left behind."""
    import _thread
    import threading
    import time

    import struct

    from scapy.all import IP, UDP

    path = tmp_path / "long.pcap"
    # 5000 copies of one datagram, records written directly (scapy's wrpcap takes seconds for this many)
    frame = bytes(eth() / IP(src="10.0.0.10", dst="10.0.0.5") / UDP(sport=60000, dport=1234) / bytes(4))
    record = struct.pack("<IIII", 1_700_000_000, 0, len(frame), len(frame)) + frame
    path.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1) + record * 5000)
    # Interrupt at the first progress report (after 1,000 of 5,000 frames, so tshark is surely still running):
    # a fixed timer raced a fast machine, where tshark had finished before it fired.
    fired = threading.Event()

    def interrupt_once(done, total):
        if not fired.is_set() and done < total:
            fired.set()
            _thread.interrupt_main()

    with pytest.raises(KeyboardInterrupt):
        dissect_with_tshark(path, progress=interrupt_once)
        time.sleep(5)  # only reached if the interrupt came after the call returned: then it lands here
    assert fired.is_set()
    deadline = time.monotonic() + 10
    while tshark_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert tshark_children() == []
