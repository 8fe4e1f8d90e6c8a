"""What a sweep costs before it launches: tokens, FLOPs, accelerator-hours, checkpoint bytes
and evaluations, per run and in total. Pure: no I/O, no torch (the operator image runs it).

FLOPs per token are PaLM's model-FLOPs formula (Chowdhery et al. 2022, appendix B, the one
its MFU is defined by): ``6 N + 12 L H Q T``, where ``N`` counts the parameters that take
part in matrix multiplies (every parameter but the input-embedding lookup; GPT-NeoX's
untied output layer is a matmul and counts), ``L`` layers, ``H Q`` = hidden size, ``T`` the
sequence length. ``6 N`` is Kaplan et al. 2020's and Chinchilla's forward plus backward
cost per parameter; ``12 L H Q T`` adds the attention score and value matmuls (counted over
the full T x T square, as PaLM does). Accelerator-hours are those FLOPs at a stated MFU of
a stated device's dense peak.
"""

from __future__ import annotations

from dataclasses import dataclass

from polypythia import planner
from polypythia.planner import RunPlan
from polypythia.retention import LEGACY_POLICY, optimizer_state_kept

ADAM_MOMENT_BYTES = 8  # exp_avg + exp_avg_sq in fp32 per parameter
FP32_MASTER_BYTES = 4  # DeepSpeed keeps an fp32 master copy when the module is fp16/bf16


@dataclass(frozen=True)
class Device:
    """An accelerator's dense 16-bit tensor peak, as its vendor's datasheet states it."""

    name: str
    peak_flops: float


# NVIDIA datasheets, dense (without sparsity) BF16/FP16 tensor-core throughput.
DEVICES: dict[str, Device] = {
    "h100": Device("NVIDIA H100 SXM, bf16 dense", 989e12),
    "h200": Device("NVIDIA H200 SXM, bf16 dense", 989e12),
    "a100": Device("NVIDIA A100 SXM, bf16 dense", 312e12),
}
DEFAULT_DEVICE = "h100"
DEFAULT_MFU = 0.40


@dataclass(frozen=True)
class Assumptions:
    """The device and utilisation the hours are stated at."""

    device: str = DEVICES[DEFAULT_DEVICE].name
    peak_flops: float = DEVICES[DEFAULT_DEVICE].peak_flops
    mfu: float = DEFAULT_MFU

    @classmethod
    def build(cls, device: str, mfu: float, peak_tflops: float | None = None) -> Assumptions:
        """From CLI values; raises ValueError naming the bad one."""
        if device not in DEVICES:
            raise ValueError(f"--device: unknown {device!r}; allowed: {', '.join(DEVICES)}")
        if not 0 < mfu <= 1:
            raise ValueError(f"--mfu: must be in (0, 1], got {mfu}")
        if peak_tflops is not None and peak_tflops <= 0:
            raise ValueError(f"--peak-tflops: must be positive, got {peak_tflops}")
        d = DEVICES[device]
        if peak_tflops is None:
            return cls(d.name, d.peak_flops, mfu)
        return cls(f"{d.name} at {peak_tflops:g} TFLOP/s", peak_tflops * 1e12, mfu)


@dataclass(frozen=True)
class RunEstimate:
    """What one run needs."""

    run: str
    size: str
    parameters: int
    tokens: int
    flops_per_token: int
    flops: float
    accelerator_hours: float
    accelerators: int
    wall_hours: float | None
    checkpoints: int
    weight_bytes: int
    optimizer_bytes: int
    checkpoint_bytes: int
    evaluations: int
    task_evaluations: int
    optimizer_state: str = "all"
    with_optimizer: int = 0
    optimizer_bytes_saved: int = 0

    def as_dict(self) -> dict:
        """camelCase, like the CRD and `plan -o json`'s other keys."""
        return {
            "run": self.run,
            "size": self.size,
            "parameters": self.parameters,
            "tokens": self.tokens,
            "flopsPerToken": self.flops_per_token,
            "flops": self.flops,
            "acceleratorHours": round(self.accelerator_hours, 3),
            "accelerators": self.accelerators,
            "wallHours": None if self.wall_hours is None else round(self.wall_hours, 3),
            "checkpoints": self.checkpoints,
            "weightBytesPerCheckpoint": self.weight_bytes,
            "optimizerBytesPerCheckpoint": self.optimizer_bytes,
            "checkpointBytes": self.checkpoint_bytes,
            "optimizerState": self.optimizer_state,
            "checkpointsWithOptimizerState": self.with_optimizer,
            "optimizerBytesSaved": self.optimizer_bytes_saved,
            "evaluations": self.evaluations,
            "taskEvaluations": self.task_evaluations,
        }


def parameter_count(model: dict) -> int:
    """Parameters of the GPT-NeoX model a run config's `model` block builds.

    Embedding and untied output layer ``2 V d``; per layer two LayerNorms (``4 d``), fused
    QKV (``3 d^2 + 3 d``), attention output (``d^2 + d``), MLP (``2 d f + f + d``); the
    final LayerNorm ``2 d``; QK-LayerNorm adds two head-size LayerNorms per layer.
    """
    d, f, v = model["hiddenSize"], model["intermediateSize"], model["vocabSize"]
    layer = 4 * d + 3 * d * d + 3 * d + d * d + d + 2 * d * f + f + d
    if model.get("qkLayerNorm"):
        layer += 4 * (d // model["numHeads"])
    embeddings = v * d * (1 if model.get("tieWordEmbeddings") else 2)
    return embeddings + model["numLayers"] * layer + 2 * d


def flops_per_token(model: dict, sequence_length: int) -> int:
    """PaLM's training FLOPs per token: ``6 N`` (matmul parameters) ``+ 12 L d T``."""
    matmul = parameter_count(model) - model["vocabSize"] * model["hiddenSize"]
    attention = 12 * model["numLayers"] * model["hiddenSize"] * sequence_length
    return 6 * matmul + attention


def _precision(training: dict) -> str:
    if training["precision"] == "auto":
        return "bf16" if training["gpusPerWorker"] > 0 else "fp32"
    return training["precision"]


def checkpoint_bytes_per_parameter(training: dict) -> tuple[int, int]:
    """(weight bytes, optimiser bytes) per parameter in one checkpoint as the trainer writes
    it: DeepSpeed in fp16/bf16 holds (and saves) a 16-bit module plus fp32 master weights
    and Adam moments; torch DDP under autocast and fp32 keep fp32 weights and Adam moments."""
    half = training["strategy"] == "deepspeed" and _precision(training) in ("fp16", "bf16")
    if half:
        return 2, FP32_MASTER_BYTES + ADAM_MOMENT_BYTES
    return 4, ADAM_MOMENT_BYTES


def estimate_run(spec: dict, run: RunPlan, assumptions: Assumptions) -> RunEstimate:
    """Cost of one planned run under ``assumptions``."""
    cfg = run.config
    training, model = cfg["training"], cfg["model"]
    params = parameter_count(model)
    start = (cfg.get("branch") or {}).get("step", 0)  # a branch trains only its own steps
    tokens = (training["steps"] - start) * training["globalBatchSize"] * training["sequenceLength"]
    per_token = flops_per_token(model, training["sequenceLength"])
    flops = float(tokens) * per_token
    hours = flops / (assumptions.peak_flops * assumptions.mfu) / 3600
    accelerators = training["workers"] * training["gpusPerWorker"]
    weight_b, optim_b = checkpoint_bytes_per_parameter(training)
    plan = cfg["checkpoints"]
    planned = plan["steps"]
    kept = planned + _resume_kept(plan, training["steps"], planned)
    policy = plan.get("optimizerState", LEGACY_POLICY)
    with_optimizer = optimizer_state_kept(
        kept,
        policy=policy,
        planned=set(planned),
        resume_every=plan.get("resumeEvery"),
        keep_resume=plan["keepResume"],
    )
    evaluated = planner.evaluation_steps(spec, planned)
    return RunEstimate(
        run=run.name,
        size=run.size,
        parameters=params,
        tokens=tokens,
        flops_per_token=per_token,
        flops=flops,
        accelerator_hours=hours,
        accelerators=accelerators,
        wall_hours=hours / accelerators if accelerators else None,
        checkpoints=len(planned),
        weight_bytes=params * weight_b,
        optimizer_bytes=params * optim_b,
        checkpoint_bytes=params * (len(kept) * weight_b + len(with_optimizer) * optim_b),
        evaluations=len(evaluated),
        task_evaluations=len(evaluated) * len(planner.evaluation_tasks(spec, run.size)),
        optimizer_state=policy,
        with_optimizer=len(with_optimizer),
        optimizer_bytes_saved=params * optim_b * (len(kept) - len(with_optimizer)),
    )


def _resume_kept(checkpoints: dict, steps: int, planned: list[int]) -> list[int]:
    """Resume-only checkpoints alive at the end (the trainer prunes to the last keepResume)."""
    every = checkpoints.get("resumeEvery")
    if not every:
        return []
    extra = [s for s in range(every, steps + 1, every) if s not in set(planned)]
    return extra[-checkpoints["keepResume"] :]


@dataclass(frozen=True)
class SweepEstimate:
    """Every run's estimate and the sums."""

    assumptions: Assumptions
    runs: tuple[RunEstimate, ...]

    @property
    def tokens(self) -> int:
        return sum(r.tokens for r in self.runs)

    @property
    def flops(self) -> float:
        return sum(r.flops for r in self.runs)

    @property
    def accelerator_hours(self) -> float:
        return sum(r.accelerator_hours for r in self.runs)

    @property
    def checkpoint_bytes(self) -> int:
        return sum(r.checkpoint_bytes for r in self.runs)

    @property
    def optimizer_bytes_saved(self) -> int:
        return sum(r.optimizer_bytes_saved for r in self.runs)

    @property
    def checkpoints(self) -> int:
        return sum(r.checkpoints for r in self.runs)

    @property
    def evaluations(self) -> int:
        return sum(r.evaluations for r in self.runs)

    @property
    def task_evaluations(self) -> int:
        return sum(r.task_evaluations for r in self.runs)

    def as_dict(self) -> dict:
        """The `estimate` block of `plan -o json`."""
        a = self.assumptions
        return {
            "device": a.device,
            "peakFlopsPerSecond": a.peak_flops,
            "mfu": a.mfu,
            "flopsFormula": "6N + 12LdT per token (PaLM appendix B; N = matmul parameters)",
            "runs": [r.as_dict() for r in self.runs],
            "total": {
                "runs": len(self.runs),
                "tokens": self.tokens,
                "flops": self.flops,
                "acceleratorHours": round(self.accelerator_hours, 3),
                "checkpoints": self.checkpoints,
                "checkpointBytes": self.checkpoint_bytes,
                "optimizerBytesSaved": self.optimizer_bytes_saved,
                "evaluations": self.evaluations,
                "taskEvaluations": self.task_evaluations,
            },
        }


def estimate_sweep(
    spec: dict, runs: list[RunPlan], assumptions: Assumptions | None = None
) -> SweepEstimate:
    """Estimates for every planned run of a sweep."""
    a = assumptions or Assumptions()
    return SweepEstimate(a, tuple(estimate_run(spec, r, a) for r in runs))


def human_bytes(n: float) -> str:
    """SI units, as storage is billed: `8.7 TB`."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def human_count(n: float) -> str:
    """`299.9B` tokens, `405.3M` parameters (FLOPs print as `1.23e+21`)."""
    for limit, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= limit:
            return f"{n / limit:.1f}{suffix}"
    return f"{n:g}"
