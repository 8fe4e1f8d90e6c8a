"""Synthetic training histories with planted spikes, for tests and the benchmark.

Loss follows a power-law decay towards an irreducible level with Gaussian noise
that shrinks as training settles; the gradient norm starts high, falls, then
drifts slowly upwards late in training (as it does in real runs). A planted spike
lifts both: the gradient norm a few steps before the loss (BLOOM), then both decay
back over tens of steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PlantedSpike:
    """A spike put into a synthetic history: loss onset step and height (in loss units)."""

    step: int
    height: float
    decay_steps: float


@dataclass(frozen=True)
class History:
    """One run's per-step arrays and the spikes planted in it."""

    steps: np.ndarray
    loss: np.ndarray
    grad_norm: np.ndarray
    planted: tuple[PlantedSpike, ...]


def make_history(
    steps: int,
    seed: int,
    spikes: int = 3,
    first_spike: int = 2_000,
    lead: int = 3,
    data_spike_steps: tuple[int, ...] = (),
    heights: tuple[float, float] = (0.3, 1.5),
) -> History:
    """A realistic loss/grad-norm history of ``steps`` steps with ``spikes`` planted spikes.

    ``data_spike_steps`` adds spikes at fixed steps (the same in every run that
    shares them), as a bad batch in a shared data order would. Spike heights are
    drawn uniformly from ``heights`` (loss units; the late-training noise sd is about 0.02).
    """
    rng = np.random.default_rng(seed)
    t = np.arange(1, steps + 1, dtype=float)
    loss = 2.0 + 9.0 * (1.0 + t / 40.0) ** -0.55
    loss += rng.normal(0.0, 1.0, steps) * (0.02 + 0.15 * (1.0 + t / 100.0) ** -1.0)
    log_gn = np.log(0.3) + 1.5 * (1.0 + t / 50.0) ** -1.0 + 0.25 * t / max(steps, 1)
    log_gn += rng.normal(0.0, 0.08, steps)
    chosen: list[int] = []
    if spikes and steps > first_spike + 1_000:
        # a grid keeps spikes apart; the jitter keeps other runs' spikes off the same steps
        grid = np.arange(first_spike, steps - 1_000, 1_500)
        picked = rng.choice(grid, size=min(spikes, len(grid)), replace=False)
        chosen = sorted(int(p) + int(rng.integers(0, 500)) for p in picked)
    planted: list[PlantedSpike] = []
    for onset in [*chosen, *data_spike_steps]:
        height = float(rng.uniform(*heights))
        decay = float(rng.uniform(10.0, 60.0))
        after = np.arange(steps - onset)
        loss[onset:] += height * np.exp(-after / decay)
        gn_on = max(onset - lead, 0)
        after_gn = np.arange(steps - gn_on)
        log_gn[gn_on:] += (1.0 + height) * np.exp(-after_gn / (decay / 3.0))
        planted.append(PlantedSpike(int(t[onset]), height, decay))
    planted.sort(key=lambda p: p.step)
    return History(t.astype(np.int64), loss, np.exp(log_gn), tuple(planted))
