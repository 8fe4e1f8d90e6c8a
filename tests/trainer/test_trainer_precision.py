"""Mixed precision in the DDP engine, exercised on CPU: bf16 autocast tracks fp32, and
fp16's dynamic loss scaling skips an overflowing step and halves the scale (GradScaler's
rule), then trains on. The GPU throughput of these modes is bench/gpu_throughput.py's job."""

from __future__ import annotations

import math

import pytest
import torch
from trainer_helpers import NANO_MODEL, nano_config

from polypythia_trainer.config import ModelConfig, TrainingConfig
from polypythia_trainer.model import build_model, lm_loss
from polypythia_trainer.parallel import DDPEngine

CPU = torch.device("cpu")


def _engine(precision: str) -> DDPEngine:
    cfg = nano_config("/tmp/unused")
    model = build_model(ModelConfig.from_dict(NANO_MODEL), weight_seed=0)
    return DDPEngine(model, TrainingConfig.from_dict(cfg["training"]), precision, CPU)


def _batches(n: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(0, NANO_MODEL["vocabSize"], (4, 33), generator=gen) for _ in range(n)]


def _train(engine: DDPEngine, batches: list[torch.Tensor]) -> list[float]:
    losses = []
    for batch in batches:
        inputs, targets = batch[:, :-1], batch[:, 1:]
        ce, _ = engine.micro_step(inputs, lambda lg, t=targets: lm_loss(lg, t), 1, True)
        losses.append(float(ce))
        engine.step()
    return losses


def test_bf16_autocast_tracks_fp32_losses():
    batches = _batches(1) * 8  # one batch again and again: the loss must fall
    fp32 = _train(_engine("fp32"), batches)
    bf16 = _train(_engine("bf16"), batches)
    assert fp32 != bf16  # it really ran in another precision
    for a, b in zip(fp32, bf16, strict=True):
        assert b == pytest.approx(a, rel=0.03)
    assert bf16[-1] < bf16[0] - 0.5 and fp32[-1] < fp32[0] - 0.5


def test_fp16_loss_scaling_skips_an_overflow_and_halves_the_scale():
    engine = _engine("fp16")
    batches = _batches(4)
    _train(engine, batches[:2])
    scale = float(engine.scaler.get_scale())
    before = [p.detach().clone() for p in engine.params]

    inputs, targets = batches[2][:, :-1], batches[2][:, 1:]
    engine.micro_step(inputs, lambda lg: (lm_loss(lg, targets)[0] * math.inf, 0, 0), 1, True)
    result = engine.step()

    assert not result.applied and result.loss_scale == scale
    assert float(engine.scaler.get_scale()) == scale / 2
    assert all(torch.equal(a, p) for a, p in zip(before, engine.params, strict=True))
    losses = _train(engine, batches[3:])
    assert math.isfinite(losses[0])
    assert any(not torch.equal(a, p) for a, p in zip(before, engine.params, strict=True))
