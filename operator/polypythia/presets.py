"""Model-size presets: the one table of Pythia sizes (and tiny CPU sizes).

Architecture, learning rates, per-GPU micro-batch and init method follow the Pythia
v1.0 configs (EleutherAI/pythia, `models/<size>/pythia-<size>.yml`); ``published_params``
is the total in the Pythia README. The parameter count is computed without torch (the
operator image has none); a test holds it to transformers' built model and the table to
the published numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

# Pythia's optimiser and schedule defaults (models/*.yml in EleutherAI/pythia). Every config
# says weight-decay 0.1; the paper's 0.01 is a typo (EleutherAI/pythia#132).
ADAM_BETAS = (0.9, 0.95)
ADAM_EPS = 1e-8
WEIGHT_DECAY = 0.1
GRADIENT_CLIPPING = 1.0
WARMUP_FRACTION = 0.01
MIN_LR_FRACTION = 0.1
GLOBAL_BATCH_SIZE = 1024
SEQUENCE_LENGTH = 2048
TRAIN_STEPS = 143_000
ROTARY_PCT = 0.25
ROTARY_BASE = 10_000
# `bias-gelu-fusion`: GPT-NeoX's GELU is the tanh approximation; transformers' name for it.
HIDDEN_ACT = "gelu_pytorch_tanh"
# fp16 dynamic loss scaling of every Pythia config (DeepSpeed's `fp16` block).
FP16_LOSS_SCALING = {
    "loss_scale": 0,
    "initial_scale_power": 12,
    "loss_scale_window": 1000,
    "hysteresis": 2,
    "min_loss_scale": 1,
}
# Init methods: Pythia 14m-2.8b name small_init (and wang_init for output layers); 6.9b and
# 12b name none, so GPT-NeoX's defaults apply (normal 0.02, scaled_normal for output layers).
SMALL_INIT = "small_init"
NORMAL_INIT = "normal"


@dataclass(frozen=True)
class Preset:
    """One model size: architecture plus its peak learning rate."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    learning_rate: float
    micro_batch_size: int | None = None  # Pythia's per-GPU micro-batch; None: whole batch
    init_method: str = SMALL_INIT
    vocab_size: int = 50_304
    max_position_embeddings: int = SEQUENCE_LENGTH
    published_params: int | None = None
    tiny: bool = False

    @property
    def min_learning_rate(self) -> float:
        return self.learning_rate * MIN_LR_FRACTION

    @property
    def intermediate_size(self) -> int:
        return 4 * self.hidden_size

    def model_block(self) -> dict:
        """The `model` block of a resolved run config (camelCase, like the CRD)."""
        return {
            "numLayers": self.num_layers,
            "hiddenSize": self.hidden_size,
            "numHeads": self.num_heads,
            "intermediateSize": self.intermediate_size,
            "vocabSize": self.vocab_size,
            "maxPositionEmbeddings": self.max_position_embeddings,
            "rotaryPct": ROTARY_PCT,
            "rotaryEmbBase": ROTARY_BASE,
            "parallelResidual": True,
            "tieWordEmbeddings": False,
            "hiddenAct": HIDDEN_ACT,
            "initMethod": self.init_method,
        }


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("nano", 2, 64, 4, 3e-3, vocab_size=1024, tiny=True),
        Preset("micro", 4, 128, 4, 2e-3, vocab_size=1024, tiny=True),
        Preset("14m", 6, 128, 4, 1e-3, 32, published_params=14_067_712),
        Preset("31m", 6, 256, 8, 1e-3, 32, published_params=30_494_720),
        Preset("70m", 6, 512, 8, 1e-3, 32, published_params=70_426_624),
        Preset("160m", 12, 768, 12, 6e-4, 32, published_params=162_322_944),
        Preset("410m", 24, 1024, 16, 3e-4, 32, published_params=405_334_016),
        Preset("1b", 16, 2048, 8, 2.5e-4, 16, published_params=1_011_781_632),
        Preset("1.4b", 24, 2048, 16, 2e-4, 16, published_params=1_414_647_808),
        Preset("2.8b", 32, 2560, 32, 1.6e-4, 16, published_params=2_775_208_960),
        Preset(
            "6.9b", 32, 4096, 32, 1.2e-4, 8, NORMAL_INIT, 50_432, published_params=6_857_302_016
        ),
        Preset(
            "12b", 36, 5120, 40, 1.2e-4, 8, NORMAL_INIT, 50_688, published_params=11_846_072_320
        ),
    )
}


def default_micro_batch(preset_micro: int | None, per_worker: int) -> int:
    """Pythia's per-GPU micro-batch when it divides the per-worker batch, else the largest
    divisor below it; sizes without one (tiny CPU presets) take the whole batch at once.
    Gradient accumulation is then per_worker // micro, as GPT-NeoX derives it."""
    if preset_micro is None or preset_micro >= per_worker:
        return per_worker
    return max(d for d in range(1, preset_micro + 1) if per_worker % d == 0)


_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_UNITS.update({"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40})
DEFAULT_GPU_MEMORY = 80 * 2**30  # an A100/H100 80GB when a sweep names none


def quantity_bytes(text: str) -> int:
    """Bytes of a Kubernetes quantity such as ``80Gi`` (the CRD's pattern guarantees form)."""
    number = text.rstrip("KMGTi")
    return int(float(number) * _UNITS[text[len(number) :]])


def logits_bytes(micro_batch: int, sequence_length: int, vocab_size: int, precision: str) -> int:
    """Memory of one micro-batch's output logits alone (2 bytes in fp16/bf16, else 4)."""
    width = 2 if precision in ("fp16", "bf16", "auto") else 4
    return micro_batch * sequence_length * vocab_size * width


class UnknownPresetError(KeyError):
    """Raised for a size name that is not in the table."""


def get(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise UnknownPresetError(f"unknown size {name!r}; allowed: {', '.join(PRESETS)}") from None


def count_parameters(preset: Preset) -> int:
    """Total parameters of GPT-NeoX at this size, by arithmetic (no torch: the operator image runs it).

    Per layer two LayerNorms (4h), fused QKV (3h^2 + 3h), attention output (h^2 + h) and the
    MLP (8h^2 + 5h at 4h width); untied input and output embeddings (2Vh) and the final
    LayerNorm (2h). A test holds this to transformers' built model and to the published counts.
    """
    h, inner = preset.hidden_size, preset.intermediate_size
    per_layer = 4 * h + (3 * h * h + 3 * h) + (h * h + h) + (2 * h * inner + inner + h)
    return preset.num_layers * per_layer + 2 * h + 2 * preset.vocab_size * h
