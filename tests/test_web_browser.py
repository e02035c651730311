"""A real browser against the real web service: Debian's chromium driven by Playwright (headless), logging in
through the form, uploading through the page (the XHR upload with its progress bar), waiting for the report and
reading the verdict from the page."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from test_web import LiveServer, sample_captures, wait_finished

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
# Screenshots for people to look at (the test's own copies go to tmp_path).
SHOTS = Path(os.environ.get("MAILPUSH_WEB_SHOTS", "/tmp/web-shots"))


@pytest.fixture(scope="module")
def browser():
    from playwright import sync_api as playwright_api  # installed by make test: a broken install fails
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium not installed (make test installs it when run as root)")
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def shot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    SHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SHOTS / path.name)
    return path


def pick_sample(public_dir: Path) -> tuple[Path, dict | None]:
    """A sample capture with a diagnosis worth showing (UDP blocked although mail arrived), with its manifest
    entry; the real public ShortMAPI capture when the samples are not generated."""
    for path, entry in sample_captures():
        if entry is not None and path.name == "udp_not_received.pcap":
            return path, entry
    return public_dir / "wiki-ShortMAPI.pcapng", None


def test_browser_login_upload_and_read_verdict(browser, tmp_path, public_dir):
    capture, expected = pick_sample(public_dir)
    with LiveServer(tmp_path / "data", workers=1) as srv:
        token = srv.add_user("alice")
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        console_errors = []
        page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)

        # the app sends an anonymous browser to the login form
        page.goto(srv.url + "/")
        assert page.url.startswith(srv.url + "/login")
        shot(page, tmp_path, "login")
        page.fill("#token", "mp_wrong")
        page.click("button[type=submit]")
        assert page.locator(".alert-error").inner_text() == "That token is not valid."
        page.fill("#token", token)
        page.click("button[type=submit]")
        page.wait_for_url(srv.url + "/")
        assert page.locator(".who").inner_text() == "alice"
        console_errors.clear()  # (the refused login above is logged as a 401 resource; expected)

        # the session cookie is HttpOnly: invisible to page scripts
        assert page.evaluate("document.cookie") == ""
        assert any(c["name"] == "mailpush_session" and c["httpOnly"] for c in context.cookies())

        # upload through the page's file input (same code path as a drop): XHR with progress, then the list
        page.set_input_files("#file-input", str(capture))
        page.wait_for_selector("#upload-report-link", timeout=15000)
        assert page.locator("#upload-percent").inner_text() == "100%"
        row = page.locator("#captures-body tr", has_text=capture.name)
        row.locator(".status-done, .status-failed").wait_for(timeout=30000)  # the list updates live
        shot(page, tmp_path, "list")

        page.click("#upload-report-link")
        page.wait_for_selector("#capture-status.status-done, #capture-status.status-failed", timeout=30000)
        capture_id = page.locator("#capture-status").get_attribute("data-capture-id")
        with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {token}"}) as api:
            doc = wait_finished(api, capture_id)
        shot(page, tmp_path, "report")

        assert doc["status"] == "done", doc["error"]
        expected_entry = expected
        expected = [(c["client"], c["verdict"], c["cause"]) for c in doc["result"]["clients"]]
        rows = page.locator(".verdict-table tbody tr")
        seen = [(rows.nth(i).locator("td").first.locator("a").inner_text(),
                 rows.nth(i).locator("[data-verdict]").get_attribute("data-verdict"),
                 rows.nth(i).locator("[data-cause]").get_attribute("data-cause")) for i in range(rows.count())]
        assert seen == expected and seen, seen
        if expected_entry is not None:  # the sample's manifest says what the page must show
            assert [(c["client"], c["verdict"], c["cause"]) for c in expected_entry["clients"]] == seen
        if doc["plots"]:
            img = page.locator(".plots img").first
            img.scroll_into_view_if_needed()
            assert page.evaluate("(i) => i.complete && i.naturalWidth > 100", img.element_handle())
        if doc["result"]["clients"][0]["filter"]:
            assert page.locator(".filter-text").first.inner_text() == doc["result"]["clients"][0]["filter"]
            page.locator(".copy-button").first.click()
            page.locator(".copy-button.copied").first.wait_for(timeout=3000)
        assert not console_errors, console_errors  # no CSP violation or script error
        context.close()
    for name in ("login", "list", "report"):
        assert (tmp_path / f"{name}.png").stat().st_size > 5000
