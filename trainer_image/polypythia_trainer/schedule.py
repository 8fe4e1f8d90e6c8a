"""Pythia's learning-rate schedule: GPT-NeoX v1.0's ``AnnealingLR`` (cosine), exactly.

Source: EleutherAI/gpt-neox v1.0, ``megatron/learning_rates.py``. The scheduler is stepped
once per applied optimiser update (DeepSpeed skips it when an fp16 overflow skips the
update), so the update producing checkpoint step ``s`` uses the rate after ``s - 1`` steps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from polypythia_trainer.config import Perturbation


def pythia_lr(
    step: int, *, peak: float, minimum: float, warmup_steps: float, total_steps: int
) -> float:
    """AnnealingLR's rate after ``step`` scheduler steps (the rate of the next update).

    ``warmup_steps`` is GPT-NeoX's ``warmup_iter`` = warm-up fraction x decay iterations,
    kept as a float (Pythia: 0.01 x 143000 = 1430.0). Warm-up is ``peak x n / W`` with no
    floor, so the first update uses rate 0; then ``peak / 2 x (cos(pi x m / T) + 1)``
    with ``m = min(n, T - W) - W``, floored at ``minimum``.
    """
    capped = min(step, total_steps - warmup_steps)
    if warmup_steps > 0 and step <= warmup_steps:
        return float(peak) * capped / warmup_steps
    progress = capped - warmup_steps
    rate = peak / 2.0 * (math.cos(math.pi * progress / total_steps) + 1)
    return max(rate, minimum)


def shock(step: int, perturbations: Sequence[Mapping]) -> float:
    """The learning-rate factor the perturbations apply to the update producing ``step``.

    ``perturbations`` in the run config's spelling (``Perturbation.as_dict``)."""
    factor = 1.0
    for p in perturbations:
        if p["step"] <= step < p["step"] + p.get("steps", 1):
            factor *= p["learningRateFactor"]
    return factor


class AnnealingLR(torch.optim.lr_scheduler.LRScheduler):
    """GPT-NeoX's AnnealingLR as a torch scheduler: sets the rate itself, not a factor of
    the peak, so the optimiser's rate equals :func:`pythia_lr` to the last bit."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        peak: float,
        minimum: float,
        warmup_steps: float,
        total_steps: int,
        perturbations: Sequence[Mapping] = (),
    ) -> None:
        self.peak = peak
        self.minimum = minimum
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.perturbations = [dict(p) for p in perturbations]
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        n = self.last_epoch
        rate = pythia_lr(
            n,
            peak=self.peak,
            minimum=self.minimum,
            warmup_steps=self.warmup_steps,
            total_steps=self.total_steps,
        )
        rate *= shock(n + 1, self.perturbations)
        return [rate for _ in self.optimizer.param_groups]

    def seek(self, steps: int) -> None:
        """Stand where this schedule stands after ``steps`` applied updates, rates set."""
        self.last_epoch = int(steps)
        rates = self.get_lr()
        for group, rate in zip(self.optimizer.param_groups, rates, strict=True):
            group["lr"] = rate
        self._last_lr = list(rates)

    def state_dict(self) -> dict:
        """Only the position: peak, floor, warm-up, length and perturbations come from the
        run config at every start, so a resume after accepted changes runs the new ones."""
        return {"last_epoch": self.last_epoch}

    def load_state_dict(self, state_dict: Mapping) -> None:
        """Take the position of a saved schedule; checkpoints written before this held
        torch's whole scheduler state (the old settings too), which is not read."""
        self.seek(state_dict["last_epoch"])


def pythia_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    peak: float,
    minimum: float,
    warmup_steps: float,
    total_steps: int,
    perturbations: Sequence[Perturbation] = (),
) -> AnnealingLR:
    """The run's scheduler: stepped once per applied update (not on skipped fp16 steps).

    ``perturbations`` (the sweep's ``training.perturbations``) multiply the rate by
    ``learningRateFactor`` for the updates that produce steps ``step`` to
    ``step + steps - 1``: a deliberate shock for studying spike recovery.
    """
    for group in optimizer.param_groups:
        group["lr"] = peak
        group["initial_lr"] = peak
    return AnnealingLR(
        optimizer,
        peak=peak,
        minimum=minimum,
        warmup_steps=warmup_steps,
        total_steps=total_steps,
        perturbations=[p.as_dict() for p in perturbations],
    )
