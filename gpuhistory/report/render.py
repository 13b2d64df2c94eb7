"""The report as one HTML file: Jinja2 (autoescaped) over the report's data, with the chart
library, the linked chart script, the styles and the data inlined.

Nothing in the file loads anything: its own Content-Security-Policy (a ``<meta>`` element,
so it holds when the file is opened from disk) is ``default-src 'none'`` and allows
exactly the inline scripts and styles it was written with, by their SHA-256 hashes. An
injected ``<script>``, ``<img>`` or stylesheet, had escaping ever failed, would neither run
nor load. The data is a ``<script type="application/json">`` block (Jinja's ``tojson``:
``<``, ``>``, ``&`` and ``'`` escaped, so no value can close the element) that the browser
never executes.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from gpuhistory import __version__
from gpuhistory.analytics.postmortem import format_duration
from gpuhistory.clock import iso_utc
from gpuhistory.domain.config import Config
from gpuhistory.report import assets

TEMPLATES = Path(__file__).with_name("templates")
# The post-mortem's process fields the table always shows; any other field that some
# process has a value for (user, Slurm job, container, ...) gets a column of its own, in
# this order first.
PROCESS_FIELDS = ("pid", "name", "used_memory_mb", "first_seen_at", "last_seen_at",
                  "ended_at", "running")
PREFERRED_EXTRA = ("user", "slurm_job_id", "slurm_step", "container_id", "pod_uid",
                   "systemd_unit", "uid")
PROCESS_LABELS = {"slurm_job_id": "Slurm job", "slurm_step": "Step",
                  "container_id": "Container", "pod_uid": "Pod", "systemd_unit": "Unit",
                  "uid": "UID"}
# Directives that only an HTTP header can carry (a <meta> policy ignores them).
HEADER_ONLY_DIRECTIVES = "frame-ancestors 'none'"


@dataclass(frozen=True, slots=True)
class Report:
    """The file's text, and the policy to send with it when it is served."""

    html: str
    content_security_policy: str  # for the HTTP header (the file's <meta> has the rest)


def _sha256(text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def content_security_policy(scripts: list[str], styles: list[str]) -> str:
    """``default-src 'none'``, with these inline scripts and styles allowed by hash."""
    return (f"default-src 'none'; script-src {' '.join(map(_sha256, scripts))}; "
            f"style-src {' '.join(map(_sha256, styles))}; base-uri 'none'; form-action 'none'")


def _time(iso: str | None) -> Markup:
    """A UTC time as <time class="utc">; the script adds the viewer's local time after."""
    if not iso:
        return Markup("—")
    text = iso.replace("T", " ").removesuffix("Z")
    text = text.removesuffix(".000")
    return Markup('<time class="utc" datetime="{0}">{1} UTC</time>').format(iso, text)


def _number(value: Any, digits: int = 0) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        text = f"{value:,.{digits}f}" if digits else f"{round(value):,}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    return str(value)


def _unit(value: Any, unit: str, digits: int = 0) -> str:
    return "—" if value is None else f"{_number(value, digits)} {unit}"


def _cell(value: Any) -> str:
    """A value of unknown shape (an extra process field, an XID payload) as text."""
    if value is None:
        return "—"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return str(value)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(utc=_time, duration=format_duration, number=_number, unit=_unit,
                       cell=_cell)
    env.policies["json.dumps_kwargs"] = {"sort_keys": True, "separators": (",", ":"),
                                         "ensure_ascii": False}
    return env


_ENV = _environment()


def _extra_process_fields(processes: list[dict[str, Any]] | None) -> list[str]:
    present = {key for p in processes or [] for key, value in p.items()
               if key not in PROCESS_FIELDS and value is not None}
    return ([k for k in PREFERRED_EXTRA if k in present]
            + sorted(present - set(PREFERRED_EXTRA)))


def _config_rows(config: Config) -> list[tuple[str, Any, str]]:
    fields = type(config).model_fields
    return [(name, value, fields[name].description or "")
            for name, value in config.model_dump().items()]


def render_report(data: dict[str, Any], config: Config, generated_ms: int) -> Report:
    """The report of one incident: ``data`` from :func:`report_data`, ``config`` the
    effective configuration (shown as in force when the report was made)."""
    doc = data["postmortem"]
    library, script = assets.library_script(), assets.report_script()
    styles = list(assets.styles())
    policy = content_security_policy([library, script], styles)
    html = _ENV.get_template("report.html.j2").render(
        doc=doc, data=data, policy=policy,
        library=Markup(library), script=Markup(script),
        styles=[Markup(s) for s in styles],
        bucket_seconds=data["history"]["bucket_seconds"],
        process_extra=_extra_process_fields(doc.get("processes")),
        process_labels=PROCESS_LABELS,
        driver=doc.get("driver_version") or (doc.get("card") or {}).get("driver_version"),
        config_rows=_config_rows(config),
        generated_at=iso_utc(generated_ms),
        version=__version__,
        csv_path=f"/api/gpu/incidents/{doc['id']}/samples.csv",
    )
    return Report(html=html, content_security_policy=f"{policy}; {HEADER_ONLY_DIRECTIVES}")
