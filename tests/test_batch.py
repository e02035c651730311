"""Batch scoring: real process pool, real dask.distributed LocalCluster (separate worker processes), real CLI
subprocesses killed mid-batch and resumed."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from analyzer.batch import BATCH_COLUMNS, BatchReport, ResultsStore, expand_paths, local_cluster, score
from analyzer.pipeline import RESULT_COLUMNS

ROOT = Path(__file__).resolve().parent.parent
MAILPUSH = [sys.executable, "-m", "analyzer"]
REQUIRED = ["file", "sha256", "format", "frames", "client", "mailbox", "server", "verdict", "cause", "confidence",
            "callback", "register_status", "notifications", "polls", "poll_interval_s", "vantage", "error"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, public_dir) -> list[str]:
    """The project's sample captures when generated, else the public ones; plus a corrupt and a missing file."""
    d = tmp_path_factory.mktemp("batch-inputs")
    samples = sorted(p for p in (ROOT / "captures").glob("*") if p.is_file() and p.suffix in
                     (".pcap", ".pcapng", ".cap", ".gz"))
    files = [str(p) for p in samples] or [str(p) for p in sorted(public_dir.glob("*")) if p.suffix != ".md"]
    corrupt = d / "corrupt.pcap"  # not a capture at all: an error row
    corrupt.write_bytes(b"\x00\x01garbage, this is not a capture any more" * 20)
    damaged = d / "damaged.pcap"  # a pcap whose first record has an absurd length: read with a warning
    damaged.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
                        + struct.pack("<IIII", 1700000000, 0, 0x7FFFFFFF, 60) + b"\0" * 60)
    packed = d / "packed.pcap.gz"
    packed.write_bytes(gzip.compress((public_dir / "zeek-netlogon.pcapng").read_bytes()))
    return files + [str(corrupt), str(damaged), str(packed), str(d / "missing.pcap")]


@pytest.fixture(scope="module")
def local_table(inputs) -> pd.DataFrame:
    return score(inputs, jobs=2)


@pytest.fixture(scope="module")
def cluster():
    import distributed  # installed by make test: a broken install fails
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = distributed.Client(cluster)
    yield cluster, client
    client.close()
    cluster.close()


def test_columns_cover_the_issue(local_table):
    assert list(local_table.columns) == BATCH_COLUMNS
    assert set(REQUIRED) <= set(BATCH_COLUMNS)
    assert set(RESULT_COLUMNS) <= set(BATCH_COLUMNS)


def test_bad_files_are_error_rows_and_do_not_stop_the_batch(local_table, inputs):
    assert set(local_table["file"]) == set(inputs)
    missing = local_table[local_table["file"].str.endswith("missing.pcap")]
    assert len(missing) == 1 and missing["error"].iloc[0].startswith("cannot open: No such file")
    assert pd.isna(missing["sha256"].iloc[0])
    corrupt = local_table[local_table["file"].str.endswith("corrupt.pcap")]
    assert len(corrupt) == 1 and corrupt["error"].notna().all()
    assert len(corrupt["sha256"].iloc[0]) == 64
    # issue 9 item 6: a file that claims to be a capture but is not says why
    assert "not a capture file (pcap, pcapng, NetMon)" in corrupt["error"].iloc[0]
    assert "the name says capture (corrupt.pcap)" in corrupt["error"].iloc[0]
    damaged = local_table[local_table["file"].str.endswith("damaged.pcap")]
    assert len(damaged) == 1 and damaged["error"].notna().all()  # pcap magic, then nothing readable
    assert damaged["frames"].iloc[0] == 0
    assert "no frame could be read after its header" in damaged["error"].iloc[0]
    assert "damaged record at byte 24: record length 2147483647 bytes exceeds" in damaged["error"].iloc[0]


def test_rows_sorted_by_file_then_client(local_table):
    keys = list(zip(local_table["file"], local_table["client"].fillna("")))
    assert keys == sorted(keys)


def test_readable_captures_get_verdicts(local_table, inputs):
    ok = local_table[~local_table["file"].str.endswith(("corrupt.pcap", "missing.pcap", "damaged.pcap"))]
    assert ok["error"].isna().all(), ok[["file", "error"]]
    assert ok["verdict"].isin(["registered", "not_registered", "udp_blocked", "inconclusive"]).all()
    assert (ok["frames"] > 0).all()
    # no EMSMDB client in the public captures except ShortMAPI: one inconclusive row with an empty client
    plain = ok[ok["file"].str.contains("zeek-")]
    assert (plain["client"].fillna("") == "").all() and (plain["verdict"] == "inconclusive").all()


def test_batch_rows_equal_the_pipeline_table(local_table, inputs):
    """Batch adds only sha256 and the executor: every other cell is what the pipeline gives in-process."""
    import hashlib

    from analyzer.pipeline import analyze, results_dataframe

    # issue 9 item 6: batch turns files that claim to be captures but are not into error rows (checked in
    # test_bad_files_are_error_rows_and_do_not_stop_the_batch); every other row is the pipeline's
    claims = ("corrupt.pcap", "damaged.pcap")
    inputs = [p for p in inputs if not p.endswith(claims)]
    local_table = local_table[~local_table["file"].str.endswith(claims)].reset_index(drop=True)
    expected = results_dataframe(analyze(inputs))
    expected = expected.assign(_c=expected["client"].fillna("")).sort_values(["file", "_c"], kind="stable")
    expected = expected.drop(columns="_c").reset_index(drop=True)
    got = local_table.drop(columns="sha256")
    assert list(got.columns) == list(expected.columns)
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)
    for path, sha in zip(local_table["file"], local_table["sha256"]):
        if os.path.exists(path):
            assert sha == hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_dask_cluster_table_equals_local_pool_table(local_table, inputs, cluster):
    _, client = cluster
    dask_table = score(inputs, client=client)
    pd.testing.assert_frame_equal(dask_table, local_table)


def test_local_cluster_sets_the_worker_malloc_threshold_and_gives_the_same_table(local_table, inputs):
    """analyzer.batch.local_cluster: real worker processes started with the batch's malloc setting (runner.py says
    why), one thread each; same table as the local pool."""
    import distributed

    import dask

    from analyzer.batch.runner import CLUSTER_CONFIG, WORKER_ENVIRONMENT

    with local_cluster(2) as cluster, distributed.Client(cluster) as client:
        environ = client.run(lambda: {k: os.environ.get(k) for k in WORKER_ENVIRONMENT})
        config = client.run(lambda: {k: dask.config.get(k) for k in CLUSTER_CONFIG})
        threads = client.nthreads()
        table = score(inputs, client=client)
    assert len(environ) == 2 and all(e == WORKER_ENVIRONMENT for e in environ.values())
    assert all(c == CLUSTER_CONFIG for c in config.values())
    assert sorted(threads.values()) == [1, 1]
    pd.testing.assert_frame_equal(table, local_table)


@pytest.mark.parametrize("executor", ["pool", "dask"])
def test_resume_hashes_each_capture_once_and_the_rows_carry_the_right_hash(local_table, inputs, cluster, tmp_path,
                                                                          executor):
    """--resume hashes the captures to find the done ones; the workers reuse those hashes (not a second read).
    Half the captures in RESULTS, the rest scored: the table equals a fresh run's, hashes included."""
    readable = local_table.dropna(subset=["sha256"])
    first = sorted(set(readable["file"]))[: len(set(readable["file"])) // 2]
    out = tmp_path / "results.csv"
    score(first, jobs=1, output=str(out))
    client = cluster[1] if executor == "dask" else None
    report = BatchReport()
    table = score(inputs, jobs=None if client else 2, client=client, output=str(out), resume=True, report=report)
    assert report.resumed == len(first) and report.scored == len(inputs) - len(first)
    got = table.sort_values(["file", "client"], kind="stable").reset_index(drop=True)
    want = local_table.sort_values(["file", "client"], kind="stable").reset_index(drop=True)
    assert list(got["sha256"].fillna("")) == list(want["sha256"].fillna(""))
    assert list(got["verdict"].fillna("")) == list(want["verdict"].fillna(""))


def test_cli_on_dask_scheduler_address_writes_same_rows(local_table, inputs, cluster, tmp_path):
    c, _ = cluster
    out = tmp_path / "results.jsonl"
    proc = subprocess.run(MAILPUSH + ["batch", *inputs, "-o", str(out), "--scheduler", c.scheduler_address],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode in (0, 3), proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"batch: {len(inputs)} captures scored;")
    back = ResultsStore(str(out)).load()
    assert list(back["file"]) == list(local_table["file"])
    assert list(back["sha256"].fillna("")) == list(local_table["sha256"].fillna(""))
    assert list(back["error"].fillna("")) == list(local_table["error"].fillna(""))


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_results_file_round_trip_and_resume_without_duplicates(inputs, tmp_path, fmt):
    out = tmp_path / f"results.{fmt}"
    first = score(inputs[:4], jobs=1, output=str(out))
    assert len(first) >= 4
    assert not Path(str(out) + ".partial.jsonl").exists()
    second = score(inputs, jobs=2, output=str(out), resume=True)
    back = ResultsStore(str(out)).load()
    assert len(back) == len(second)
    assert back["file"].tolist() == second["file"].tolist()
    # each readable capture exactly once per client
    dup = second.dropna(subset=["sha256"]).duplicated(subset=["sha256", "client"])
    assert not dup.any()
    assert set(second["file"]) == set(inputs)


def test_torn_last_line_is_dropped(tmp_path):
    out = tmp_path / "r.jsonl"
    row = dict.fromkeys(BATCH_COLUMNS)
    row.update(file="a.pcap", sha256="ab" * 32, error="x")
    other = {**row, "file": "b.pcap", "sha256": "cd" * 32}
    out.write_text(json.dumps(row) + "\n" + json.dumps(other)[:40])
    back = ResultsStore(str(out)).load()
    assert len(back) == 1 and back["sha256"].iloc[0] == "ab" * 32
    # the torn row belonged to a capture with rows before it: all of them go, so --resume scores it again
    # (issue 11: "--resume tolerates a cut last row by scoring that capture again")
    out.write_text(json.dumps(row) + "\n" + json.dumps(other) + "\n" + json.dumps(other)[:60])
    back = ResultsStore(str(out)).load()
    assert back["file"].tolist() == ["a.pcap"]
    csv_out = tmp_path / "r.csv"
    csv_out.write_text(",".join(BATCH_COLUMNS) + "\n" + "a.pcap," + "ab" * 32 + "\n" + "b.pcap,cd")
    back = ResultsStore(str(csv_out)).load()
    assert back["file"].tolist() == ["a.pcap"]


def test_expand_paths_folders_globs_and_non_captures(tmp_path, public_dir):
    d = tmp_path / "site"
    (d / "sub").mkdir(parents=True)
    shutil.copy(public_dir / "zeek-netlogon.pcapng", d / "a.cap")
    shutil.copy(public_dir / "netmon23-authsod-ex2-1.cap", d / "sub" / "b.bin")
    (d / "sub" / "c.pcap.gz").write_bytes(gzip.compress((public_dir / "zeek-netlogon.pcapng").read_bytes()))
    (d / "README.txt").write_text("notes, not a capture")
    found, skipped = expand_paths([str(d), str(tmp_path / "site" / "*.cap"), str(d / "README.txt")])
    assert found == [str(d / "a.cap"), str(d / "sub" / "b.bin"), str(d / "sub" / "c.pcap.gz"), str(d / "README.txt")]
    assert skipped == 1  # README inside the folder; named explicitly it is scored (and gets an error row)


def test_cli_killed_mid_batch_then_resumed(tmp_path, public_dir):
    """Kill the CLI after it wrote the first rows; --resume then completes with every capture exactly once.

    The batch is held mid-way by a slow real capture among the inputs (gigabytes of zero-filled frames in
    multi-member gzip, scored with the ratio limit off) whose worker is SIGSTOPped: the interruption point is
    deterministic however fast the other captures are. (A FIFO was used before; FIFOs are now error rows that are
    never opened, issue 11.)"""
    from test_web_hostile import slow_capture

    d = tmp_path / "in"
    d.mkdir()
    names = []
    for i, src in enumerate(sorted(p for p in public_dir.glob("*") if p.suffix != ".md")):
        dst = d / f"{i:02d}-{src.name}"
        shutil.copy(src, dst)
        names.append(dst)
    held = slow_capture(d / "05-held.pcap.gz", gigabytes=8)
    inputs = sorted([str(p) for p in names] + [str(held)])
    out = tmp_path / "results.csv"
    proc = subprocess.Popen(MAILPUSH + ["batch", *inputs, "-o", str(out), "--jobs", "1", "--max-compression-ratio",
                                        "0", "--max-capture-gb", "100"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 60
        files = 0
        while time.time() < deadline:
            if out.exists():
                files = len(ResultsStore(str(out)).load()["file"].unique())
                if files >= 4:
                    break
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.05)
        for worker in _children(proc.pid):
            os.kill(worker, signal.SIGSTOP)  # holds the slow capture
        time.sleep(0.3)
        assert proc.poll() is None, "batch finished before it could be interrupted"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = ResultsStore(str(out)).load()
    assert 4 <= len(before["file"].unique()) < len(inputs)
    assert str(held) not in set(before["file"])

    held.write_bytes(gzip.compress((public_dir / "zeek-netlogon.pcapng").read_bytes()))  # now a small capture
    done = subprocess.run(MAILPUSH + ["batch", *inputs, "-o", str(out), "--jobs", "2", "--resume"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode in (0, 3), done.stderr
    summary = done.stderr.strip().splitlines()[-1]
    resumed = len(before["file"].unique())
    assert summary.startswith(f"batch: {len(inputs) - resumed} captures scored; {resumed} already in results;")
    after = ResultsStore(str(out)).load()
    assert not after.duplicated(subset=["file", "client"]).any()
    assert not after.dropna(subset=["sha256"]).duplicated(subset=["sha256", "client"]).any()
    assert set(after["file"]) == set(inputs)
    kept = after[after["file"].isin(before["file"])]
    assert dict(zip(kept["file"], kept["sha256"])) == dict(zip(before["file"], before["sha256"]))
    keys = list(zip(after["file"], after["client"].fillna("")))
    assert keys == sorted(keys)


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    if int(fh.read().rsplit(")", 1)[-1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return out


def test_cli_usage_errors_and_no_inputs(tmp_path):
    out = tmp_path / "r.csv"
    bad_jobs = subprocess.run(MAILPUSH + ["batch", str(tmp_path), "-o", str(out), "--jobs", "0"], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
    assert bad_jobs.returncode == 2 and "--jobs must be at least 1" in bad_jobs.stderr
    none = subprocess.run(MAILPUSH + ["batch", str(tmp_path / "nowhere" / "*.pcap"), "-o", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert none.returncode == 3
    assert "no captures found" in none.stderr and "Traceback" not in none.stderr
    text = tmp_path / "notes.txt"
    text.write_text("not a capture\n")
    only_bad = subprocess.run(MAILPUSH + ["batch", str(text), "-o", str(out), "--jobs", "1"], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
    assert only_bad.returncode == 3, only_bad.stderr  # not one capture could be read
    assert only_bad.stderr.strip().splitlines()[-1] == "batch: 1 captures scored; 1 rows: no verdicts; errors 1"
    rows = ResultsStore(str(out)).load()
    assert rows["file"].tolist() == [str(text)] and rows["error"].notna().all()
