"""The web service attacked and mistreated (issue 11): each test starts the real server (``mailpush serve`` as a
process where it gets ``kill -9``, uvicorn in a thread otherwise), attacks it and asserts the outcome.

Slow jobs are real captures: gzip members of zero-filled Ethernet frames repeated (4 GB of frames in 4 MB,
analysed for tens of seconds once the ratio check is switched off); where the test must hold a job running it
SIGSTOPs the analysis process it finds through the server's pid file.

Every test runs twice, on SQLite and on PostgreSQL (the ``database`` fixture), except those marked
``sqlite_only`` whose mechanism belongs to SQLite (a database file on a full tmpfs, SQLite's max_page_count)."""

from __future__ import annotations

import gzip
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from analyzer.web.auth import add_user
from analyzer.web.db import Capture, Database, default_db_url
from analyzer.web.jobs import process_start_time

from conftest import DB_BACKENDS
from test_web import XHR, LiveServer, upload, wait_finished

ROOT = Path(__file__).resolve().parent.parent
MAILPUSH = str(Path(sys.executable).with_name("mailpush"))


# --- helpers ------------------------------------------------------------------------------------------------------


def slow_capture(path: Path, gigabytes: int = 4) -> Path:
    """A real pcap (gzip'd, multi-member) of ``gigabytes`` GB of zero-filled Ethernet frames, ~1 MB per GB."""
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    record = struct.pack("<IIII", 1_700_000_000, 0, 1500, 1500) + bytes(1500)
    member = gzip.compress(record * ((64 << 20) // len(record)), 9)
    path.write_bytes(gzip.compress(header) + member * (16 * gigabytes))
    return path


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        return int(fh.read().rsplit(")", 1)[-1].split()[1])


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def job_pid(data: Path, capture_id: str, timeout: float = 30) -> int:
    """The pid of a running analysis, once it leads its own process group (which it makes itself after arming
    its parent-death signal: only then may a test SIGSTOP it)."""
    pid_file = data / "jobs" / f"{capture_id}.pid"
    pid = wait_for(lambda: pid_file.is_file() and int(pid_file.read_text().split()[0]), timeout,
                   f"the analysis of {capture_id} to start")
    wait_for(lambda: os.getpgid(pid) == pid, timeout, "the analysis to lead its own process group")
    return pid


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pytest_generate_tests(metafunc):
    if "database" in metafunc.fixturenames and not metafunc.definition.get_closest_marker("sqlite_only"):
        metafunc.parametrize("database", DB_BACKENDS, indirect=True)


@pytest.fixture(autouse=True)
def database(request, monkeypatch, tmp_path):
    """URL of the database of the servers a test starts: None for the default SQLite file in the data directory,
    else a fresh database on the session's throwaway PostgreSQL cluster. LiveServer picks it up too."""
    url = request.getfixturevalue("postgres_url") if getattr(request, "param", "sqlite") == "postgresql" else None
    monkeypatch.setattr(LiveServer, "database", url)
    yield url
    if url is not None:  # the PostgreSQL variant really ran there, not on a SQLite file beside the uploads
        assert not list(tmp_path.rglob("*.db")), "a PostgreSQL test wrote a SQLite database"


class ServerProcess:
    """``mailpush serve`` in its own process (so that it can be killed with SIGKILL), on ``db`` (a database URL;
    None: SQLite in the data directory)."""

    def __init__(self, data: Path, *args: str, db: str | None = None):
        self.data = data
        if db is not None:
            args = ("--db", db, *args)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.log = open(data.parent / f"server-{self.port}.log", "w")
        self.proc = subprocess.Popen([MAILPUSH, "serve", "--port", str(self.port), "--data-dir", str(data), *args],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 60) -> "ServerProcess":
        def up():
            assert self.proc.poll() is None, f"server exited: {self.output()}"
            try:
                return httpx.get(self.url + "/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout, "the server to answer /healthz")
        return self

    def output(self) -> str:
        self.log.flush()
        return (self.data.parent / f"server-{self.port}.log").read_text()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


def token_for(data: Path, name: str, db_url: str | None = None) -> str:
    data.mkdir(parents=True, exist_ok=True)
    db = Database(db_url or default_db_url(data))
    try:
        return add_user(db, name)
    finally:
        db.dispose()


def status_of(data: Path, capture_id: str, db_url: str | None = None) -> tuple[str, int]:
    db = Database(db_url or default_db_url(data))
    try:
        with db.session() as s:
            row = s.get(Capture, capture_id)
            return row.status, row.attempts
    finally:
        db.dispose()


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    return slow_capture(tmp_path_factory.mktemp("slow") / "zeros.pcap.gz")


NO_RATIO = ("--max-compression-ratio", "0", "--max-capture-gb", "100")


# --- 4: job lifecycle ---------------------------------------------------------------------------------------------


def test_delete_of_a_running_job_kills_it_and_removes_its_files_before_answering(tmp_path, bomb, database):
    data = tmp_path / "data"
    token = token_for(data, "alice", database)
    srv = ServerProcess(data, "--workers", "1", *NO_RATIO, db=database).wait_ready()
    try:
        with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
            capture_id = upload(c, bomb).json()["id"]
            pid = job_pid(data, capture_id)
            os.kill(pid, signal.SIGSTOP)  # hold it "running" however fast the machine is
            assert c.get(f"/api/captures/{capture_id}").json()["status"] == "running"
            assert c.delete(f"/api/captures/{capture_id}").status_code == 204
            # when DELETE has answered, the process is gone and so are its files
            assert not alive(pid)
            assert not list((data / "uploads").iterdir())
            assert not (data / "plots" / capture_id).exists()
            assert c.get(f"/api/captures/{capture_id}").status_code == 404
            time.sleep(0.5)
            assert not (data / "jobs" / f"{capture_id}.pid").exists()
            assert httpx.get(srv.url + "/healthz").json()["status"] == "ok"  # and the worker is free again
    finally:
        srv.stop()


def test_kill_9_of_the_server_leaves_no_process_and_restart_runs_the_job_once(tmp_path, bomb, database):
    data = tmp_path / "data"
    token = token_for(data, "alice", database)
    srv = ServerProcess(data, "--workers", "1", *NO_RATIO, db=database).wait_ready()
    with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
        capture_id = upload(c, bomb).json()["id"]
    pid = job_pid(data, capture_id)
    forkserver = parent_of(pid)
    assert forkserver != srv.proc.pid and parent_of(forkserver) == srv.proc.pid
    os.kill(pid, signal.SIGSTOP)
    srv.kill()
    # the fork server dies with the server, the analysis with the fork server
    wait_for(lambda: not alive(forkserver), 10, "the fork server to die with the server")
    wait_for(lambda: not alive(pid), 10, "the analysis to die with the fork server")
    assert status_of(data, capture_id, database) == ("running", 1)

    # an orphan a previous server could not take with it (here: a process group a server of another version
    # left, recorded in the job's pid file) is killed at start, before the job is run again
    orphan = subprocess.Popen(["sleep", "600"], start_new_session=True)
    (data / "jobs" / f"{capture_id}.pid").write_text(f"{orphan.pid} {process_start_time(orphan.pid)}\n")
    srv2 = ServerProcess(data, "--workers", "2", *NO_RATIO, db=database).wait_ready()
    try:
        assert orphan.wait(10) == -signal.SIGKILL
        new_pid = job_pid(data, capture_id)
        assert new_pid not in (pid, orphan.pid)
        time.sleep(1.0)
        assert status_of(data, capture_id, database) == ("running", 2)  # taken once again, not twice
        assert [p.name for p in (data / "jobs").glob("*.pid")] == [f"{capture_id}.pid"]
        # a second server on the same data directory refuses to start instead of running the job again
        third = ServerProcess(data, "--workers", "1", db=database)
        assert third.proc.wait(60) != 0
        assert "another mailpush server is using the data directory" in third.output()
        third.stop()
        assert alive(new_pid)
    finally:
        srv2.stop()
    wait_for(lambda: not alive(new_pid), 10, "the analysis to end with a stopped server")


def test_kill_9_mid_upload_leaves_a_part_file_that_the_next_start_removes(tmp_path, bomb, database):
    data = tmp_path / "data"
    token = token_for(data, "alice", database)
    srv = ServerProcess(data, "--workers", "0", db=database).wait_ready()
    body_head = (b"--xx\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.pcap\"\r\n"
                 b"Content-Type: application/octet-stream\r\n\r\n")
    sock = socket.create_connection(("127.0.0.1", srv.port))
    sock.sendall(b"POST /api/captures HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token.encode() +
                 b"\r\nContent-Type: multipart/form-data; boundary=xx\r\nContent-Length: 3000000\r\n\r\n" +
                 body_head + bomb.read_bytes()[:1_000_000])
    parts = wait_for(lambda: list((data / "uploads").glob("*.part")), 20, "the partial upload on disk")
    srv.kill()
    sock.close()
    assert parts[0].exists()  # left behind by the killed server
    srv2 = ServerProcess(data, "--workers", "0", db=database).wait_ready()
    try:
        assert not list((data / "uploads").glob("*.part"))
    finally:
        srv2.stop()


# --- 6: fair queue, worker cap ------------------------------------------------------------------------------------


def test_one_users_backlog_does_not_starve_another_user(tmp_path, bomb, public_dir):
    small = public_dir / "wiki-ShortMAPI.pcapng"
    with LiveServer(tmp_path / "data", workers=1, plots_in_job=False, max_compression_ratio=0,
                    max_capture_gb=100, max_upload_mb=10) as srv:
        alice, bob = srv.add_user("alice"), srv.add_user("bob")
        with srv.client(alice) as a, srv.client(bob) as b:
            blocker = upload(a, bomb).json()["id"]  # holds the only worker
            pid = job_pid(srv.app.state.store.root, blocker)
            os.kill(pid, signal.SIGSTOP)
            backlog = [upload(a, small, filename=f"a{i}.pcapng").json()["id"] for i in range(6)]
            bobs = upload(b, small, filename="b.pcapng").json()["id"]
            assert a.delete(f"/api/captures/{blocker}").status_code == 204  # frees the worker
            for cid in backlog:
                wait_finished(a, cid, timeout=120)
            wait_finished(b, bobs, timeout=120)
            with srv.db.session() as s:
                started = {c.id: c.started_at for c in s.query(Capture).all()}
        order = sorted(started, key=lambda cid: started[cid])
        # round robin: after alice's job, bob's; not after alice's whole backlog
        assert order.index(bobs) <= 1, [("bob" if c == bobs else "alice") for c in order]


def test_workers_are_capped_and_idle_workers_do_not_spin(tmp_path):
    from analyzer.web.worker import MAX_WORKERS

    before = threading.active_count()
    with LiveServer(tmp_path / "data", workers=1000, plots_in_job=False) as srv:
        assert srv.app.state.pool.workers == MAX_WORKERS
        assert httpx.get(srv.url + "/healthz").json()["workers"] == MAX_WORKERS
        assert threading.active_count() - before <= MAX_WORKERS + 4
        time.sleep(1.0)
        cpu0, wall0 = time.process_time(), time.monotonic()
        time.sleep(3.0)
        used = time.process_time() - cpu0
        assert used < 0.3 * (time.monotonic() - wall0), f"idle server used {used:.2f} s of CPU in 3 s"


def test_serve_warns_when_workers_are_capped(tmp_path, database):
    data = tmp_path / "data"
    srv = ServerProcess(data, "--workers", "1000", db=database).wait_ready()
    try:
        assert "capped at" in srv.output()
    finally:
        srv.stop()


# --- 7: disk full -------------------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A real filesystem of 120 MB (tmpfs; needs root, as `make test` runs in CI)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=120m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def fill(disk: Path, leave_bytes: int) -> Path:
    filler = disk / "filler"
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with open(filler, "ab") as fh:
        fh.write(bytes(max(0, free - leave_bytes)))
    return filler


@pytest.mark.sqlite_only(reason="the login 507 is the SQLite file on the full tmpfs failing to store the session")
def test_full_disk_gives_507_for_uploads_and_login_and_concurrent_uploads_reserve_room(small_disk, public_dir):
    small = public_dir / "wiki-ShortMAPI.pcapng"
    with LiveServer(small_disk / "data", workers=0, max_upload_mb=5) as srv:
        token = srv.add_user("alice")
        # room for two uploads at their largest (5 MB each) beside the 64 MB margin, not for six
        fill(small_disk, (64 + 12) << 20)

        def slow_body():
            yield b"--xx\r\nContent-Disposition: form-data; name=\"file\"; filename=\"s.pcapng\"\r\n\r\n"
            for _ in range(10):
                time.sleep(0.1)
                yield b"\0" * 1000
            yield small.read_bytes() + b"\r\n--xx--\r\n"

        def one(_):
            with srv.client(token) as c:
                return c.post("/api/captures", content=slow_body(),
                              headers={"Content-Type": "multipart/form-data; boundary=xx"}).status_code

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(6) as ex:
            codes = sorted(ex.map(one, range(6)))
        assert codes.count(202) == 2 and codes.count(507) == 4, codes

        # the disk is really full now: uploads and logins get 507 with a clear message, never 400/500/reset
        fill(small_disk, 0)
        with srv.client(token) as c:
            r = upload(c, small)
            assert r.status_code == 507 and "disk space" in r.json()["detail"]
        with srv.client() as browser:
            r = browser.post("/login", data={"token": token}, headers=XHR, follow_redirects=False)
            assert r.status_code == 507, r.text
            assert "disk space" in r.json()["detail"]
        assert httpx.get(srv.url + "/healthz").status_code == 200


def test_upload_that_hits_enospc_midway_gets_507_and_leaves_nothing(small_disk, public_dir):
    with LiveServer(small_disk / "data", workers=0, max_upload_mb=100) as srv:
        token = srv.add_user("alice")
        import analyzer.web.storage as storage

        storage.DISK_MARGIN, saved = 0, storage.DISK_MARGIN  # let the upload start: the disk fills during it
        try:
            fill(small_disk, 2 << 20)
            srv.app.state.store.free_bytes = lambda: 1 << 40  # a free-space figure that lies (thin provisioning)
            with srv.client(token) as c:
                r = c.post("/api/captures", files={"file": ("big.pcap", os.urandom(8 << 20))})
            assert r.status_code == 507 and "disk space" in r.json()["detail"]
            assert not list((small_disk / "data" / "uploads").iterdir())
        finally:
            storage.DISK_MARGIN = saved


@pytest.mark.sqlite_only(reason="the full database is SQLite's max_page_count")
def test_result_that_cannot_be_saved_ends_failed_and_is_retried(tmp_path, captures_dir):
    """SQLite's own "database or disk is full" (its max_page_count reached) when the result is written."""
    from sqlalchemy import event, text

    capture = captures_dir / "three_clients.pcap"  # a result of ~8 KB: needs new pages in the database
    with LiveServer(tmp_path / "data", workers=1, plots_in_job=False) as srv:
        token = srv.add_user("alice")
        engine = srv.db.engine
        with engine.connect() as conn:
            conn.exec_driver_sql("VACUUM")  # no free pages left for the result to use
            pages = conn.execute(text("PRAGMA page_count")).scalar()

        def cap_pages(dbapi_conn, _record):
            dbapi_conn.execute(f"PRAGMA max_page_count = {pages + 1}")

        event.listen(engine, "connect", cap_pages)
        engine.dispose()
        with srv.client(token) as c:
            r = upload(c, capture)
            assert r.status_code == 202, r.text
            capture_id = r.json()["id"]
            doc = wait_finished(c, capture_id, timeout=60)
            assert doc["status"] == "failed"
            assert "could not be saved" in doc["error"] and "full" in doc["error"], doc["error"]
            # room again: the housekeeping re-queues it and it ends done
            event.remove(engine, "connect", cap_pages)
            engine.dispose()
            deadline = time.monotonic() + 60
            while (doc := c.get(f"/api/captures/{capture_id}").json())["status"] != "done":
                assert time.monotonic() < deadline, f"not retried after room came back: {doc}"
                time.sleep(0.2)
            assert len(doc["result"]["clients"]) == 3


# --- 9: cookies, CSRF, docs ---------------------------------------------------------------------------------------


def test_cookie_is_secure_behind_a_trusted_tls_proxy_only(tmp_path, database):
    data = tmp_path / "data"
    token = token_for(data, "alice", database)
    srv = ServerProcess(data, "--workers", "0", "--forwarded-allow-ips", "127.0.0.1", db=database).wait_ready()
    try:
        login = {"token": token}
        via_tls = httpx.post(srv.url + "/login", data=login, follow_redirects=False,
                             headers={**XHR, "X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7"})
        assert via_tls.status_code == 303
        assert "secure" in via_tls.headers["set-cookie"].lower()
        plain = httpx.post(srv.url + "/login", data=login, follow_redirects=False, headers=XHR)
        assert plain.status_code == 303 and "secure" not in plain.headers["set-cookie"].lower()
    finally:
        srv.stop()
    # without --forwarded-allow-ips the proxy header of anyone is ignored
    srv = ServerProcess(data, "--workers", "0", db=database).wait_ready()
    try:
        r = httpx.post(srv.url + "/login", data={"token": token}, follow_redirects=False,
                       headers={**XHR, "X-Forwarded-Proto": "https"})
        assert r.status_code == 303 and "secure" not in r.headers["set-cookie"].lower()
    finally:
        srv.stop()


def test_login_and_logout_refuse_cross_site_forms(tmp_path):
    with LiveServer(tmp_path / "data", workers=0) as srv:
        token = srv.add_user("alice")
        with srv.client() as browser:
            # what a cross-site <form method=post action=/login> sends: no custom header
            r = browser.post("/login", data={"token": token}, follow_redirects=False,
                             headers={"Origin": "https://evil.example"})
            assert r.status_code == 403 and "X-Requested-With" in r.json()["detail"]
            assert "set-cookie" not in r.headers
            ok = browser.post("/login", data={"token": token}, follow_redirects=False, headers=XHR)
            assert ok.status_code == 303
            browser.cookies.set("mailpush_session", ok.cookies["mailpush_session"])
            assert browser.post("/logout", follow_redirects=False).status_code == 403  # still logged in
            assert browser.get("/api/captures").status_code == 200
            assert browser.post("/logout", follow_redirects=False, headers=XHR).status_code == 303


def test_docs_work_offline_from_pinned_local_assets(tmp_path):
    with LiveServer(tmp_path / "data", workers=0) as srv:
        token = srv.add_user("alice")
        with srv.client() as browser:
            ok = browser.post("/login", data={"token": token}, follow_redirects=False, headers=XHR)
            browser.cookies.set("mailpush_session", ok.cookies["mailpush_session"])
            page = browser.get("/docs")
            assert page.status_code == 200
            assert "cdn" not in page.text.lower() and "https://" not in page.text.split("<body>")[0]
            assert "/docs-assets/swagger-ui-bundle.js" in page.text
            csp = page.headers["content-security-policy"]
            assert "http" not in csp
            js = browser.get("/docs-assets/swagger-ui-bundle.js")
            css = browser.get("/docs-assets/swagger-ui.css")
            assert js.status_code == 200 and len(js.content) > 100_000 and b"SwaggerUIBundle" in js.content
            assert css.status_code == 200 and b".swagger-ui" in css.content


# --- 11: pagination -----------------------------------------------------------------------------------------------


def test_captures_page_paginates(tmp_path, public_dir):
    import datetime as dt

    from analyzer.web.app import CAPTURES_PER_PAGE

    with LiveServer(tmp_path / "data", workers=0) as srv:
        token = srv.add_user("alice")
        with srv.client(token) as c:
            first = upload(c, public_dir / "wiki-ShortMAPI.pcapng").json()
        user_id = None
        with srv.db.session.begin() as s:
            row = s.get(Capture, first["id"])
            user_id = row.user_id
            base = dt.datetime(2024, 1, 1)
            for i in range(2 * CAPTURES_PER_PAGE + 5):
                s.add(Capture(id=f"{i:016x}", user_id=user_id, filename=f"c{i:04d}.pcap", size=1, sha256="0" * 64,
                              uploaded_at=base + dt.timedelta(seconds=i), status="failed", error="x"))
        total = 2 * CAPTURES_PER_PAGE + 6
        with srv.client() as browser:
            ok = browser.post("/login", data={"token": token}, follow_redirects=False, headers=XHR)
            browser.cookies.set("mailpush_session", ok.cookies["mailpush_session"])
            seen = []
            for page in (1, 2, 3):
                html = browser.get(f"/?page={page}").text
                assert f"page {page} of 3" in html and f"{total} captures" in html
                seen += re.findall(r">c(\d{4})\.pcap</a>", html)
            assert len(set(seen)) == total - 1  # every capture is on exactly one page (the upload has another name)
            assert 'rel="next"' in browser.get("/?page=1").text and 'rel="next"' not in browser.get("/?page=3").text
            assert "page 3 of 3" in browser.get("/?page=99").text


# --- 1, 2: decompression bombs uploaded to the server ---------------------------------------------------------


def test_gzip_bombs_uploaded_to_the_server_fail_fast_naming_the_limit(tmp_path, database):
    from test_hostile_input import netmon_bomb, pcap_bomb

    data = tmp_path / "data"
    token = token_for(data, "alice", database)
    pcap = tmp_path / "zeros.pcap.gz"
    pcap_bomb(pcap, 300)  # 300 MB of zeros in ~300 KB
    netmon = tmp_path / "zeros.cap.gz"
    netmon_bomb(netmon, 300)
    # default ratio limit (200:1) with a small grace; a size limit of 0.1 GB for the ratio-free run
    srv = ServerProcess(data, "--workers", "2", db=database).wait_ready()
    try:
        with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
            t0 = time.monotonic()
            docs = [wait_finished(c, upload(c, p).json()["id"], timeout=60) for p in (pcap, netmon)]
            assert time.monotonic() - t0 < 60
        for doc in docs:
            assert doc["status"] == "failed"
            assert "compression ratio above the limit of 200:1" in doc["error"], doc["error"]
        assert not list((data / "tmp").iterdir())  # the NetMon spool lived there and is gone
    finally:
        srv.stop()
    srv = ServerProcess(data, "--workers", "1", "--max-capture-gb", "0.1", "--max-compression-ratio", "0",
                        db=database).wait_ready()
    try:
        with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
            doc = wait_finished(c, upload(c, netmon).json()["id"], timeout=60)
        assert doc["status"] == "failed" and "more than the limit of 102.4 MB" in doc["error"], doc["error"]
    finally:
        srv.stop()
