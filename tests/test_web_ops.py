"""What an operator sees of the web service: Prometheus metrics at /metrics and the structured log lines of
`mailpush serve --log-format json` (one per request, one per job state change). Real servers, real uploads,
on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import wait_until_healthy
from prometheus_client.parser import text_string_to_metric_families

from test_web import ROOT, LiveServer, upload, wait_finished


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """/metrics parsed by prometheus-client's own parser: {(sample name, sorted labels): value}."""
    r = httpx.get(url + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def test_metrics_count_jobs_by_state_queue_per_user_and_upload_bytes(tmp_path, db_url, public_dir):
    payloads = [public_dir / "wiki-ShortMAPI.pcapng", public_dir / "zeek-netlogon.pcapng"]
    with LiveServer(tmp_path / "data", workers=0, max_upload_mb=1, db_url=db_url) as srv:  # nothing analysed
        alice, bob = srv.add_user("alice"), srv.add_user("bob")
        srv.add_user("carol")
        with srv.client(alice) as a, srv.client(bob) as b:
            for p in payloads:
                assert upload(a, p).status_code == 202
            assert upload(b, payloads[0]).status_code == 202
            big = tmp_path / "big.bin"
            big.write_bytes(b"\0" * (2 * 1024 * 1024))
            try:
                assert upload(b, big).status_code == 413
            except httpx.TransportError:
                pass  # the server answered 413 and closed before reading the body: the client may see a reset
        m = scrape(srv.url)  # no token needed, like /healthz
    assert m[("mailpush_database_up", ())] == 1
    assert m[("mailpush_jobs", (("state", "queued"),))] == 3
    assert m[("mailpush_jobs", (("state", "running"),))] == 0
    assert m[("mailpush_jobs", (("state", "done"),))] == 0 and m[("mailpush_jobs", (("state", "failed"),))] == 0
    assert m[("mailpush_queue_length", (("user", "alice"),))] == 2
    assert m[("mailpush_queue_length", (("user", "bob"),))] == 1
    assert m[("mailpush_queue_length", (("user", "carol"),))] == 0
    sizes = [p.stat().st_size for p in payloads] + [payloads[0].stat().st_size]
    assert m[("mailpush_upload_bytes_count", ())] == 3
    assert m[("mailpush_upload_bytes_sum", ())] == sum(sizes)
    assert m[("mailpush_uploads_rejected_total", (("reason", "too_large"),))] == 1
    assert not [k for k in m if k[0] == "mailpush_analysis_seconds_count"]  # nothing was analysed


def test_metrics_time_the_analyses_and_follow_the_job_to_done(tmp_path, db_url, public_dir):
    with LiveServer(tmp_path / "data", workers=1, db_url=db_url, plots_in_job=False) as srv:
        with srv.client(srv.add_user("alice")) as c:
            cid = upload(c, public_dir / "wiki-ShortMAPI.pcapng").json()["id"]
            assert wait_finished(c, cid)["status"] == "done"
            bad = tmp_path / "notes.txt"
            bad.write_text("not a capture\n")
            assert wait_finished(c, upload(c, bad).json()["id"])["status"] == "failed"
        m = scrape(srv.url)
    assert m[("mailpush_jobs", (("state", "done"),))] == 1 and m[("mailpush_jobs", (("state", "failed"),))] == 1
    assert m[("mailpush_jobs", (("state", "queued"),))] == 0
    assert m[("mailpush_queue_length", (("user", "alice"),))] == 0
    assert m[("mailpush_analysis_seconds_count", (("outcome", "done"),))] == 1
    assert m[("mailpush_analysis_seconds_count", (("outcome", "failed"),))] == 1
    assert 0 < m[("mailpush_analysis_seconds_sum", (("outcome", "done"),))] < 120
    # the histogram's buckets are cumulative: everything is under +Inf
    assert m[("mailpush_analysis_seconds_bucket", (("le", "+Inf"), ("outcome", "done")))] == 1


def test_metrics_still_answer_when_the_database_is_gone(tmp_path, postgres_cluster, postgres_url, public_dir):
    with LiveServer(tmp_path / "data", workers=0, db_url=postgres_url) as srv:
        with srv.client(srv.add_user("alice")) as c:
            assert upload(c, public_dir / "wiki-ShortMAPI.pcapng").status_code == 202
        before = scrape(srv.url)
        assert before[("mailpush_database_up", ())] == 1 and before[("mailpush_upload_bytes_count", ())] == 1
        postgres_cluster.drop_database(postgres_url)  # the database disappears under the running server
        after = scrape(srv.url)
    assert after[("mailpush_database_up", ())] == 0
    assert after[("mailpush_upload_bytes_count", ())] == 1  # what the process knows is still served
    assert not [k for k in after if k[0] == "mailpush_jobs"]


def test_restart_logs_each_interrupted_job_it_requeues_or_gives_up(tmp_path, db_url, public_dir, caplog):
    from sqlalchemy import update

    from analyzer.web.db import MAX_ATTEMPTS, RUNNING, Capture

    data = tmp_path / "data"
    with LiveServer(data, workers=0, db_url=db_url) as srv, srv.client(srv.add_user("alice")) as c:
        ids = [upload(c, public_dir / "wiki-ShortMAPI.pcapng").json()["id"] for _ in range(3)]
        with srv.db.session.begin() as s:  # a server killed while two of them were running
            s.execute(update(Capture).where(Capture.id == ids[0]).values(status=RUNNING, attempts=1))
            s.execute(update(Capture).where(Capture.id == ids[1]).values(status=RUNNING, attempts=MAX_ATTEMPTS))
    caplog.set_level("INFO", logger="mailpush.web.jobs")
    caplog.clear()  # only the lines of the second start
    with LiveServer(data, workers=0, db_url=db_url):
        pass
    lines = [(r.capture, r.state, r.attempts) for r in caplog.records if getattr(r, "event", None) == "job"]
    assert sorted(lines) == sorted([(ids[0], "queued", 1), (ids[1], "failed", MAX_ATTEMPTS)])


def _serve(tmp_path: Path, db: str, *extra: str) -> tuple[subprocess.Popen, str, str]:
    mailpush = [sys.executable, "-m", "analyzer"]
    data = str(tmp_path / "data")
    r = subprocess.run(mailpush + ["user", "add", "carol", "--data-dir", data, "--db", db], capture_output=True,
                       text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(mailpush + ["serve", "--port", str(port), "--data-dir", data, "--db", db,
                                        "--lazy-plots", *extra], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(proc, url, timeout=30)
    return proc, url, r.stdout.strip()


def _stop(proc: subprocess.Popen) -> list[str]:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    return [line for line in out.splitlines() if line.strip()]


def test_serve_json_log_has_one_line_per_request_and_per_job_state(tmp_path, db_url, public_dir):
    proc, url, token = _serve(tmp_path, db_url, "--log-format", "json", "--workers", "1")
    try:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
            cid = upload(c, public_dir / "wiki-ShortMAPI.pcapng").json()["id"]
            assert wait_finished(c, cid)["status"] == "done"
            assert c.delete(f"/api/captures/{cid}").status_code == 204
            assert httpx.get(url + "/api/captures").status_code == 401
    finally:
        lines = _stop(proc)
    records = [json.loads(line) for line in lines]  # every line, uvicorn's too, is one JSON object
    assert all({"time", "level", "logger", "message"} <= r.keys() and "color_message" not in r for r in records)
    assert not [r for r in records if r["logger"].startswith("alembic")]  # its set-up chatter is not logged
    assert any(r.get("event") == "start" and r["schema"] for r in records)
    requests = [r for r in records if r.get("event") == "request"]
    posts = [r for r in requests if r["method"] == "POST"]
    assert [(r["path"], r["status"], r["user"]) for r in posts] == [("/api/captures", 202, "carol")]
    polls = [r for r in requests if r["path"] == f"/api/captures/{cid}" and r["method"] == "GET"]
    assert polls and all(r["status"] == 200 and r["user"] == "carol" and r["duration_ms"] >= 0 for r in polls)
    assert [(r["status"], r["user"]) for r in requests if r["path"] == "/api/captures"
            and r["method"] == "GET"] == [(401, None)]
    jobs = [(r["state"], r.get("user")) for r in records if r.get("event") == "job" and r["capture"] == cid]
    assert jobs == [("queued", "carol"), ("running", None), ("done", None), ("deleted", "carol")]
    done = next(r for r in records if r.get("event") == "job" and r["state"] == "done")
    assert done["seconds"] > 0 and "error" not in done


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_serve_text_log_is_one_readable_line_per_request(tmp_path, db_url):
    proc, url, _ = _serve(tmp_path, db_url, "--workers", "0")
    try:
        assert httpx.get(url + "/healthz").status_code == 200
        assert httpx.get(url + "/metrics").status_code == 200
    finally:
        lines = _stop(proc)
    assert not any(line.startswith("{") for line in lines)
    healthz = [line for line in lines if "GET /healthz 200" in line]
    assert len(healthz) >= 2 and "mailpush.web.access" in healthz[-1] and "duration_ms=" in healthz[-1]
    assert sum("GET /metrics 200" in line for line in lines) == 1
