"""Web service with an uploaded secrets file (multipart field 'secrets'): the sealed sample is decrypted, the
secret is never stored (nothing in the data directory or the database holds it), never shown back, a bad file is
a 400 that does not quote it, and deleting the capture before its job runs forgets the secrets."""

from __future__ import annotations

import json
from pathlib import Path

from test_web import LiveServer, wait_finished

from analyzer.dissect.secrets import Secrets

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "captures" / "sealed_ntlmv1_server_refused.pcap"
ENTRY = next(e for e in json.loads((ROOT / "captures" / "manifest.json").read_text()) if e["file"] == SAMPLE.name)


def _upload(client, secrets_text: str | None):
    files = {"file": (SAMPLE.name, SAMPLE.read_bytes(), "application/octet-stream")}
    if secrets_text is not None:
        files["secrets"] = ("lab.secrets", secrets_text.encode("utf-8"), "text/plain")
    return client.post("/api/captures", files=files)


def _all_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def test_upload_with_secrets_decrypts_and_stores_nothing(tmp_path):
    password = ENTRY["secrets"].split(":", 1)[1]
    nt = Secrets.parse(ENTRY["secrets"]).entries[0].nt_hash
    data = tmp_path / "data"
    with LiveServer(data, plots_in_job=False) as srv:
        c = srv.client(srv.add_user("eve"))
        r = _upload(c, ENTRY["secrets"] + "\n")
        assert r.status_code == 202, r.text
        with_secrets = wait_finished(c, r.json()["id"])
        r2 = _upload(c, None)
        without = wait_finished(c, r2.json()["id"])
        (v,) = with_secrets["result"]["clients"]
        assert (v["verdict"], v["cause"], v["callback"]) == ("not_registered", "server_refused", "10.1.28.8:3041")
        assert "decrypted with --secrets" in v["reason"]
        (w,) = without["result"]["clients"]
        assert (w["verdict"], w["cause"]) == ("inconclusive", "encrypted_no_evidence")
        shown = "".join(c.get(u).text for u in ("/api/captures", f"/api/captures/{r.json()['id']}",
                                                f"/api/captures/{r.json()['id']}/report.html",
                                                f"/api/captures/{r.json()['id']}/results.csv"))
        assert "10.1.28.8:3041" in shown
        stored = _all_bytes(data)
        for needle in (password, nt.hex()):
            assert needle not in shown
            assert needle.encode() not in stored and needle.encode("utf-16-le") not in stored
        assert nt not in stored

        bad = _upload(c, "CONTOSO\\tina-without-a-colon-Zq7\n")
        assert bad.status_code == 400 and "line 1" in bad.text and "Zq7" not in bad.text
        assert srv.app.state.pool._secrets == {}


def test_upload_page_offers_the_secrets_field(tmp_path):
    with LiveServer(tmp_path / "data", workers=0) as srv:
        token = srv.add_user("eve")
        with srv.client() as browser:
            # login needs the anti-CSRF proof like every cookie route
            browser.post("/login", data={"token": token}, headers={"X-Requested-With": "XMLHttpRequest"})
            page = browser.get("/").text
        assert "Drop a capture here" in page and 'id="secrets-input"' in page and 'name="secrets"' in page


def test_delete_before_the_job_forgets_the_secrets(tmp_path):
    with LiveServer(tmp_path / "data", workers=0) as srv:  # no worker: the job stays queued
        c = srv.client(srv.add_user("eve"))
        r = _upload(c, ENTRY["secrets"])
        capture_id = r.json()["id"]
        assert capture_id in srv.app.state.pool._secrets
        assert c.delete(f"/api/captures/{capture_id}").status_code == 204
        assert srv.app.state.pool._secrets == {}
