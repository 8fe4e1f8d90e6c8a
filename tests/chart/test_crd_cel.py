"""The CRD's CEL rules (`x-kubernetes-validations`), compiled and evaluated with cel-python.

The emulated API server cannot run CEL; a real kube-apiserver (tests against it live with
the real-control-plane work) also checks their cost. Here every rule must compile and
decide the cases below as the prose of its field says.
"""

from __future__ import annotations

import copy
from pathlib import Path

import celpy
import pytest
import yaml

CRD = Path(__file__).resolve().parents[2] / "crds" / "polypythiasweeps.polypythia.io.yaml"
ENV = celpy.Environment()


def _rules(node: object, path: str = "") -> list[tuple[str, dict]]:
    """(schema path, rule) for every x-kubernetes-validations entry."""
    out: list[tuple[str, dict]] = []
    if isinstance(node, dict):
        for rule in node.get("x-kubernetes-validations") or []:
            out.append((path or ".", rule))
        for key, sub in node.items():
            if key == "properties":
                for name, prop in sub.items():
                    out += _rules(prop, f"{path}.{name}")
            elif key in ("items", "additionalProperties"):
                out += _rules(sub, f"{path}[*]")
    return out


RULES = _rules(yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def _ok(path: str, value: dict, old: dict | None = None) -> bool:
    """Whether every rule at ``path`` admits ``value`` (``old``: the stored object)."""
    results = []
    for where, rule in RULES:
        if where != path:
            continue
        if "oldSelf" in rule["rule"] and old is None:
            continue  # transition rules apply to updates only
        program = ENV.program(ENV.compile(rule["rule"]))
        activation = {"self": celpy.json_to_cel(value)}
        if old is not None:
            activation["oldSelf"] = celpy.json_to_cel(old)
        results.append(bool(program.evaluate(activation)))
    assert results, f"no rule at {path}"
    return all(results)


def test_every_rule_compiles_and_has_a_message() -> None:
    assert len(RULES) >= 6
    for path, rule in RULES:
        ENV.compile(rule["rule"])
        assert rule.get("message"), path


def test_seeds_are_a_list_or_a_range() -> None:
    assert _ok(".spec.seeds", {"list": [1, 2]})
    assert _ok(".spec.seeds", {"range": {"count": 3}})
    assert not _ok(".spec.seeds", {"list": [1], "range": {"count": 3}})
    assert not _ok(".spec.seeds", {"axis": "both"})


def test_an_init_reference_is_a_run_or_a_checkpoint() -> None:
    ref = ".spec.inits[*].reference"
    assert _ok(ref, {"checkpoint": "s3://b/p/checkpoints/step1000"})
    assert _ok(ref, {"run": {"seed": 0, "init": "base"}, "step": 10})
    assert not _ok(ref, {"run": {"seed": 0, "init": "base"}, "checkpoint": "s3://b/x"})
    assert not _ok(ref, {})
    init = ".spec.inits[*]"
    assert _ok(init, {"name": "base", "strategy": "pythia"})
    assert not _ok(init, {"name": "p", "strategy": "permute"})
    assert not _ok(init, {"name": "b", "strategy": "pythia", "reference": {"checkpoint": "x"}})


def test_checkpoint_schedules_name_their_parameter() -> None:
    assert _ok(".spec.checkpoints", {"schedule": "every", "every": 100})
    assert not _ok(".spec.checkpoints", {"schedule": "every"})
    assert _ok(".spec.checkpoints", {"schedule": "list", "steps": [0, 10]})
    assert not _ok(".spec.checkpoints", {"schedule": "list", "steps": []})
    assert _ok(".spec.checkpoints", {"schedule": "pythia", "count": 143})


def test_extra_volumes_keep_clear_of_the_operators_own() -> None:
    assert _ok(".spec.pods", {"volumes": [{"name": "pile"}]})
    assert _ok(".spec.pods", {"env": [{"name": "X", "value": "1"}]})
    assert not _ok(".spec.pods", {"volumes": [{"name": "pile"}, {"name": "cache"}]})


@pytest.mark.parametrize("field", ["training", "data"])
def test_training_and_data_are_immutable_once_the_sweep_started(field: str) -> None:
    old = {
        "spec": {"sizes": ["nano"], "training": {"steps": 20}, "data": {"format": "generated"}},
        "status": {"phase": "Running"},
    }
    new = copy.deepcopy(old)
    new["spec"][field] = {"steps": 40} if field == "training" else {"format": "megatron"}
    assert not _ok(".", new, old)
    more_seeds = copy.deepcopy(old)
    more_seeds["spec"]["sizes"] = ["nano", "micro"]
    assert _ok(".", more_seeds, old)  # other fields stay editable
    for phase in ("Pending", "Invalid"):
        before = {**old, "status": {"phase": phase}}
        assert _ok(".", new, before)
    assert _ok(".", new, {"spec": old["spec"]})  # no status yet
