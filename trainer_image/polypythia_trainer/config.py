"""The resolved run config (`run.json`) as a typed tree that checks itself.

The planner produces the dict (docs/contracts.md); the trainer reads it only through
these classes, so a bad field fails at start with its path named, not mid-run.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from polypythia.errors import UsageError
from polypythia.retention import LEGACY_POLICY, POLICIES, optimizer_state_kept
from polypythia.typed import build, read

INIT_STRATEGIES = ("pythia", "permute", "empirical", "studentt", "matched-gaussian")
INIT_REFERENCE_FIELD = "spec.inits[].reference"
BRANCH_OPTIMIZERS = ("restored", "fresh")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
HIDDEN_ACTS = ("gelu_pytorch_tanh", "gelu_new", "gelu")
INIT_METHODS = ("small_init", "normal")
STRATEGIES = ("ddp", "deepspeed")


def _get(block: dict, key: str, path: str, kind: type, default: Any = ...) -> Any:
    """Read ``block[key]`` of type ``kind``; the error names ``path.key``."""
    path = f"{path}.{key}" if path else key
    if block.get(key) is None:
        if default is ...:
            raise UsageError(f"{path}: required field is missing")
        return default
    return read(block[key], kind, path)


def _block(cfg: dict, key: str, path: str = "") -> dict:
    value = cfg.get(key)
    full = f"{path}.{key}" if path else key
    if not isinstance(value, dict):
        raise UsageError(f"{full}: required object is missing or not an object")
    return value


def _optional_block(cfg: dict, key: str) -> dict:
    """A block whose fields all have defaults: absent or null reads as ``{}``."""
    value = cfg.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UsageError(f"{key}: expected an object, got {value!r}")
    return value


def _at_least(value: float, minimum: float, name: str) -> None:
    if value < minimum:
        raise UsageError(f"{name}: must be >= {minimum}, got {value}")


def _optional_str(block: dict, key: str, path: str) -> str | None:
    """An optional string that, when given, says something (not blank)."""
    value = _get(block, key, path, str, None)
    _not_blank(value, f"{path}.{key}")
    return value


def _not_blank(value: str | None, path: str) -> None:
    if value is not None and not value.strip():
        raise UsageError(f"{path}: expected a non-empty string or null, got {value!r}")


@dataclass(frozen=True)
class ModelConfig:
    num_layers: int
    hidden_size: int
    num_heads: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    rotary_pct: float = 0.25
    rotary_emb_base: int = 10_000
    parallel_residual: bool = True
    tie_word_embeddings: bool = False
    z_loss: float = 0.0
    qk_layernorm: bool = field(default=False, metadata={"key": "qkLayerNorm"})
    hidden_act: str = "gelu_pytorch_tanh"
    init_method: str = "small_init"

    @classmethod
    def from_dict(cls, block: dict, path: str = "model") -> ModelConfig:
        out = build(cls, block, path)
        for name, value, allowed in (
            ("hiddenAct", out.hidden_act, HIDDEN_ACTS),
            ("initMethod", out.init_method, INIT_METHODS),
        ):
            if value not in allowed:
                raise UsageError(f"{path}.{name}: must be one of {allowed}, got {value!r}")
        for name in ("numLayers", "hiddenSize", "numHeads", "intermediateSize", "vocabSize"):
            _at_least(block[name], 1, f"{path}.{name}")
        if out.hidden_size % out.num_heads:
            raise UsageError(
                f"{path}.hiddenSize: must be divisible by numHeads ({out.num_heads}), "
                f"got {out.hidden_size}"
            )
        if not 0.0 <= out.rotary_pct <= 1.0:
            raise UsageError(f"{path}.rotaryPct: must be in [0, 1], got {out.rotary_pct}")
        _at_least(out.z_loss, 0.0, f"{path}.zLoss")
        return out


@dataclass(frozen=True)
class Perturbation:
    """A learning-rate shock: the updates producing steps ``step`` .. ``step + steps - 1``
    run at ``learning_rate_factor`` x the scheduled rate."""

    step: int
    learning_rate_factor: float
    steps: int = 1

    @classmethod
    def from_dict(cls, block: dict, path: str) -> Perturbation:
        out = build(cls, block, path)
        _at_least(out.step, 0, f"{path}.step")
        _at_least(out.steps, 1, f"{path}.steps")
        if out.learning_rate_factor <= 0:
            raise UsageError(
                f"{path}.learningRateFactor: must be > 0, got {out.learning_rate_factor}"
            )
        return out

    def as_dict(self) -> dict:
        """The run config's spelling (what the scheduler reads)."""
        return {
            "step": self.step,
            "steps": self.steps,
            "learningRateFactor": self.learning_rate_factor,
        }


@dataclass(frozen=True)
class TrainingConfig:
    steps: int
    global_batch_size: int
    micro_batch_size: int
    sequence_length: int
    learning_rate: float
    min_learning_rate: float
    warmup_steps: float = 0.0  # GPT-NeoX's warmup_iter: warm-up fraction x steps, not rounded
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    weight_decay: float = 0.1
    gradient_clipping: float = 1.0
    precision: str = "auto"
    strategy: str = "ddp"
    zero_stage: int = 1  # applies to strategy deepspeed only; ddp runs record 0
    workers: int = 1
    gpus_per_worker: int | float = 0
    cpus_per_worker: int | float = 1
    perturbations: tuple[Perturbation, ...] = ()

    @classmethod
    def from_dict(cls, block: dict, path: str = "training") -> TrainingConfig:
        out = build(cls, block, path)
        if block.get("zeroStage") is None and out.strategy != "deepspeed":
            out = replace(out, zero_stage=0)
        for name, minimum in (
            ("steps", 1),
            ("globalBatchSize", 1),
            ("microBatchSize", 1),
            ("sequenceLength", 1),
            ("workers", 1),
            ("warmupSteps", 0),
            ("learningRate", 0.0),
            ("minLearningRate", 0.0),
            ("weightDecay", 0.0),
            ("gradientClipping", 0.0),
            ("gpusPerWorker", 0),
            ("cpusPerWorker", 0),
        ):
            _at_least(getattr(out, _snake(name)), minimum, f"{path}.{name}")
        if out.precision not in PRECISIONS:
            raise UsageError(
                f"{path}.precision: must be one of {PRECISIONS}, got {out.precision!r}"
            )
        if out.strategy not in STRATEGIES:
            raise UsageError(f"{path}.strategy: must be one of {STRATEGIES}, got {out.strategy!r}")
        if out.zero_stage not in (0, 1, 2):
            raise UsageError(f"{path}.zeroStage: must be 0, 1 or 2, got {out.zero_stage}")
        per_step = out.micro_batch_size * out.workers
        if out.global_batch_size % per_step:
            raise UsageError(
                f"{path}.globalBatchSize: must be a multiple of microBatchSize x workers "
                f"({out.micro_batch_size} x {out.workers} = {per_step}), "
                f"got {out.global_batch_size}"
            )
        if out.gpus_per_worker == 0 and out.precision in ("bf16", "fp16"):
            raise UsageError(
                f"{path}.precision: {out.precision} needs GPUs (gpusPerWorker > 0); "
                "use fp32 or auto on CPU"
            )
        return out

    @property
    def accumulation_steps(self) -> int:
        """Micro-batches each worker runs per optimiser step."""
        return self.global_batch_size // (self.micro_batch_size * self.workers)

    def resolved_precision(self, on_gpu: bool) -> str:
        """`auto` is fp16 on a GPU (Pythia's precision) and fp32 on CPU."""
        if self.precision == "auto":
            return "fp16" if on_gpu else "fp32"
        return self.precision


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


@dataclass(frozen=True)
class CheckpointConfig:
    steps: tuple[int, ...]
    resume_every: int | None = None
    keep_resume: int = 2
    optimizer_state: str = LEGACY_POLICY

    @classmethod
    def from_dict(
        cls, block: dict, total_steps: int, path: str = "checkpoints"
    ) -> CheckpointConfig:
        steps = _get(block, "steps", path, list, [])
        for i, s in enumerate(steps):
            if not isinstance(s, int) or isinstance(s, bool) or not 0 <= s <= total_steps:
                raise UsageError(
                    f"{path}.steps[{i}]: must be an integer in [0, {total_steps}], got {s!r}"
                )
        out = build(cls, block, path, steps=tuple(sorted(set(steps))))
        if out.resume_every is not None:
            _at_least(out.resume_every, 1, f"{path}.resumeEvery")
        _at_least(out.keep_resume, 1, f"{path}.keepResume")
        # Absent in a run.json written before the field existed: that run kept everything.
        if out.optimizer_state not in POLICIES:
            raise UsageError(
                f"{path}.optimizerState: {out.optimizer_state!r}; allowed: {', '.join(POLICIES)}"
            )
        return out

    def optimizer_state_kept(self, complete: list[int]) -> set[int]:
        """The steps among ``complete`` whose checkpoint keeps its optimiser state."""
        return optimizer_state_kept(
            complete,
            policy=self.optimizer_state,
            planned=set(self.steps),
            resume_every=self.resume_every,
            keep_resume=self.keep_resume,
        )

    def is_planned(self, step: int) -> bool:
        return step in self.steps

    def wants(self, step: int) -> bool:
        """Whether a checkpoint is due after ``step`` optimiser steps."""
        if self.is_planned(step):
            return True
        return bool(self.resume_every) and step > 0 and step % self.resume_every == 0


DATA_PATH = "spec.data"  # data errors name the sweep field, where a user sets it
DATA_FORMATS = ("generated", "megatron")
DATA_ORDERS = ("megatron", "permutation")
DATA_FIELDS = (
    "format",
    "path",
    "tokenizer",
    "skipBatches",
    "order",
    "indexDir",
    "validationPath",
    "split",
)


@dataclass(frozen=True)
class DataConfig:
    """The corpus a run trains on and the order it reads it in (docs/contracts.md)."""

    format: str = "generated"
    path: str | None = None
    tokenizer: str | None = None
    skip_batches: tuple[tuple[int, int], ...] = ()
    order: str = "permutation"  # the planner writes default_order(format) when unset
    index_dir: str | None = None
    validation_path: str | None = None
    split: str | None = None

    @classmethod
    def from_dict(cls, data: Any) -> DataConfig:
        """Check a ``data`` block and return it typed (errors name ``spec.data.<field>``)."""
        if not isinstance(data, dict):
            raise UsageError(f"spec.data: expected a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - set(DATA_FIELDS))
        if unknown:
            raise UsageError(
                f"spec.data.{unknown[0]}: unknown field (allowed: {', '.join(DATA_FIELDS)})"
            )
        fmt = data.get("format", cls.format)
        if fmt not in DATA_FORMATS:
            raise UsageError(
                f"spec.data.format: must be one of {', '.join(DATA_FORMATS)}, got {fmt!r}"
            )
        path = _optional_str(data, "path", DATA_PATH)
        tokenizer = _optional_str(data, "tokenizer", DATA_PATH)
        if fmt == "megatron" and path is None:
            raise UsageError(
                "spec.data.path: required for format megatron (the dataset prefix, "
                "without .bin/.idx: a local path or s3://bucket/key)"
            )
        if fmt == "generated" and (path is not None or tokenizer is not None):
            name = "path" if path is not None else "tokenizer"
            raise UsageError(
                f"spec.data.{name}: not used with format generated (the project builds the corpus "
                "and its tokenizer); set format: megatron to read your own dataset"
            )
        order = data.get("order") or default_order(fmt)
        if order not in DATA_ORDERS:
            raise UsageError(
                f"spec.data.order: must be one of {', '.join(DATA_ORDERS)}, got {order!r}"
            )
        index_dir = _optional_str(data, "indexDir", DATA_PATH)
        if index_dir is not None and order != "megatron":
            raise UsageError(
                "spec.data.indexDir: only used with order megatron (GPT-NeoX's index maps), "
                f"got order {order}"
            )
        split = _optional_str(data, "split", DATA_PATH)
        if split is not None:
            if fmt != "megatron":
                raise UsageError(
                    "spec.data.split: only used with format megatron (the generated corpus has "
                    "its own held-out documents)"
                )
            from polypythia_trainer.data.split import split_weights  # the data package is heavy

            split_weights(split)
        return cls(
            format=fmt,
            path=path,
            tokenizer=tokenizer,
            skip_batches=_skip_batches(data.get("skipBatches")),
            order=order,
            index_dir=index_dir,
            validation_path=_optional_str(data, "validationPath", DATA_PATH),
            split=split,
        )


def _skip_batches(value: object) -> tuple[tuple[int, int], ...]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise UsageError(f"spec.data.skipBatches: expected a list of [start, end], got {value!r}")
    ranges = []
    for i, item in enumerate(value):
        ok = (
            isinstance(item, list | tuple)
            and len(item) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in item)
        )
        if not ok or not 0 <= item[0] < item[1]:
            raise UsageError(
                f"spec.data.skipBatches[{i}]: expected [start, end] with 0 <= start < end "
                f"(batch indices, end excluded), got {item!r}"
            )
        ranges.append((item[0], item[1]))
    return tuple(ranges)


def default_order(fmt: str) -> str:
    """GPT-NeoX's order for megatron datasets (what Pythia trained on); ours for the demo."""
    return "megatron" if fmt == "megatron" else "permutation"


@dataclass(frozen=True)
class StorageConfig:
    """Where the sweep's tree lives; credentials come from the environment, never from here."""

    uri: str
    endpoint: str | None = None
    secure: bool = True
    region: str = "us-east-1"

    @classmethod
    def from_dict(cls, block: dict, path: str = "storage") -> StorageConfig:
        out = build(cls, block, path)
        _not_blank(out.endpoint, f"{path}.endpoint")
        if not out.uri.strip():
            raise UsageError(
                f"{path}.uri: expected a local path or s3://bucket/prefix, got {out.uri!r}"
            )
        return out

    def connection(self) -> dict[str, Any]:
        """Keyword arguments of ``open_store``/``RunStore.open`` for this store (and for
        the readers that take the run config's storage block: the same three keys)."""
        return {"endpoint": self.endpoint, "secure": self.secure, "region": self.region}


@dataclass(frozen=True)
class TelemetryConfig:
    """How often step records are written (the planner scales it with the run's length)."""

    flush_every: int = 25

    @classmethod
    def from_dict(cls, block: dict, path: str = "telemetry") -> TelemetryConfig:
        out = build(cls, block, path)
        _at_least(out.flush_every, 1, f"{path}.flushEvery")
        return out


@dataclass(frozen=True)
class MetricsConfig:
    """Optional Weights & Biases project and entity (``$WANDB_PROJECT`` wins)."""

    wandb_project: str | None = None
    wandb_entity: str | None = None

    @classmethod
    def from_dict(cls, block: dict, path: str = "metrics") -> MetricsConfig:
        out = build(cls, block, path)
        _not_blank(out.wandb_project, f"{path}.wandbProject")
        _not_blank(out.wandb_entity, f"{path}.wandbEntity")
        return out


@dataclass(frozen=True)
class InitReference:
    """The trained checkpoint an init study draws from: a model folder, or a run's step."""

    path: str | None = None
    uri: str | None = None
    step: int | None = None
    run: str | None = None  # the reference run's name when it belongs to this sweep

    @classmethod
    def from_dict(cls, block: Any) -> InitReference:
        if not isinstance(block, dict):
            raise UsageError(
                f"{INIT_REFERENCE_FIELD}: expected {{path}} or {{uri, step}}, got {block!r}"
            )
        if "path" in block:
            return cls(path=_get(block, "path", INIT_REFERENCE_FIELD, str))
        if "uri" in block and "step" in block:
            out = cls(
                uri=_get(block, "uri", INIT_REFERENCE_FIELD, str),
                step=_get(block, "step", INIT_REFERENCE_FIELD, int),
                run=_get(block, "run", INIT_REFERENCE_FIELD, str, None),
            )
            _at_least(out.step, 0, f"{INIT_REFERENCE_FIELD}.step")
            return out
        raise UsageError(
            f"{INIT_REFERENCE_FIELD}: expected {{path: dir}} or {{uri: run URI, step: N}}, "
            f"got keys {sorted(block)}"
        )


@dataclass(frozen=True)
class InitConfig:
    """The run's initialisation: Pythia's recipe, or one derived from a reference."""

    strategy: str = "pythia"
    name: str | None = None
    reference: InitReference | None = None

    @classmethod
    def from_dict(cls, block: dict, path: str = "init") -> InitConfig:
        strategy = _get(block, "strategy", path, str, cls.strategy)
        if strategy not in INIT_STRATEGIES:
            raise UsageError(f"{path}.strategy: {strategy!r} is not one of {INIT_STRATEGIES}")
        reference = block.get("reference")
        out = cls(
            strategy=strategy,
            name=_get(block, "name", path, str, None),
            reference=InitReference.from_dict(reference) if reference else None,
        )
        if strategy != "pythia" and out.reference is None:
            raise UsageError(
                f"{INIT_REFERENCE_FIELD}: strategy {strategy!r} needs a reference checkpoint"
            )
        return out


@dataclass(frozen=True)
class BranchConfig:
    """A branched run's start (docs/branching.md): the parent checkpoint and its optimiser.

    The plan names parent, step and optimiser; the trainer adds ``checksum`` when it
    claims the run, and run.json records the resolved block.
    """

    parent: str
    step: int
    optimizer: str
    checksum: str | None = None

    @classmethod
    def from_dict(cls, block: dict, path: str = "branch") -> BranchConfig:
        out = build(cls, block, path)
        _not_blank(out.checksum, f"{path}.checksum")
        _at_least(out.step, 0, f"{path}.step")
        if out.optimizer not in BRANCH_OPTIMIZERS:
            raise UsageError(
                f"{path}.optimizer: must be one of {BRANCH_OPTIMIZERS}, got {out.optimizer!r}"
            )
        return out


@dataclass(frozen=True)
class RunConfig:
    """The whole resolved run config; ``raw`` is the dict as received (written to run.json)."""

    sweep: str
    run: str
    weight_seed: int
    data_seed: int
    model: ModelConfig
    training: TrainingConfig
    data: DataConfig
    checkpoints: CheckpointConfig
    storage: StorageConfig
    run_uri: str
    init: InitConfig = field(default_factory=InitConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    branch: BranchConfig | None = None
    raw: dict = field(repr=False, compare=False, default_factory=dict)

    @classmethod
    def from_dict(cls, cfg: Any) -> RunConfig:
        if not isinstance(cfg, dict):
            raise UsageError(f"run config: expected a JSON object, got {type(cfg).__name__}")
        training = TrainingConfig.from_dict(_block(cfg, "training"))
        model = ModelConfig.from_dict(_block(cfg, "model"))
        if training.sequence_length > model.max_position_embeddings:
            raise UsageError(
                f"training.sequenceLength: must be <= model.maxPositionEmbeddings "
                f"({model.max_position_embeddings}), got {training.sequence_length}"
            )
        seed = _get(cfg, "seed", "", int, 0)
        out = cls(
            sweep=_get(cfg, "sweep", "", str, "sweep").strip(".") or "sweep",
            run=_get(cfg, "run", "", str),
            weight_seed=_get(cfg, "weightSeed", "", int, seed),
            data_seed=_get(cfg, "dataSeed", "", int, seed),
            model=model,
            training=training,
            data=DataConfig.from_dict(_block(cfg, "data")),
            checkpoints=CheckpointConfig.from_dict(
                _optional_block(cfg, "checkpoints"), training.steps
            ),
            storage=StorageConfig.from_dict(_block(cfg, "storage")),
            run_uri=_get(cfg, "runUri", "", str),
            init=InitConfig.from_dict(_optional_block(cfg, "init")),
            telemetry=TelemetryConfig.from_dict(_optional_block(cfg, "telemetry")),
            metrics=MetricsConfig.from_dict(_optional_block(cfg, "metrics")),
            branch=BranchConfig.from_dict(cfg["branch"]) if cfg.get("branch") else None,
            raw=cfg,
        )
        _at_least(out.weight_seed, 0, "weightSeed")
        _at_least(out.data_seed, 0, "dataSeed")
        return out
