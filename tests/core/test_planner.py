"""The planner: run names, seeds, checkpoint schedules and resolved configs."""

from __future__ import annotations

import re

import pytest

from polypythia import planner, presets
from polypythia.spec import sweep_from_object

DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def sweep(name: str = "tiny", **spec):
    body = {"sizes": ["nano", "micro"], "seeds": {"list": [0, 1, 2]}}
    body.update(spec)
    return sweep_from_object(
        {
            "apiVersion": "polypythia.io/v1alpha1",
            "kind": "PolyPythiaSweep",
            "metadata": {"name": name},
            "spec": body,
        }
    )


def test_pythia_schedule_is_exactly_the_154_pythia_revisions() -> None:
    steps = planner.pythia_checkpoint_steps(143_000)
    assert len(steps) == 154
    assert steps[:11] == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    assert steps[11:] == list(range(1000, 143_001, 1000))


def test_pythia_schedule_scales_to_short_runs() -> None:
    steps = planner.pythia_checkpoint_steps(150, count=5)
    assert steps == [0, 1, 2, 4, 8, 16, 30, 60, 90, 120, 150]
    assert planner.pythia_checkpoint_steps(3, count=143) == [0, 1, 2, 3]


def test_every_and_list_schedules_include_start_and_end() -> None:
    spec = sweep(training={"steps": 100}, checkpoints={"schedule": "every", "every": 30}).spec
    assert planner.checkpoint_steps(spec) == [0, 30, 60, 90, 100]
    spec = sweep(training={"steps": 100}, checkpoints={"schedule": "list", "steps": [5, 50]}).spec
    assert planner.checkpoint_steps(spec) == [0, 5, 50, 100]


def test_runs_are_seed_major_so_every_size_gets_seeds_early() -> None:
    runs = planner.plan_sweep(sweep(), base_uri="/tmp/store")
    assert [(r.size, r.seed) for r in runs[:4]] == [
        ("nano", 0),
        ("micro", 0),
        ("nano", 1),
        ("micro", 1),
    ]
    assert [r.order for r in runs] == list(range(6))
    assert len({r.name for r in runs}) == 6


@pytest.mark.parametrize(
    "name", ["tiny", "a" * 63, "polypythias-replication-with-a-very-long-name-x", "9lives"]
)
def test_run_names_are_dns_1035_and_short(name: str) -> None:
    runs = planner.plan_sweep(sweep(name=name, sizes=["1.4b", "nano"]), base_uri="/s")
    for run in runs:
        assert DNS_1035.match(run.name), run.name
        assert len(run.name) <= planner.MAX_RUN_NAME <= 47
    assert len({r.name for r in runs}) == len(runs)


def test_long_sweep_names_stay_distinct() -> None:
    a = planner.run_name("x" * 60 + "a", "70m", 1)
    b = planner.run_name("x" * 60 + "b", "70m", 1)
    assert a != b


@pytest.mark.parametrize(
    ("axis", "expected"),
    [("both", (5, 5)), ("weight", (5, 1234)), ("data", (1234, 5))],
)
def test_seed_axis(axis: str, expected: tuple[int, int]) -> None:
    run = planner.plan_sweep(sweep(seeds={"list": [5], "axis": axis}), base_uri="/s")[0]
    assert (run.weight_seed, run.data_seed) == expected
    assert (run.config["weightSeed"], run.config["dataSeed"]) == expected


def test_resolved_config_follows_pythia_and_overrides() -> None:
    s = sweep(
        sizes=["70m"],
        training={"steps": 1000, "learningRate": 5e-4, "globalBatchSize": 64},
        resources={
            "default": {"workers": 2, "gpusPerWorker": 1},
            "perSize": {"70m": {"workers": 4}},
        },
    )
    config = planner.plan_sweep(s, base_uri="s3://bucket/sweeps")[0].config
    assert config["model"]["hiddenSize"] == 512 and config["model"]["rotaryPct"] == 0.25
    assert config["training"]["learningRate"] == 5e-4
    assert config["training"]["minLearningRate"] == pytest.approx(5e-5)
    assert config["training"]["warmupSteps"] == 10
    assert config["training"]["workers"] == 4 and config["training"]["gpusPerWorker"] == 1
    assert config["training"]["microBatchSize"] == 16
    assert config["runUri"] == "s3://bucket/sweeps/tiny/tiny-70m-s0"


def test_evaluation_schedule_selects_checkpoints() -> None:
    spec = sweep(evaluation={"schedule": "every", "every": 30}, training={"steps": 100}).spec
    assert planner.evaluation_steps(spec, [0, 1, 30, 45, 60, 100]) == [0, 30, 60, 100]
    spec = sweep(evaluation={"schedule": "final"}, training={"steps": 100}).spec
    assert planner.evaluation_steps(spec, [0, 50]) == []
    assert planner.evaluation_steps(spec, [0, 50, 100]) == [100]


def test_resume_only_checkpoints_are_never_selected_for_evaluation() -> None:
    """The trainer prunes resume-only checkpoints (resumeEvery) as it goes: an evaluation
    scheduled on one would find it gone (the local driver and the operator share this)."""
    spec = sweep(evaluation={"schedule": "all"}, training={"steps": 100}).spec
    available = [0, 10, 20, 25, 30, 50, 100]  # 10, 20, 30: resume-only
    assert planner.evaluation_steps(spec, available, planned=[0, 25, 50, 75, 100]) == [
        0, 25, 50, 100,
    ]  # fmt: skip
    assert planner.evaluation_steps(spec, available) == available


def test_pythia_defaults_resolve_to_the_pythia_recipe() -> None:
    """Pythia-160m on 32 GPUs, 1024 x 2048, 143000 steps: its config's numbers."""
    s = sweep(
        sizes=["160m", "1b"],
        resources={"default": {"workers": 32, "gpusPerWorker": 1}},
    )
    by_size = {r.size: r.config["training"] for r in planner.plan_sweep(s, base_uri="s3://b/p")}
    t = by_size["160m"]
    assert t["weightDecay"] == 0.1
    assert t["warmupSteps"] == 1430.0  # 0.01 x 143000, a float as GPT-NeoX keeps it
    assert t["microBatchSize"] == 32  # 1024 / 32 workers = 32: no accumulation
    assert by_size["1b"]["learningRate"] == 2.5e-4
    assert by_size["1b"]["microBatchSize"] == 16  # 32 per worker: accumulation 2


def test_micro_batch_defaults_to_the_largest_divisor_below_the_presets() -> None:
    assert presets.default_micro_batch(32, 1024) == 32
    assert presets.default_micro_batch(32, 24) == 24
    assert presets.default_micro_batch(32, 48) == 24
    assert presets.default_micro_batch(None, 512) == 512


def test_pythia_numbering_makes_seed_0_gpt_neox_seed_1234() -> None:
    s = sweep(
        sizes=["70m"],
        seeds={"list": [0, 1, 9], "pythiaNumbering": True},
        data={
            "format": "megatron",
            "path": "/d/pile",
            "tokenizer": "/d/tok",
            "indexDir": "/idx/seed{seed}",
        },
    )
    runs = planner.plan_sweep(s, base_uri="s3://b/p")
    assert [(r.seed, r.weight_seed, r.data_seed) for r in runs] == [
        (0, 1234, 1234),
        (1, 1, 1),
        (9, 9, 9),
    ]
    first = runs[0].config
    assert (first["seed"], first["weightSeed"], first["dataSeed"]) == (0, 1234, 1234)
    assert first["data"]["order"] == "megatron"  # the default for megatron datasets
    assert [r.config["data"]["indexDir"] for r in runs] == [
        "/idx/seed0",
        "/idx/seed1",
        "/idx/seed9",
    ]


def test_without_pythia_numbering_seeds_are_gpt_neox_seeds() -> None:
    runs = planner.plan_sweep(sweep(sizes=["nano"], seeds={"list": [0, 1]}), base_uri="s3://b/p")
    assert [r.data_seed for r in runs] == [0, 1]
    assert runs[0].config["data"]["order"] == "permutation"  # generated corpus: ours


def test_polypythias_example_is_the_papers_setup() -> None:
    from pathlib import Path

    import yaml

    path = Path(__file__).resolve().parents[2] / "manifests/examples/sweep-polypythias.yaml"
    s = sweep_from_object(yaml.safe_load(path.read_text()))
    runs = planner.plan_sweep(s)
    assert len(runs) == 50
    seeds = sorted({(r.seed, r.data_seed) for r in runs})
    assert seeds == [(0, 1234)] + [(k, k) for k in range(1, 10)]
    first = next(r for r in runs if r.seed == 0 and r.size == "410m").config
    assert first["training"]["precision"] == "fp16"
    assert first["training"]["weightDecay"] == 0.1
    assert first["training"]["microBatchSize"] == 32  # Pythia's, accumulation makes up the rest
    assert first["data"]["indexDir"].endswith("pile-preshuffled-seeds/seed0")
    assert "deduped" not in first["data"]["path"]
    assert len(first["checkpoints"]["steps"]) == 154
    tasks = planner.evaluation_tasks(s.spec, "410m")
    assert "crows_pairs_english_gender" in tasks and len(tasks) == 11


def test_evaluation_tasks_default_by_size() -> None:
    s = sweep(sizes=["nano", "70m"])
    assert planner.evaluation_tasks(s.spec, "nano")[0].startswith("pp_")
    assert planner.evaluation_tasks(s.spec, "70m") == list(planner.POLYPYTHIAS_TASKS)
    off = sweep(sizes=["70m"], evaluation={"tasks": []})
    assert planner.evaluation_tasks(off.spec, "70m") == []


def test_polypythias_tasks_are_lm_eval_tasks() -> None:
    """Each default task name is a task lm-evaluation-harness ships (its task YAMLs)."""
    import importlib.util
    import re
    from pathlib import Path

    root = Path(importlib.util.find_spec("lm_eval").submodule_search_locations[0]) / "tasks"
    names = set()
    for path in root.rglob("*.yaml"):
        names.update(re.findall(r"^task: *([\w.-]+) *$", path.read_text(errors="ignore"), re.M))
    assert set(planner.POLYPYTHIAS_TASKS) <= names


def test_a_perturbation_with_seeds_reaches_only_those_seeds_runs() -> None:
    shock = {"step": 5, "steps": 2, "learningRateFactor": 50.0, "seeds": [1]}
    every = {"step": 8, "learningRateFactor": 0.5}
    runs = planner.plan_sweep(
        sweep(training={"steps": 20, "perturbations": [shock, every]}), base_uri="/tmp/store"
    )
    by_seed = {(r.size, r.seed): r.config["training"]["perturbations"] for r in runs}
    plain = {"step": 8, "steps": 1, "learningRateFactor": 0.5}
    assert by_seed[("nano", 1)] == [{"step": 5, "steps": 2, "learningRateFactor": 50.0}, plain]
    assert by_seed[("micro", 1)] == by_seed[("nano", 1)]
    assert by_seed[("nano", 0)] == by_seed[("nano", 2)] == [plain]
