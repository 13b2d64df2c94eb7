"""Incident reports: what the file states, that it can load nothing, and both ways to get it
(``gpuhistory incidents report`` with --db or --url, and ``GET .../report.html``).

The figures are checked against the hand-computed expectations of test_incidents.py
(a state machine over the trace CSV read with the csv module), not against the post-mortem
code the report is built from. The report opened in a browser is
test_incident_report_browser.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from click.testing import CliRunner

from gpuhistory import __version__, assets
from gpuhistory.analytics.incidents import IncidentDetector
from gpuhistory.analytics.postmortem import format_duration
from gpuhistory.api.dashboard import SECURITY_HEADERS
from gpuhistory.cli.main import cli
from gpuhistory.clock import FakeClock, iso_utc
from gpuhistory.domain.config import DEFAULT_CONFIG
from gpuhistory.domain.reading import clock_event_reason_names
from gpuhistory.importer import import_file
from gpuhistory.report.assets import LinkError, link_modules
from gpuhistory.storage.schema import incidents, leases
from tests.conftest import FLEET4
from tests.test_incidents import (
    HOST,
    HOUR_MS,
    START_MS,
    expected,
    gpu_row_id,
    sampled_rows,
    trace_rows,
    write_trace,
)

pytestmark = pytest.mark.postgres

LEASE_GRANTED_MS = START_MS + 130_000  # inside GPU 1's second overheat (121.5 s to 200.2 s)
SECTIONS = ("summary", "card", "timeline", "reasons", "throttle", "transitions", "processes",
            "leases", "xids", "config", "samples", "generated")
# The only URL the file may hold: uPlot's licence comment (inert: a comment in a script).
INERT_URLS = (re.compile(r"/\*! https://github\.com/leeoniya/uPlot \(v[\d.]+\) \*/"),)


# -- reading the file ------------------------------------------------------------------------
class ReportFile(HTMLParser):
    """A report's parts: each section's text, every tag's attributes, the inline blocks and
    the data block, the <meta> policy."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.sections: dict[str, str] = {}
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self.styles: list[str] = []
        self.policy = ""
        self._section: str | None = None
        self._raw: tuple[str, dict[str, str | None]] | None = None
        self._text: list[str] = []
        self.feed(html)
        self.close()
        self.data = json.loads(next(text for attrs, text in self.scripts
                                    if attrs.get("type") == "application/json"))

    BLOCKS = frozenset({"p", "td", "th", "dt", "dd", "tr", "caption", "h2", "figcaption"})

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if tag in self.BLOCKS:
            self._text.append(" ")
        if tag in ("section", "footer") and attributes.get("id"):
            self._section, self._text = attributes["id"], []
        elif tag in ("script", "style"):
            self._raw, self._text_raw = (tag, attributes), []
        elif tag == "meta" and attributes.get("http-equiv") == "Content-Security-Policy":
            self.policy = attributes.get("content") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag in self.BLOCKS:
            self._text.append(" ")
        if tag in ("section", "footer") and self._section is not None:
            self.sections[self._section] = " ".join("".join(self._text).split())
            self._section = None
        elif self._raw is not None and tag == self._raw[0]:
            text = "".join(self._text_raw)
            if tag == "script":
                self.scripts.append((self._raw[1], text))
            else:
                self.styles.append(text)
            self._raw = None

    def handle_data(self, data: str) -> None:
        if self._raw is not None:
            self._text_raw.append(data)
        elif self._section is not None:
            self._text.append(data)


def shown(ms: int) -> str:
    """A time as the report prints it: UTC, milliseconds only when there are some."""
    return iso_utc(ms).replace("T", " ").removesuffix("Z").removesuffix(".000") + " UTC"


def sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def assert_self_contained(html: str) -> ReportFile:
    """No URL but the whitelisted inert one; no attribute that loads anything; a policy of
    default-src 'none' allowing exactly the file's inline scripts and styles by hash."""
    found = ReportFile(html)
    rest = html
    for pattern in INERT_URLS:
        rest = pattern.sub("", rest)
    assert not re.search(r"https?:|//[\w.-]+\.[a-z]{2,}/", rest, re.I), re.findall(
        r".{40}https?:.{40}", rest)
    loading = {"src", "href", "srcset", "action", "formaction", "poster", "data", "background"}
    for tag, attributes in found.tags:
        assert tag not in ("link", "img", "iframe", "object", "embed", "base", "form"), tag
        assert not loading & set(attributes), (tag, attributes)
    for style in found.styles:
        assert "url(" not in style and "@import" not in style
    executable = [text for attrs, text in found.scripts if attrs.get("type") is None]
    assert len(executable) == 2 and len(found.styles) == 2  # library + linked script; 2 styles
    for script in executable:
        assert not re.search(r"\bfetch\(|XMLHttpRequest|WebSocket|EventSource|sendBeacon",
                             script)
    directives = dict(d.strip().split(" ", 1) for d in found.policy.split(";"))
    assert directives["default-src"] == "'none'"
    assert set(directives["script-src"].split()) == {sha256(s) for s in executable}
    assert set(directives["style-src"].split()) == {sha256(s) for s in found.styles}
    assert "unsafe" not in found.policy
    return found


# -- building the incident -------------------------------------------------------------------
def import_with_lease(engine: sa.Engine, owner: str = "alice") -> dict[str, Any]:
    """fleet4 imported at START_MS, a lease on GPU 1 that was active during its second
    overheat, incidents detected; the hand-computed expectation of that overheat, with its id.

    A recorded card has no capacity to lease now, so the lease is written as the row the
    live service wrote when it granted it on that card (what a log copied from the GPU's
    own host would hold)."""
    import_file(engine, FLEET4, start_ms=START_MS, host=HOST)
    with engine.begin() as conn:
        conn.execute(sa.insert(leases).values(
            host=HOST, allocation_id="train-42", gpu_id=gpu_row_id(engine, 1, "fleet4"),
            memory_mib=20480, owner=owner, token_hash="0" * 64, ttl_ms=600_000,
            granted_ms=LEASE_GRANTED_MS, expires_ms=LEASE_GRANTED_MS + 600_000))
    IncidentDetector(engine, FakeClock(START_MS + HOUR_MS), DEFAULT_CONFIG).run()
    want = expected(trace_rows(FLEET4, 1))[1]
    with engine.connect() as conn:
        want["id"] = conn.execute(sa.select(incidents.c.id).where(
            incidents.c.gpu_id == gpu_row_id(engine, 1, "fleet4"),
            incidents.c.start_ms == want["start"])).scalar_one()
    return want


def cli_report(db_url: str, incident_id: int, *args: str) -> Any:
    return CliRunner().invoke(cli, ["incidents", "report", str(incident_id), "--db", db_url,
                                    "--host-name", HOST, *args])


# -- tests -----------------------------------------------------------------------------------
def test_report_states_peak_duration_reasons_and_lease_and_loads_nothing(
        engine: sa.Engine, db_url: str, tmp_path: Path) -> None:
    """The report of fleet4's GPU 1 overheat (via --db) states the peak and when, the
    duration, the hardware's reasons and the lease active, as worked out by hand from the
    trace; every section is there; the file holds no URL (uPlot's licence comment aside) and
    its policy allows its own inline code alone."""
    want = import_with_lease(engine)
    out = tmp_path / "report.html"
    result = cli_report(db_url, want["id"], "-o", str(out))
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output
    found = assert_self_contained(out.read_text(encoding="utf-8"))
    assert set(SECTIONS) <= set(found.sections) and all(found.sections[s] for s in SECTIONS)

    duration = format_duration((want["end"] - want["start"]) / 1000)
    assert f"Peak {want['peak']} °C at {shown(want['peak_ms'])}" in found.sections["card"]
    assert f"Duration {duration}" in found.sections["card"]
    assert f"above 85 °C for {duration}, peaking at {want['peak']} °C" in found.sections[
        "summary"]
    assert f"Start {shown(want['start'])}" in found.sections["card"]
    assert f"End {shown(want['end'])}" in found.sections["card"]
    names = clock_event_reason_names(want["reasons"])
    assert names == ["SwPowerCap"]
    for name in names:
        assert re.search(rf"{name} 0x[0-9a-f]+ {want['n']} {duration}",
                         found.sections["reasons"]), found.sections["reasons"]
    assert "train-42 alice 20,480 MiB" in found.sections["leases"]
    assert f"20,480 MiB {shown(LEASE_GRANTED_MS)}" in found.sections["leases"]
    assert "leases active: train-42 (alice, 20480 MiB)" in found.sections["summary"]
    assert "temp_throttle 85 °C, hysteresis_c 2 °C and temp_critical 90 °C" in (
        found.sections["config"])
    assert f"/api/gpu/incidents/{want['id']}/samples.csv?host={HOST}" in found.sections[
        "samples"]
    assert f"by gpuhistory {__version__}" in found.sections["generated"]
    # The data the chart draws: the post-mortem and its buckets, min/mean/max, no samples.
    doc, history = found.data["postmortem"], found.data["history"]
    assert doc["id"] == want["id"] and doc["peak_temperature_celsius"] == want["peak"]
    assert "samples" not in doc and 0 < len(history["buckets"]) <= 600
    assert max(b["temperature_max"] for b in history["buckets"]
               if b["temperature_max"] is not None) == want["peak"]


def test_report_cli_default_file_stdout_and_unknown_id(engine: sa.Engine, db_url: str,
                                                       tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Without -o the file is incident-ID.html in the current folder; -o - prints it;
    an unknown id exits 3 and writes nothing."""
    want = import_with_lease(engine)
    monkeypatch.chdir(tmp_path)
    result = cli_report(db_url, want["id"])
    assert result.exit_code == 0, result.output
    written = (tmp_path / f"incident-{want['id']}.html").read_text(encoding="utf-8")
    printed = cli_report(db_url, want["id"], "--no-detect", "-o", "-")
    assert printed.exit_code == 0 and printed.stdout.startswith("<!doctype html>")
    printed_sections = ReportFile(printed.stdout).sections
    written_sections = ReportFile(written).sections
    assert set(printed_sections) == set(written_sections) >= set(SECTIONS)
    for name in set(SECTIONS) - {"generated"}:  # the same report, made a moment later
        assert printed_sections[name] == written_sections[name]
    missing = cli_report(db_url, 999, "-o", str(tmp_path / "none.html"))
    assert missing.exit_code == 3 and "incident_not_found" in missing.output
    assert not (tmp_path / "none.html").exists()


def test_hostile_values_stay_text(engine: sa.Engine, db_url: str, tmp_path: Path) -> None:
    """A lease owner written to break out of the data block or the HTML is shown as text:
    still two executable scripts and no new element, and the policy would stop one anyway."""
    owner = "</script><script>alert(1)</script><img src=x onerror=alert(2)>'&\u2028"
    want = import_with_lease(engine, owner=owner)
    out = tmp_path / "report.html"
    assert cli_report(db_url, want["id"], "-o", str(out)).exit_code == 0
    html = out.read_text(encoding="utf-8")
    found = assert_self_contained(html)
    assert "<img" not in html and "alert(1)</script>" not in html
    assert owner.removesuffix("\u2028") in found.sections["leases"]  # (a line break there)
    assert found.data["postmortem"]["leases"][0]["owner"] == owner


def test_processes_with_users_and_jobs_get_their_columns(engine: sa.Engine) -> None:
    """A post-mortem whose processes carry a user and a Slurm job gets User, Slurm job and
    Step columns (none for what no process has: container, pod, unit); one without
    processes recorded says so."""
    from gpuhistory.analytics.postmortem import get_incident
    from gpuhistory.report import render_report, report_data

    want = import_with_lease(engine)
    with engine.connect() as conn:
        data = report_data(conn, get_incident(conn, want["id"]), DEFAULT_CONFIG,
                           START_MS + HOUR_MS, [])
    data["postmortem"]["processes"] = [{
        "pid": 4201, "name": "python3", "used_memory_mb": 62540, "user": "alice",
        "uid": None, "slurm_job_id": "881", "slurm_step": "0", "container_id": None,
        "pod_uid": None, "systemd_unit": None, "first_seen_at": "2026-01-01T00:01:00.000Z",
        "last_seen_at": "2026-01-01T00:03:00.000Z", "ended_at": None, "running": True}]
    found = ReportFile(render_report(data, DEFAULT_CONFIG, START_MS + HOUR_MS).html)
    assert found.sections["processes"].startswith(
        "Processes Compute processes alive on the GPU during the incident PID Name User "
        "Slurm job Step Memory First seen Ended 4201 python3 alice 881 0 62,540 MiB")
    data["postmortem"]["processes"] = None
    found = ReportFile(render_report(data, DEFAULT_CONFIG, START_MS + HOUR_MS).html)
    assert "Not recorded" in found.sections["processes"]


def test_one_hour_incident_stays_under_500_kib(engine: sa.Engine, db_url: str,
                                               tmp_path: Path) -> None:
    """A one-hour overheat sampled every second (4,800 samples with the context) makes a
    report under 500 KiB: the chart carries at most 600 buckets, not the samples."""
    temps = [70] * 600 + [88] * 3600 + [70] * 600
    import_file(engine, write_trace(tmp_path / "hour.csv", temps), start_ms=START_MS,
                host=HOST)
    result = CliRunner().invoke(cli, ["incidents", "--db", db_url, "--host-name", HOST,
                                      "--json"])
    [incident] = json.loads(result.output)["incidents"]
    assert incident["duration_seconds"] == 3600
    out = tmp_path / "hour.html"
    assert cli_report(db_url, incident["id"], "-o", str(out)).exit_code == 0
    found = assert_self_contained(out.read_text(encoding="utf-8"))
    assert "Duration 1 h 0 min" in found.sections["card"]
    assert 550 <= len(found.data["history"]["buckets"]) <= 601
    assert out.stat().st_size < 500 * 1024


def test_without_the_chart_library_the_cli_says_how_to_install_it(
        engine: sa.Engine, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No uPlot files: the CLI fails (exit 1) saying to reinstall and writes nothing."""
    want = import_with_lease(engine)
    monkeypatch.setattr(assets, "web_root", lambda: tmp_path / "empty-web")
    result = cli_report(db_url, want["id"], "-o", str(tmp_path / "none.html"))
    assert result.exit_code == 1 and "reinstall gpuhistory" in result.output
    assert not (tmp_path / "none.html").exists()


def test_api_report_download_and_cli_url(app, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """GET .../report.html is a download (attachment, text/html) whose header policy is the
    file's own plus frame-ancestors, the other security headers kept; `report --url` writes
    the same report; unknown ids are 404 in the error shape (exit 3 for the CLI), bad
    arguments 4xx; without the chart library, 503 saying to reinstall."""
    allocate = requests.post(f"{app.url}/api/gpu/memory/allocate", json={
        "allocation_id": "train-42", "memory_mb": 20480, "gpu_id": 1, "owner": "alice",
        "ttl_seconds": 600}, timeout=5)
    assert allocate.status_code == 201
    app.tick(1, times=220)
    IncidentDetector(app.engine, app.clock, app.config).run()
    [incident] = requests.get(f"{app.url}/api/gpu/incidents", params={"gpu_id": 1},
                              timeout=5).json()["incidents"]
    response = requests.get(f"{app.url}/api/gpu/incidents/{incident['id']}/report.html",
                            timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert response.headers["Content-Disposition"] == (
        f'attachment; filename="incident-{incident["id"]}.html"')
    found = assert_self_contained(response.text)
    assert response.headers["Content-Security-Policy"] == (
        f"{found.policy}; frame-ancestors 'none'")
    for name in ("X-Content-Type-Options", "Referrer-Policy", "X-Frame-Options"):
        assert response.headers[name] == SECURITY_HEADERS[name]
    want = expected(sampled_rows(FLEET4, 1, 220))[0]
    assert f"Peak {want['peak']} °C" in found.sections["card"]
    assert "train-42 alice 20,480 MiB" in found.sections["leases"]

    out = tmp_path / "via-url.html"
    result = CliRunner().invoke(cli, ["incidents", "report", str(incident["id"]), "--url",
                                      app.url, "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text(encoding="utf-8") == response.text  # the server's clock: no change

    for path, status, code in (
            ("/api/gpu/incidents/999/report.html", 404, "incident_not_found"),
            (f"/api/gpu/incidents/{incident['id']}/report.html?host=elsewhere", 404,
             "incident_not_found"),
            ("/api/gpu/incidents/0/report.html", 422, "validation_failed"),
            (f"/api/gpu/incidents/{incident['id']}/report.html?bogus=1", 400,
             "invalid_argument")):
        bad = requests.get(f"{app.url}{path}", timeout=5)
        assert bad.status_code == status, (path, bad.text)
        assert bad.json()["error"]["code"] == code and set(bad.json()["error"]) == {
            "code", "message", "details"}
    missing = CliRunner().invoke(cli, ["incidents", "report", "999", "--url", app.url,
                                       "-o", str(tmp_path / "none.html")])
    assert missing.exit_code == 3 and "incident_not_found" in missing.output
    assert not (tmp_path / "none.html").exists()
    spec = requests.get(f"{app.url}/api/openapi.json", timeout=5).json()
    assert "text/html" in spec["paths"]["/api/gpu/incidents/{incident_id}/report.html"][
        "get"]["responses"]["200"]["content"]
    monkeypatch.setattr(assets, "web_root", lambda: tmp_path / "empty-web")
    unavailable = requests.get(f"{app.url}/api/gpu/incidents/{incident['id']}/report.html",
                               timeout=5)
    assert unavailable.status_code == 503
    assert unavailable.json()["error"]["code"] == "dashboard_not_installed"
    assert "reinstall gpuhistory" in unavailable.json()["error"]["message"]


# -- the module linker -------------------------------------------------------------------------
def test_linker_joins_modules_dependencies_first() -> None:
    """Named, aliased and default imports become reads of the modules run before; each
    module keeps its own scope; the entry runs last."""
    files = {
        "a.js": 'export const x = 1;\nconst hidden = 2;\nexport default function f() {}\n',
        "b.js": 'import f, {x as y} from "./a.js";\nexport class K {}\nexport function g() '
                '{ return y; }\n',
    }
    script = link_modules("main.js", 'import {g, K} from "./b.js";\nimport {x} from "./a.js";'
                          '\ng(); new K();\n', files.__getitem__)
    assert script.index("// -- a.js") < script.index("// -- b.js") < script.index(
        "// -- main.js")
    assert "const f = __module_a_js.default;" in script
    assert "const {x: y} = __module_a_js;" in script
    assert "return {x, default: __default};" in script and "hidden" not in script.split(
        "return")[1]
    assert "export" not in script and "import" not in script


@pytest.mark.parametrize(("source", "message"), [
    ("export let counter = 0;\n", "an export other than"),
    ("export {a};\n", "an export other than"),
    ('const m = import("./x.js");\n', "dynamic import"),
    ("console.log(import.meta.url);\n", "dynamic import"),
    ('import * as everything from "./a.js";\n', "cannot read the import"),
    ('const s = "</script>";\n', "end its element early"),
    ('import {a} from "./main.js";\nexport const a = 1;\n', "import each other"),
])
def test_linker_refuses_what_it_cannot_link(source: str, message: str) -> None:
    """Syntax the linker would get wrong is refused with the reason, never passed through."""
    with pytest.raises(LinkError, match=message):
        link_modules("main.js", source, lambda name: {"a.js": "export const a = 1;\n"}[name])
