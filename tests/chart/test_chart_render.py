"""The chart renders, lints strictly and produces valid, hardened Kubernetes objects."""

from __future__ import annotations

import json

import helm_python
import kubernetes_validate
import pytest
import yaml
from chartkit import (
    CHART,
    KUBE_VERSIONS,
    NAMESPACE,
    SCENARIOS,
    by_kind,
    one,
    render_docs,
    render_objects,
)

BUILT_IN_GROUPS = ("v1", "apps/v1", "rbac.authorization.k8s.io/v1")


def _leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and value:
            out.update(_leaves(value, path))
        else:
            out[path] = value
    return out


def _schema_at(schema: dict, path: str) -> dict:
    node = schema
    for key in path.split("."):
        node = node.get("properties", {}).get(key, {})
        if "$ref" in node:
            node = schema["definitions"][node["$ref"].rsplit("/", 1)[1]]
    return node


def test_every_value_is_exercised() -> None:
    """Each value is set to a non-default value by some scenario (unless the schema pins it)."""
    defaults = _leaves(yaml.safe_load((CHART / "values.yaml").read_text()))
    schema = json.loads((CHART / "values.schema.json").read_text())
    pinned = {leaf for leaf in defaults if "const" in _schema_at(schema, leaf)}
    assert "operator.securityContext.allowPrivilegeEscalation" in pinned
    changed: set[str] = set()
    for values in SCENARIOS.values():
        for path, value in _leaves(values).items():
            for leaf in defaults:
                related = leaf == path or leaf.startswith(path + ".") or path.startswith(leaf + ".")
                if related and defaults[leaf] != value:
                    changed.add(leaf)
    assert sorted(set(defaults) - changed - pinned) == []


def _value_entries(text: str) -> list[tuple[int, int, str, bool, bool]]:
    """(line, indent, key, is_group, has `# --` comment) for each key of a values file."""
    entries, comment = [], []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped)
        elif stripped and not stripped.startswith("- "):
            key, _, rest = stripped.partition(":")
            documented = any(c.startswith("# --") for c in comment)
            entries.append(
                (number, len(line) - len(line.lstrip()), key, not rest.strip(), documented)
            )
            comment = []
        else:
            comment = []
    return entries


def test_every_value_is_documented() -> None:
    """Every value has its own `# --` comment, or sits inside a documented value whose
    parts are not documented one by one (like `resources`)."""
    entries = _value_entries((CHART / "values.yaml").read_text())
    undocumented = []
    for i, (number, indent, key, is_group, documented) in enumerate(entries):
        if is_group or documented:
            continue
        covered = False
        for j in range(i - 1, -1, -1):
            _, a_indent, _, _, a_documented = entries[j]
            if a_indent < indent:
                inside = []
                for entry in entries[j + 1 :]:
                    if entry[1] <= a_indent:
                        break
                    inside.append(entry)
                covered = a_documented and not any(e[4] for e in inside)
                if covered:
                    break
                indent = a_indent
        if not covered:
            undocumented.append(f"values.yaml line {number}: {key}")
    assert undocumented == []


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_lints_strictly_on_every_kubernetes_version(chart_dir, scenario: str) -> None:
    for version in KUBE_VERSIONS:
        report = helm_python.lint(
            chart_dir, SCENARIOS[scenario], strict=True, namespace=NAMESPACE,
            kube_version=f"v{version}",
        )  # fmt: skip
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert report["errors"] == [] and problems == [], (version, report)


def test_built_in_objects_validate_strictly_on_1_29_to_1_33(chart) -> None:
    """kubernetes-validate --strict on every distinct built-in object of every scenario."""
    distinct: dict[str, dict] = {}
    for values in SCENARIOS.values():
        for obj in render_objects(chart, values):
            if obj["apiVersion"] in BUILT_IN_GROUPS:
                distinct[json.dumps(obj, sort_keys=True)] = obj
    kinds = {obj["kind"] for obj in distinct.values()}
    assert {"Deployment", "ServiceAccount", "Service", "ClusterRole", "ClusterRoleBinding",
            "Role", "RoleBinding", "ConfigMap"} <= kinds  # fmt: skip
    failures = []
    for version in KUBE_VERSIONS:
        for obj in distinct.values():
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                failures.append(f"{version} {obj['kind']}/{obj['metadata']['name']}: {exc.message}")
    assert failures == []


def test_the_crd_object_validates_as_a_built_in(chart) -> None:
    crd = yaml.safe_load(chart.crds[0]["data"])
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(crd, version, strict=True)


def test_default_install_is_a_single_hardened_replica(chart) -> None:
    objects = render_objects(chart, {})
    deployment = one(objects, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert container["args"] == [
        "operator", "--all-namespaces", "--metrics-port", "8000", "--liveness-port", "8080"
    ]  # fmt: skip
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8000, "healthz": 8080}
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp"}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["POLYPYTHIA_TRAINER_IMAGE"] == "ghcr.io/polypythia/polypythia-trainer:0.1.0"
    assert env["POLYPYTHIA_EVAL_IMAGE"] == "ghcr.io/polypythia/polypythia-eval:0.1.0"
    assert "AWS_ACCESS_KEY_ID" not in env


def test_every_object_carries_the_standard_labels(chart) -> None:
    for values in SCENARIOS.values():
        for obj in render_objects(chart, values):
            labels = obj["metadata"]["labels"]
            for key in ("name", "instance", "version", "managed-by", "part-of", "component"):
                assert f"app.kubernetes.io/{key}" in labels, (obj["kind"], key)


def _operator_roles(objects: list[dict]) -> list[dict]:
    """Without the ClusterRoles aggregated into the built-in edit/view roles."""
    return [o for o in objects if not o["metadata"]["name"].endswith(("-edit", "-view"))]


def test_cluster_wide_rbac_binds_the_rules_file_to_the_service_account(chart, chart_dir) -> None:
    rules = yaml.safe_load((chart_dir / "files" / "operator-rbac-rules.yaml").read_text())
    objects = render_objects(chart, {})
    role = one(_operator_roles(objects), "ClusterRole")
    binding = one(objects, "ClusterRoleBinding")
    account = one(objects, "ServiceAccount")
    assert role["rules"] == rules
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                  "kind": "ClusterRole", "name": role["metadata"]["name"]}  # fmt: skip
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": NAMESPACE}]  # fmt: skip
    assert (
        one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
        == (account["metadata"]["name"])
    )


def test_watch_namespace_gives_a_role_there_and_namespaced_operator(chart) -> None:
    objects = render_objects(chart, SCENARIOS["namespaced"])
    assert by_kind(_operator_roles(objects), "ClusterRole") == []
    assert by_kind(objects, "ClusterRoleBinding") == []
    role, binding = one(objects, "Role"), one(objects, "RoleBinding")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "research"
    assert binding["subjects"][0]["namespace"] == NAMESPACE
    args = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:3] == ["operator", "--namespace", "research"] and "--all-namespaces" not in args


def test_rbac_and_service_account_can_be_left_to_the_cluster_admin(chart) -> None:
    objects = render_objects(chart, SCENARIOS["existing-account"])
    assert {o["kind"] for o in objects} == {"Deployment", "Service"}
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "research-operator"


def test_storage_settings_and_secret_reference_reach_the_operator(chart) -> None:
    objects = render_objects(chart, SCENARIOS["storage"])
    env = {e["name"]: e for e in one(objects, "Deployment")["spec"]["template"]["spec"]
           ["containers"][0]["env"]}  # fmt: skip
    assert env["POLYPYTHIA_S3_ENDPOINT"]["value"] == "http://minio.minio.svc:9000"
    assert env["POLYPYTHIA_S3_BUCKET"]["value"] == "polypythias"
    assert env["POLYPYTHIA_S3_SECURE"]["value"] == "false"
    assert env["POLYPYTHIA_S3_REGION"]["value"] == "eu-west-1"
    assert env["POLYPYTHIA_S3_SECRET_NAME"]["value"] == "polypythia-s3"
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
        "name": "polypythia-s3", "key": "accesskey"
    }  # fmt: skip
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "polypythia-s3", "key": "secretkey"
    }  # fmt: skip
    assert all("value" not in env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))


def test_workload_identity_needs_no_credentials_secret(chart) -> None:
    """IRSA / GKE Workload Identity: annotated ServiceAccounts for the operator and, in
    each sweep namespace, for the training and evaluation pods; no keys anywhere."""
    objects = render_objects(chart, SCENARIOS["workload-identity"])
    accounts = {
        (o["metadata"]["namespace"], o["metadata"]["name"]): o
        for o in by_kind(objects, "ServiceAccount")
    }
    run_role = {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/pp-run"}
    for ns in ("research", "team-b"):
        assert accounts[(ns, "polypythia-run")]["metadata"]["annotations"] == run_role
    operator = one(objects, "Deployment")["spec"]["template"]["spec"]
    own = accounts[(NAMESPACE, operator["serviceAccountName"])]
    assert own["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith("pp-operator")
    env = {e["name"]: e for e in operator["containers"][0]["env"]}
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "POLYPYTHIA_S3_SECRET_NAME"} & set(
        env
    )
    defaults = json.loads(env["POLYPYTHIA_POD_DEFAULTS"]["value"])
    assert defaults["serviceAccountName"] == "polypythia-run"
    assert not [o for o in objects if o["kind"] == "Secret"]


def test_run_service_accounts_need_a_name(chart_dir) -> None:
    values = {"runServiceAccounts": {"namespaces": ["research"]}}
    with (
        helm_python.Chart.load(chart_dir) as chart,
        pytest.raises(Exception, match="set runPods.serviceAccountName"),
    ):
        render_docs(chart, values)


def test_image_tags_digests_and_pull_settings(chart) -> None:
    objects = render_objects(chart, SCENARIOS["pinned-images"])
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert container["image"] == "registry.example:5000/ml/op:1.2.3"
    assert container["imagePullPolicy"] == "Always"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert env["POLYPYTHIA_TRAINER_IMAGE"] == "ml/trainer@sha256:" + "a" * 64
    assert env["POLYPYTHIA_EVAL_IMAGE"] == "ml/eval@sha256:" + "b" * 64
    assert all(o["metadata"]["name"].startswith("polypythia") for o in objects)


def test_metrics_service_selects_the_operator_pod(chart) -> None:
    objects = render_objects(chart, SCENARIOS["scheduling"])
    deployment, service = one(objects, "Deployment"), one(objects, "Service")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 8000, "targetPort": "metrics",
                                         "protocol": "TCP"}]  # fmt: skip
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][-6:] == ["--metrics-port", "9000", "--liveness-port", "9090",
                                      "--poll-interval", "15"]  # fmt: skip
    assert {"name": "POLYPYTHIA_POLL_INTERVAL", "value": "20"} in container["env"]
    assert {"name": "POLYPYTHIA_LOG_FORMAT", "value": "json"} in container["env"]


def test_monitoring_objects_off_by_default_and_labelled_for_the_prometheus_release(chart) -> None:
    kinds = {o["kind"] for o in render_objects(chart, {})}
    assert "ServiceMonitor" not in kinds and "PrometheusRule" not in kinds
    objects = render_objects(chart, SCENARIOS["monitoring"])
    for kind in ("ServiceMonitor", "PrometheusRule"):
        assert one(objects, kind)["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    monitor, service = one(objects, "ServiceMonitor"), one(objects, "Service")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]


def test_prometheus_rule_has_absolute_runbook_urls_and_operator_health(chart, chart_dir) -> None:
    groups = yaml.safe_load((chart_dir / "files" / "prometheus-rules.yaml").read_text())["groups"]
    rule = one(render_objects(chart, SCENARIOS["monitoring"]), "PrometheusRule")
    rendered = rule["spec"]["groups"]
    base = SCENARIOS["monitoring"]["metrics"]["prometheusRule"]["runbookBaseUrl"]
    assert [g["name"] for g in rendered] == [g["name"] for g in groups] + [
        "polypythia.operator-health"
    ]
    for group in rendered:
        for r in group["rules"]:
            assert r["annotations"]["runbook_url"] == f"{base}#{r['alert'].lower()}"
    down = rendered[-1]["rules"][0]
    assert down["alert"] == "PolyPythiaOperatorDown" and down["for"] == "10m"
    assert (
        down["expr"] == f'absent(up{{job="pp-polypythia-metrics", namespace="{NAMESPACE}"}} == 1)'
    )
    # Without a base URL: no runbook_url at all (a relative path is dead in Alertmanager),
    # the rules otherwise exactly the file's.
    plain = one(render_objects(chart, SCENARIOS["gpu-cluster"]), "PrometheusRule")
    assert plain["spec"]["groups"] == groups
    assert "runbook_url" not in json.dumps(plain)


def test_service_monitor_keeps_the_sweeps_namespace_label(chart) -> None:
    monitor = one(render_objects(chart, SCENARIOS["monitoring"]), "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True


def test_rbac_grants_no_secrets_unless_namespaces_opt_in(chart) -> None:
    objects = render_objects(chart, {})
    assert "secrets" not in json.dumps([o for o in objects if o["kind"].endswith("Role")])
    edit = one([o for o in objects if o["metadata"]["name"].endswith("-edit")], "ClusterRole")
    view = one([o for o in objects if o["metadata"]["name"].endswith("-view")], "ClusterRole")
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert {v for r in view["rules"] for v in r["verbs"]} == {"get", "list", "watch"}
    assert "create" in edit["rules"][0]["verbs"]
    gpu = render_objects(chart, SCENARIOS["gpu-cluster"])
    roles = [o for o in gpu if o["kind"] == "Role"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["research", "team-b"]
    assert all(r["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]
               for r in roles)  # fmt: skip
    assert len([o for o in gpu if o["kind"] == "ClusterRole"]) == 1  # no aggregated roles
    env = {e["name"]: e.get("value") for e in one(gpu, "Deployment")["spec"]["template"]["spec"]
           ["containers"][0]["env"]}  # fmt: skip
    assert env["POLYPYTHIA_READ_SWEEP_SECRETS"] == "true"
    assert "POLYPYTHIA_READ_SWEEP_SECRETS" not in {
        e["name"]
        for e in one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
    }


def test_cluster_settings_reach_the_operator(chart) -> None:
    gpu = SCENARIOS["gpu-cluster"]
    env = {e["name"]: e.get("value") for e in one(render_objects(chart, gpu), "Deployment")
           ["spec"]["template"]["spec"]["containers"][0]["env"]}  # fmt: skip
    assert env["POLYPYTHIA_RAYJOB_TTL_SECONDS"] == "60"
    assert json.loads(env["POLYPYTHIA_POD_DEFAULTS"]) == gpu["runPods"]
    assert env["POLYPYTHIA_SUBMITTER_IMAGE"] == "rayproject/ray@sha256:" + "d" * 64
    default = {e["name"]: e.get("value") for e in one(render_objects(chart, {}), "Deployment")
               ["spec"]["template"]["spec"]["containers"][0]["env"]}  # fmt: skip
    assert default["POLYPYTHIA_RAYJOB_TTL_SECONDS"] == "0"
    assert "POLYPYTHIA_SUBMITTER_IMAGE" not in default


def test_dashboard_config_map_for_the_grafana_sidecar(chart, chart_dir) -> None:
    dashboard = json.loads((chart_dir / "files" / "grafana-dashboard.json").read_text())
    config_map = one(render_objects(chart, SCENARIOS["monitoring"]), "ConfigMap")
    labels = config_map["metadata"]["labels"]
    assert labels["grafana_dashboard"] == "1" and labels["team"] == "ml"
    assert config_map["metadata"]["namespace"] == "monitoring"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "PolyPythias"}
    (text,) = config_map["data"].values()
    assert json.loads(text) == dashboard
    # kubectl apply (client side) keeps the object in a 256 KiB annotation.
    assert len(text.encode()) < 256 * 1024


def test_notes_tell_what_to_do_next(chart) -> None:
    notes = render_docs(chart, SCENARIOS["storage"])["polypythia/templates/NOTES.txt"]
    assert "kubectl get pps" in notes and "polypythia-s3" in notes
    assert "rollout status deployment/pp-polypythia" in notes


def test_missing_project_file_fails_with_a_readable_message(chart_dir, tmp_path) -> None:
    import shutil

    broken = tmp_path / "polypythia"
    shutil.copytree(chart_dir, broken)
    (broken / "files" / "prometheus-rules.yaml").unlink()
    with helm_python.Chart.load(broken) as loaded:
        loaded.render({}, name="pp", namespace=NAMESPACE)  # not needed when disabled
        with pytest.raises(helm_python.HelmRenderError, match="prometheus-rules.yaml is missing"):
            loaded.render({"metrics": {"prometheusRule": {"enabled": True}}}, name="pp")
