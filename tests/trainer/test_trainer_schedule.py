"""Pythia's LR schedule is GPT-NeoX v1.0's AnnealingLR (megatron/learning_rates.py), exactly.

Expected values are worked out by hand from AnnealingLR's formula with Pythia-410m's numbers
(FIDELITY.md: peak 3e-4, min 3e-5, warmup 0.01 x 143000 = 1430.0, cosine over 143000).
"""

from __future__ import annotations

import math

import pytest
import torch

from polypythia_trainer.config import Perturbation
from polypythia_trainer.schedule import pythia_lr, pythia_scheduler

PYTHIA_410M = {"peak": 3e-4, "minimum": 3e-5, "warmup_steps": 1430.0, "total_steps": 143_000}


def test_first_update_uses_rate_zero_and_warmup_is_linear_over_1430_steps() -> None:
    assert pythia_lr(0, **PYTHIA_410M) == 0.0  # Pythia's step1 equals step0
    assert pythia_lr(1, **PYTHIA_410M) == pytest.approx(3e-4 / 1430, rel=1e-15)
    assert pythia_lr(715, **PYTHIA_410M) == pytest.approx(1.5e-4, rel=1e-15)
    assert pythia_lr(1430, **PYTHIA_410M) == pytest.approx(3e-4, rel=1e-15)


def test_warmup_fraction_is_not_rounded() -> None:
    """0.01 x 1250 steps = 12.5 warm-up iterations: step 12 is still warming up."""
    kw = {"peak": 1e-3, "minimum": 1e-4, "warmup_steps": 12.5, "total_steps": 1250}
    assert pythia_lr(12, **kw) == pytest.approx(1e-3 * 12 / 12.5, rel=1e-15)
    assert pythia_lr(10, **kw) == pytest.approx(8e-4, rel=1e-15)


def test_cosine_values_by_hand() -> None:
    # n = 1430 + 35750 (T/4): 1.5e-4 x (cos(pi/4) + 1)
    assert pythia_lr(37_180, **PYTHIA_410M) == pytest.approx(1.5e-4 * (1 + 0.5**0.5), rel=1e-12)
    # n = 1430 + 71500 (T/2): the cosine's zero, half the peak (not (peak + min) / 2)
    assert pythia_lr(72_930, **PYTHIA_410M) == pytest.approx(1.5e-4, rel=1e-12)
    # n = 100000: m = 98570, pi m / T = 2.16551 rad, cos = -0.56027: 1.5e-4 x 0.43973
    assert pythia_lr(100_000, **PYTHIA_410M) == pytest.approx(6.596e-5, rel=1e-3)


def test_floor_at_min_lr_from_about_step_115140_to_the_end() -> None:
    # cos(pi m / T) = -0.8 at m = acos(-0.8) / pi x T = 0.795167 T = 113708.9, n = 115138.9
    assert pythia_lr(115_138, **PYTHIA_410M) > 3e-5
    for n in (115_139, 120_000, 141_570, 142_999, 143_000, 200_000):
        assert pythia_lr(n, **PYTHIA_410M) == 3e-5


def test_step_is_capped_at_t_minus_w_as_gpt_neox_does() -> None:
    """Without the floor the rate stops falling at n = T - W (m = T - 2W)."""
    kw = {**PYTHIA_410M, "minimum": 0.0}
    tail = 1.5e-4 * (math.cos(math.pi * (143_000 - 2 * 1430) / 143_000) + 1)
    assert pythia_lr(141_570, **kw) == pytest.approx(tail, rel=1e-12)
    assert pythia_lr(143_000, **kw) == pythia_lr(141_570, **kw)


def test_telemetry_lr_of_step_s_is_the_rate_after_s_minus_1_scheduler_steps() -> None:
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    kw = {"peak": 1e-3, "minimum": 1e-4, "warmup_steps": 2.5, "total_steps": 250}
    sched = pythia_scheduler(opt, **kw)
    seen = {}
    for step in range(1, 251):  # the update producing step `step`
        seen[step] = sched.get_last_lr()[0]
        assert opt.param_groups[0]["lr"] == seen[step]
        opt.step()
        sched.step()
    assert seen[1] == 0.0
    assert seen[2] == 1e-3 * 1 / 2.5
    assert all(seen[s] == pythia_lr(s - 1, **kw) for s in seen)  # bit for bit


def test_a_scheduler_saves_its_position_and_takes_its_settings_from_the_run_config() -> None:
    """A checkpoint written before (torch's whole scheduler state, settings included)
    still loads: only the position is read, the rates follow the new settings."""
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    old_kw = {"peak": 1e-3, "minimum": 1e-4, "warmup_steps": 2.0, "total_steps": 20}
    old = pythia_scheduler(opt, **old_kw)
    for _ in range(7):
        opt.step()
        old.step()
    legacy = torch.optim.lr_scheduler.LRScheduler.state_dict(old)
    assert legacy["peak"] == 1e-3 and legacy["last_epoch"] == 7
    assert old.state_dict() == {"last_epoch": 7}

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    new_kw = {"peak": 4e-3, "minimum": 2e-4, "warmup_steps": 3.0, "total_steps": 40}
    shocked = [Perturbation(step=8, learning_rate_factor=3.0, steps=2)]
    new = pythia_scheduler(opt, **new_kw, perturbations=shocked)
    for state in (legacy, old.state_dict()):
        new.load_state_dict(state)
        assert new.last_epoch == 7
        assert new.get_last_lr() == [pythia_lr(7, **new_kw) * 3.0]  # the update producing step 8
        assert opt.param_groups[0]["lr"] == new.get_last_lr()[0]
    opt.step()
    new.step()
    assert new.get_last_lr() == [pythia_lr(8, **new_kw) * 3.0] == [opt.param_groups[0]["lr"]]
