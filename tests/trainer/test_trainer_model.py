"""Pythia initialisation, the training loss, z-loss and QK-LayerNorm."""

from __future__ import annotations

import math

import pytest
import torch
from trainer_helpers import NANO_MODEL
from transformers import GPTNeoXForCausalLM

from polypythia_trainer.config import ModelConfig
from polypythia_trainer.model import build_model, lm_loss, load_model, reference_loss

WIDE = {**NANO_MODEL, "hiddenSize": 256, "numHeads": 4, "intermediateSize": 1024, "numLayers": 4}


def test_init_std_follows_pythia_formulas() -> None:
    model = build_model(ModelConfig.from_dict(WIDE), weight_seed=3)
    d, layers = 256, 4
    small, wang = math.sqrt(2 / (5 * d)), 2 / (layers * math.sqrt(d))
    params = dict(model.named_parameters())
    for name, p in params.items():
        if name.endswith("attention.dense.weight") or name.endswith("dense_4h_to_h.weight"):
            assert p.std().item() == pytest.approx(wang, rel=0.03), name
        elif name.endswith("bias"):
            assert torch.count_nonzero(p) == 0, name
        elif "layernorm" in name or "final_layer_norm" in name:
            assert torch.all(p == 1), name
        else:
            assert p.std().item() == pytest.approx(small, rel=0.03), name
            assert abs(p.mean().item()) < 0.01, name
    assert "gpt_neox.embed_in.weight" in params and "lm_head.weight" in params


def test_init_depends_on_weight_seed_only() -> None:
    cfg = ModelConfig.from_dict(NANO_MODEL)
    torch.manual_seed(123)
    a = build_model(cfg, weight_seed=1).state_dict()
    torch.manual_seed(999)  # the global RNG (data order, dropout) plays no part
    b = build_model(cfg, weight_seed=1).state_dict()
    c = build_model(cfg, weight_seed=2).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["gpt_neox.embed_in.weight"], c["gpt_neox.embed_in.weight"])


def test_loss_is_cross_entropy_and_z_loss_adds_logz_squared() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=gen) * 3
    targets = torch.randint(0, 11, (2, 5), generator=gen)
    objective, ce, log_z = lm_loss(logits, targets)
    assert ce.item() == pytest.approx(reference_loss(logits, targets).item(), rel=1e-6)
    assert objective.item() == pytest.approx(ce.item(), rel=1e-6)
    assert log_z.item() == pytest.approx(torch.logsumexp(logits, -1).mean().item(), rel=1e-6)
    with_z, ce_z, _ = lm_loss(logits, targets, z_loss=1e-2)
    expected = ce.item() + 1e-2 * torch.logsumexp(logits, -1).square().mean().item()
    assert with_z.item() == pytest.approx(expected, rel=1e-6)
    assert ce_z.item() == pytest.approx(ce.item(), rel=1e-6)


def test_plain_checkpoint_loads_into_stock_gpt_neox(tmp_path) -> None:
    model = build_model(ModelConfig.from_dict(NANO_MODEL), weight_seed=0).eval()
    model.save_pretrained(tmp_path)
    stock = GPTNeoXForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    ids = torch.arange(12).view(1, 12)
    assert torch.equal(model(ids).logits, stock(ids).logits)


def test_qk_layernorm_normalises_q_and_k_and_round_trips(tmp_path) -> None:
    cfg = ModelConfig.from_dict({**NANO_MODEL, "qkLayerNorm": True})
    model = build_model(cfg, weight_seed=0).eval()
    qkv = model.gpt_neox.layers[0].attention.query_key_value
    with torch.no_grad():
        qkv.q_norm.weight.fill_(2.0)  # make the norm visible in the output
        out = qkv(torch.randn(1, 3, 64)).view(1, 3, 4, 3, 16)
    q, k = out[..., 0, :], out[..., 1, :]
    assert torch.allclose(q.std(-1, unbiased=False), torch.full((1, 3, 4), 2.0), atol=1e-3)
    assert torch.allclose(k.mean(-1), torch.zeros(1, 3, 4), atol=1e-5)
    model.save_pretrained(tmp_path)
    again = load_model(tmp_path).eval()
    ids = torch.arange(10).view(1, 10)
    assert torch.equal(model(ids).logits, again(ids).logits)
    plain = build_model(ModelConfig.from_dict(NANO_MODEL), weight_seed=0).eval()
    assert not torch.equal(model(ids).logits, plain(ids).logits)
