"""Alert rules and the Grafana dashboard: promtool-valid, unit-tested, catalogue names only."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from polypythia.monitoring import catalog
from support.prometheus import promtool

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "charts/polypythia/files/prometheus-rules.yaml"
DASHBOARD = ROOT / "charts/polypythia/files/grafana-dashboard.json"
RUNBOOK = ROOT / "docs/runbook.md"
RULE_TESTS = Path(__file__).with_name("rules_test.yaml")
WANTED_ALERTS = {
    "PolyPythiaLossSpike",
    "PolyPythiaRunNotRecovering",
    "PolyPythiaOutlierRun",
    "PolyPythiaRunStalled",
    "PolyPythiaRunsFailed",
    "PolyPythiaEvalBacklog",
    "PolyPythiaReconcileErrors",
}
PROMQL_FUNCS = {
    "sum",
    "max",
    "min",
    "by",
    "on",
    "and",
    "or",
    "time",
    "changes",
    "increase",
    "quantile",
    "rate",
    "label_values",
}


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bpolypythia_[a-z_]+\b", expr))


def _rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_rules_check_and_cover_every_alert_with_a_runbook_section():
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    rules = _rules()
    assert {r["alert"] for r in rules} == WANTED_ALERTS
    anchors = {
        "#" + re.sub(r"[^a-z0-9 -]", "", line[3:].strip().lower()).replace(" ", "-")
        for line in RUNBOOK.read_text().splitlines()
        if line.startswith("## ")
    }
    for r in rules:
        assert _metric_names(r["expr"]) <= catalog.series_names(), r["alert"]
        # The chart makes the runbook_url absolute (or leaves it out): none in the file.
        assert "runbook_url" not in r["annotations"], r["alert"]
        assert "#" + r["alert"].lower() in anchors, r["alert"]


def test_promtool_unit_tests_for_every_alert(tmp_path):
    text = RULE_TESTS.read_text().replace("RULES_FILE", str(RULES))
    tested = set(re.findall(r"alertname: (\w+)", text))
    assert tested == WANTED_ALERTS
    path = tmp_path / "rules_test.yaml"
    path.write_text(text)
    result = promtool("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_on_sweeps_group_by_the_sweeps_namespace():
    """Sweeps of the same name in two namespaces never share an alert."""
    for r in _rules():
        if "sweep" not in r["expr"] and "polypythia_run" not in r["expr"]:
            continue
        groupings = re.findall(r"\bby \(([^)]*)\)", r["expr"]) + re.findall(
            r"\bon \(([^)]*)\)", r["expr"]
        )
        assert groupings, r["alert"]
        for labels in groupings:
            assert "namespace" in [x.strip() for x in labels.split(",")], r["alert"]


def _dashboard_exprs(dash: dict) -> list[str]:
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in dash["annotations"]["list"]]
    return exprs


def test_dashboard_has_what_grafana_needs():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["title"] and dash["uid"] and isinstance(dash["schemaVersion"], int)
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert {"datasource", "sweep", "size"} <= set(variables)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        pos = p["gridPos"]
        assert {"x", "y", "w", "h"} <= set(pos) and pos["x"] + pos["w"] <= 24
        if p["type"] != "row":
            assert p["targets"] and all(t["refId"] and t["expr"] for t in p["targets"])
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for word in ("loss", "gradient norm", "spike", "outlier", "evaluation", "phase", "throughput"):
        assert word in titles
    # Spikes are marked while they happen (onset to recovery), not when a counter settles.
    loss_spikes = next(a for a in dash["annotations"]["list"] if a["name"] == "Loss spikes")
    assert "polypythia_spike_in_progress" in loss_spikes["expr"]
    assert "polypythia_spikes_total" not in loss_spikes["expr"]
    for name in ("namespace", "sweep", "size", "task"):
        names = _metric_names(variables[name]["query"]["query"])
        assert names and names <= catalog.series_names()


def test_annotations_mark_spikes_and_rewinds_as_grafana_reads_them():
    """Every annotation is a Prometheus annotation query Grafana can run (name, datasource,
    expression, step, labels for the text); a rewind is marked when the run's rewind counter
    grows, for every run of the selected namespace, sweep and size."""
    dash = json.loads(DASHBOARD.read_text())
    annotations = {a["name"]: a for a in dash["annotations"]["list"]}
    assert {"Loss spikes", "Gradient-norm spikes", "Rewinds"} <= set(annotations)
    for a in annotations.values():
        assert a["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, a["name"]
        assert isinstance(a["enable"], bool) and a["iconColor"] and a["titleFormat"]
        assert re.fullmatch(r"\d+[smh]", a["step"]), a["name"]
        shown = set(re.findall(r"{{(\w+)}}", a["textFormat"])) | set(a["tagKeys"].split(","))
        grouped = re.search(r"\bby \(([^)]*)\)", a["expr"])[1]
        assert shown <= {x.strip() for x in grouped.split(",")}, a["name"]
    rewinds = annotations["Rewinds"]["expr"]
    assert _metric_names(rewinds) == {"polypythia_run_rewinds_total"}
    assert "increase(" in rewinds and rewinds.endswith("> 0")
    for variable in ("namespace", "sweep", "size"):
        assert f'{variable}=~"${variable}"' in rewinds


def _panels(dash: dict, kind: str) -> list[dict]:
    return [p for p in dash["panels"] if p["type"] == kind]


def test_every_per_run_query_is_scoped_to_the_namespace_variable():
    dash = json.loads(DASHBOARD.read_text())
    for expr in _dashboard_exprs(dash):
        if "$sweep" in expr:
            assert 'namespace=~"$namespace"' in expr, expr
    for legend in (t.get("legendFormat", "") for p in dash["panels"] for t in p.get("targets", [])):
        assert "s{{seed}}" not in legend  # runs differing only by init would share a legend


def test_loss_is_overlaid_by_training_step_per_size():
    """An XY chart per size: loss (train, held-out) against the step series of the same run,
    joined by time and labels, one series per run."""
    dash = json.loads(DASHBOARD.read_text())
    (panel,) = [p for p in _panels(dash, "xychart") if p["title"].startswith("Loss by step")]
    assert panel["repeat"] == "size" and panel["options"]["dims"]["x"] == "step"
    names = [_metric_names(t["expr"]) for t in panel["targets"]]
    assert names == [
        {"polypythia_run_loss"},
        {"polypythia_run_step"},
        {"polypythia_run_heldout_loss"},
    ]
    assert all(t["format"] == "table" for t in panel["targets"])
    steps = [t["id"] for t in panel["transformations"]]
    assert steps == ["merge", "organize", "partitionByValues"]
    renamed = panel["transformations"][1]["options"]["renameByName"]
    assert renamed["Value #B"] == "step" and renamed["Value #A"] == "train loss"
    assert panel["transformations"][2]["options"]["fields"] == ["run"]


def test_evaluation_panels_keep_accuracy_and_perplexity_apart_by_step():
    dash = json.loads(DASHBOARD.read_text())
    xy = {p["title"]: p for p in _panels(dash, "xychart")}
    headline = xy["Evaluation $task: headline score by step"]
    perplexity = xy["Evaluation perplexity by step"]
    head_exprs = " ".join(t["expr"] for t in headline["targets"])
    assert 'metric="acc"' in head_exprs and "perplexity" not in head_exprs
    assert all('metric="perplexity"' in t["expr"] for t in perplexity["targets"])
    assert "sample_len" not in json.dumps(dash)
    for panel in (headline, perplexity):
        assert panel["options"]["dims"]["x"] == "step"
        assert "polypythia_eval_step" in panel["targets"][1]["expr"]
    assert perplexity["fieldConfig"]["defaults"]["custom"]["scaleDistribution"]["type"] == "log"


def test_operator_health_row_watches_reconcile_passes():
    dash = json.loads(DASHBOARD.read_text())
    rows = [p["title"] for p in _panels(dash, "row")]
    assert "Operator health" in rows
    after = dash["panels"][[p["title"] for p in dash["panels"]].index("Operator health") + 1 :]
    exprs = " ".join(t["expr"] for p in after for t in p.get("targets", []))
    assert "polypythia_reconcile_duration_seconds_bucket" in exprs
    assert "polypythia_reconcile_errors_total" in exprs


def test_every_dashboard_query_parses_and_uses_catalogue_names(tmp_path):
    dash = json.loads(DASHBOARD.read_text())
    exprs = _dashboard_exprs(dash)
    rules = []
    for i, expr in enumerate(exprs):
        names = _metric_names(expr)
        assert names and names <= catalog.series_names(), expr
        concrete = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
        concrete = re.sub(r"\$\w+", ".*", concrete)
        rules.append({"record": f"dashboard:expr_{i}", "expr": concrete})
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
