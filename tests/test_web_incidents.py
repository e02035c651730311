# SPDX-License-Identifier: GPL-2.0-or-later
"""Web service: two uploaded captures of one incident merged (POST /api/incidents), on a real uvicorn server with
a real SQLite file, the real worker processes and the generated pairs of captures/pairs/."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from test_web import LiveServer, upload, wait_finished

PAIRS = Path(__file__).resolve().parent.parent / "captures" / "pairs"
MANIFEST = {m["scenario"]: m for m in json.loads((PAIRS / "manifest.json").read_text())}


def wait_incident(client, url, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        doc = client.get(url).json()
        if doc["status"] in ("done", "failed"):
            return doc
        assert time.monotonic() < deadline, doc
        time.sleep(0.1)


@pytest.fixture
def server(tmp_path):
    with LiveServer(tmp_path / "data", plots_in_job=False) as srv:
        yield srv


def test_incident_merge_report_and_isolation(server):
    m = MANIFEST["firewall_drop"]
    token = server.add_user("ann")
    with server.client(token) as api:
        # uploaded in the "wrong" order: the server side first
        ids = []
        for name in (m["server_file"], m["client_file"]):
            r = upload(api, PAIRS / name)
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
        r = api.post("/api/incidents", json={"captures": ids})
        assert r.status_code == 202, r.text
        doc = wait_incident(api, r.json()["url"])
        assert doc["status"] == "done", doc
        merged = doc["result"]
        # the report names the captures by their upload names, never by the server's storage paths
        assert (merged["client_file"], merged["server_file"]) == (m["client_file"], m["server_file"])
        assert "/uploads/" not in json.dumps(merged) and str(server.app.state.store.root) not in json.dumps(merged)
        assert [d["fate"] for d in merged["datagrams"]] == [d["fate"] for d in m["datagrams"]]
        assert merged["verdicts"][0]["cause"] == "udp_lost_in_transit"
        assert abs(merged["clock"]["offset_s"] - m["clock"]["offset_s"]) < 0.01
        # the HTML report: both captures and the merge, plot embedded, under the strict report CSP
        for c in ids:
            wait_finished(api, c)
        page = api.get(doc["report"])
        assert page.status_code == 200 and "default-src 'none'" in page.headers["content-security-policy"]
        assert "Merged: firewall_drop.client.cap (client side) + firewall_drop.server.pcapng" in page.text
        assert 'alt="merged timeline of 10.1.60.21"' in page.text and "LOST in transit" in page.text
        assert [i["id"] for i in api.get("/api/incidents").json()["incidents"]] == [doc["id"]]

        # bad requests
        assert api.post("/api/incidents", json={"captures": [ids[0]]}).status_code == 400
        assert api.post("/api/incidents", json={"captures": [ids[0], ids[0]]}).status_code == 400
        assert api.post("/api/incidents", content=b"no json").status_code == 400

    # another user sees none of it
    with server.client(server.add_user("bob")) as other:
        assert other.get(doc["url"]).status_code == 404
        assert other.get(doc["report"]).status_code == 404
        assert other.post("/api/incidents", json={"captures": ids}).status_code == 404
    with server.client() as anonymous:
        assert anonymous.get(doc["url"]).status_code == 401

    with server.client(token) as api:
        # deleting a capture deletes its incidents
        assert api.delete(f"/api/captures/{ids[0]}").status_code == 204
        assert api.get(doc["url"]).status_code == 404


def test_unrelated_captures_give_a_not_merged_incident(server):
    m = MANIFEST["unrelated"]
    with server.client(server.add_user("cy")) as api:
        ids = [upload(api, PAIRS / m[k]).json()["id"] for k in ("client_file", "server_file")]
        doc = wait_incident(api, api.post("/api/incidents", json={"captures": ids}).json()["url"])
        assert doc["status"] == "done"
        assert doc["result"]["status"] == "no_shared_packets" and doc["result"]["verdicts"] == []
        assert "share no TCP segment" in doc["result"]["message"]


def test_browser_merge_form(tmp_path):
    """Debian's chromium (Playwright, headless): log in, pick the two captures in the page's merge form, and land
    on the merged report."""
    from test_web_browser import CHROMIUM, CHROMIUM_ARGS, shot

    from playwright import sync_api as playwright_api  # installed by make test: a broken install fails
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium not installed (make test installs it when run as root)")
    m = MANIFEST["partial_overlap"]
    with LiveServer(tmp_path / "data", workers=1, plots_in_job=False) as srv, \
            playwright_api.sync_playwright() as p:
        token = srv.add_user("dee")
        with srv.client(token) as api:
            ids = [upload(api, PAIRS / m[k]).json()["id"] for k in ("client_file", "server_file")]
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors = []
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.goto(srv.url + "/login")
            page.fill("#token", token)
            page.click("button[type=submit]")
            page.wait_for_url(srv.url + "/")
            page.select_option("#incident-a", ids[1])  # server side first: the order does not matter
            page.select_option("#incident-b", ids[0])
            page.click("#incident-submit")
            page.wait_for_url("**/api/incidents/*/report.html", timeout=60000)
            assert "Merged: partial_overlap.client.pcap (client side) + partial_overlap.server.pcapng" in \
                page.content()
            assert page.locator("img[alt='merged timeline of 10.1.62.47']").count() == 1
            shot(page, tmp_path, "incident-report")
            assert errors == []
        finally:
            browser.close()
