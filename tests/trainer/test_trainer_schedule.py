"""Pythia's LR schedule: linear warm-up, cosine decay to the minimum."""

from __future__ import annotations

import pytest
import torch

from polypythia_trainer.schedule import pythia_lr, pythia_scheduler

KW = {"peak": 1e-3, "minimum": 1e-4, "warmup_steps": 10, "total_steps": 110}


def test_warmup_is_linear_and_reaches_peak() -> None:
    lrs = [pythia_lr(s, **KW) for s in range(10)]
    assert lrs[0] == pytest.approx(1e-4)
    assert lrs[-1] == pytest.approx(1e-3)
    steps = [b - a for a, b in zip(lrs, lrs[1:])]
    assert all(d == pytest.approx(1e-4) for d in steps)


def test_cosine_decays_to_minimum_and_stays() -> None:
    decay = [pythia_lr(s, **KW) for s in range(10, 111)]
    assert decay[0] == pytest.approx(1e-3)
    assert all(b <= a for a, b in zip(decay, decay[1:]))
    assert pythia_lr(60, **KW) == pytest.approx((1e-3 + 1e-4) / 2)  # half way: the mean
    assert pythia_lr(110, **KW) == pytest.approx(1e-4)
    assert pythia_lr(500, **KW) == pytest.approx(1e-4)


def test_lambda_scheduler_follows_the_pure_function() -> None:
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    sched = pythia_scheduler(opt, **KW)
    seen = []
    for _ in range(110):
        seen.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert seen == pytest.approx([pythia_lr(s, **KW) for s in range(110)], rel=1e-12)
