"""The run config is one typed tree: the planner's dict parses whole, a bad field is named.

Every block the planner emits (docs/contracts.md) becomes a frozen dataclass in
`RunConfig.from_dict`; the trainer reads only those, so a bad value fails at start with
its path, and what the sweep asked for (shocks, init reference, branch, storage, data)
arrives typed.
"""

from __future__ import annotations

import copy

import pytest
from trainer_helpers import nano_config

from polypythia import planner
from polypythia.errors import UsageError
from polypythia.spec import sweep_from_object
from polypythia_trainer.config import (
    BranchConfig,
    InitConfig,
    InitReference,
    Perturbation,
    RunConfig,
    StorageConfig,
)

DELETE = object()


def _with(config: dict, path: str, value: object) -> dict:
    """``config`` with the field at dotted ``path`` set (or deleted), blocks created as needed."""
    out = copy.deepcopy(config)
    *parents, last = path.split(".")
    node = out
    for name in parents:
        node = node.setdefault(name, {})
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return out


PERMUTE = {"strategy": "permute", "name": "perm"}
BRANCH = {"parent": "s3://runs/sweeps/p/p-nano-s0", "step": 30, "optimizer": "restored"}


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        ("training.perturbations", "soon", "training.perturbations: expected list"),
        ("training.perturbations", ["x"], r"training.perturbations\[0\]: expected an object"),
        (
            "training.perturbations",
            [{"step": 3, "learningRateFactor": 2.0}, {"step": -1, "learningRateFactor": 2.0}],
            r"training.perturbations\[1\].step: must be >= 0",
        ),
        (
            "training.perturbations",
            [{"step": 3, "steps": 0, "learningRateFactor": 2.0}],
            r"training.perturbations\[0\].steps: must be >= 1",
        ),
        (
            "training.perturbations",
            [{"step": 3, "learningRateFactor": 0}],
            r"training.perturbations\[0\].learningRateFactor: must be > 0",
        ),
        (
            "training.perturbations",
            [{"step": 3}],
            r"training.perturbations\[0\].learningRateFactor: required",
        ),
        ("storage.uri", DELETE, "storage.uri: required"),
        ("storage.uri", " ", "storage.uri: expected a local path"),
        ("storage.secure", "yes", "storage.secure: expected bool"),
        ("storage.region", 5, "storage.region: expected str"),
        ("storage.endpoint", "", "storage.endpoint: expected a non-empty string"),
        ("telemetry", "often", "telemetry: expected an object"),
        ("telemetry.flushEvery", 0, "telemetry.flushEvery: must be >= 1"),
        ("telemetry.flushEvery", 2.5, "telemetry.flushEvery: expected int"),
        ("metrics.wandbProject", 3, "metrics.wandbProject: expected str"),
        ("init.strategy", "xavier", "init.strategy: 'xavier' is not one of"),
        ("init", PERMUTE, r"spec.inits\[\].reference: strategy 'permute' needs a reference"),
        ("init", {**PERMUTE, "reference": {"step": 3}}, r"spec.inits\[\].reference: expected"),
        ("init", {**PERMUTE, "reference": "/x"}, r"spec.inits\[\].reference: expected"),
        (
            "init",
            {**PERMUTE, "reference": {"uri": "/runs/a", "step": "ten"}},
            r"spec.inits\[\].reference.step: expected int",
        ),
        ("branch", {**BRANCH, "optimizer": "warm"}, "branch.optimizer: must be one of"),
        ("branch", {"parent": "/runs/a", "optimizer": "fresh"}, "branch.step: required"),
        ("branch", {**BRANCH, "parent": 5}, "branch.parent: expected str"),
        ("branch", {**BRANCH, "step": -2}, "branch.step: must be >= 0"),
        ("data.skipBatches", [[5, 2]], r"spec.data.skipBatches\[0\]: expected \[start, end\]"),
        ("data.validationPath", "", "spec.data.validationPath: expected a non-empty string"),
        ("data.order", "random", "spec.data.order: must be one of"),
        ("data.shuffle", True, "spec.data.shuffle: unknown field"),
        ("weightSeed", -1, "weightSeed: must be >= 0"),
    ],
)
def test_a_bad_field_is_named(tmp_path, path: str, value: object, named: str) -> None:
    with pytest.raises(UsageError, match=f"^{named}"):
        RunConfig.from_dict(_with(nano_config(tmp_path), path, value))


def test_optional_blocks_read_as_their_defaults(tmp_path) -> None:
    """A hand-written config may leave out telemetry, metrics, init and branch."""
    config = nano_config(tmp_path)
    for name in ("telemetry", "init"):
        config.pop(name)
    cfg = RunConfig.from_dict(config)
    assert cfg.init == InitConfig()
    assert cfg.branch is None
    assert cfg.metrics.wandb_project is None
    assert cfg.telemetry.flush_every >= 1


def test_zero_stage_follows_the_strategy_when_unset(tmp_path) -> None:
    """Like the planner: DeepSpeed takes the CRD's ZeRO stage, DDP records 0."""
    ddp = RunConfig.from_dict(_with(nano_config(tmp_path), "training.zeroStage", DELETE))
    assert ddp.training.zero_stage == 0
    deepspeed = _with(nano_config(tmp_path), "training.strategy", "deepspeed")
    deepspeed = _with(deepspeed, "training.zeroStage", DELETE)
    assert RunConfig.from_dict(deepspeed).training.zero_stage == 1


def _sweep(**spec):
    body = {"sizes": ["nano"], "seeds": {"list": [0, 1]}}
    body.update(spec)
    return sweep_from_object(
        {
            "apiVersion": "polypythia.io/v1alpha1",
            "kind": "PolyPythiaSweep",
            "metadata": {"name": "t"},
            "spec": body,
        }
    )


def test_the_planners_configs_arrive_typed() -> None:
    """Shocks for one seed, an init study with its reference run, the storage endpoint:
    what the sweep asked for is what the trainer's typed tree holds."""
    sweep = _sweep(
        training={
            "steps": 40,
            "perturbations": [{"step": 5, "steps": 2, "learningRateFactor": 50.0, "seeds": [1]}],
        },
        inits=[
            {"name": "base", "strategy": "pythia"},
            {
                "name": "perm",
                "strategy": "permute",
                "reference": {"run": {"seed": 0, "init": "base"}, "step": 20},
            },
        ],
        storage={"bucket": "runs", "endpoint": "http://minio:9000", "secure": False},
    )
    typed = {r.name: RunConfig.from_dict(r.config) for r in planner.plan_sweep(sweep)}
    assert set(typed) == {"t-nano-s0-base", "t-nano-s0-perm", "t-nano-s1-base", "t-nano-s1-perm"}
    shock = Perturbation(step=5, learning_rate_factor=50.0, steps=2)
    assert typed["t-nano-s1-perm"].training.perturbations == (shock,)
    assert typed["t-nano-s0-perm"].training.perturbations == ()
    assert typed["t-nano-s1-perm"].init == InitConfig(
        strategy="permute",
        name="perm",
        reference=InitReference(
            uri="s3://runs/sweeps/t/t-nano-s0-base", step=20, run="t-nano-s0-base"
        ),
    )
    assert typed["t-nano-s0-base"].init == InitConfig(strategy="pythia", name="base")
    assert typed["t-nano-s0-base"].storage == StorageConfig(
        uri="s3://runs/sweeps", endpoint="http://minio:9000", secure=False, region="us-east-1"
    )
    assert typed["t-nano-s0-base"].storage.connection() == {
        "endpoint": "http://minio:9000",
        "secure": False,
        "region": "us-east-1",
    }


def test_a_branch_plan_arrives_typed() -> None:
    sweep = _sweep(
        training={"steps": 60},
        branch={"from": {"uri": "s3://runs/sweeps/p/p-{size}-s0", "step": 30}},
        data={
            "format": "megatron",
            "path": "s3://runs/pile/text",
            "tokenizer": "s3://runs/pile/tokenizer",
            "split": "969,30,1",
        },
    )
    for run in planner.plan_sweep(sweep):
        cfg = RunConfig.from_dict(run.config)
        assert cfg.branch == BranchConfig(
            parent="s3://runs/sweeps/p/p-nano-s0", step=30, optimizer="restored"
        )
        assert (cfg.data.format, cfg.data.order, cfg.data.split) == (
            "megatron",
            "megatron",
            "969,30,1",
        )
        assert min(cfg.checkpoints.steps) > 30
