"""The resolved run config (`run.json`) as a typed tree that checks itself.

The planner produces the dict (docs/contracts.md); the trainer reads it only through
these classes, so a bad field fails at start with its path named, not mid-run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from polypythia.errors import UsageError
from polypythia.retention import LEGACY_POLICY, POLICIES, optimizer_state_kept

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
HIDDEN_ACTS = ("gelu_pytorch_tanh", "gelu_new", "gelu")
INIT_METHODS = ("small_init", "normal")
STRATEGIES = ("ddp", "deepspeed")


def _get(block: dict, key: str, path: str, kind: type | tuple, default: Any = ...) -> Any:
    """Read ``block[key]`` of type ``kind``; the error names ``path.key``."""
    path = f"{path}.{key}" if path else key
    if key not in block or block[key] is None:
        if default is ...:
            raise UsageError(f"{path}: required field is missing")
        return default
    value = block[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, bool) and bool not in kinds:
        raise UsageError(f"{path}: expected {_names(kinds)}, got {value!r}")
    if not isinstance(value, kinds):
        raise UsageError(f"{path}: expected {_names(kinds)}, got {value!r}")
    return value


def _names(kinds: tuple) -> str:
    return " or ".join(k.__name__ for k in kinds)


def _block(cfg: dict, key: str, path: str = "") -> dict:
    value = cfg.get(key)
    full = f"{path}.{key}" if path else key
    if not isinstance(value, dict):
        raise UsageError(f"{full}: required object is missing or not an object")
    return value


def _at_least(value: float, minimum: float, name: str) -> None:
    if value < minimum:
        raise UsageError(f"{name}: must be >= {minimum}, got {value}")


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
    qk_layernorm: bool = False
    hidden_act: str = "gelu_pytorch_tanh"
    init_method: str = "small_init"

    @classmethod
    def from_dict(cls, block: dict, path: str = "model") -> ModelConfig:
        out = cls(
            num_layers=_get(block, "numLayers", path, int),
            hidden_size=_get(block, "hiddenSize", path, int),
            num_heads=_get(block, "numHeads", path, int),
            intermediate_size=_get(block, "intermediateSize", path, int),
            vocab_size=_get(block, "vocabSize", path, int),
            max_position_embeddings=_get(block, "maxPositionEmbeddings", path, int),
            rotary_pct=_get(block, "rotaryPct", path, float, 0.25),
            rotary_emb_base=_get(block, "rotaryEmbBase", path, int, 10_000),
            parallel_residual=_get(block, "parallelResidual", path, bool, True),
            tie_word_embeddings=_get(block, "tieWordEmbeddings", path, bool, False),
            z_loss=_get(block, "zLoss", path, float, 0.0),
            qk_layernorm=_get(block, "qkLayerNorm", path, bool, False),
            hidden_act=_get(block, "hiddenAct", path, str, "gelu_pytorch_tanh"),
            init_method=_get(block, "initMethod", path, str, "small_init"),
        )
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
class TrainingConfig:
    steps: int
    global_batch_size: int
    micro_batch_size: int
    sequence_length: int
    learning_rate: float
    min_learning_rate: float
    warmup_steps: float  # GPT-NeoX's warmup_iter: warm-up fraction x steps, not rounded
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    weight_decay: float = 0.1
    gradient_clipping: float = 1.0
    precision: str = "auto"
    strategy: str = "ddp"
    zero_stage: int = 0
    workers: int = 1
    gpus_per_worker: float = 0
    cpus_per_worker: float = 1

    @classmethod
    def from_dict(cls, block: dict, path: str = "training") -> TrainingConfig:
        out = cls(
            steps=_get(block, "steps", path, int),
            global_batch_size=_get(block, "globalBatchSize", path, int),
            micro_batch_size=_get(block, "microBatchSize", path, int),
            sequence_length=_get(block, "sequenceLength", path, int),
            learning_rate=_get(block, "learningRate", path, float),
            min_learning_rate=_get(block, "minLearningRate", path, float),
            warmup_steps=float(_get(block, "warmupSteps", path, float, 0.0)),
            adam_beta1=_get(block, "adamBeta1", path, float, 0.9),
            adam_beta2=_get(block, "adamBeta2", path, float, 0.95),
            adam_eps=_get(block, "adamEps", path, float, 1e-8),
            weight_decay=_get(block, "weightDecay", path, float, 0.1),
            gradient_clipping=_get(block, "gradientClipping", path, float, 1.0),
            precision=_get(block, "precision", path, str, "auto"),
            strategy=_get(block, "strategy", path, str, "ddp"),
            zero_stage=_get(block, "zeroStage", path, int, 0),
            workers=_get(block, "workers", path, int, 1),
            gpus_per_worker=_get(block, "gpusPerWorker", path, (int, float), 0),
            cpus_per_worker=_get(block, "cpusPerWorker", path, (int, float), 1),
        )
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
        every = _get(block, "resumeEvery", path, int, None)
        if every is not None:
            _at_least(every, 1, f"{path}.resumeEvery")
        keep = _get(block, "keepResume", path, int, 2)
        _at_least(keep, 1, f"{path}.keepResume")
        # Absent in a run.json written before the field existed: that run kept everything.
        optimizer = _get(block, "optimizerState", path, str, LEGACY_POLICY)
        if optimizer not in POLICIES:
            raise UsageError(
                f"{path}.optimizerState: {optimizer!r}; allowed: {', '.join(POLICIES)}"
            )
        return cls(
            steps=tuple(sorted(set(steps))),
            resume_every=every,
            keep_resume=keep,
            optimizer_state=optimizer,
        )

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


@dataclass(frozen=True)
class StorageConfig:
    uri: str
    endpoint: str | None = None
    secure: bool = True
    region: str = "us-east-1"


@dataclass(frozen=True)
class RunConfig:
    """The whole resolved run config; ``raw`` is the dict as received (written to run.json)."""

    sweep: str
    run: str
    weight_seed: int
    data_seed: int
    model: ModelConfig
    training: TrainingConfig
    data: dict
    checkpoints: CheckpointConfig
    flush_every: int
    storage: StorageConfig
    run_uri: str
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
        data = _block(cfg, "data")
        skips = data.get("skipBatches") or []
        if not isinstance(skips, list):
            raise UsageError(
                f"data.skipBatches: expected a list of [first, last] pairs, got {skips!r}"
            )
        telemetry = cfg.get("telemetry") or {}
        flush_every = _get(telemetry, "flushEvery", "telemetry", int, 25)
        _at_least(flush_every, 1, "telemetry.flushEvery")
        storage = _block(cfg, "storage")
        seed = _get(cfg, "seed", "", int, 0)
        out = cls(
            sweep=_get(cfg, "sweep", "", str, "sweep").strip(".") or "sweep",
            run=_get(cfg, "run", "", str),
            weight_seed=_get(cfg, "weightSeed", "", int, seed),
            data_seed=_get(cfg, "dataSeed", "", int, seed),
            model=model,
            training=training,
            data=data,
            checkpoints=CheckpointConfig.from_dict(cfg.get("checkpoints") or {}, training.steps),
            flush_every=flush_every,
            storage=StorageConfig(
                uri=_get(storage, "uri", "storage", str),
                endpoint=_get(storage, "endpoint", "storage", str, None),
                secure=_get(storage, "secure", "storage", bool, True),
                region=_get(storage, "region", "storage", str, "us-east-1"),
            ),
            run_uri=_get(cfg, "runUri", "", str),
            raw=cfg,
        )
        for name in ("weightSeed", "dataSeed"):
            _at_least(cfg.get(name, seed), 0, name)
        return out
