"""Mixed precision in the DDP engine, exercised on CPU: bf16 autocast tracks fp32, and
fp16's dynamic loss scaling skips an overflowing step and halves the scale (DeepSpeed's
rule with Pythia's hysteresis 2), then trains on. The GPU throughput of these modes is bench/gpu_throughput.py's job."""

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


def _overflow(engine: DDPEngine, batch: torch.Tensor):
    inputs, targets = batch[:, :-1], batch[:, 1:]
    engine.micro_step(inputs, lambda lg: (lm_loss(lg, targets)[0] * math.inf, 0, 0), 1, True)
    return engine.step()


def test_fp16_overflow_skips_the_step_and_halves_the_scale_after_hysteresis_2():
    """Pythia's fp16: initial scale 2^12; hysteresis 2 = the second overflow halves it."""
    engine = _engine("fp16")
    batches = _batches(4)
    _train(engine, batches[:2])
    assert engine.scaler.get_scale() == 2.0**12
    before = [p.detach().clone() for p in engine.params]

    result = _overflow(engine, batches[2])
    assert not result.applied and result.loss_scale == 2.0**12
    assert engine.scaler.get_scale() == 2.0**12  # first overflow spends the hysteresis
    assert all(torch.equal(a, p) for a, p in zip(before, engine.params, strict=True))
    assert not _overflow(engine, batches[2]).applied
    assert engine.scaler.get_scale() == 2.0**11
    losses = _train(engine, batches[3:])
    assert math.isfinite(losses[0])
    assert any(not torch.equal(a, p) for a, p in zip(before, engine.params, strict=True))


def test_loss_scale_follows_deepspeeds_rule():
    """Window 1000 clean steps after an overflow doubles; the floor is min_loss_scale 1."""
    from polypythia_trainer.parallel import DynamicLossScaler

    s = DynamicLossScaler(initial_scale_power=2, loss_scale_window=3, hysteresis=1)
    for _ in range(5):
        s.update(overflow=True)
    assert s.get_scale() == 1.0  # 4 -> 2 -> 1 -> 1 -> 1
    scales = []
    for _ in range(7):
        s.update(overflow=False)
        scales.append(s.get_scale())
    # cur_iter 5..11 after the overflow at 4: stable 0,1,2,3 -> double at 3 and at 6
    assert scales == [1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 4.0]
