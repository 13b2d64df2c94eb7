"""The shipped Prometheus and Grafana artefacts, checked against the real tools and the real
`/metrics`: the Grafana dashboard's queries name only metrics gpuhistory serves, the alert
rules pass `promtool check rules` and their unit tests (`promtool test rules`), and a real
Prometheus scraping a real `serve` answers NVIDIA's DCGM dashboard's own queries with one
series per simulated GPU.

Without Debian's `prometheus` package (promtool, prometheus) the tool tests skip with the
reason — unless GPUHISTORY_REQUIRE_PROMETHEUS=1 (CI), when they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO
from tests.test_roles import poll, stop
from tests.test_serve import free_port, gpuhistory, wait_ready

DASHBOARD = REPO / "deploy" / "grafana" / "gpuhistory-dashboard.json"
RULES = REPO / "deploy" / "prometheus" / "gpuhistory-alerts.yml"
RULES_TEST = REPO / "deploy" / "prometheus" / "gpuhistory-alerts.test.yml"
# Served only where the hardware reports them (NVML), never by the simulator: the scrape
# declares these families, with no samples.
HARDWARE_ONLY = {"gpuhistory_gpu_ecc_errors_total", "gpuhistory_gpu_pcie_replays_total",
                 "gpuhistory_gpu_remapped_rows", "gpuhistory_gpu_row_remap_failure"}
# Queries of NVIDIA's published DCGM dashboard (dcgm-exporter's
# grafana/dcgm-exporter-dashboard.json), its variables $instance and $gpu set to "all".
DCGM_DASHBOARD_QUERIES = (
    'DCGM_FI_DEV_GPU_TEMP{instance=~"$instance", gpu=~"$gpu"}',
    'DCGM_FI_DEV_POWER_USAGE{instance=~"$instance", gpu=~"$gpu"}',
    'DCGM_FI_DEV_SM_CLOCK{instance=~"$instance", gpu=~"$gpu"} * 1000000',
    'DCGM_FI_DEV_GPU_UTIL{instance=~"$instance", gpu=~"$gpu"}',
    'DCGM_FI_DEV_FB_USED{instance=~"$instance", gpu=~"$gpu"}',
)
DCGM_DASHBOARD_TOTALS = (
    'avg(DCGM_FI_DEV_GPU_TEMP{instance=~"$instance", gpu=~"$gpu"})',
    'sum(DCGM_FI_DEV_POWER_USAGE{instance=~"$instance", gpu=~"$gpu"})',
)
PROMQL_WORDS = {  # keywords, aggregation modifiers and the like: not metric names
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and",
    "or", "unless", "inf", "nan",
}


def tool(name: str) -> str:
    """The path of a Prometheus tool; skip (or fail where required) when it is absent."""
    found = shutil.which(name)
    if found is None:
        reason = f"{name} is not installed: apt-get install prometheus"
        if os.environ.get("GPUHISTORY_REQUIRE_PROMETHEUS") == "1":
            pytest.fail(f"GPUHISTORY_REQUIRE_PROMETHEUS=1 but {reason}")
        pytest.skip(reason)
    return found


def grafana_vars(expr: str) -> str:
    """An expression with Grafana's variables set as an 'All' selection would set them."""
    expr = expr.replace("$__rate_interval", "1m").replace("$__interval", "1m")
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (strings, label matchers, ranges,
    grouping clauses, functions and keywords left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\b\d+(\.\d+)?(ms|[smhdwy])?\b", " ", text)  # numbers and durations
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        rest = text[match.end():].lstrip()
        word = match.group(0)
        if rest.startswith("(") or word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the Grafana dashboard: panel targets and the variables'
    label_values() selectors."""
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    for variable in doc["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) \
            else variable["query"]
        inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", query)
        assert inner, query
        exprs.append(inner.group(1))
    return exprs


def served(app) -> tuple[set[str], set[str]]:
    """Sample names of a live scrape of the sim app, and the families it declares."""
    body = requests.get(f"{app.url}/metrics", timeout=10).text
    samples = {s.name for f in text_string_to_metric_families(body) for s in f.samples}
    declared = set(re.findall(r"^# TYPE (\S+) ", body, re.M))
    return samples, declared


# -- Grafana -------------------------------------------------------------------------------
def test_grafana_dashboard_names_only_metrics_that_metrics_serves(app) -> None:
    """Each panel (fleet overview, temperature with thresholds, state, throttle advice,
    leases, hardware health) has a query, and every metric any query names is one the live
    /metrics of the sim app has samples for — or one declared there that only hardware
    fills (ECC)."""
    doc = json.loads(DASHBOARD.read_text())
    titles = {p["title"] for p in doc["panels"]}
    assert {"Fleet overview", "Temperature", "State", "Throttle advice (speed multiplier)",
            "Leases", "Active leases", "XID errors (last hour)"} <= titles
    temperature = next(p for p in doc["panels"] if p["title"] == "Temperature")
    steps = temperature["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["value"] for s in steps] == [None, 75, 85]  # NORMAL and CRITICAL boundaries
    app.tick(5, times=10)
    assert requests.post(f"{app.url}/api/gpu/memory/allocate", json={
        "allocation_id": "dash", "memory_mb": 1024, "gpu_id": 0}, timeout=10).status_code == 201
    samples, declared = served(app)
    queries = dashboard_queries()
    named: set[str] = set()
    for expr in queries:
        names = metric_names(expr)
        assert names, f"no metric found in {expr!r}"
        named |= names
    unknown = {n for n in named if n not in samples
               and not (n in HARDWARE_ONLY and n.removesuffix("_total") in {
                   d.removesuffix("_total") for d in declared})}
    assert not unknown, f"the dashboard names metrics /metrics does not serve: {unknown}"
    assert "gpuhistory_gpu_temperature_celsius" in named  # the extraction found the obvious


def test_metric_name_extraction_ignores_functions_labels_and_keywords() -> None:
    """The parser the dashboard test relies on: names only, whatever surrounds them."""
    assert metric_names('sum by (host) (rate(a_total{x="b c", y=~"$z"}[5m])) / '
                        'on(gpu) group_left(name) b > bool 0.5') == {"a_total", "b"}
    assert metric_names("max(c) + 2 * d offset 5m") == {"c", "d"}


# -- alert rules ---------------------------------------------------------------------------
def test_alert_rules_pass_promtool_check() -> None:
    """`promtool check rules` accepts the rules file: six alerts, valid PromQL."""
    result = subprocess.run([tool("promtool"), "check", "rules", str(RULES)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout


def test_alert_rules_unit_tests_cover_every_alert_and_pass() -> None:
    """`promtool test rules` passes, and the tests cover each alert at three moments:
    inside its `for:` (nothing), after it (firing), and after the condition ended."""
    alerts = {r["alert"]: r for g in yaml.safe_load(RULES.read_text())["groups"]
              for r in g["rules"]}
    assert set(alerts) == {"GpuHot", "GpuCritical", "GpuLost", "GpuhistorySamplerStale",
                           "GpuLeasesNearCapacity", "GpuXidError"}
    cases = [c for t in yaml.safe_load(RULES_TEST.read_text())["tests"]
             for c in t["alert_rule_test"]]
    for name in alerts:
        mine = [bool(c["exp_alerts"]) for c in cases if c["alertname"] == name]
        assert mine == [False, True, False], (name, mine)
    result = subprocess.run([tool("promtool"), "test", "rules", RULES_TEST.name],
                            capture_output=True, text=True, timeout=60, check=False,
                            cwd=RULES_TEST.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_name_only_metrics_that_metrics_serves(app) -> None:
    """Every metric the alert rules use is served by /metrics."""
    samples, declared = served(app)
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            names = metric_names(rule["expr"])
            assert names and names <= samples | declared, (rule["alert"], names)


# -- a real Prometheus scraping a real serve -----------------------------------------------
@pytest.fixture
def prometheus_on_serve(tmp_path: Path) -> Iterator[str]:
    """`serve` (sim, metrics_dcgm on) and Debian's prometheus scraping it every second,
    both on free loopback ports; yields Prometheus's URL; stops both at the end."""
    binary = tool("prometheus")
    db = tmp_path / "serve.db"
    serve_port, prom_port = free_port(), free_port()
    serve = subprocess.Popen(
        gpuhistory("serve", "--db", str(db), "--backend", "sim", "--interval", "1",
                   "--port", str(serve_port), "--threads", "2", "--host-name", "node-p"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "GPUHISTORY_METRICS_DCGM": "1"})
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "gpuhistory", "scrape_interval": "1s",
                            "static_configs": [{"targets": [f"127.0.0.1:{serve_port}"]}]}],
    }))
    prom = None
    try:
        wait_ready(f"http://127.0.0.1:{serve_port}", serve)
        prom = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        yield f"http://127.0.0.1:{prom_port}"
    finally:
        if prom is not None:
            stop(prom)
        stop(serve)


def instant(prometheus: str, expr: str) -> list[dict]:
    """The result of an instant query (empty until Prometheus is up and ready)."""
    try:
        answer = requests.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=5)
    except requests.ConnectionError:
        return []
    if answer.status_code == 503:  # "Service Unavailable" (text) while its storage opens
        return []
    body = answer.json()
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


@pytest.mark.slow
def test_prometheus_answers_the_dcgm_dashboards_queries_from_serve(prometheus_on_serve) -> None:
    """Through Prometheus's HTTP API: each per-GPU query of the DCGM dashboard has one
    series per simulated GPU (gpu 0 to 3, with UUID and modelName), its totals one series, its
    $gpu variable lists the four GPUs; and every query of our own dashboard is valid
    PromQL that Prometheus runs."""
    started = time.monotonic()
    url = prometheus_on_serve
    first = grafana_vars(DCGM_DASHBOARD_QUERIES[0])
    poll(lambda: len(instant(url, first)) == 4, timeout=30, what="the first scrapes")
    for query in DCGM_DASHBOARD_QUERIES:
        result = instant(url, grafana_vars(query))
        assert sorted(r["metric"]["gpu"] for r in result) == ["0", "1", "2", "3"], query
        assert all(r["metric"]["UUID"].startswith("GPU-") and r["metric"]["modelName"]
                   and r["metric"]["Hostname"] == "node-p" for r in result), result
    for query in DCGM_DASHBOARD_TOTALS:
        assert len(instant(url, grafana_vars(query))) == 1, query
    values = requests.get(f"{url}/api/v1/label/gpu/values",
                          params={"match[]": "DCGM_FI_DEV_GPU_TEMP"}, timeout=5).json()
    assert values["data"] == ["0", "1", "2", "3"]
    energy = instant(url, "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION")  # the sim's integrated power
    assert sorted(r["metric"]["gpu"] for r in energy) == ["0", "1", "2", "3"]
    for expr in dashboard_queries():
        instant(url, grafana_vars(expr))  # asserts Prometheus accepts it
    assert len(instant(url, grafana_vars(
        'gpuhistory_gpu_temperature_celsius{host=~"$host", gpu=~"$gpu"}'))) == 4
    assert time.monotonic() - started < 40
