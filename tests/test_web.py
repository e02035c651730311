"""Web service tests: a real uvicorn server on a free loopback port, real captures as uploads, talked to over HTTP
with httpx. Every test that starts a server runs twice: on a real SQLite file in tmp_path and on a fresh database
of a throwaway PostgreSQL cluster (psycopg 3). (The browser test is in test_web_browser.py.)"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from sqlalchemy import update

from analyzer.web import create_app
from analyzer.web.auth import add_user
from analyzer.web.db import RUNNING, Capture
from conftest import DB_BACKENDS, wait_until_healthy

ROOT = Path(__file__).resolve().parent.parent
TERMINAL = ("done", "failed")
XHR = {"X-Requested-With": "XMLHttpRequest"}  # the anti-CSRF proof of cookie routes, login and logout


class LiveServer:
    """The real app under uvicorn in a thread, on a socket bound to 127.0.0.1:0 (no port race)."""

    # Database of the servers a test starts (set per test by the live_database fixture); None: SQLite in data_dir.
    database: str | None = None

    def __init__(self, data_dir: Path, workers: int = 2, max_upload_mb: float = 5, db_url: str | None = None,
                 **options):
        self.app = create_app(db_url or LiveServer.database, data_dir, max_upload_mb, workers, **options)
        self.db = self.app.state.db
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = "http://127.0.0.1:%d" % self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            assert self.thread.is_alive(), "server thread died"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()

    def add_user(self, name: str) -> str:
        return add_user(self.db, name)

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


def upload(client: httpx.Client, path: Path, filename: str | None = None) -> httpx.Response:
    with open(path, "rb") as fh:
        return client.post("/api/captures", files={"file": (filename or path.name, fh, "application/octet-stream")})


def wait_finished(client: httpx.Client, capture_id: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        doc = client.get(f"/api/captures/{capture_id}").json()
        if doc["status"] in TERMINAL:
            return doc
        assert time.monotonic() < deadline, f"capture {capture_id} still {doc['status']} after {timeout}s"
        time.sleep(0.1)


def pytest_generate_tests(metafunc):
    """Each test runs against SQLite and PostgreSQL, except those marked single_database (they start no server)."""
    if "live_database" in metafunc.fixturenames and not metafunc.definition.get_closest_marker("single_database"):
        metafunc.parametrize("live_database", DB_BACKENDS, indirect=True)


@pytest.fixture(autouse=True)
def live_database(request, monkeypatch):
    backend = getattr(request, "param", "sqlite")
    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else None
    monkeypatch.setattr(LiveServer, "database", url)
    return backend


@pytest.fixture
def server(tmp_path):
    # plots drawn on first view: matplotlib would dominate these tests' time (eager plots are tested below)
    with LiveServer(tmp_path / "data", plots_in_job=False) as srv:
        yield srv


@pytest.fixture
def shortmapi(public_dir) -> Path:
    return public_dir / "wiki-ShortMAPI.pcapng"


def sample_captures() -> list[tuple[Path, dict | None]]:
    """Upload payloads: the project's sample captures with their manifest entries when the generator has
    written them, else the real public captures (no expected verdict)."""
    manifest = ROOT / "captures" / "manifest.json"
    if manifest.is_file():
        entries = json.loads(manifest.read_text())
        if isinstance(entries, dict):
            entries = entries.get("captures", list(entries.values()))
        out = []
        for e in entries:
            p = ROOT / "captures" / e["file"]
            if p.is_file():
                out.append((p, e))
        if out:
            return out
    from conftest import PUBLIC

    return [(p, None) for p in sorted(PUBLIC.glob("*")) if p.suffix in (".pcap", ".pcapng", ".cap")]


# --- service basics -------------------------------------------------------------------------------------------


def test_healthz_needs_no_token_and_reports_ok(server):
    r = httpx.get(server.url + "/healthz")
    assert r.status_code == 200
    assert r.json()["status"] == "ok" and r.json()["workers"] == 2


def test_openapi_documents_the_routes_for_logged_in_users(server):
    with server.client(server.add_user("alice")) as c:
        spec = c.get("/openapi.json").json()
    assert {"/api/captures", "/api/captures/{capture_id}", "/api/captures/{capture_id}/report.html",
            "/api/captures/{capture_id}/results.csv", "/api/captures/{capture_id}/plots/{name}.png",
            "/healthz"} <= spec["paths"].keys()
    body = spec["paths"]["/api/captures"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["required"] == ["file"] and body["properties"]["file"]["format"] == "binary"
    assert "delete" in spec["paths"]["/api/captures/{capture_id}"]


def test_upload_returns_202_and_capture_has_the_contract_keys(server, shortmapi):
    token = server.add_user("alice")
    with server.client(token) as c:
        r = upload(c, shortmapi)
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["status"] == "queued" and body["filename"] == "wiki-ShortMAPI.pcapng"
        import hashlib

        assert body["sha256"] == hashlib.sha256(shortmapi.read_bytes()).hexdigest()
        assert body["size"] == shortmapi.stat().st_size
        doc = wait_finished(c, body["id"])
        assert {"id", "status", "filename", "sha256", "uploaded_at", "result", "error"} <= doc.keys()
        listing = c.get("/api/captures").json()["captures"]
        assert [x["id"] for x in listing] == [body["id"]]
        assert listing[0]["status"] == doc["status"] and "verdicts" in listing[0]
    # stored under a server-generated name inside the data dir, byte-identical
    stored = Path(server.app.state.store.capture_path(body["id"]))
    assert stored.read_bytes() == shortmapi.read_bytes()


def test_real_capture_analysed_done_with_capture_object_and_reports(tmp_path, shortmapi):
    with LiveServer(tmp_path / "data") as server, server.client(server.add_user("alice")) as c:
        cid = upload(c, shortmapi).json()["id"]
        doc = wait_finished(c, cid)
        assert doc["status"] == "done", doc["error"]
        result = doc["result"]
        assert result["file"] == "wiki-ShortMAPI.pcapng"  # the user's name, never the server's path
        assert result["format"] == "pcapng" and result["frames"] > 0 and result["error"] is None
        # the issue: wiki-ShortMAPI.pcapng yields its Outlook client, a few seconds long: too short to judge
        assert [(x["client"], x["verdict"], x["cause"]) for x in result["clients"]] == [
            ("10.1.70.52", "inconclusive", "capture_too_short")]
        assert [e["frame"] for e in result["clients"][0]["evidence"]] == [12, 13, 14, 16]
        for client in result["clients"]:
            assert {"client", "verdict", "cause", "confidence", "reason", "evidence", "filter", "remedy"} <= client.keys()
        counts = c.get("/api/captures").json()["captures"][0]["verdicts"]
        assert sum(counts.values()) == len(result["clients"])
        html = c.get(f"/api/captures/{cid}/report.html")
        assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
        assert result["clients"][0]["verdict"] in html.text
        csv = c.get(f"/api/captures/{cid}/results.csv")
        assert csv.status_code == 200 and result["clients"][0]["client"] in csv.text
        assert doc["plots"] and server.app.state.store.plot_dir(cid).is_dir()  # drawn by the job
        for name in doc["plots"]:
            png = c.get(f"/api/captures/{cid}/plots/{name}.png")
            assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
        page = c.get(f"/captures/{cid}", headers={"Authorization": ""})  # pages need the session cookie
        assert page.status_code == 303 and page.headers["location"].startswith("/login")


def test_delete_removes_file_results_and_plots(server, shortmapi):
    token = server.add_user("alice")
    store = server.app.state.store
    with server.client(token) as c:
        cid = upload(c, shortmapi).json()["id"]
        wait_finished(c, cid)
        plot_dir = store.plot_dir(cid)
        plot_dir.mkdir(parents=True, exist_ok=True)
        (plot_dir / "timeline-10.0.0.1.png").write_bytes(b"x")  # whatever the plotter left there
        assert c.delete(f"/api/captures/{cid}").status_code == 204
        assert not store.capture_path(cid).exists() and not plot_dir.exists()
        assert c.get(f"/api/captures/{cid}").status_code == 404
        assert c.get("/api/captures").json()["captures"] == []
        assert c.delete(f"/api/captures/{cid}").status_code == 404


def test_report_of_unfinished_capture_is_409_not_500(tmp_path, shortmapi):
    with LiveServer(tmp_path / "data", workers=0) as srv:
        token = srv.add_user("alice")
        with srv.client(token) as c:
            cid = upload(c, shortmapi).json()["id"]
            for suffix in ("report.html", "results.csv"):
                r = c.get(f"/api/captures/{cid}/{suffix}")
                assert r.status_code == 409 and "waiting" in r.json()["detail"]


def test_job_over_the_time_limit_is_killed_and_failed(tmp_path, shortmapi):
    # a limit far below what starting the analysis process takes: the child is killed at the first check
    with LiveServer(tmp_path / "data", workers=1, job_timeout_s=0.001) as srv:
        with srv.client(srv.add_user("alice")) as c:
            doc = wait_finished(c, upload(c, shortmapi).json()["id"])
            assert doc["status"] == "failed" and "time limit of 0.001 s" in doc["error"]
            assert doc["result"] is None
            assert httpx.get(srv.url + "/healthz").json()["status"] == "ok"
        leftovers = [p for p in __import__("multiprocessing").active_children() if p.name.startswith("mailpush-analyse")]
        assert leftovers == []


# --- security -------------------------------------------------------------------------------------------------


def test_no_or_bad_token_is_401_everywhere_but_healthz(server, shortmapi):
    token = server.add_user("alice")
    with server.client(token) as c:
        cid = upload(c, shortmapi).json()["id"]
    for bad in (None, "mp_not-a-token"):
        with server.client(bad) as anon:
            for method, path in [("GET", "/api/captures"), ("GET", f"/api/captures/{cid}"),
                                 ("GET", f"/api/captures/{cid}/report.html"), ("GET", f"/api/captures/{cid}/results.csv"),
                                 ("GET", f"/api/captures/{cid}/plots/timeline-x.png"), ("DELETE", f"/api/captures/{cid}"),
                                 ("GET", "/openapi.json")]:
                r = anon.request(method, path)
                assert r.status_code == 401, (method, path, r.status_code)
                assert r.headers.get("www-authenticate") == "Bearer"
            r = upload(anon, shortmapi)
            assert r.status_code == 401
            # pages send the browser to the login form instead
            for page in ("/", f"/captures/{cid}", "/docs"):
                r = anon.get(page, follow_redirects=False)
                assert r.status_code == 303 and r.headers["location"].startswith("/login")
    # nothing was stored by the refused upload
    assert len(list(server.app.state.store.uploads.iterdir())) == 1


def test_other_users_capture_is_404_and_untouched(server, shortmapi):
    alice, bob = server.add_user("alice"), server.add_user("bob")
    with server.client(alice) as a, server.client(bob) as b:
        cid = upload(a, shortmapi).json()["id"]
        for method, path in [("GET", f"/api/captures/{cid}"), ("GET", f"/api/captures/{cid}/report.html"),
                             ("GET", f"/api/captures/{cid}/results.csv"), ("DELETE", f"/api/captures/{cid}"),
                             ("GET", f"/api/captures/{cid}/plots/timeline-10.0.0.1.png")]:
            r = b.request(method, path)
            assert r.status_code == 404, (method, path, r.status_code)
        missing = b.get("/api/captures/0123456789abcdef")
        assert missing.status_code == 404 and missing.json() == b.get(f"/api/captures/{cid}").json()
        assert b.get("/api/captures").json()["captures"] == []
        assert a.get(f"/api/captures/{cid}").status_code == 200  # bob's DELETE did nothing
        assert server.app.state.store.capture_path(cid).exists()


def test_oversized_upload_is_413_and_leaves_no_file(tmp_path):
    with LiveServer(tmp_path / "data", max_upload_mb=1) as srv:
        token = srv.add_user("alice")
        uploads = srv.app.state.store.uploads
        big = tmp_path / "big.pcap"
        big.write_bytes(os.urandom(3 * 1024 * 1024))
        with srv.client(token) as c:
            # 1) honest Content-Length: refused before the body is read
            r = upload(c, big)
            assert r.status_code == 413 and "1 MB" in r.json()["detail"]
            # 2) chunked body without Content-Length: refused while streaming, partial file removed
            def chunks():
                boundary = b"----mailpushtest"
                yield b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="big.pcap"\r\n\r\n'
                for _ in range(48):  # 3 MB in 64 KiB pieces
                    yield b"\0" * 65536
                yield b"\r\n--" + boundary + b"--\r\n"
            r = c.post("/api/captures", content=chunks(),
                       headers={"Content-Type": "multipart/form-data; boundary=----mailpushtest"})
            assert r.status_code == 413
        assert list(uploads.iterdir()) == []
        with srv.client(token) as c:  # the server is fine afterwards and the limit is just the limit
            assert c.get("/api/captures").json()["captures"] == []


def test_path_traversal_filename_is_display_text_only(server, shortmapi, tmp_path):
    token = server.add_user("alice")
    store = server.app.state.store
    with server.client(token) as c:
        for evil, shown in [("../../etc/passwd", "passwd"), ("..\\..\\windows\\win.ini", "win.ini"),
                            ("/abs/x<script>.pcap", "x<script>.pcap"), ("..", "upload")]:
            r = upload(c, shortmapi, filename=evil)
            assert r.status_code == 202
            assert r.json()["filename"] == shown
        names = {p.name for p in store.uploads.iterdir()}
        assert len(names) == 4 and all(n.endswith(".cap") and len(n) == 20 for n in names)
        # the name is escaped in the pages (no markup injection)
        login = c.post("/login", data={"token": token}, follow_redirects=False, headers=XHR)
        c.cookies.set("mailpush_session", login.cookies["mailpush_session"])
        page = c.get("/", headers={"Authorization": ""})
        assert "x&lt;script&gt;.pcap" in page.text and "x<script>" not in page.text
    assert not (tmp_path / "etc").exists()


def test_bad_multipart_is_400(server):
    token = server.add_user("alice")
    with server.client(token) as c:
        assert c.post("/api/captures", content=b"raw bytes", headers={"Content-Type": "application/octet-stream"}
                      ).status_code == 400
        r = c.post("/api/captures", files={"other": ("a.pcap", b"x")})
        assert r.status_code == 400 and "'file'" in r.json()["detail"]
    assert list(server.app.state.store.uploads.iterdir()) == []


def test_bad_uploads_fail_with_the_core_message_and_workers_survive(server, shortmapi, tmp_path):
    token = server.add_user("alice")
    text = tmp_path / "notes.txt"
    text.write_text("this is not a capture\n" * 50)
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.pcapng"
    truncated.write_bytes(shortmapi.read_bytes()[:3000])
    with server.client(token) as c:
        ids = {name: upload(c, p).json()["id"] for name, p in
               [("text", text), ("empty", empty), ("truncated", truncated), ("good", shortmapi)]}
        docs = {name: wait_finished(c, cid) for name, cid in ids.items()}
    for name in ("text", "empty"):
        assert docs[name]["status"] == "failed"
        assert "not a capture" in docs[name]["error"] or "empty" in docs[name]["error"], docs[name]["error"]
        assert "Traceback" not in docs[name]["error"] and "internal error" not in docs[name]["error"]
    # truncated: the frames before the damage are analysed, the damage is a warning
    assert docs["truncated"]["status"] == "done", docs["truncated"]["error"]
    assert docs["truncated"]["result"]["warnings"]
    assert docs["good"]["status"] == "done"
    assert httpx.get(server.url + "/healthz").json()["status"] == "ok"


def test_login_form_sets_httponly_session_cookie_and_csrf_header_required(server, shortmapi):
    token = server.add_user("alice")
    with server.client() as browser:
        # login CSRF: a cross-site form (no X-Requested-With) cannot log anyone in
        assert browser.post("/login", data={"token": token}, follow_redirects=False).status_code == 403
        assert browser.post("/login", data={"token": "mp_wrong"}, headers=XHR).status_code == 401
        r = browser.post("/login", data={"token": token, "next": "//evil.example/"}, follow_redirects=False,
                         headers=XHR)
        assert r.status_code == 303 and r.headers["location"] == "/"  # no open redirect
        cookie = r.headers["set-cookie"]
        assert "mailpush_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
        page = browser.get("/")
        assert page.status_code == 200 and "alice" in page.text and "Drop a capture here" in page.text
        assert browser.get("/api/captures").status_code == 200  # the cookie works for the API too
        # a cookie-authenticated upload without our header could be a cross-site form: refused
        assert upload(browser, shortmapi).status_code == 403
        browser.headers["X-Requested-With"] = "XMLHttpRequest"
        assert upload(browser, shortmapi).status_code == 202
        assert browser.post("/logout", follow_redirects=False, headers={"X-Requested-With": ""}).status_code == 403
        assert browser.post("/logout", follow_redirects=False).status_code == 303
        browser.cookies.clear()
        assert browser.get("/api/captures").status_code == 401


# --- restart and load -----------------------------------------------------------------------------------------


def test_restart_resumes_queued_and_interrupted_jobs(tmp_path, shortmapi, public_dir):
    data = tmp_path / "data"
    payloads = [shortmapi, public_dir / "zeek-netlogon.pcapng", public_dir / "netmon23-authsod-ex2-1.cap"]
    with LiveServer(data, workers=0) as srv:  # accepts uploads, analyses nothing: jobs stay queued
        token = srv.add_user("alice")
        with srv.client(token) as c:
            ids = [upload(c, p).json()["id"] for p in payloads]
            time.sleep(0.3)
            queued = c.get("/api/captures").json()["captures"]
            assert {d["status"] for d in queued} == {"queued"} and {d["progress"] for d in queued} == {0.0}
            page = c.get("/api/captures", params={"limit": 2, "offset": 2}).json()["captures"]
            assert [d["id"] for d in page] == [queued[2]["id"]]  # newest first, paged
        # simulate a server killed in the middle of analysing one of them
        with srv.db.session.begin() as s:
            s.execute(update(Capture).where(Capture.id == ids[0]).values(status=RUNNING, attempts=1))
    with LiveServer(data, workers=2) as srv:
        with srv.client(token) as c:
            docs = [wait_finished(c, cid) for cid in ids]
            listing = c.get("/api/captures").json()["captures"]
    assert sorted(x["id"] for x in listing) == sorted(ids)  # nothing lost, nothing duplicated
    assert [d["status"] for d in docs] == ["done"] * 3, [d["error"] for d in docs]
    with srv.db.session() as s:
        attempts = {cid: s.get(Capture, cid).attempts for cid in ids}
    assert attempts == {ids[0]: 2, ids[1]: 1, ids[2]: 1}  # each analysed once after the restart


def test_twenty_concurrent_uploads_all_finish_once(tmp_path):
    samples = sample_captures()
    assert samples, "no capture to upload"
    payloads = [samples[i % len(samples)] for i in range(20)]
    # plots drawn on first view (matplotlib would take most of the time); the verdicts are what is checked here
    with LiveServer(tmp_path / "data", workers=2, max_upload_mb=50, plots_in_job=False) as srv:
        token = srv.add_user("loader")

        def one(item):
            path, _ = item
            with srv.client(token) as c:
                r = upload(c, path)
                assert r.status_code == 202, r.text
                return r.json()["id"]

        with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
            ids = list(pool.map(one, payloads))
        assert len(set(ids)) == 20
        with srv.client(token) as c:
            docs = [wait_finished(c, cid, timeout=90) for cid in ids]
            listing = c.get("/api/captures").json()["captures"]
            # lazy plots: named in the capture, drawn on the first request
            with_plots = [d for d in docs if d["plots"]]
            assert with_plots
            for d in with_plots[:1]:
                assert not srv.app.state.store.plot_dir(d["id"]).exists()
                # all plots of the report asked for at once, as a browser does: none may see a half-drawn set
                with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
                    pngs = list(pool.map(lambda name: c.get(f"/api/captures/{d['id']}/plots/{name}.png"),
                                         d["plots"]))
                assert [(r.status_code, r.content[:4]) for r in pngs] == [(200, b"\x89PNG")] * len(d["plots"])
        with srv.db.session() as s:
            attempts = [s.get(Capture, cid).attempts for cid in ids]
    assert sorted(x["id"] for x in listing) == sorted(ids)
    assert attempts == [1] * 20  # no job taken twice
    for (path, expected), doc in zip(payloads, docs):
        assert doc["filename"] == path.name
        assert doc["status"] == "done", (path.name, doc["error"])
        assert doc["result"]["file"] == path.name
        if expected is not None:
            got = {(c["verdict"], c["cause"]) for c in doc["result"]["clients"]}
            want = _expected_verdicts(expected)
            assert got == want, (path.name, got, want)


def _expected_verdicts(entry: dict) -> set[tuple[str, str]]:
    if "clients" in entry:
        return {(c["verdict"], c["cause"]) for c in entry["clients"]}
    return {(entry["verdict"], entry["cause"])}


# --- the command line -----------------------------------------------------------------------------------------


@pytest.mark.single_database
def test_cli_user_add_and_serve_subprocess(tmp_path, shortmapi):
    data = tmp_path / "data"
    mailpush = [sys.executable, "-m", "analyzer"]
    r = subprocess.run(mailpush + ["user", "add", "carol", "--data-dir", str(data)], capture_output=True,
                       text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert token.startswith("mp_") and len(token) > 40
    again = subprocess.run(mailpush + ["user", "add", "carol", "--data-dir", str(data)], capture_output=True,
                           text=True, timeout=60, cwd=ROOT)
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
    import sqlite3

    stored = sqlite3.connect(data / "mailpush.db").execute("select token_hash from users").fetchone()[0]
    assert token not in stored and len(stored) == 64  # only the hash is kept

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # --workers 0: this test is about the command (options, start, stop); analysis is tested in-process above
    proc = subprocess.Popen(mailpush + ["serve", "--port", str(port), "--data-dir", str(data), "--workers", "0",
                                        "--max-upload-mb", "2", "--lazy-plots"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(proc, url, timeout=30)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
            assert c.get("/healthz").json()["workers"] == 0
            r = upload(c, shortmapi)
            assert r.status_code == 202 and c.get(f"/api/captures/{r.json()['id']}").json()["status"] == "queued"
            big = tmp_path / "big.bin"
            big.write_bytes(b"\0" * (3 * 1024 * 1024))
            assert upload(c, big).status_code == 413  # --max-upload-mb 2 is applied
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    assert "Exception in ASGI application" not in out  # uvicorn's mark of a request that crashed
    assert "Traceback" not in out, out


@pytest.mark.single_database
def test_cli_bad_database_or_data_dir_is_a_message_not_a_traceback(tmp_path, capsys):
    from analyzer.cli import main

    assert main(["user", "add", "x", "--data-dir", str(tmp_path / "d"), "--db", "nonsense"]) == 2
    assert "cannot use database 'nonsense'" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["user", "add", "x", "--data-dir", str(blocker / "sub")]) == 2
    assert "cannot use data directory" in capsys.readouterr().err
    assert main(["serve", "--data-dir", str(blocker / "sub")]) == 2
    assert "cannot use data directory" in capsys.readouterr().err
    assert main(["serve", "--data-dir", str(tmp_path / "d"), "--db", "postgresql://u:secret@127.0.0.1:1/db"]) == 2
    err = capsys.readouterr().err
    assert "secret" not in err and "cannot" in err  # no password echoed; driver missing or server down
    assert main(["user", "add", "bad name!", "--data-dir", str(tmp_path / "d")]) == 2
    assert "user name must be" in capsys.readouterr().err


@pytest.mark.single_database
def test_every_cause_has_a_tooltip_on_the_report_page():
    from analyzer.verdict.model import CAUSES
    from analyzer.web.app import CAUSE_HELP

    assert set(CAUSE_HELP) == set(CAUSES)
