"""Pythia's learning-rate schedule: linear warm-up, then cosine decay to the minimum."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch


def pythia_lr(
    step: int, *, peak: float, minimum: float, warmup_steps: int, total_steps: int
) -> float:
    """LR for the optimiser update that takes the model from ``step`` to ``step + 1``.

    Warm-up rises linearly to ``peak`` over ``warmup_steps`` (GPT-NeoX's
    ``lr * step / warmup``, starting at step 1 so the first update is not wasted);
    afterwards cosine decay reaches ``minimum`` at ``total_steps`` and stays there.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / decay_steps, 1.0)
    return minimum + 0.5 * (peak - minimum) * (1.0 + math.cos(math.pi * progress))


def shock(step: int, perturbations: Sequence[Mapping]) -> float:
    """The learning-rate factor the perturbations apply to the update producing ``step``."""
    factor = 1.0
    for p in perturbations:
        if p["step"] <= step < p["step"] + p.get("steps", 1):
            factor *= p["learningRateFactor"]
    return factor


def pythia_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    peak: float,
    minimum: float,
    warmup_steps: int,
    total_steps: int,
    perturbations: Sequence[Mapping] = (),
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR over ``pythia_lr``; the optimiser's initial lr must be ``peak``.

    ``perturbations`` (the sweep's ``training.perturbations``) multiply the rate by
    ``learningRateFactor`` for the updates that produce steps ``step`` to
    ``step + steps - 1``: a deliberate shock for studying spike recovery.
    """
    for group in optimizer.param_groups:
        group["lr"] = peak
        group["initial_lr"] = peak

    def factor(step: int) -> float:
        if peak == 0:
            return 0.0
        lr = pythia_lr(
            step, peak=peak, minimum=minimum, warmup_steps=warmup_steps, total_steps=total_steps
        )
        return lr / peak * shock(step + 1, perturbations)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
