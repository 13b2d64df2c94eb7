"""The dashboard's server side: the page and its files, the security headers on every
response, the message when the chart library is missing, and the events time filter the
dashboard reads markers with. (The page itself is driven in test_dashboard_browser.py; the
shipped library's pin is checked in test_packaging.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import requests

from gpuhistory.api.app import create_app
from gpuhistory.api.dashboard import SECURITY_HEADERS
from gpuhistory.assets import VENDOR, vendor_bytes, web_root
from gpuhistory.context import ServiceContext
from tests.conftest import LiveServer

WEB_ROOT = web_root()


def assert_security_headers(response: requests.Response) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, (response.url, name)
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp


def test_page_and_files_are_served_locally(app) -> None:
    """/ is the page; its scripts, styles and the chart library (the package's own copy)
    come from this server, with the right types; nothing is loaded from elsewhere."""
    page = requests.get(f"{app.url}/", timeout=5)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    sources = re.findall(r'(?:src|href)="([^"#]+)"', page.text)
    assert sources and all(s.startswith("/") and not s.startswith("//") for s in sources)
    types = {"js": "javascript", "css": "text/css", "svg": "image/svg+xml",
             "json": "application/json"}
    for source in sources:
        response = requests.get(f"{app.url}{source}", timeout=5)
        assert response.status_code == 200, source
        kind = types[source.rsplit(".", 1)[-1]]
        assert kind in response.headers["Content-Type"], (source, response.headers)
        assert_security_headers(response)
        if source.startswith("/ui/vendor/"):
            assert response.content == vendor_bytes(source.rsplit("/", 1)[-1])
    assert {f"/ui/vendor/{name}" for name in VENDOR} <= set(sources)
    modules = sorted(p.name for p in (WEB_ROOT / "static" / "js").glob("*.js"))
    preloaded = re.findall(r'<link rel="modulepreload" href="/ui/js/([^"]+)">', page.text)
    assert sorted([*preloaded, "main.js"]) == modules  # fetched at once, not in a waterfall
    for name in modules:
        response = requests.get(f"{app.url}/ui/js/{name}", timeout=5)
        assert response.status_code == 200 and "javascript" in response.headers["Content-Type"]


def test_no_file_outside_the_dashboard_is_served(app) -> None:
    """Only web/static/ and the listed library files: no path escapes, nothing else of the
    package (its Python files, the library's license record, the npm files)."""
    for path in ("/ui/../pyproject.toml", "/ui/%2e%2e/%2e%2e/pyproject.toml",
                 "/ui/vendor/package.json", "/ui/vendor/..%2fpackage.json",
                 "/ui/vendor/SOURCE.json", "/ui/vendor/uplot/LICENSE", "/ui/../__init__.py",
                 "/ui/vendor/uplot/uPlot.iife.min.js", "/ui/package-lock.json",
                 "/ui/node_modules/uplot/package.json", "/ui/js/nothing.js"):
        response = requests.get(f"{app.url}{path}", timeout=5)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found", path


def test_every_response_carries_the_security_headers(app) -> None:
    """API answers, errors, the event stream and the OpenAPI document all carry them."""
    cases = [("get", "/api/gpu/status/all", 200), ("get", "/api/gpu/status?gpu_id=42", 404),
             ("delete", "/api/gpu/config", 405), ("get", "/healthz", 200),
             ("get", "/api/openapi.json", 200), ("post", "/api/gpu/memory/allocate", 400)]
    for method, path, status in cases:
        response = requests.request(method.upper(), f"{app.url}{path}", timeout=5)
        assert response.status_code == status, path
        assert_security_headers(response)
    with requests.get(f"{app.url}/api/gpu/events/stream", stream=True, timeout=5) as stream:
        assert stream.status_code == 200
        assert_security_headers(stream)


def test_the_page_needs_no_inline_script_or_style() -> None:
    """The strict CSP forbids inline code and styles: the page and its modules use none
    (no <style>, no style= or on...= attributes, no inline <script>, no innerHTML)."""
    html = (WEB_ROOT / "index.html").read_text()
    assert "<style" not in html and " style=" not in html
    assert not re.search(r"\son[a-z]+=", html)
    assert all('src="' in tag for tag in re.findall(r"<script[^>]*>", html))
    for path in (WEB_ROOT / "static" / "js").glob("*.js"):
        text = path.read_text()
        assert not re.search(r"\.(inner|outer)HTML\s*=|insertAdjacentHTML|document\.write",
                             text), path.name
        assert "setAttribute(\"style\"" not in text, path.name
        assert "eval(" not in text and "new Function" not in text, path.name


def test_the_dashboard_is_not_in_the_openapi_document(app) -> None:
    """The page and its files are not API endpoints."""
    paths = requests.get(f"{app.url}/api/openapi.json", timeout=5).json()["paths"]
    assert "/" not in paths and not any(p.startswith("/ui") for p in paths)


def test_missing_library_says_how_to_restore_it(engine, clock, tmp_path: Path) -> None:
    """A dashboard folder without the library (a damaged install) answers / with 503 saying
    to reinstall, never to run npm; the API keeps working."""
    root = tmp_path / "web"
    (root / "static").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html>")
    flask_app = create_app(ServiceContext(engine=engine, host="testhost", clock=clock))
    flask_app.config["DASHBOARD_ROOT"] = root
    server = LiveServer(flask_app)
    try:
        browser = requests.get(f"{server.url}/", headers={"Accept": "text/html"}, timeout=5)
        assert browser.status_code == 503 and browser.headers["Content-Type"].startswith(
            "text/html")
        assert "reinstall gpuhistory" in browser.text and "npm" not in browser.text
        assert_security_headers(browser)
        client = requests.get(f"{server.url}/", headers={"Accept": "application/json"},
                              timeout=5)
        error = client.json()["error"]
        assert client.status_code == 503 and error["code"] == "dashboard_not_installed"
        assert sorted(error["details"]["missing"]) == sorted(VENDOR)
        missing = requests.get(f"{server.url}/ui/vendor/uPlot.iife.min.js", timeout=5)
        assert missing.status_code == 404
        assert requests.get(f"{server.url}/api/gpu/status/all", timeout=5).status_code == 200
        assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200
    finally:
        server.close()


def test_events_between_two_times(app) -> None:
    """since/until select events by time (how the history chart finds its markers), with
    the other filters and the cursor; since after until is 422, a bad time 400."""
    app.tick(1, times=130)  # GPU 1: NORMAL at 22 s, THROTTLED at 26 s, CRITICAL at 125 s
    everything = requests.get(f"{app.url}/api/gpu/events", params={"limit": 1000},
                              timeout=5).json()["events"]
    since, until = "2026-01-01T00:00:20Z", "2026-01-01T00:02:00Z"
    answer = requests.get(f"{app.url}/api/gpu/events", params={
        "gpu_id": 1, "kind": "state_change", "since": since, "until": until}, timeout=5).json()
    want = [e for e in everything if e["gpu_id"] == 1 and e["kind"] == "state_change"
            and since[:19] <= e["timestamp"][:19] <= until[:19]]
    assert [e["payload"]["to"] for e in answer["events"]] == ["NORMAL", "THROTTLED"]
    assert answer["events"] == want
    epoch = requests.get(f"{app.url}/api/gpu/events", params={
        "since": "1767225700", "limit": 1000}, timeout=5).json()["events"]
    assert epoch and all(e["timestamp"] >= "2026-01-01T00:01:40" for e in epoch)
    paged = requests.get(f"{app.url}/api/gpu/events", params={
        "since": since, "since_id": answer["events"][0]["id"], "gpu_id": 1,
        "kind": "state_change"}, timeout=5).json()
    assert [e["payload"]["to"] for e in paged["events"]] == ["THROTTLED", "CRITICAL"]
    backwards = requests.get(f"{app.url}/api/gpu/events",
                             params={"since": until, "until": since}, timeout=5)
    assert backwards.status_code == 422
    assert backwards.json()["error"]["code"] == "validation_failed"
    bad = requests.get(f"{app.url}/api/gpu/events", params={"since": "yesterday"}, timeout=5)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_argument"
