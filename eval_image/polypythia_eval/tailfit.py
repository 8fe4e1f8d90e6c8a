"""The one Student-t tail fitter: weight statistics, the report and the init samplers use it.

One tensor at a time (a tensor standardised by its own location and scale: pooling
tensors of different scales makes a scale mixture, which looks heavy-tailed even when
every tensor is Gaussian). Maximum likelihood in (eta = 1/nu, loc, scale), so the Gaussian
(eta = 0, nu infinite) is an ordinary point of the parameter space, and a 95% profile
likelihood interval for nu: the etas whose profile log-likelihood lies within
chi2(1, 0.95) / 2 = 1.92 of the maximum. When the interval reaches eta = 0, nu is
unbounded above and the tensor is called ``gaussian`` ("Gaussian within the interval");
otherwise ``heavy``. At the boundary the likelihood-ratio test is conservative (its null
distribution is a 50:50 mixture of 0 and chi2(1)): a Gaussian tensor is called heavy about
2.5% of the time, not 5%.

Pure numpy/scipy: used by the trainer (init samplers) and the evaluator alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special

# nu below this is not a weight distribution anyone trains; it bounds the search.
NU_MIN = 0.5
ETA_MAX = 1.0 / NU_MIN
PROFILE_DROP = 1.920729410347062  # chi2(1).ppf(0.95) / 2
DEFAULT_SAMPLE = 20_000


@dataclass(frozen=True)
class TailFit:
    """A Student-t fit: nu (``inf`` = Gaussian) with its 95% interval, loc and scale.

    ``tail`` is ``gaussian`` when the interval is unbounded above, else ``heavy``;
    ``sample`` is how many entries the fit saw (a seeded subsample of large tensors).
    """

    nu: float
    nu_low: float
    nu_high: float
    loc: float
    scale: float
    sample: int
    tail: str

    def to_dict(self) -> dict[str, object]:
        """JSON-safe (an infinite nu is ``None``: unbounded)."""

        def finite(v: float) -> float | None:
            return float(v) if math.isfinite(v) else None

        return {
            "nu": finite(self.nu),
            "nuLow": finite(self.nu_low),
            "nuHigh": finite(self.nu_high),
            "tail": self.tail,
            "loc": self.loc,
            "scale": self.scale,
            "fitSample": self.sample,
        }


def _loglik(eta: float, loc: float, scale: float, x: np.ndarray) -> float:
    """Mean log-likelihood of Student-t with nu = 1/eta (Gaussian at eta = 0)."""
    z2 = ((x - loc) / scale) ** 2
    if eta == 0:
        return float(-0.5 * math.log(2 * math.pi) - math.log(scale) - 0.5 * z2.mean())
    nu = 1.0 / eta
    return float(
        special.gammaln((nu + 1) / 2)
        - special.gammaln(nu / 2)
        - 0.5 * math.log(nu * math.pi)
        - math.log(scale)
        - (nu + 1) / 2 * np.log1p(z2 / nu).mean()
    )


def _profile(eta: float, x: np.ndarray, start: tuple[float, float]) -> tuple[float, float, float]:
    """(mean log-likelihood, loc, scale) maximised over loc and scale at fixed eta (EM)."""
    loc, scale = start
    if eta == 0:
        loc, scale = float(x.mean()), float(x.std())
        return _loglik(0.0, loc, scale, x), loc, scale
    nu = 1.0 / eta
    for _ in range(500):
        w = (nu + 1) / (nu + ((x - loc) / scale) ** 2)
        new_loc = float((w * x).sum() / w.sum())
        new_scale = float(math.sqrt((w * (x - new_loc) ** 2).mean()))
        done = abs(new_loc - loc) <= 1e-9 * new_scale and abs(new_scale - scale) <= 1e-9 * new_scale
        loc, scale = new_loc, new_scale
        if done:
            break
    return _loglik(eta, loc, scale, x), loc, scale


def fit_tail(values: np.ndarray, *, sample: int = DEFAULT_SAMPLE, seed: int = 0) -> TailFit:
    """Student-t fit of one tensor's entries with a 95% profile-likelihood interval for nu.

    Raises ValueError for fewer than 8 finite values or a constant tensor (nothing to fit).
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size > sample:
        x = x[np.random.default_rng(seed).choice(x.size, sample, replace=False)]
    if x.size < 8:
        raise ValueError(f"a tail fit needs at least 8 finite values, got {x.size}")
    med = float(np.median(x))
    mad = 1.4826 * float(np.median(np.abs(x - med)))
    spread = mad if mad > 0 else float(x.std())
    if not spread > 0:
        raise ValueError("a tail fit needs values that are not all equal")
    start = (med, spread)
    n = x.size

    def total(eta: float) -> float:
        return n * _profile(eta, x, start)[0]

    gaussian = total(0.0)
    found = optimize.minimize_scalar(
        lambda e: -total(e), bounds=(1e-6, ETA_MAX), method="bounded", options={"xatol": 1e-5}
    )
    eta_hat, best = (float(found.x), -float(found.fun))
    if gaussian >= best:
        eta_hat, best = 0.0, gaussian
    cutoff = best - PROFILE_DROP

    def excess(eta: float) -> float:
        return total(eta) - cutoff

    eta_low = 0.0 if gaussian >= cutoff else optimize.brentq(excess, 0.0, eta_hat, xtol=1e-7)
    top = total(ETA_MAX)
    eta_high = ETA_MAX if top >= cutoff else optimize.brentq(excess, eta_hat, ETA_MAX, xtol=1e-7)
    _, loc, scale = _profile(eta_hat, x, start)
    inv = lambda e: math.inf if e == 0 else 1.0 / e  # noqa: E731
    return TailFit(
        nu=inv(eta_hat),
        nu_low=inv(eta_high),
        nu_high=inv(eta_low),
        loc=loc,
        scale=scale,
        sample=int(n),
        tail="gaussian" if eta_low == 0.0 else "heavy",
    )
