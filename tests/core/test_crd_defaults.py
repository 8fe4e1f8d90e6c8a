"""Defaults come from the CRD: every default the code repeats equals the CRD's.

One table walks every dataclass field with a default in the trainer's run-config tree,
the monitoring settings and the cost estimate, plus the Pythia constants in `presets`
that the CRD also declares. Each field is either matched to the CRD default at its path
(`Crd`), to the Pythia recipe in `presets` that the planner writes (`Recipe`), or says
why it is no sweep field (`Why`). A CRD default changed without the code fails here; so
does a new default nobody placed in the table.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import pytest

from polypythia import crd, presets
from polypythia.estimate import RunEstimate
from polypythia.monitoring.outliers import OutlierSettings
from polypythia.monitoring.settings import (
    _SIGNAL_NAMES,
    InstabilitySettings,
    RewindSettings,
)
from polypythia.monitoring.spikes import SpikeSettings
from polypythia.output import camel
from polypythia.spec import resources_for
from polypythia_trainer.config import (
    BranchConfig,
    CheckpointConfig,
    DataConfig,
    InitConfig,
    InitReference,
    MetricsConfig,
    ModelConfig,
    Perturbation,
    RunConfig,
    StorageConfig,
    TelemetryConfig,
    TrainingConfig,
    default_order,
)

NO_DEFAULT = object()


class Crd(NamedTuple):
    """The CRD default at ``path`` (``[]`` steps into list items); a path without a
    default means the field defaults to None. ``convert`` maps the CRD's spelling."""

    path: str
    convert: Callable[[Any], Any] = lambda value: value


class Recipe(NamedTuple):
    """Not a sweep field: the value the planner writes for every run, from ``presets``."""

    value: Any


class Why(NamedTuple):
    """Neither: why the field has this default."""

    reason: str


def crd_default(path: str) -> Any:
    """The default the CRD declares at ``spec.a.b[].c`` (None where it declares none)."""
    node = crd.schema()
    for part in path.split("."):
        items = part.endswith("[]")
        node = node["properties"][part.removesuffix("[]")]
        if items:
            node = node["items"]
    return node.get("default")


def _signals(value: list[str]) -> tuple[str, ...]:
    return tuple(_SIGNAL_NAMES[name] for name in value)


PYTHIA_MODEL = presets.get("160m").model_block()
TINY_RESOURCES = resources_for({}, "nano")

TABLE: dict[tuple[type, str], Crd | Recipe | Why] = {
    (ModelConfig, "rotary_pct"): Recipe(PYTHIA_MODEL["rotaryPct"]),
    (ModelConfig, "rotary_emb_base"): Recipe(PYTHIA_MODEL["rotaryEmbBase"]),
    (ModelConfig, "parallel_residual"): Recipe(PYTHIA_MODEL["parallelResidual"]),
    (ModelConfig, "tie_word_embeddings"): Recipe(PYTHIA_MODEL["tieWordEmbeddings"]),
    (ModelConfig, "hidden_act"): Recipe(PYTHIA_MODEL["hiddenAct"]),
    (ModelConfig, "init_method"): Recipe(PYTHIA_MODEL["initMethod"]),
    (ModelConfig, "z_loss"): Crd("spec.training.zLoss"),
    (ModelConfig, "qk_layernorm"): Crd("spec.training.qkLayerNorm"),
    (TrainingConfig, "warmup_steps"): Why("the planner writes warmupFraction x steps"),
    (TrainingConfig, "adam_beta1"): Recipe(presets.ADAM_BETAS[0]),
    (TrainingConfig, "adam_beta2"): Recipe(presets.ADAM_BETAS[1]),
    (TrainingConfig, "adam_eps"): Recipe(presets.ADAM_EPS),
    (TrainingConfig, "weight_decay"): Crd("spec.training.weightDecay"),
    (TrainingConfig, "gradient_clipping"): Crd("spec.training.gradientClipping"),
    (TrainingConfig, "precision"): Crd("spec.training.precision"),
    (TrainingConfig, "strategy"): Crd("spec.training.strategy"),
    (TrainingConfig, "zero_stage"): Crd("spec.training.zeroStage"),
    (TrainingConfig, "workers"): Recipe(TINY_RESOURCES["workers"]),
    (TrainingConfig, "gpus_per_worker"): Recipe(TINY_RESOURCES["gpusPerWorker"]),
    (TrainingConfig, "cpus_per_worker"): Recipe(TINY_RESOURCES["cpusPerWorker"]),
    (TrainingConfig, "perturbations"): Crd("spec.training.perturbations", tuple),
    (Perturbation, "steps"): Crd("spec.training.perturbations[].steps"),
    (CheckpointConfig, "resume_every"): Crd("spec.checkpoints.resumeEvery"),
    (CheckpointConfig, "keep_resume"): Crd("spec.checkpoints.keepResume"),
    (CheckpointConfig, "optimizer_state"): Crd("spec.checkpoints.optimizerState"),
    (DataConfig, "format"): Crd("spec.data.format"),
    (DataConfig, "path"): Crd("spec.data.path"),
    (DataConfig, "tokenizer"): Crd("spec.data.tokenizer"),
    (DataConfig, "skip_batches"): Crd("spec.data.skipBatches", tuple),
    (DataConfig, "order"): Recipe(default_order(crd_default("spec.data.format"))),
    (DataConfig, "index_dir"): Crd("spec.data.indexDir"),
    (DataConfig, "validation_path"): Crd("spec.data.validationPath"),
    (DataConfig, "split"): Crd("spec.data.split"),
    (StorageConfig, "endpoint"): Crd("spec.storage.endpoint"),
    (StorageConfig, "secure"): Crd("spec.storage.secure"),
    (StorageConfig, "region"): Crd("spec.storage.region"),
    (TelemetryConfig, "flush_every"): Why("the planner scales it with training.steps"),
    (MetricsConfig, "wandb_project"): Crd("spec.metrics.wandbProject"),
    (MetricsConfig, "wandb_entity"): Crd("spec.metrics.wandbEntity"),
    (InitReference, "path"): Why("a reference sets path, or uri and step"),
    (InitReference, "uri"): Why("a reference sets path, or uri and step"),
    (InitReference, "step"): Why("a reference sets path, or uri and step"),
    (InitReference, "run"): Why("set only when the reference run is in this sweep"),
    (InitConfig, "strategy"): Why("a run without spec.inits trains Pythia's init"),
    (InitConfig, "name"): Crd("spec.inits[].name"),
    (InitConfig, "reference"): Crd("spec.inits[].reference"),
    (BranchConfig, "checksum"): Why("the trainer adds it when it claims the branch"),
    (RunConfig, "init"): Why("nested: its own fields are in this table"),
    (RunConfig, "telemetry"): Why("nested: its own fields are in this table"),
    (RunConfig, "metrics"): Why("nested: its own fields are in this table"),
    (RunConfig, "branch"): Crd("spec.branch"),
    (RunConfig, "raw"): Why("the dict as received, written to run.json"),
    (SpikeSettings, "signals"): Crd("spec.instability.signals", _signals),
    (SpikeSettings, "window"): Crd("spec.instability.window"),
    (SpikeSettings, "threshold"): Crd("spec.instability.threshold"),
    (SpikeSettings, "level_window"): Why("detector internals (OLMo-core), no sweep field"),
    (SpikeSettings, "min_history"): Crd("spec.instability.minHistory"),
    (SpikeSettings, "score_window"): Crd("spec.instability.scoreWindow"),
    (SpikeSettings, "score_threshold"): Crd("spec.instability.scoreThreshold"),
    (SpikeSettings, "recovery_steps"): Crd("spec.instability.recoverySteps"),
    (SpikeSettings, "recovery_sds"): Why("detector internals, no sweep field"),
    (SpikeSettings, "recovery_confirm"): Why("detector internals, no sweep field"),
    (SpikeSettings, "precursor_steps"): Why("detector internals, no sweep field"),
    (SpikeSettings, "common_mode_fraction"): Crd("spec.instability.commonModeFraction"),
    (SpikeSettings, "common_mode_tolerance"): Crd("spec.instability.commonModeTolerance"),
    (OutlierSettings, "false_alarm_rate"): Crd("spec.instability.outliers.falseAlarmRate"),
    (OutlierSettings, "consecutive"): Crd("spec.instability.outliers.consecutive"),
    (OutlierSettings, "signals"): Crd("spec.instability.outliers.signals", tuple),
    (OutlierSettings, "min_runs"): Why("the outlier test's floor, no sweep field"),
    (RewindSettings, "steps_before"): Crd("spec.instability.rewind.stepsBefore"),
    (RewindSettings, "skip_batches"): Crd("spec.instability.rewind.skipBatches"),
    (RewindSettings, "max_rewinds"): Crd("spec.instability.rewind.maxRewinds"),
    (InstabilitySettings, "spikes"): Why("nested: its own fields are in this table"),
    (InstabilitySettings, "outliers"): Why("nested: its own fields are in this table"),
    (InstabilitySettings, "action"): Crd("spec.instability.action"),
    (InstabilitySettings, "rewind"): Why("nested: its own fields are in this table"),
    (RunEstimate, "optimizer_state"): Crd("spec.checkpoints.optimizerState"),
    (RunEstimate, "with_optimizer"): Why("a result: the estimate counts them"),
    (RunEstimate, "optimizer_bytes_saved"): Why("a result: the estimate sums them"),
}
# Pythia's recipe in presets, which the CRD declares as the sweep's defaults too.
PRESET_CONSTANTS = {
    "TRAIN_STEPS": "spec.training.steps",
    "GLOBAL_BATCH_SIZE": "spec.training.globalBatchSize",
    "SEQUENCE_LENGTH": "spec.training.sequenceLength",
    "WARMUP_FRACTION": "spec.training.warmupFraction",
    "WEIGHT_DECAY": "spec.training.weightDecay",
    "GRADIENT_CLIPPING": "spec.training.gradientClipping",
}
CLASSES = sorted({cls for cls, _ in TABLE}, key=lambda cls: cls.__name__)


def field_default(cls: type, name: str) -> Any:
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return NO_DEFAULT


def test_every_default_is_in_the_table() -> None:
    defaulted = {
        (cls, f.name)
        for cls in CLASSES
        for f in dataclasses.fields(cls)
        if field_default(cls, f.name) is not NO_DEFAULT
    }
    assert sorted(f"{c.__name__}.{n}" for c, n in defaulted - set(TABLE)) == []
    assert sorted(f"{c.__name__}.{n}" for c, n in set(TABLE) - defaulted) == []


@pytest.mark.parametrize(
    ("cls", "name", "source"),
    [(cls, name, source) for (cls, name), source in TABLE.items()],
    ids=[f"{cls.__name__}.{name}" for cls, name in TABLE],
)
def test_default_equals_its_source(cls: type, name: str, source: Crd | Recipe | Why) -> None:
    ours = field_default(cls, name)
    if isinstance(source, Crd):
        declared = crd_default(source.path)
        expected = None if declared is None else source.convert(declared)
        if ours == () and declared is None:  # an empty list: the CRD's "unset"
            expected = ()
        assert ours == expected, f"{cls.__name__}.{name}: {ours!r}, CRD {source.path}: {declared!r}"
    elif isinstance(source, Recipe):
        assert ours == source.value, f"{cls.__name__}.{name}: {ours!r}, recipe {source.value!r}"
    else:
        assert source.reason


@pytest.mark.parametrize(("constant", "path"), sorted(PRESET_CONSTANTS.items()))
def test_preset_constant_equals_the_crd_default(constant: str, path: str) -> None:
    assert getattr(presets, constant) == crd_default(path)


def test_a_crd_default_the_code_forgot_fails(monkeypatch) -> None:
    """The walk reads the CRD file the product ships: a changed default is caught."""
    schema = crd.schema()
    region = schema["properties"]["spec"]["properties"]["storage"]["properties"]["region"]
    monkeypatch.setitem(region, "default", "eu-west-1")
    with pytest.raises(AssertionError, match="StorageConfig.region"):
        test_default_equals_its_source(StorageConfig, "region", TABLE[StorageConfig, "region"])


def test_the_storage_region_default_is_the_crds_in_every_reader() -> None:
    """The CLI flags, open_store and S3Store fall back to a region of their own when none is
    given: each must be the one a sweep gets from the CRD."""
    from polypythia.commands.common import DEFAULT_REGION
    from polypythia.storage.s3 import S3Store
    from polypythia.storage.uri import open_store

    declared = crd_default("spec.storage.region")
    assert declared and declared == DEFAULT_REGION
    for fn in (open_store, S3Store.__init__):
        assert inspect.signature(fn).parameters["region"].default == declared, fn.__qualname__


def crd_fields(path: str) -> set[str]:
    """The field names the CRD declares under the object at ``spec.a.b``."""
    node = crd.schema()
    for part in path.split("."):
        node = node["properties"][part]
    return set(node["properties"])


@pytest.mark.parametrize(
    ("cls", "path", "own"),
    [
        (SpikeSettings, "spec.instability", {"outliers", "action", "rewind"}),
        (OutlierSettings, "spec.instability.outliers", set()),
        (RewindSettings, "spec.instability.rewind", set()),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else "",
)
def test_settings_read_exactly_the_crds_fields(cls: type, path: str, own: set[str]) -> None:
    """`typed.build` reads each settings field at its camelCase key: those keys are the
    CRD's fields (a renamed field would be read from nowhere), and the fields marked
    FIXED are the ones this table says no sweep sets."""
    keys = {f.metadata.get("key", camel(f.name)) for f in dataclasses.fields(cls)}
    assert keys - {None} == crd_fields(path) - own
    fixed = {f.name for f in dataclasses.fields(cls) if f.metadata.get("key", "") is None}
    assert fixed == {n for (c, n), s in TABLE.items() if c is cls and "no sweep field" in str(s)}
