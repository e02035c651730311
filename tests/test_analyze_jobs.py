"""`mailpush analyze --jobs N`: one capture split over N worker processes gives what one core gives.

Real captures only: every sample in captures/, every public capture, and generated ones where a fact learnt in one
share (an ept_map answer naming the EMSMDB port) changes what another share's connections do, at the frame where
it is learnt. The split is forced on these small files with MAILPUSH_SPLIT_MIN_BYTES=0 (below the size threshold
the CLI reads on one core)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import astuple
from pathlib import Path

import psutil
import pytest

from analyzer.dissect import dissect_capture
from analyzer.dissect.parallel import SplitError, dissect_split, split_refusal
from analyzer.dissect.share import share_of
from analyzer.pipeline import analyze_capture
from analyzer.report.formats import render_csv, render_json, render_text
from captures import samplelib as g
from tests.conftest import CAPTURES, PUBLIC, ROOT

SAMPLES = sorted(p for p in CAPTURES.iterdir() if p.suffix in (".pcap", ".pcapng", ".cap", ".gz"))
PUBLICS = sorted(p for p in PUBLIC.iterdir() if p.name != "README.md") if PUBLIC.is_dir() else []
SPLITS = (2, 3)


def _dissected(events, info):
    """Everything the later stages read from the dissection, comparable with ==."""
    warnings = [(str(w), type(w).__name__, getattr(w, "conn", None), getattr(w, "client", None),
                 getattr(w, "server", None), getattr(w, "capture_loss", None)) for w in info.warnings]
    return [astuple(e) for e in events], warnings, info.frames, info.start, info.end, info.truncated, \
        dict(info.linktypes)


@pytest.mark.parametrize("path", SAMPLES + PUBLICS, ids=lambda p: p.name)
def test_split_dissection_identical(path):
    one = _dissected(*dissect_capture(path))
    for jobs in SPLITS:
        notices = []
        assert _dissected(*dissect_split(path, jobs, notice=notices.append)) == one, jobs
        assert notices == [], notices  # exact without falling back to one core


@pytest.mark.parametrize("path", SAMPLES + PUBLICS, ids=lambda p: p.name)
def test_split_reports_identical(path, monkeypatch):
    monkeypatch.setenv("MAILPUSH_SPLIT_MIN_BYTES", "0")
    one = analyze_capture(str(path))
    expected = (render_json([one]), render_text([one], verbose=True), render_csv([one]))
    for jobs in SPLITS:
        split = analyze_capture(str(path), jobs=jobs)
        assert (render_json([split]), render_text([split], verbose=True), render_csv([split])) == expected, jobs


def _cross_share_capture(path: Path) -> Path:
    """Client 10.3.1.11 is mid-session with 10.0.0.10 on the EMSMDB port (no bind), and opens two more connections
    to that port whose first bytes are not DCE/RPC: one before and one after 10.3.1.15's ept_map answer names the
    port (t=20 s). One core follows the second from its SYN (the port is known by then) and warns that its bytes
    do not start at a PDU boundary; the first is never followed. The two clients are in different shares."""
    cap = g.Capture("jobs_cross_share", 3600, 4242)
    server, b_host, teacher = g.Host(g.EXCHANGE), g.Host("10.3.1.11"), g.Host("10.3.1.15")
    b = g.Outlook(cap, b_host, server, "amy")
    b.attach_mid_session()
    b.poll(5.0)  # before the port is known: labelled at the end (epm)
    before = g.Tcp(cap, b_host, server, g.EXCHANGE_PORT)
    before.handshake(8.0)
    before.send(8.01, True, b"not dce/rpc " * 20)
    g.epm_lookup(cap, teacher, server, 20.0)
    b.poll(40.0)  # after: labelled at once
    after = g.Tcp(cap, b_host, server, g.EXCHANGE_PORT)
    after.handshake(30.0)
    after.send(30.01, True, b"not dce/rpc " * 20)
    g.udp_datagram(cap, server, 1040, b_host, 2701, bytes(range(32)), 50.0)
    g.udp_datagram(cap, server, 1040, teacher, 2702, bytes(range(32)), 51.0)
    cap.finish()
    path.write_bytes(g.write_pcap(cap.sorted_frames))
    return path


def test_fact_of_one_share_changes_another(tmp_path):
    path = _cross_share_capture(tmp_path / "cross.pcap")
    for jobs in SPLITS:
        assert share_of("10.3.1.11", g.EXCHANGE, jobs) != share_of("10.3.1.15", g.EXCHANGE, jobs)
    events, info = dissect_capture(path)
    # The fact matters on one core: the connection opened after the ept_map answer is followed from its SYN
    boundary = [w for w in info.warnings if "does not start at a DCE/RPC PDU boundary" in w]
    assert len(boundary) == 1 and f":{g.EXCHANGE_PORT})" in boundary[0]
    assert {e.interface_source for e in events if e.src == "10.3.1.11" and e.kind == "request"} == {"epm"}
    one = _dissected(events, info)
    for jobs in SPLITS:
        notices = []
        assert _dissected(*dissect_split(path, jobs, notice=notices.append)) == one, jobs
        assert notices == []


def _warnings_capture(path: Path) -> Path:
    """Warnings of connections of every share, interleaved in time: bytes that do not start at a PDU boundary
    (while reading), PDUs cut by the end of the capture (while closing at the end), and a record cut in half (the
    reader's warning), so that the merged list must interleave the workers' warnings exactly as one core does."""
    cap = g.Capture("jobs_warnings", 5400, 777)
    server = g.Host(g.EXCHANGE)
    request = g.co_pdu(0, 7, g.request_body(0, 2, bytes(300)))
    conns = []
    for i in range(8):
        tcp = g.Tcp(cap, g.Host(f"10.3.1.{11 + i}"), server, 135)  # the endpoint mapper: followed from the SYN
        tcp.handshake(1.0 + i)
        conns.append(tcp)
    for rnd in range(3):
        for i, tcp in enumerate(conns):
            tcp.send(10.0 + rnd * 10 + i * 0.5 + (i % 3) * 0.01, True, b"garbage!" * (10 + i))
    for i, tcp in enumerate(conns[::-1]):
        tcp.send(50.0 + i, True, request[: 40 + i])  # a PDU the capture ends inside
    cap.finish()
    data, _keep = g.truncate(g.write_pcap(cap.sorted_frames), cap.sorted_frames, len(cap.sorted_frames) - 1)
    path.write_bytes(data)
    return path


def test_warnings_of_all_shares_in_one_core_order(tmp_path):
    path = _warnings_capture(tmp_path / "warnings.pcap")
    events, info = dissect_capture(path)
    kinds = [("boundary" if "PDU boundary" in w else "incomplete" if "incomplete" in w else "reader")
             for w in info.warnings]
    # the reader walks a whole batch before the transport sees it: its warning about the cut record comes first
    assert kinds.count("boundary") == 8 and kinds.count("incomplete") == 7 and kinds[0] == "reader", kinds
    one = _dissected(events, info)
    for jobs in SPLITS:
        got = _dissected(*dissect_split(path, jobs))
        assert got[1] == one[1], jobs
        assert got == one


@pytest.mark.parametrize("several", [False, True], ids=["one capture split", "several captures at once"])
def test_cli_jobs_identical_outputs(tmp_path, several):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MAILPUSH_SPLIT_MIN_BYTES": "0"}
    paths = [str(_cross_share_capture(tmp_path / "cross.pcap"))]
    if several:
        paths += [str(CAPTURES / "three_clients.pcap"), str(CAPTURES / "lost_segment_after_bind.pcap"),
                  str(tmp_path / "missing.pcap")]
    for fmt in ("json", "text", "csv", "html"):
        outputs = []
        for jobs in ("1", "2", "3"):
            out = tmp_path / f"{jobs}.{fmt}"
            proc = subprocess.run([sys.executable, "-m", "analyzer", "analyze", *paths, "--format", fmt, "-o",
                                   str(out), "--jobs", jobs], env=env, capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, proc.stderr
            outputs.append((out.read_bytes(), proc.stderr))
        assert outputs[1] == outputs[0] and outputs[2] == outputs[0], fmt


def test_cli_notices_and_usage(tmp_path, monkeypatch):
    monkeypatch.setenv("MAILPUSH_SPLIT_MIN_BYTES", "0")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MAILPUSH_SPLIT_MIN_BYTES": "0"}
    gz = CAPTURES / "icmp_unreachable.pcap.gz"
    proc = subprocess.run([sys.executable, "-m", "analyzer", "analyze", str(gz), "--jobs", "2", "--format", "json"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "gzip input is read on one core" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "analyzer", "analyze", str(gz), "--jobs", "0"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--jobs" in proc.stderr
    sample = CAPTURES / "push_working.pcap"
    assert split_refusal(sample, 1) == ""
    assert "--secrets" in split_refusal(sample, 2, secrets=["an account"])


def test_small_captures_are_not_split(monkeypatch):
    monkeypatch.delenv("MAILPUSH_SPLIT_MIN_BYTES", raising=False)
    assert split_refusal(CAPTURES / "push_working.pcap", 2) == ""  # one core, and no notice


def _long_capture(path: Path) -> Path:
    """~100k frames: long enough for a worker to be killed while it reads."""
    frames = []
    source = g.Capture("jobs_kill", 7200, 99)
    o = g.Outlook(source, g.Host("10.3.1.11"), g.Host(g.EXCHANGE), "amy")
    o.logon(1.0)
    for i in range(40):
        o.poll(2.0 + i)
    source.finish()
    for rep in range(800):
        frames.extend((ts + rep * 1_000_000_000, data) for ts, data in source.sorted_frames)
    path.write_bytes(g.write_pcap(frames))
    return path


def test_pool_worker_death_is_an_error_result(tmp_path):
    """Several captures with --jobs 2: a pool worker killed mid-way turns the captures being analysed into error
    results naming the cause, the queued one is analysed by a new pool; the command ends (no hang) and leaves no
    process behind."""
    long = _long_capture(tmp_path / "long.pcap")
    out = tmp_path / "out.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "analyzer", "analyze", str(long), str(long), str(long),
                             "--jobs", "2", "--format", "json", "-o", str(out)], env=env, stderr=subprocess.PIPE,
                            text=True)
    command = psutil.Process(proc.pid)
    killed, seen = False, set()
    deadline = time.monotonic() + 60
    while not killed and time.monotonic() < deadline and proc.poll() is None:
        for child in command.children():
            seen.add(child)
            try:
                child.kill()
                killed = True
                break
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.002)
    with contextlib.suppress(psutil.NoSuchProcess):
        seen.update(command.children())
    _out, err = proc.communicate(timeout=120)
    assert killed
    assert proc.returncode in (0, 3), err
    captures = json.loads(out.read_text())["captures"]
    errors = [c["error"] for c in captures if c.get("error")]
    assert errors and all("the worker process died" in e for e in errors), errors
    assert not captures[2].get("error")  # queued when the pool broke: analysed by a new pool
    time.sleep(0.5)
    assert not [p for p in seen if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_worker_death_is_an_error_not_a_hang(tmp_path):
    """A worker killed mid-way (as the OOM killer would) makes the split raise SplitError naming it, and leaves
    no worker behind."""
    path = _long_capture(tmp_path / "long.pcap")
    me = psutil.Process()
    killed = []

    def kill_a_worker():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not killed:
            for child in me.children():
                try:
                    os.kill(child.pid, signal.SIGKILL)
                    killed.append(child.pid)
                except ProcessLookupError:
                    continue
                return
            time.sleep(0.002)

    killer = threading.Thread(target=kill_a_worker)
    killer.start()
    try:
        with pytest.raises(SplitError, match=r"worker \d of 2 died"):
            dissect_split(path, 2)
    finally:
        killer.join()
    assert killed
    assert me.children() == []


def _pcap_records(data: bytes):
    pos, out = 24, []
    while pos + 16 <= len(data):
        incl = int.from_bytes(data[pos + 8 : pos + 12], "little")
        out.append((data[pos : pos + 16], data[pos + 16 : pos + 16 + incl]))
        pos += 16 + incl
    return data[:24], out


def _damaged_mix(seed: int, path: Path) -> Path:
    """Two samples interleaved by time, with frames dropped, duplicated, swapped, cut and bytes flipped: gaps,
    resynchronisation, malformed frames and warnings of several shares."""
    import random
    import struct

    rng = random.Random(seed)
    plain = [p for p in SAMPLES if p.suffix == ".pcap" and p.read_bytes()[:4] == b"\xd4\xc3\xb2\xa1"]
    header, records = _pcap_records(rng.choice(plain).read_bytes())
    records += _pcap_records(rng.choice(plain).read_bytes())[1]
    records.sort(key=lambda r: struct.unpack_from("<II", r[0], 0))
    out = bytearray(header)
    kept = []
    for head, data in records:
        x = rng.random()
        if x < 0.05:
            continue
        data = bytearray(data)
        if x < 0.12 and len(data) > 60:
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(14, len(data))] = rng.randrange(256)
        if x > 0.97 and len(data) > 60:
            data = data[: rng.randrange(14, len(data))]
        kept.append((head, bytes(data)))
        if rng.random() < 0.03:
            kept.append((head, bytes(data)))
    for _ in range(len(kept) // 20):
        i = rng.randrange(len(kept) - 1)
        kept[i], kept[i + 1] = kept[i + 1], kept[i]
    for head, data in kept:
        out += head[:8] + struct.pack("<II", len(data), len(data)) + data
    path.write_bytes(bytes(out))
    return path


@pytest.mark.parametrize("seed", range(12))
def test_damaged_mixes_split_identically(tmp_path, seed):
    path = _damaged_mix(seed, tmp_path / f"mix{seed}.pcap")
    one = _dissected(*dissect_capture(path))
    for jobs in SPLITS:
        notices = []
        assert _dissected(*dissect_split(path, jobs, notice=notices.append)) == one, jobs
        assert notices == []


@pytest.mark.parametrize("captures", [1, 2], ids=["split workers", "pool workers"])
def test_workers_die_with_the_command(tmp_path, captures):
    """kill -9 of `mailpush analyze --jobs 2` takes its workers with it (parent-death signal)."""
    long = _long_capture(tmp_path / "long.pcap")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MAILPUSH_SPLIT_MIN_BYTES": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "analyzer", "analyze", *[str(long)] * captures, "--jobs", "2",
                             "--format", "json", "-o", str(tmp_path / "out.json")], env=env,
                            stderr=subprocess.DEVNULL)
    command = psutil.Process(proc.pid)
    workers = []
    deadline = time.monotonic() + 60
    while not workers and time.monotonic() < deadline and proc.poll() is None:
        workers = command.children()
        time.sleep(0.002)
    assert workers, "no worker seen"
    proc.kill()
    proc.wait(timeout=30)
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive


def test_unsplittable_capture_falls_back_to_one_core(tmp_path):
    """A connection that binds the endpoint mapper and EMSMDB and calls both: a worker of the other share skips
    the EMSMDB call and would then decide an ept_map answer from incomplete call tables, so it says the split is
    not exact, and the capture is analysed on one core (same result, with a notice)."""
    cap = g.Capture("jobs_unsplittable", 9000, 31)
    client, server = g.Host("10.3.1.11"), g.Host(g.EXCHANGE)
    tcp = g.Tcp(cap, client, server, 135)
    tcp.handshake(1.0)
    rpc = g.Rpc(tcp)
    rpc.bind(1.01, [(0, g.EPM), (1, g.EMSMDB)], "135")
    cxh = g.handle(cap.rng)
    rpc.call(1.1, 1, 10, g.connect_request(g.DN % "amy", True), g.connect_response(cxh, 60000, True, "Amy"))
    rpc.call(1.2, 0, 3, g.ept_map_request(g.EMSMDB), g.ept_map_response(g.EMSMDB, g.EXCHANGE_PORT, server.ip))
    tcp.close(1.3)
    cap.finish()
    path = tmp_path / "mixed.pcap"
    path.write_bytes(g.write_pcap(cap.sorted_frames))
    one = _dissected(*dissect_capture(path))
    notices = []
    assert _dissected(*dissect_split(path, 2, notice=notices.append)) == one
    assert len(notices) == 1 and "mixes endpoint-mapper calls with other calls" in notices[0], notices
