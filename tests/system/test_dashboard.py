"""The Grafana dashboard and the Prometheus config in deploy/ match what the server really exports.

Every PromQL expression of deploy/grafana/retouch-dashboard.json is parsed (promql-parser) and each
metric it reads must be exported by a real ``retouch serve``'s ``GET /metrics`` after one tiny job,
so a renamed metric or label breaks this test instead of a studio's dashboard. deploy/prometheus.yml
must scrape exactly the pods of deploy/compose.yaml, on the port and path they serve.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import promql_parser
import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.server_harness import ServeProcess, WebhookReceiver
from tests.support.server_harness import free_port as _free_port
from tests.unit.test_metrics import KEY, _submit, _wait

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = json.loads((ROOT / "deploy/grafana/retouch-dashboard.json").read_text())
PROMETHEUS = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
COMPOSE = yaml.safe_load((ROOT / "deploy/compose.yaml").read_text())
# Families a CPU worker declares but never samples: its engine has no GPU memory to report.
SAMPLED_ONLY_ON_GPU = {"retouch_gpu_memory_bytes", "retouch_gpu_memory_peak_bytes"}
# Labels Prometheus adds to every scraped sample (plus deploy/prometheus.yml's own `role`).
TARGET_LABELS = {"job", "instance", "role"}


# -- the dashboard's queries ---------------------------------------------------------------
def dashboard_panels(panels: list[dict]):
    for panel in panels:
        yield panel
        yield from dashboard_panels(panel.get("panels", []))  # a collapsed row holds its panels


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query the dashboard runs."""
    queries = [
        (panel["title"], target["expr"])
        for panel in dashboard_panels(DASHBOARD["panels"])
        for target in panel.get("targets", [])
    ]
    queries += [
        ("variable " + var["name"], var["query"]["query"] if isinstance(var["query"], dict) else var["query"])
        for var in DASHBOARD["templating"]["list"]
        if var["type"] == "query"
    ]
    return queries


def parse(expr: str):
    # Grafana replaces its interval variables before Prometheus sees the query.
    return promql_parser.parse(re.sub(r"\$__(rate_)?interval|\$__range", "5m", expr))


def selectors_and_groupings(expr: str) -> tuple[list, set[str]]:
    """The vector selectors an expression reads, and every label it groups by."""
    selectors, grouping = [], set()

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            selectors.append(node)
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            # `without (...)` names labels to drop; only `by (...)` must exist to group by.
            by = node.modifier.type == promql_parser.AggModifierType.By
            grouping.update(node.modifier.labels if by else ())

    promql_parser.walk(parse(expr), visit)
    return selectors, grouping


# -- the real server -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tiny_weights, tmp_path_factory) -> dict[str, tuple[str, str, set[str]]]:
    """{sample name: (family, type, label names)} of a real server's /metrics after one job.

    The job posts a webhook to a receiver that fails once, so every kind of event has happened:
    a job run through every stage, a queue wait, a failed and a delivered webhook attempt.
    """
    data = tmp_path_factory.mktemp("dashboard") / "data"
    data.mkdir()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RETOUCH_API_KEYS", KEY)
        env.setenv("RETOUCH_WEBHOOK_BACKOFF_INITIAL_S", "0.2")
        env.setenv("RETOUCH_WEBHOOK_BACKOFF_MAX_S", "0.5")
        # a plan for an 8 GiB card, so the memory-plan gauges are exported as on a GPU
        weights = tiny_weights.parent / "weights-dashboard.yaml"
        weights.write_text(tiny_weights.read_text() + "\nmemory:\n  gpu_memory_gib: 8\n")
        server = ServeProcess(weights, data, _free_port())
    receiver = WebhookReceiver(fail_first=1)
    try:
        server.wait()
        job = _submit(server, "make it warmer", callback_url=receiver.url, refine_strength=0.3)
        assert _wait(server, job)["status"] == "completed"
        deadline = time.monotonic() + 30
        while True:  # the delivery's outcome is counted just after the receiver answers
            text = requests.get(server.base_url + "/metrics", timeout=10).text
            if 'retouch_webhook_attempts_total{result="delivered"}' in text:
                break
            assert time.monotonic() < deadline, f"webhook never delivered ({receiver.calls} calls)"
            time.sleep(0.2)
    finally:
        receiver.close()
        server.stop()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            _, _, labels = samples.setdefault(sample.name, (family.name, family.type, set()))
            labels.update(sample.labels)
    return samples


def declared_families() -> dict[str, tuple[str, set[str]]]:
    """{family: (type, label names)} of the metrics server/metrics.py declares."""
    from prometheus_client.metrics import MetricWrapperBase

    from server import metrics

    return {
        m._name: (m._type, set(m._labelnames))
        for m in vars(metrics).values()
        if isinstance(m, MetricWrapperBase)
    }


def test_every_dashboard_query_parses_and_reads_only_exported_metrics_and_labels(exported):
    declared = declared_families()
    problems, families_shown = [], set()
    queries = dashboard_queries()
    assert len(queries) >= 15
    for title, expr in queries:
        selectors, grouping = selectors_and_groupings(expr)
        assert selectors, f"{title}: {expr} reads no metric"
        labels_read = set()
        for selector in selectors:
            name = selector.name
            if name is None:
                problems.append(f"{title}: name the metric, not {{__name__=...}}: {expr}")
                continue
            if name in exported:
                family, kind, labels = exported[name]
            elif name in SAMPLED_ONLY_ON_GPU and name in declared:
                family, (kind, labels) = name, declared[name]
            else:
                problems.append(f"{title}: {name} is not exported by the server")
                continue
            families_shown.add(family)
            if name.endswith("_bucket"):
                assert kind == "histogram" and "le" in labels, (title, name, kind)
            if re.search(r"\bhistogram_quantile\(", expr) and kind == "histogram":
                assert name == f"{family}_bucket", f"{title}: quantiles need {family}_bucket, not {name}"
            labels_read |= labels
            for matcher in selector.matchers.matchers:
                if matcher.name not in labels | TARGET_LABELS:
                    problems.append(f"{title}: {name} has no label {matcher.name!r}")
        missing = grouping - labels_read - TARGET_LABELS
        if missing:
            problems.append(f"{title}: groups by {sorted(missing)}, which {expr} does not carry")
    assert not problems, "\n".join(problems)
    # The reverse: every family the server exports has a panel, so a new metric gets one.
    exported_families = {family for family, _, _ in exported.values()} | SAMPLED_ONLY_ON_GPU
    assert exported_families - families_shown == set(), "metrics without a panel"


def test_dashboard_is_importable_with_a_prometheus_input():
    inputs = {i["name"]: i for i in DASHBOARD["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["type"] == "datasource"
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    # Also a dashboard variable: a provisioned file never sees the import dialog that fills inputs.
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    panels = [p for p in dashboard_panels(DASHBOARD["panels"]) if p["type"] != "row"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        for source in [panel["datasource"]] + [t["datasource"] for t in panel["targets"]]:
            assert source == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


# -- Prometheus and compose ----------------------------------------------------------------
def served_pods() -> dict[str, tuple[str, str]]:
    """{compose service: (role, port)} of every `retouch serve` pod."""
    pods = {}
    for name, service in COMPOSE["services"].items():
        command = service.get("command")
        if isinstance(command, list) and "serve" in command:
            pods[name] = (command[command.index("--role") + 1], command[command.index("--port") + 1])
    return pods


def test_prometheus_scrapes_every_compose_pod_on_its_port_and_metrics_path(tmp_path):
    from server.app import create_app
    from tests.support.server_harness import make_settings

    pods = served_pods()
    assert {role for role, _ in pods.values()} == {"api", "worker"}
    scraped = {}
    for job in PROMETHEUS["scrape_configs"]:
        path = job.get("metrics_path", "/metrics")
        for static in job["static_configs"]:
            for target in static["targets"]:
                assert target not in scraped, f"{target} scraped twice"
                scraped[target] = (path, static.get("labels", {}).get("role"))
    assert scraped == {f"{name}:{port}": ("/metrics", role) for name, (role, port) in pods.items()}
    # Every pod serves that path, whatever its role.
    routes = {getattr(route, "path", None) for route in create_app(make_settings(tmp_path)).routes}
    assert "/metrics" in routes


def test_compose_monitoring_profile_wires_prometheus_and_grafana_to_these_files():
    services = COMPOSE["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    assert prometheus["profiles"] == grafana["profiles"] == ["monitoring"]
    deploy = ROOT / "deploy"

    def mounts(service) -> dict[str, Path]:
        return {v.split(":")[1]: deploy / v.split(":")[0] for v in service["volumes"] if v.startswith("./")}

    config = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    assert mounts(prometheus)[config.split("=", 1)[1]].resolve() == (deploy / "prometheus.yml").resolve()
    grafana_mounts = mounts(grafana)
    assert all(source.exists() for source in grafana_mounts.values()), grafana_mounts
    provisioning = grafana_mounts["/etc/grafana/provisioning"]
    source = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())["datasources"][0]
    port = prometheus["ports"][0].rsplit(":", 1)[1]
    assert source["type"] == "prometheus" and source["url"] == f"http://prometheus:{port}"
    provider = yaml.safe_load((provisioning / "dashboards/retouch.yml").read_text())["providers"][0]
    dashboard_dir = provider["options"]["path"]
    loaded = [source for target, source in grafana_mounts.items() if target.startswith(dashboard_dir + "/")]
    assert [p.resolve() for p in loaded] == [(deploy / "grafana/retouch-dashboard.json").resolve()]
