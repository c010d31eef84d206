"""What operators watch agrees with what the daemon exports (README "Operating").

The Grafana dashboard (deploy/grafana/harvester.json) is checked against the dashboard
JSON model Grafana imports (the fields it needs, a grid that does not overlap) and every
query in it against the metric names and labels the daemon really exports; the alert
rules are checked the same way in test_deploy.py, and here for the failure modes of
issue 15; the migrate Job runs a real command with the Deployment's configuration; the
README's metric and alert tables name everything there is.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

from harvester.cli import build_parser
from harvester.metrics import FAILED_REASONS, UPSTREAM_STATUSES, Metrics
from tests.unit.test_deploy import (
    DEPLOY,
    KUBE,
    SHARED_GAUGES,
    alert_rules,
    container,
    container_env,
    exported_metrics,
    kustomization,
    load_all,
    load_one,
    manifests,
    pod_spec,
    secret_env,
    selectors,
)

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = DEPLOY / "grafana" / "harvester.json"
MIGRATE = KUBE / "migrate"
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"job", "instance"}
PANEL_TYPES = {"row", "timeseries", "stat", "gauge", "bargauge", "table", "state-timeline",
               "text", "heatmap"}


def dashboard() -> dict[str, Any]:
    return cast(dict[str, Any], json.loads(DASHBOARD.read_text()))


def panels() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for panel in dashboard()["panels"]:
        found.append(panel)
        found += panel.get("panels", [])  # a collapsed row keeps its panels inside
    return found


def expressions() -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in panels()
            for target in panel.get("targets", [])]


# ------------------------------------------------------------------ the dashboard


def test_the_dashboard_is_a_grafana_dashboard_model_that_imports() -> None:
    board = dashboard()
    for key, kind in {"uid": str, "title": str, "schemaVersion": int, "panels": list,
                      "templating": dict, "time": dict, "tags": list}.items():
        assert isinstance(board.get(key), kind), key
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", board["uid"])
    assert board["schemaVersion"] >= 36  # Grafana 9 and later
    assert "id" not in board or board["id"] is None  # importable into any Grafana
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert "harvester_build_info" in variables["job"]["definition"]

    ids = [panel["id"] for panel in panels()]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    cells: set[tuple[int, int]] = set()
    for panel in panels():
        assert panel["type"] in PANEL_TYPES, panel["title"]
        assert panel["title"].strip()
        grid = panel["gridPos"]
        assert set(grid) == {"x", "y", "w", "h"}
        assert grid["x"] >= 0 and grid["w"] >= 1 and grid["x"] + grid["w"] <= 24, panel["title"]
        covered = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                   for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not covered & cells, f"{panel['title']} overlaps another panel"
        cells |= covered
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert len(panel.get("description", "")) > 10, panel["title"]
        targets = panel["targets"]
        assert targets, panel["title"]
        assert len({t["refId"] for t in targets}) == len(targets)
        for target in targets:
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]


def test_every_dashboard_query_uses_metrics_and_labels_the_daemon_exports() -> None:
    exported = exported_metrics()
    for title, expr in expressions():
        found = list(selectors(expr))
        assert found, (title, expr)
        for name, labels, function in found:
            assert name in exported, f"{title}: {name} is not exported"
            unknown = set(labels) - exported[name] - TARGET_LABELS
            assert not unknown, f"{title}: {name} has no label {unknown}"
            assert labels.get("job") == "$job", f"{title}: {name} is not filtered by $job"
            if name in SHARED_GAUGES:
                assert function == "max", f"{title}: aggregate {name} with max()"
        for bound in re.findall(r'le="([^"]*)"', expr):
            # A bucket bound must be one the histogram has, spelt as the client spells it.
            assert any(f'le="{bound}"' in line for line in Metrics().render().decode()
                       .splitlines()), f"{title}: no bucket le={bound}"


def test_the_dashboard_shows_what_a_team_watches_on_day_one() -> None:
    used = {name for _, expr in expressions() for name, _, _ in selectors(expr)}
    for needed in (
        "harvester_landed_total",                             # throughput
        "harvester_landing_lag_seconds_bucket",               # landing lag
        "harvester_enqueue_to_landed_seconds_bucket",         # the SLO latency
        "harvester_queue_jobs",                               # queue by state
        "harvester_queue_jobs_by_upstream_status",            # ... by upstream status
        "harvester_due_jobs", "harvester_oldest_due_age_seconds",  # due backlog
        "harvester_stuck_open", "harvester_oldest_stuck_age_seconds",  # stuck
        "harvester_failed_total",                             # failures by reason
        "harvester_auth_circuit_open", "harvester_permission_circuit_open",  # circuits
        "harvester_upstream_alarm",
        "harvester_send_rate_limit", "harvester_rate_limited_total",  # rate
        "harvester_paused_seconds_total",
        "harvester_batch_status_requests_total",
    ):
        assert needed in used, needed


def test_the_dashboard_asks_for_nothing_it_does_not_use() -> None:
    """Every ``${NAME}`` is a variable of the dashboard or an input the import screen asks
    for, and every such input is used (an unused DS_PROMETHEUS made Grafana's import ask
    for a data source that nothing read)."""
    board = dashboard()
    text = DASHBOARD.read_text()
    inputs = {entry["name"] for entry in board.get("__inputs", [])}
    variables = {variable["name"] for variable in board["templating"]["list"]}
    referenced = set(re.findall(r"\$\{(\w+)(?::\w+)?\}", text))
    assert referenced <= variables | inputs | {"__rate_interval"}, referenced - variables - inputs
    for name in inputs:
        assert f"${{{name}}}" in text, f"__inputs declares {name}, which nothing uses"


def test_every_exported_metric_is_on_the_dashboard() -> None:
    used = {name for _, expr in expressions() for name, _, _ in selectors(expr)}
    shown = {re.sub(r"_(total|info|bucket|sum|count)$", "", name) for name in used}
    exported = {re.sub(r"_(total|info|created|bucket|sum|count)$", "", name)
                for name in exported_metrics() if name.startswith("harvester_")}
    assert exported - shown == set()


# What a per-second rate of a counter counts, and the unit that says so: Grafana's own
# where it has one, else a custom "suffix:" naming the thing.
COUNTED = {
    "harvester_requests_total": "reqps", "harvester_polls_total": "reqps",
    "harvester_batch_status_requests_total": "reqps", "harvester_rate_limited_total": "reqps",
    "harvester_permission_checks_total": "reqps",
    "harvester_landed_total": "suffix:jobs/s", "harvester_failed_total": "suffix:jobs/s",
    "harvester_stuck_transitions_total": "suffix:jobs/s",
    "harvester_retention_deleted_total": "rowsps",
}
UNITS = {"seconds": {"s"}, "count": {"short", "none"}, "share": {"percentunit"},
         "bytes": {"bytes"}}


def dimension(expr: str) -> tuple[str, str] | None:
    """(what the values of ``expr`` measure, the one metric it reads), from the shape of
    the query: a quantile of a histogram of seconds (seconds) or of another (count); a
    rate of a seconds counter (a share of time) or of another (per second); a gauge in
    seconds or bytes. None where the shape does not say (ratios, other gauges)."""
    names = {name for name, _, _ in selectors(expr)}
    if len(names) != 1:
        return None
    (name,) = names
    if expr.lstrip().startswith("histogram_quantile"):
        return ("seconds" if name.endswith("_seconds_bucket") else "count"), name
    if re.search(r"\b(?:rate|irate|increase)\(", expr):
        return ("share" if name.endswith("_seconds_total") else "per second"), name
    for suffix, kind in (("_seconds", "seconds"), ("_bytes", "bytes")):
        if name.endswith(suffix):
            return kind, name
    return None


def fields(panel: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target's effective unit and axis: the panel's defaults with the overrides
    that match it (by query or by display name) applied."""
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    overrides = panel.get("fieldConfig", {}).get("overrides", [])
    found: dict[str, dict[str, Any]] = {}
    matched: set[int] = set()
    for target in panel["targets"]:
        field = {"unit": defaults.get("unit"),
                 "axis": defaults.get("custom", {}).get("axisPlacement", "auto")}
        for index, override in enumerate(overrides):
            matcher = override["matcher"]
            if (matcher["id"] == "byFrameRefID" and matcher["options"] == target["refId"]) or (
                    matcher["id"] == "byName" and matcher["options"] == target["legendFormat"]):
                matched.add(index)
                for prop in override["properties"]:
                    key = {"unit": "unit", "custom.axisPlacement": "axis"}.get(prop["id"])
                    if key:
                        field[key] = prop["value"]
        found[target["refId"]] = field
    assert matched == set(range(len(overrides))), f"{panel['title']}: an override matches nothing"
    return found


def test_each_axis_shows_one_kind_of_figure_in_its_unit() -> None:
    """Jobs are not requests (no reqps for rows landed), and a rate, a count per call and
    a 0-1 share never share an axis: each gets the unit of what it measures, and figures
    of different kinds in one panel go on different axes."""
    checked = 0
    for panel in panels():
        if panel["type"] == "row":
            continue
        effective = fields(panel)
        by_axis: dict[str, set[str]] = {}
        for target in panel["targets"]:
            found = dimension(target["expr"])
            if found is None:
                continue
            kind, metric = found
            field = effective[target["refId"]]
            unit = field["unit"]
            where = f"{panel['title']} {target['refId']} ({metric})"
            if kind == "per second":
                wanted = COUNTED.get(metric)
                assert unit == wanted if wanted else (unit in {"ops", "cps"} or str(unit).endswith("/s")), \
                    f"{where}: {unit}"
            else:
                assert unit in UNITS[kind], f"{where}: {kind} in {unit}"
            by_axis.setdefault(field["axis"], set()).add(f"{kind} in {unit}")
            checked += 1
        for axis, kinds in by_axis.items():
            assert len(kinds) == 1, f"{panel['title']}: {sorted(kinds)} on the {axis} axis"
        if {"auto", "left"} <= set(by_axis):
            raise AssertionError(f"{panel['title']}: 'auto' and 'left' both mean the left axis")
    assert checked >= 40  # the check reads most queries, not a handful


# ------------------------------------------------------------------ metrics


def test_known_label_values_exist_before_the_first_event() -> None:
    """rate() needs a series to exist before its first increment, and a dashboard shows
    0 rather than "no data": the known failure reasons, alarms and upstream statuses
    are exported from the start (http_<status> reasons stay dynamic)."""
    metrics = Metrics()

    async def read() -> dict[str, float]:
        return {}

    metrics.attach_queue_gauges(read)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(metrics.render().decode())
               for s in family.samples}
    for reason in FAILED_REASONS:
        assert samples[("harvester_failed_total", (("reason", reason),))] == 0
    assert not [k for k in samples if k[0] == "harvester_failed_total"
                and dict(k[1])["reason"].startswith("http_")]
    assert samples[("harvester_upstream_alarm", (("alarm", "base_url_suspect"),))] == 0
    for state in ("pending", "stuck"):
        for status in UPSTREAM_STATUSES:
            key = ("harvester_queue_jobs_by_upstream_status",
                   (("state", state), ("upstream_status", status)))
            assert samples[key] == 0


# ------------------------------------------------------------------ alerts


def test_the_alerts_issue_15_asks_for_exist_and_divide_by_the_right_thing() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules()}
    for name, metric in {
        "HarvesterBatchStatusFailing": "harvester_batch_status_requests_total",
        "HarvesterNothingLands": "harvester_landed_total",
        "HarvesterPermissionCircuitOpen": "harvester_permission_circuit_open",
        "HarvesterBaseUrlSuspect": "harvester_upstream_alarm",
    }.items():
        assert name in rules, name
        assert metric in {n for n, _, _ in selectors(rules[name]["expr"])}, name
    nothing = [s for s in selectors(rules["HarvesterNothingLands"]["expr"])]
    assert ("harvester_queue_jobs_by_upstream_status",
            {"state": "pending", "upstream_status": "extraction_done|completed"}, "max") in nothing
    # "> 50 % of 200s": the denominator is the 200 answers (landed or invalid), not all polls.
    invalid = list(selectors(rules["HarvesterInvalidAnswers"]["expr"]))
    assert [labels for _, labels, _ in invalid] == [{"outcome": "invalid"},
                                                    {"outcome": "landed|invalid"}]
    replica = rules["HarvesterReplicaDown"]["annotations"]["runbook"]
    assert "has not started its admin server" not in replica
    assert "admin server starts before" in replica


def test_every_alert_has_a_promtool_case_that_fires_and_one_that_stays_quiet() -> None:
    """deploy/prometheus/alerts.test.yaml is what `promtool test rules` runs in CI
    (.ci/run); here, without promtool, that it covers every alert both ways."""
    document = load_one(DEPLOY / "prometheus" / "alerts.test.yaml")
    assert document["rule_files"] == ["alerts.yaml"]
    fires: set[str] = set()
    quiet: set[str] = set()
    for test in document["tests"]:
        assert test["input_series"], test["name"]
        for case in test["alert_rule_test"]:
            (fires if case["exp_alerts"] else quiet).add(case["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert fires == names, names ^ fires
    assert quiet == names, names ^ quiet


# ------------------------------------------------------------------ the migrate Job


def test_the_migrate_job_runs_harvester_migrate_with_the_daemons_configuration() -> None:
    (job,) = load_all(MIGRATE / "job.yaml")
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    own = load_one(MIGRATE / "kustomization.yaml")
    assert own["resources"] == ["job.yaml"]
    assert own["images"] == kustomization()["images"], "the same image as the Deployment"
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] >= 1
    (migrate,) = spec["containers"]
    assert migrate["image"] in {image["name"] for image in own["images"]}
    args = build_parser().parse_args(migrate["args"])
    assert args.command == "migrate"
    daemon = container()
    # The same settings, mounts and hardening as the daemon: a Job that reads another
    # configuration would migrate another database...
    for key in ("envFrom", "securityContext", "volumeMounts"):
        assert migrate.get(key) == daemon.get(key), key
    for key in ("securityContext", "automountServiceAccountToken", "enableServiceLinks"):
        assert spec.get(key) == pod_spec().get(key), key
    names = {(doc["kind"], doc["metadata"]["name"]) for doc in manifests().values()}
    for source in migrate.get("envFrom", []):
        assert ("ConfigMap", source["configMapRef"]["name"]) in names
    # ...but its own Secret, holding only a DSN: the owner's login to the same server,
    # database and TLS settings as the daemons' runtime login (README "Upgrades").
    assert {e["name"]: e["value"] for e in migrate["env"]} == {
        "HARVESTER_DATABASE_URL_FILE": container_env()["HARVESTER_DATABASE_URL_FILE"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    daemon_volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    assert volumes.keys() == daemon_volumes.keys()
    for name, volume in volumes.items():
        if "secret" in volume:
            assert volume["secret"]["secretName"] == "harvester-migrate-secrets"
            assert daemon_volumes[name]["secret"]["secretName"] == "harvester-secrets"
        else:
            assert volume == daemon_volumes[name], name
    owner = urlsplit(secret_env("harvester-migrate-secrets")["HARVESTER_DATABASE_URL"])
    runtime = urlsplit(secret_env()["HARVESTER_DATABASE_URL"])
    assert (owner.hostname, owner.port, owner.path, owner.query) == (
        runtime.hostname, runtime.port, runtime.path, runtime.query)
    assert owner.username != runtime.username


# ------------------------------------------------------------------ README


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_the_readme_tables_name_every_alert_and_every_metric() -> None:
    operating = readme_section("Operating")
    for rule in alert_rules():
        assert f"| {rule['alert']} " in operating, rule["alert"]
    documented = {re.sub(r"_(total|info)$", "", name) for name in
                  re.findall(r"`(harvester_[a-z_]+)(?:\{[^}]*\})?`", operating)}
    families = {re.sub(r"_(total|info|created|bucket|sum|count)$", "", name)
                for name in exported_metrics() if name.startswith("harvester_")}
    assert "harvester_landing_lag_seconds" in families  # histograms are families too
    assert families - documented == set()
