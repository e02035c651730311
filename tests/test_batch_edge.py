"""Batch edge cases (issue 11 point 10, issue 9 item 6), each through the real CLI: special files, odd names,
unreadable files, a bad -o, a killed batch, two spellings of one path, a cut RESULTS file, and files that claim
to be captures but are not."""

from __future__ import annotations

import csv
import gzip
import io
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest


from test_batch import _children
from test_web_hostile import alive, slow_capture, wait_for

ROOT = Path(__file__).resolve().parent.parent
MAILPUSH = [sys.executable, "-m", "analyzer"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def batch(*args, cwd=None, timeout=120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(MAILPUSH + ["batch", *map(str, args)], cwd=cwd or ROOT, capture_output=True,
                          env=ENV, timeout=timeout, **kw)


def rows(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))


def test_fifo_device_and_socket_in_a_folder_are_error_rows_never_opened(tmp_path, captures_dir):
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(captures_dir / "push_working.pcap", d / "a.pcap")
    os.mkfifo(d / "fifo.pcap")  # opening it would block the batch for ever
    os.mkfifo(d / "fifo-noext")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(d / "sock"))
    has_device = os.geteuid() == 0
    if has_device:
        os.mknod(d / "zero", 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero: would never end
    out = tmp_path / "r.csv"
    try:
        run = batch(d, "-o", out, "--jobs", "1", timeout=60)
    finally:
        sock.close()
    assert run.returncode == 0, run.stderr
    table = {Path(r["file"]).name: r for r in rows(out)}
    assert "FIFO" in table["fifo.pcap"]["error"] and "FIFO" in table["fifo-noext"]["error"]
    assert "socket" in table["sock"]["error"]
    if has_device:
        assert "character device" in table["zero"]["error"]
    assert table["a.pcap"]["error"] == "" and table["a.pcap"]["verdict"]


def test_non_utf8_name_becomes_a_row_with_the_name_escaped(tmp_path, captures_dir):
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(captures_dir / "push_working.pcap", os.fsencode(d) + b"/caf\xe9.pcap")
    shutil.copy(captures_dir / "no_emsmdb.pcap", d / "plain.pcap")
    out = tmp_path / "r.csv"
    run = batch(d, "-o", out, "--jobs", "1")
    assert run.returncode == 0, run.stderr
    names = sorted(Path(r["file"]).name for r in rows(out))
    assert names == ["caf\\xe9.pcap", "plain.pcap"]
    escaped = [r for r in rows(out) if r["file"].endswith("caf\\xe9.pcap")][0]
    assert escaped["error"] == "" and escaped["verdict"] == "registered"


def test_unreadable_file_is_an_error_row_never_a_silent_skip(tmp_path, captures_dir):
    if os.geteuid() != 0:
        pytest.skip("needs root to run the batch as another user")
    base = Path(os.environ.get("TMPDIR", "/tmp")) / f"mailpush-perm-{os.getpid()}"
    shutil.rmtree(base, ignore_errors=True)
    d = base / "in"
    d.mkdir(parents=True)
    try:
        for folder in (base, d):
            os.chmod(folder, 0o777)
        shutil.copy(captures_dir / "push_working.pcap", d / "ok.pcap")
        shutil.copy(captures_dir / "no_emsmdb.pcap", d / "locked")  # no capture extension, content unreadable
        os.chmod(d / "locked", 0o000)
        os.chmod(d / "ok.pcap", 0o644)
        out = base / "r.csv"
        code, stderr = run_as_nobody(["batch", str(d), "-o", str(out), "--jobs", "1"], base)
        assert code == 0, stderr
        table = {Path(r["file"]).name: r for r in rows(out)}
        assert "Permission denied" in table["locked"]["error"]
        assert table["ok.pcap"]["error"] == ""
        assert "non-capture" not in stderr and "2 captures scored" in stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run_as_nobody(argv: list[str], workdir: Path) -> tuple[int, str]:
    """The real CLI (``analyzer.cli.main``) in a forked child that drops root for user nobody: root reads a
    000-mode file anyway. Forked, not exec'ed, because nobody may not be allowed to run this venv's python;
    the modules the batch needs are imported before the privileges go."""
    import analyzer.batch.runner  # noqa: F401
    import analyzer.cli.batch  # noqa: F401
    from analyzer.batch.worker import preload
    from analyzer.cli import main

    preload()
    import analyzer.report.safe_text  # noqa: F401
    import concurrent.futures.process  # noqa: F401
    import multiprocessing.synchronize  # noqa: F401
    import multiprocessing.popen_fork  # noqa: F401
    import tqdm  # noqa: F401

    err = workdir / "stderr.txt"
    pid = os.fork()
    if pid == 0:  # child
        code = 99
        try:
            fd = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
            os.dup2(fd, 2)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.chdir(workdir)
            sys.stderr = os.fdopen(2, "w", closefd=False)
            code = main(argv)
            sys.stderr.flush()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), err.read_text()


def test_output_is_checked_before_scoring_starts(tmp_path):
    held = slow_capture(tmp_path / "slow.pcap.gz", gigabytes=8)
    t0 = time.monotonic()
    run = batch(held, "-o", tmp_path, "--max-compression-ratio", "0", "--max-capture-gb", "100", timeout=60)
    assert run.returncode == 2 and b"is a directory" in run.stderr
    assert time.monotonic() - t0 < 20  # scoring the slow capture alone takes longer
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "file").write_text("x")
    run = batch(held, "-o", tmp_path / "ro" / "file" / "r.csv", timeout=60)
    assert run.returncode == 2 and b"cannot create directory" in run.stderr


def test_pool_workers_die_with_a_killed_batch(tmp_path):
    held = [slow_capture(tmp_path / f"slow{i}.pcap.gz", gigabytes=8) for i in range(2)]
    proc = subprocess.Popen(MAILPUSH + ["batch", *map(str, held), "-o", str(tmp_path / "r.csv"), "--jobs", "2",
                                        "--max-compression-ratio", "0", "--max-capture-gb", "100"],
                            cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = wait_for(lambda: len(_children(proc.pid)) >= 2 and _children(proc.pid), 30, "the pool workers")
    time.sleep(0.5)
    assert all(alive(w) for w in workers)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    wait_for(lambda: not any(alive(w) for w in workers), 5, "the pool workers to die with the batch")


def test_two_spellings_of_one_path_are_one_row(tmp_path, captures_dir):
    (tmp_path / "b1").mkdir()
    shutil.copy(captures_dir / "push_working.pcap", tmp_path / "b1" / "x.pcap")
    out = tmp_path / "r.csv"
    run = batch("b1/x.pcap", "./b1/x.pcap", "b1//x.pcap", "b1/../b1/x.pcap", "-o", out, "--jobs", "1", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert [r["file"] for r in rows(out)] == ["b1/x.pcap"]


def test_resume_scores_again_a_capture_whose_last_row_was_cut(tmp_path, captures_dir):
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(captures_dir / "push_working.pcap", d / "a.pcap")
    shutil.copy(captures_dir / "three_clients.pcap", d / "z-three.pcap")  # three rows, written last
    out = tmp_path / "r.csv"
    assert batch(d, "-o", out, "--jobs", "1").returncode == 0
    full = out.read_text()
    complete = rows(out)
    assert sum(r["file"].endswith("z-three.pcap") for r in complete) == 3
    out.write_text(full[: len(full) - 40])  # the last row cut (a killed batch, a cut copy)
    run = batch(d, "-o", out, "--jobs", "1", "--resume")
    assert run.returncode == 0, run.stderr
    assert b"1 captures scored; 1 already in results" in run.stderr
    again = rows(out)
    assert len(again) == len(complete)
    assert sorted((r["file"], r["client"], r["verdict"]) for r in again) == \
        sorted((r["file"], r["client"], r["verdict"]) for r in complete)


def test_files_that_claim_to_be_captures_are_error_rows_others_are_skipped_and_counted(tmp_path, captures_dir):
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(captures_dir / "push_working.pcap", d / "good.pcap")
    (d / "README.txt").write_text("notes about these captures\n")  # neither extension nor magic: skipped
    (d / "notes.gz").write_bytes(gzip.compress(b"plain text, gzip'd\n" * 10))  # gzip of text: skipped
    (d / "fake.pcap").write_text("this is not a capture at all\n" * 5)  # capture extension: error row
    (d / "fake.cap.gz").write_bytes(gzip.compress(b"not a capture either\n" * 5))
    (d / "magic.bin").write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1) +
                                  bytes(range(256)) * 8)  # pcap magic, then garbage
    (d / "netmon.dat").write_bytes(b"GMBU" + bytes(range(200)))  # NetMon magic, then garbage
    out = tmp_path / "r.csv"
    run = batch(d, "-o", out, "--jobs", "1")
    assert run.returncode == 0, run.stderr
    table = {Path(r["file"]).name: r for r in rows(out)}
    assert set(table) == {"good.pcap", "fake.pcap", "fake.cap.gz", "magic.bin", "netmon.dat"}
    assert "the name says capture (fake.pcap)" in table["fake.pcap"]["error"]
    assert "not a capture file" in table["fake.pcap"]["error"]
    assert "the name says capture (fake.cap.gz)" in table["fake.cap.gz"]["error"]
    assert "starts like a pcap file but no frame could be read" in table["magic.bin"]["error"]
    assert "NetMon" in table["netmon.dat"]["error"]
    assert table["good.pcap"]["error"] == ""
    assert b"2 non-capture files skipped" in run.stderr


def test_decompression_limits_reach_dask_workers(tmp_path):
    """Workers of a real LocalCluster started before the limits were set still apply them."""
    import distributed  # installed by make test: a broken install fails
    from analyzer.batch import score
    from analyzer.ingest.limits import configure

    from test_hostile_input import pcap_bomb

    bomb = tmp_path / "zeros.pcap.gz"
    pcap_bomb(bomb, 40)
    saved = {k: v for k, v in os.environ.items() if k.startswith("MAILPUSH_")}
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None)
    client = distributed.Client(cluster)
    try:
        configure(max_ratio=50, ratio_grace=4 << 20)
        table = score([str(bomb)], client=client)
    finally:
        client.close()
        cluster.close()
        for k in [k for k in os.environ if k.startswith("MAILPUSH_")]:
            del os.environ[k]
        os.environ.update(saved)
    assert "compression ratio above the limit of 50:1" in table["error"].iloc[0]
