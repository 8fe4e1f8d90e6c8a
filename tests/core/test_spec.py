"""Sweep files: the CRD schema is the schema; bad input names the field and what is allowed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from polypythia import crd
from polypythia.spec import SpecError, load_sweep_file, sweep_from_object
from support.sweeps import sweep_object

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "manifests" / "examples"


def minimal(**spec) -> dict:
    body = {"sizes": ["nano"], "seeds": {"list": [0, 1]}}
    body.update(spec)
    return {
        "apiVersion": "polypythia.io/v1alpha1",
        "kind": "PolyPythiaSweep",
        "metadata": {"name": "s"},
        "spec": body,
    }


def errors_of(obj: dict) -> str:
    with pytest.raises(SpecError) as info:
        sweep_from_object(obj)
    return str(info.value)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("sweep-*.yaml")), ids=lambda p: p.name)
def test_examples_are_valid(path: Path) -> None:
    sweep = load_sweep_file(path)
    assert sweep.sizes() and sweep.seeds()


def test_defaults_come_from_the_crd() -> None:
    sweep = sweep_from_object(minimal())
    spec = sweep.spec
    assert spec["training"]["steps"] == 143_000
    assert spec["training"]["globalBatchSize"] == 1024
    assert spec["seeds"]["axis"] == "both"
    assert spec["instability"]["outliers"]["consecutive"] >= 1
    assert spec["instability"]["rewind"]["stepsBefore"] == 100
    assert spec["maxConcurrentRuns"] == 4
    # every default in the spec matches the CRD file's own default
    training_schema = crd.schema()["properties"]["spec"]["properties"]["training"]
    for name, prop in training_schema["properties"].items():
        if "default" in prop:
            assert spec["training"][name] == prop["default"], name


def test_explicit_values_are_kept() -> None:
    sweep = sweep_from_object(minimal(training={"steps": 10, "precision": "fp32"}))
    assert sweep.spec["training"]["steps"] == 10
    assert sweep.spec["training"]["precision"] == "fp32"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"sizes": ["999m"]}, "spec.sizes[0]: '999m' is not allowed; allowed: nano, micro, 14m"),
        ({"seeds": {"list": []}}, "spec.seeds.list: must have at least 1 item(s)"),
        ({"training": {"steps": -5}}, "spec.training.steps: must be >= 1, got -5"),
        ({"training": {"learningRate": 0}}, "spec.training.learningRate: must be > 0, got 0"),
        ({"training": {"warmupFraction": 2}}, "spec.training.warmupFraction: must be <= 1, got 2"),
        (
            {"data": {"skipBatches": [[1, 2, 3]]}},
            "spec.data.skipBatches[0]: must have at most 2 item(s), got 3",
        ),
        ({"training": {"steps": "many"}}, "spec.training.steps: must be of type integer"),
        ({"training": {"stepz": 3}}, "spec.training: unknown field(s) 'stepz'; allowed: "),
        (
            {"training": {"strategy": "fsdp"}},
            "spec.training.strategy: 'fsdp' is not allowed; allowed: ddp, deepspeed",
        ),
        ({"seeds": {"list": [1], "range": {"count": 2}}}, "spec.seeds: give exactly one of"),
        ({"seeds": {}}, "spec.seeds: give exactly one of"),
        ({"checkpoints": {"schedule": "every"}}, "spec.checkpoints.every: is required when"),
        (
            {"data": {"format": "megatron"}},
            "spec.data.path: is required when spec.data.format is megatron",
        ),
        ({"training": {"precision": "bf16"}}, "spec.training.precision: bf16 needs GPUs"),
        (
            {"training": {"globalBatchSize": 10}, "resources": {"default": {"workers": 3}}},
            "not divisible by the 3 workers",
        ),
        (
            {"resources": {"perSize": {"3m": {"workers": 1}}}},
            "spec.resources.perSize.3m: unknown size",
        ),
        ({"training": {"sequenceLength": 4096}}, "exceeds the nano preset's maximum of 2048"),
        (
            {
                "seeds": {"list": [0, 1]},
                "training": {"perturbations": [{"step": 1, "learningRateFactor": 2, "seeds": [7]}]},
            },
            "spec.training.perturbations[0].seeds: [7] not among the sweep's seeds [0, 1]",
        ),
    ],
)
def test_bad_specs_name_the_field(spec: dict, expected: str) -> None:
    assert expected in errors_of(minimal(**spec))


def test_missing_required_and_wrong_kind() -> None:
    obj = minimal()
    del obj["spec"]["sizes"]
    obj["kind"] = "Sweep"
    message = errors_of(obj)
    assert "kind: must be PolyPythiaSweep" in message
    assert "spec: 'sizes' is required" in message


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "polypythia.cli", *args], capture_output=True, text=True
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("spec: [unclosed\n", "malformed YAML (line 2"),
        ("", "empty file"),
        (yaml.safe_dump(minimal()) + "---\n" + yaml.safe_dump(minimal()), "2 YAML documents"),
        (yaml.safe_dump(minimal(training={"steps": -1})), "spec.training.steps: must be >= 1"),
    ],
)
def test_validate_cli_exit_code_2_without_traceback(
    tmp_path: Path, text: str, expected: str
) -> None:
    result = run_cli("validate", str(write(tmp_path, text)))
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_cli_missing_file(tmp_path: Path) -> None:
    result = run_cli("validate", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "nope.yaml: no such file" in result.stderr


def test_validate_cli_ok_prints_the_run_count() -> None:
    result = run_cli("validate", str(EXAMPLES / "sweep-polypythias.yaml"))
    assert result.returncode == 0, result.stderr
    assert "5 size(s) x 10 seed(s) = 50 run(s), 154 checkpoints each" in result.stdout


def test_a_micro_batch_whose_logits_exceed_gpu_memory_is_refused() -> None:
    """512 x 2048 x 50304 fp16 logits = 98.2 GiB > 80 GiB; 80 GiB / (2048 x 50304 x 2) = 416."""
    from polypythia.spec import SpecError, sweep_from_object

    def make(**training):
        return sweep_object(
            "big",
            {
                "sizes": ["14m"],
                "seeds": {"list": [0]},
                "training": {"precision": "fp16", **training},
                "resources": {"default": {"workers": 2, "gpusPerWorker": 1}},
            },
        )

    with pytest.raises(SpecError) as err:
        sweep_from_object(make(microBatchSize=512))
    message = str(err.value)
    assert "spec.training.microBatchSize: 512 sequences of 2048 tokens make 98.2 GiB" in message
    assert "spec.resources.default.gpuMemory unset, 80Gi assumed" in message
    assert "the largest micro-batch that fits is 416" in message
    sweep_from_object(make(microBatchSize=256))
    sweep_from_object(make())  # Pythia's 32 per GPU
    small = make(microBatchSize=256)
    small["spec"]["resources"]["default"]["gpuMemory"] = "40Gi"
    with pytest.raises(
        SpecError, match=r"gpuMemory 40Gi\); the largest micro-batch that fits is 208"
    ):
        sweep_from_object(small)
