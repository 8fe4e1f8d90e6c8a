"""GPT-NeoX at Pythia fidelity: transformers' model, Pythia's initialisation, optional
QK-LayerNorm, and the training loss (cross-entropy plus optional z-loss).

The model is plain `GPTNeoXForCausalLM`, so every checkpoint loads in the Hugging Face
ecosystem; QK-LayerNorm (off by default) swaps the fused QKV projection for a subclass of
`nn.Linear` that keeps the parameter names and adds per-head norms.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from polypythia_trainer.config import ModelConfig

QK_NORM_FLAG = "polypythia_qk_layernorm"


def hf_config(model: ModelConfig):
    """transformers' GPTNeoXConfig for a run's `model` block: the one builder (tests prove the
    published Pythia parameter counts on it)."""
    from transformers import GPTNeoXConfig

    config = GPTNeoXConfig(
        num_hidden_layers=model.num_layers,
        hidden_size=model.hidden_size,
        num_attention_heads=model.num_heads,
        intermediate_size=model.intermediate_size,
        vocab_size=model.vocab_size,
        max_position_embeddings=model.max_position_embeddings,
        rotary_pct=model.rotary_pct,
        rotary_emb_base=model.rotary_emb_base,
        use_parallel_residual=model.parallel_residual,
        tie_word_embeddings=model.tie_word_embeddings,
        hidden_act=model.hidden_act,
        layer_norm_eps=1e-5,
        attention_dropout=0.0,
        hidden_dropout=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    config._attn_implementation = "sdpa"
    if model.qk_layernorm:
        setattr(config, QK_NORM_FLAG, True)
    return config


class QKNormLinear(nn.Linear):
    """GPT-NeoX's fused QKV projection followed by LayerNorm on each head's q and k.

    The fused output is laid out per head as [q | k | v] (head_size each), as
    `GPTNeoXAttention` splits it; the norms are shared across heads.
    """

    def __init__(self, in_features: int, out_features: int, num_heads: int, bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        self.num_heads = num_heads
        self.head_size = out_features // (3 * num_heads)
        self.q_norm = nn.LayerNorm(self.head_size, eps=1e-5)
        self.k_norm = nn.LayerNorm(self.head_size, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = super().forward(x)
        heads = qkv.view(*qkv.shape[:-1], self.num_heads, 3, self.head_size)  # (B, T, nh, 3, hs)
        q = self.q_norm(heads[..., 0, :])
        k = self.k_norm(heads[..., 1, :])
        return torch.stack((q, k, heads[..., 2, :]), dim=-2).view_as(qkv)


def apply_qk_layernorm(model: nn.Module) -> None:
    """Replace every layer's QKV projection by a QKNormLinear carrying the same weights."""
    for layer in model.gpt_neox.layers:
        old = layer.attention.query_key_value
        new = QKNormLinear(
            old.in_features,
            old.out_features,
            model.config.num_attention_heads,
            bias=old.bias is not None,
        ).to(device=old.weight.device, dtype=old.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(old.weight)
            if old.bias is not None:
                new.bias.copy_(old.bias)
        layer.attention.query_key_value = new


GPT_NEOX_INIT_STD = 0.02  # GPT-NeoX v1.0's init_method_std default


def init_std(
    name: str, hidden_size: int, num_layers: int, method: str = "small_init"
) -> float | None:
    """Pythia's init std for a parameter, or None for biases/LayerNorms (zeros/ones).

    ``small_init`` (Pythia 14m-2.8b; Nguyen & Salazar 2019): std = sqrt(2 / (5 d))
    everywhere, except the attention output and MLP output projections: wang_init std =
    2 / (L sqrt(d)). ``normal`` (6.9b and 12b name no method, so GPT-NeoX's defaults
    apply): std 0.02, and scaled_normal 0.02 / sqrt(2 L) for those output projections.
    """
    if not name.endswith("weight") or _is_norm(name):
        return None
    output = name.endswith("attention.dense.weight") or name.endswith("mlp.dense_4h_to_h.weight")
    if method == "normal":
        return GPT_NEOX_INIT_STD / math.sqrt(2.0 * num_layers) if output else GPT_NEOX_INIT_STD
    if output:
        return 2.0 / (num_layers * math.sqrt(hidden_size))
    return math.sqrt(2.0 / (5.0 * hidden_size))


def _is_norm(name: str) -> bool:
    return "layernorm" in name or "final_layer_norm" in name or "_norm." in name


@torch.no_grad()
def pythia_init_(model: nn.Module, seed: int, method: str = "small_init") -> None:
    """Initialise in place from ``seed`` alone, in parameter-name order (data order plays no part)."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    hidden, layers = model.config.hidden_size, model.config.num_hidden_layers
    for name, param in model.named_parameters():
        std = init_std(name, hidden, layers, method)
        if std is None:
            param.fill_(1.0 if name.endswith("weight") else 0.0)
        else:
            values = torch.empty(param.shape, dtype=torch.float32).normal_(0.0, std, generator=gen)
            param.copy_(values)


def build_model(model: ModelConfig, weight_seed: int) -> nn.Module:
    """A freshly initialised GPTNeoXForCausalLM (fp32, CPU) for a run's `model` block."""
    from transformers import GPTNeoXForCausalLM

    net = GPTNeoXForCausalLM(hf_config(model))
    if model.qk_layernorm:
        apply_qk_layernorm(net)
    pythia_init_(net, weight_seed, model.init_method)
    return net


def load_model(path: str | Path) -> nn.Module:
    """Load a checkpoint directory written by the trainer, QK-LayerNorm included."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig.from_pretrained(path)
    if not getattr(config, QK_NORM_FLAG, False):
        return GPTNeoXForCausalLM.from_pretrained(path, dtype=torch.float32)
    config._attn_implementation = "sdpa"
    net = GPTNeoXForCausalLM(config)
    apply_qk_layernorm(net)
    load_weights(net, path)
    return net


# Checkpoint names transformers writes (the GPT-NeoX release's) -> this version's modules.
_SAVED_NAMES = {"embed_out.weight": "lm_head.weight"}


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load the safetensors weights of a checkpoint folder into ``model`` exactly (strict)."""
    from safetensors.torch import load_file

    own = set(model.state_dict())
    state = {}
    for file in sorted(Path(path).glob("*.safetensors")):
        for key, value in load_file(str(file)).items():
            state[key if key in own else _SAVED_NAMES.get(key, key)] = value
    model.load_state_dict(state, strict=True)


def lm_loss(
    logits: torch.Tensor, targets: torch.Tensor, z_loss: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Next-token cross-entropy (+ z_loss * mean(logZ^2)) from one log-normaliser pass.

    Returns (objective, cross-entropy, mean logZ); logZ = logsumexp over the vocabulary
    is the quantity z-loss penalises and the telemetry reports as `logit_lognorm`.
    """
    logits = logits.float()
    log_z = torch.logsumexp(logits, dim=-1)  # (B, T)
    target_logit = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T)
    ce = (log_z - target_logit).mean()
    objective = ce + z_loss * log_z.square().mean() if z_loss > 0 else ce
    return objective, ce.detach(), log_z.detach().mean()


def reference_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Plain F.cross_entropy, for checking lm_loss and for the plain-loop benchmark."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
