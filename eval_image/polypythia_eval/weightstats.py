"""Weight-distribution statistics of one checkpoint: per tensor and pooled by kind.

Pure: takes a name -> tensor mapping, returns plain JSON-ready dicts. The matrix
metrics follow Hu et al. 2023 ("Latent state models of training dynamics"): L1 and
L2 (Frobenius) norms and their ratio, mean and variance of the entries, spectral
norm, trace, trace/spectral ratio, mean and variance of the singular values. The
trace is the trace of W itself (sum of the main diagonal, min(m, n) terms); the
trace of W^T W would only repeat the squared Frobenius norm. Distribution fits
(Gaussian, logistic, Student-t) run per tensor on a seeded uniform subsample and report
the Kolmogorov-Smirnov statistic of each fit on that sample; the Student-t is the one
fitter of ``tailfit`` (nu with a 95% profile-likelihood interval). Kinds are summarised
by the spread of their tensors' nu, never by a fit to pooled entries: tensors of different
scales pooled together look heavy-tailed even when each is Gaussian.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy import stats

from polypythia_eval.tailfit import fit_tail

KINDS = (
    "embedding",
    "attn_qkv",
    "attn_out",
    "mlp_in",
    "mlp_out",
    "layernorm_gain",
    "layernorm_bias",
    "unembedding",
    "bias",
    "other",
)

# GPT-NeoX parameter names (transformers' GPTNeoXForCausalLM), plus common aliases.
_KIND_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"(norm|\bln_\w*)\.weight$", "layernorm_gain"),
    (r"(norm|\bln_\w*)\.bias$", "layernorm_bias"),
    (r"(embed_in|wte|embed_tokens)\.weight$", "embedding"),
    (r"(embed_out|lm_head)\.weight$", "unembedding"),
    (r"\.bias$", "bias"),
    (r"(query_key_value|c_attn|q_proj|k_proj|v_proj)\.weight$", "attn_qkv"),
    (r"attention\.dense\.weight$|(attn\.c_proj|o_proj)\.weight$", "attn_out"),
    (r"(dense_h_to_4h|c_fc|up_proj|gate_proj)\.weight$", "mlp_in"),
    (r"(dense_4h_to_h|mlp\.c_proj|down_proj)\.weight$", "mlp_out"),
)

FAMILIES = ("gaussian", "logistic", "student_t")
_FAMILY_DISTS = {"gaussian": stats.norm, "logistic": stats.logistic, "student_t": stats.t}


@dataclass(frozen=True)
class StatsConfig:
    """How much work the statistics may do; recorded in the output's ``method``.

    exact_svd_max_cost: largest m * n * min(m, n) for which all singular values are
        computed exactly (eigenvalues of the float64 Gram matrix); above it only the
        spectral norm is estimated (randomised SVD) and singular-value moments are null.
    fit_sample_size: entries drawn (without replacement, seeded) for each fit.
    """

    exact_svd_max_cost: float = 2e11
    lowrank_q: int = 8
    lowrank_niter: int = 6
    fit_sample_size: int = 20_000
    fit: bool = True
    seed: int = 0


def tensor_kind(name: str) -> str:
    """The kind of a parameter, from its name (``gpt_neox.layers.0.mlp.dense_4h_to_h.weight``)."""
    for pattern, kind in _KIND_PATTERNS:
        if re.search(pattern, name):
            return kind
    return "other"


def _moments(x: np.ndarray) -> np.ndarray:
    """Power sums n, S1..S4 and the L1 sum, in float64: they pool exactly across tensors."""
    x = x.astype(np.float64, copy=False)
    x2 = x * x
    return np.array([x.size, x.sum(), x2.sum(), (x2 * x).sum(), (x2 * x2).sum(), np.abs(x).sum()])


def _from_moments(m: np.ndarray) -> dict:
    n, s1, s2, s3, s4, l1 = m
    mean = s1 / n
    var = max(s2 / n - mean * mean, 0.0)
    # Fourth central moment from raw power sums.
    m4 = s4 / n - 4 * mean * s3 / n + 6 * mean**2 * s2 / n - 3 * mean**4
    kurt = m4 / var**2 - 3.0 if var > 0 else None
    l2 = math.sqrt(s2)
    return {
        "numel": int(n),
        "mean": float(mean),
        "std": float(math.sqrt(var)),
        "var": float(var),
        "l1": float(l1),
        "l2": float(l2),
        "l1_l2": float(l1 / l2) if l2 > 0 else None,
        "kurtosis": float(kurt) if kurt is not None else None,
    }


def singular_value_stats(w: torch.Tensor, config: StatsConfig) -> dict:
    """Spectral norm, trace and singular-value moments of a 2-D matrix, saying how."""
    m, n = w.shape
    trace = float(torch.diagonal(w).double().sum())
    if m * n * min(m, n) <= config.exact_svd_max_cost:
        wd = w.double()
        gram = wd.T @ wd if m >= n else wd @ wd.T
        eig = torch.linalg.eigvalsh(gram).clamp_min(0.0)
        sv = eig.sqrt()
        spectral = float(sv[-1])
        out = {
            "svd_method": "exact (eigenvalues of the float64 Gram matrix)",
            "spectral_norm": spectral,
            "sv_mean": float(sv.mean()),
            "sv_var": float(sv.var(unbiased=False)),
        }
    else:
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(config.seed)
        try:
            _, s, _ = torch.svd_lowrank(w.float(), q=config.lowrank_q, niter=config.lowrank_niter)
        finally:
            torch.random.set_rng_state(generator_state)
        spectral = float(s[0])
        out = {
            "svd_method": (
                f"randomised (torch.svd_lowrank q={config.lowrank_q} niter={config.lowrank_niter});"
                " singular-value moments not computed"
            ),
            "spectral_norm": spectral,
            "sv_mean": None,
            "sv_var": None,
        }
    out["trace"] = trace
    out["trace_spectral"] = trace / spectral if spectral > 0 else None
    return out


def _ks(sample: np.ndarray, cdf) -> float:
    """Kolmogorov-Smirnov statistic sup |F_n - F| (no p-value: its exact form is slow)."""
    f = cdf(np.sort(sample))
    n = len(f)
    i = np.arange(1, n + 1)
    return float(max((i / n - f).max(), (f - (i - 1) / n).max()))


def fit_distributions(sample: np.ndarray, seed: int = 0) -> dict:
    """Fit Gaussian, logistic and Student-t to one tensor's sample; KS statistic and AIC of
    each, and the Student-t's nu interval (``tail``).

    Returns ``{"families": {...}, "best": name, "tail": {...}}``, or ``{"skipped": reason}``
    for a sample too small or constant to fit (e.g. freshly initialised layer norms).
    """
    x = np.asarray(sample, dtype=np.float64).ravel()
    if x.size < 8:
        return {"skipped": f"only {x.size} values"}
    std = float(x.std())
    if not std > 0 or not np.isfinite(std):
        return {"skipped": "constant or non-finite values"}
    loc0 = float(np.median(x))
    tail = fit_tail(x, sample=x.size, seed=seed)
    families: dict[str, dict] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fitted = {
            "gaussian": dict(zip(("loc", "scale"), stats.norm.fit(x), strict=True)),
            "logistic": dict(
                zip(
                    ("loc", "scale"),
                    stats.logistic.fit(x, loc=loc0, scale=std * math.sqrt(3) / math.pi),
                    strict=True,
                )
            ),
            "student_t": {"df": tail.nu, "loc": tail.loc, "scale": tail.scale},
        }
        for name, params in fitted.items():
            dist = _frozen(name, params)
            loglik = float(dist.logpdf(x).sum())
            families[name] = {
                **{k: (float(v) if math.isfinite(v) else None) for k, v in params.items()},
                "ks": _ks(x, dist.cdf),
                "aic": 2 * len(params) - 2 * loglik,
            }
    # AIC, not KS, picks the family: the t nests the Gaussian (nu -> inf) and always
    # fits at least as well, so it must pay for its extra parameter.
    best = min(families, key=lambda k: families[k]["aic"])
    return {"families": families, "best": best, "sample_size": int(x.size), "tail": tail.to_dict()}


def _frozen(name: str, params: Mapping[str, float]):
    if name == "student_t" and not math.isfinite(params["df"]):
        return stats.norm(loc=params["loc"], scale=params["scale"])
    return _FAMILY_DISTS[name](**params)


def _nu_summary(fits: list[dict]) -> dict:
    """A kind's tail: median and range of its tensors' nu and the median interval ends
    (``None`` = unbounded: Gaussian within the interval); how many tensors are heavy."""
    tails = [f["tail"] for f in fits if "tail" in f]
    if not tails:
        return {"tensors": 0}

    def values(key: str) -> np.ndarray:
        return np.array([math.inf if t[key] is None else t[key] for t in tails], dtype=float)

    def out(v: float) -> float | None:
        return float(v) if math.isfinite(v) else None

    nu = values("nu")
    return {
        "tensors": len(tails),
        "heavy": sum(t["tail"] == "heavy" for t in tails),
        "nuMedian": out(float(np.median(nu))),
        "nuMin": out(float(nu.min())),
        "nuMax": out(float(nu.max())),
        "nuLowMedian": out(float(np.median(values("nuLow")))),
        "nuHighMedian": out(float(np.median(values("nuHigh")))),
    }


def _sample(x: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    if x.size <= size:
        return x
    return x[rng.choice(x.size, size=size, replace=False)]


def _tensor_statistics(name: str, tensor, config: StatsConfig, rng: np.random.Generator):
    t = tensor if isinstance(tensor, torch.Tensor) else torch.as_tensor(np.asarray(tensor))
    t = t.detach().to("cpu", torch.float32)
    flat = t.numpy().ravel()
    moments = _moments(flat)
    out = {"kind": tensor_kind(name), "shape": list(t.shape)}
    out.update(_from_moments(moments))
    if t.ndim == 2:
        out.update(singular_value_stats(t, config))
    if config.fit:
        out["fit"] = fit_distributions(_sample(flat, config.fit_sample_size, rng), config.seed)
    return out, moments, flat


def tensor_statistics(name: str, tensor, config: StatsConfig, rng: np.random.Generator) -> dict:
    """All statistics of one parameter tensor (matrix metrics only for 2-D tensors)."""
    return _tensor_statistics(name, tensor, config, rng)[0]


_MATRIX_KEYS = ("spectral_norm", "trace", "trace_spectral", "sv_mean", "sv_var")


def _mean_or_none(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def weight_statistics(state: Mapping[str, object], config: StatsConfig | None = None) -> dict:
    """Statistics of every floating-point tensor in ``state`` and pooled by kind.

    Per kind: moments, L1 and L2 are exact over all entries of that kind (pooled
    power sums); matrix metrics (spectral norm, trace, ...) are the mean over the
    kind's matrices; the tail (``nu``) summarises the per-tensor fits.
    """
    config = config or StatsConfig()
    rng = np.random.default_rng(config.seed)
    floats = {
        name: value
        for name, value in state.items()
        if not (isinstance(value, torch.Tensor) and not value.is_floating_point())
    }
    tensors: dict[str, dict] = {}
    pooled: dict[str, np.ndarray] = {}
    kind_matrices: dict[str, list[dict]] = {}
    hu_entries: dict[str, list[np.ndarray]] = {"w": [], "b": []}
    for name, value in floats.items():
        entry, moments, flat = _tensor_statistics(name, value, config, rng)
        tensors[name] = entry
        kind = entry["kind"]
        pooled[kind] = pooled.get(kind, 0) + moments
        if "spectral_norm" in entry:
            kind_matrices.setdefault(kind, []).append(entry)
        if kind in HU_MATRIX_KINDS and len(entry["shape"]) == 2:
            hu_entries["w"].append(flat)
        elif kind == "bias" and ".mlp." in name:
            hu_entries["b"].append(flat)
    kinds: dict[str, dict] = {}
    for kind in KINDS:
        if kind not in pooled:
            continue
        entry = {"tensors": sum(1 for t in tensors.values() if t["kind"] == kind)}
        entry.update(_from_moments(pooled[kind]))
        matrices = kind_matrices.get(kind, [])
        entry["matrices"] = len(matrices)
        for key in _MATRIX_KEYS:
            entry[key] = _mean_or_none([m.get(key) for m in matrices])
        if config.fit:
            entry["nu"] = _nu_summary(
                [t["fit"] for t in tensors.values() if t["kind"] == kind and "fit" in t]
            )
        kinds[kind] = entry
    return {
        "method": {
            **asdict(config),
            "trace": "trace of W (sum of the main diagonal, min(m, n) terms), Hu et al. 2023",
            "kurtosis": "excess (Fisher) kurtosis over all entries, exact",
            "kind_matrix_metrics": "mean over the kind's 2-D tensors",
            "hu": "Hu et al. 2023's metric set: matrix metrics averaged over the attention "
            "(fused query_key_value, dense) and MLP matrices; mean/median/var of all their "
            "entries (w) and of the MLP biases (b); medians from a seeded subsample of at most "
            f"{HU_MEDIAN_SAMPLE} entries",
            "fits": "per tensor, maximum likelihood on a seeded uniform subsample (Gaussian and "
            "logistic: scipy.stats; Student-t: polypythia_eval.tailfit, nu with a 95% profile-"
            "likelihood interval, tail = gaussian when unbounded above); ks = Kolmogorov-Smirnov "
            "statistic of the fit on that subsample; best = lowest AIC; kinds: median and range "
            "of their tensors' nu (no pooled fit)",
        },
        "tensors": tensors,
        "kinds": kinds,
        "hu": _hu_features(
            [m for k in HU_MATRIX_KINDS for m in kind_matrices.get(k, [])], hu_entries, rng
        ),
    }


# Hu et al. 2023 (michahu/modeling-training, src/metrics.py): k, q, v, attention output,
# FFN in and out matrices of every layer; GPT-NeoX fuses k, q and v into one matrix.
HU_MATRIX_KINDS = ("attn_qkv", "attn_out", "mlp_in", "mlp_out")
# Their per-matrix metrics (averaged over matrices) under our names, then the global ones.
HU_MATRIX_METRICS = {
    "l1": "l1",
    "l2": "l2",
    "trace": "trace",
    "spectral": "spectral_norm",
    "code_sparsity": "l1_l2",
    "computational_sparsity": "trace_spectral",
    "mean_lambda": "sv_mean",
    "variance_lambda": "sv_var",
}
HU_FEATURES = (*HU_MATRIX_METRICS, "mean_w", "median_w", "var_w", "mean_b", "median_b", "var_b")
HU_MEDIAN_SAMPLE = 1_000_000


def _median(flats: list[np.ndarray], rng: np.random.Generator) -> float | None:
    """Median of the concatenated entries (a seeded proportional subsample when large)."""
    total = sum(f.size for f in flats)
    if total == 0:
        return None
    if total > HU_MEDIAN_SAMPLE:
        flats = [_sample(f, max(1, round(HU_MEDIAN_SAMPLE * f.size / total)), rng) for f in flats]
    return float(np.median(np.concatenate(flats)))


def _hu_features(matrices: list[dict], entries: dict[str, list[np.ndarray]], rng) -> dict:
    """One checkpoint's values of Hu et al.'s metric set (None where it does not apply)."""
    out: dict[str, float | None] = {}
    for theirs, ours in HU_MATRIX_METRICS.items():
        out[theirs] = _mean_or_none([m.get(ours) for m in matrices])
    for tag in ("w", "b"):
        flats = entries[tag]
        if flats:
            stats_ = _from_moments(sum(_moments(f) for f in flats))
            out[f"mean_{tag}"], out[f"var_{tag}"] = stats_["mean"], stats_["var"]
        else:
            out[f"mean_{tag}"] = out[f"var_{tag}"] = None
        out[f"median_{tag}"] = _median(flats, rng)
    return out


# The per-kind metrics a training map reads (Hu et al. 2023's set plus kurtosis).
MAP_METRICS = (
    "l1",
    "l2",
    "l1_l2",
    "mean",
    "var",
    "spectral_norm",
    "trace",
    "trace_spectral",
    "sv_mean",
    "sv_var",
    "kurtosis",
)


def map_features(weight_stats: Mapping) -> dict[str, float]:
    """A checkpoint's training-map features: Hu et al.'s metric set when recorded (finite
    only), else (older files) its per-kind statistics as ``{"kind.metric": value}``."""
    hu = weight_stats.get("hu")
    if hu:
        return {k: float(v) for k, v in hu.items() if v is not None and math.isfinite(v)}
    out: dict[str, float] = {}
    for kind, entry in weight_stats.get("kinds", {}).items():
        for metric in MAP_METRICS:
            value = entry.get(metric)
            if value is not None and math.isfinite(value):
                out[f"{kind}.{metric}"] = float(value)
    return out
