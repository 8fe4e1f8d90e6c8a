"""Weight statistics against numpy, training maps on planted data, Cohen's kappa."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from polypythia_eval.trainingmaps import agreement, cohen_kappa, fit_training_map
from polypythia_eval.weightstats import (
    StatsConfig,
    fit_distributions,
    map_features,
    tensor_kind,
    weight_statistics,
)


def test_matrix_statistics_match_numpy():
    rng = np.random.default_rng(0)
    w = rng.normal(0.1, 0.5, size=(300, 40)).astype(np.float32)
    state = {
        "gpt_neox.layers.0.attention.query_key_value.weight": torch.from_numpy(w),
        "gpt_neox.layers.0.attention.query_key_value.bias": torch.zeros(300),
        "gpt_neox.layers.0.input_layernorm.weight": torch.ones(40),
    }
    out = weight_statistics(state, StatsConfig(fit_sample_size=5000))
    qkv = out["tensors"]["gpt_neox.layers.0.attention.query_key_value.weight"]
    x = w.astype(np.float64)
    sv = np.linalg.svd(x, compute_uv=False)
    assert qkv["kind"] == "attn_qkv"
    assert qkv["mean"] == pytest.approx(x.mean(), rel=1e-9)
    assert qkv["std"] == pytest.approx(x.std(), rel=1e-9)
    assert qkv["l1"] == pytest.approx(np.abs(x).sum(), rel=1e-9)
    assert qkv["l2"] == pytest.approx(np.linalg.norm(x), rel=1e-9)
    assert qkv["spectral_norm"] == pytest.approx(sv[0], rel=1e-6)
    assert qkv["sv_mean"] == pytest.approx(sv.mean(), rel=1e-6)
    assert qkv["sv_var"] == pytest.approx(sv.var(), rel=1e-5)
    assert qkv["trace"] == pytest.approx(np.trace(x), rel=1e-6)
    assert qkv["trace_spectral"] == pytest.approx(np.trace(x) / sv[0], rel=1e-6)
    centred = x - x.mean()
    kurt = (centred**4).mean() / (centred**2).mean() ** 2 - 3
    assert qkv["kurtosis"] == pytest.approx(kurt, abs=1e-9)
    # Freshly initialised layer norms (all ones) cannot be fitted; they say so.
    ln = out["kinds"]["layernorm_gain"]
    assert ln["std"] == 0 and ln["nu"] == {"tensors": 0}
    assert "skipped" in out["tensors"]["gpt_neox.layers.0.input_layernorm.weight"]["fit"]
    assert out["kinds"]["bias"]["l2"] == 0
    # Pooled kind statistics equal the statistics of the concatenated entries.
    assert out["kinds"]["attn_qkv"]["l2"] == pytest.approx(np.linalg.norm(x), rel=1e-9)
    assert "randomised" not in qkv["svd_method"]
    # Hu et al.'s metric set: matrix metrics averaged over matrices, entry statistics
    assert map_features(out)["spectral"] == pytest.approx(sv[0], rel=1e-6)
    assert map_features(out)["median_w"] == pytest.approx(np.median(x), rel=1e-6)
    assert "mean_b" not in map_features(out)  # no MLP biases in this state


def test_large_matrices_use_randomised_spectral_norm():
    rng = np.random.default_rng(1)
    w = torch.from_numpy(rng.normal(size=(400, 200)).astype(np.float32))
    out = weight_statistics({"embed_out.weight": w}, StatsConfig(exact_svd_max_cost=1e6, fit=False))
    entry = out["tensors"]["embed_out.weight"]
    assert entry["kind"] == "unembedding" and "randomised" in entry["svd_method"]
    exact = np.linalg.svd(w.double().numpy(), compute_uv=False)[0]
    assert entry["spectral_norm"] == pytest.approx(exact, rel=0.02)
    assert entry["sv_mean"] is None
    assert out["method"]["exact_svd_max_cost"] == 1e6


def test_distribution_fits_recover_the_family():
    rng = np.random.default_rng(2)
    t_fit = fit_distributions(rng.standard_t(4.0, size=20_000) * 0.02)
    assert t_fit["best"] == "student_t"
    assert t_fit["families"]["student_t"]["df"] == pytest.approx(4.0, rel=0.15)
    assert fit_distributions(rng.normal(0, 0.02, size=20_000))["best"] == "gaussian"
    assert fit_distributions(rng.logistic(0, 0.02, size=20_000))["best"] == "logistic"


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("gpt_neox.embed_in.weight", "embedding"),
        ("gpt_neox.layers.3.attention.dense.weight", "attn_out"),
        ("gpt_neox.layers.3.mlp.dense_h_to_4h.weight", "mlp_in"),
        ("gpt_neox.layers.3.mlp.dense_4h_to_h.weight", "mlp_out"),
        ("gpt_neox.layers.3.post_attention_layernorm.bias", "layernorm_bias"),
        ("gpt_neox.final_layer_norm.weight", "layernorm_gain"),
        ("gpt_neox.layers.3.mlp.dense_4h_to_h.bias", "bias"),
    ],
)
def test_parameter_kinds(name, kind):
    assert tensor_kind(name) == kind


def _synthetic_series(departing: str, depart_at: int):
    """Five seeds moving through three phases; one leaves for a phase of its own."""
    rng = np.random.default_rng(3)
    steps = [0, 1, 2, 4, 8, 16, 32, 64, 100, 200, 300, 400, 500, 600, 700, 800]
    phases = np.array([[0, 0, 0, 0], [4, 4, 4, 4], [8, 0, 8, 0], [0, 8, 0, 8]], float)
    series = {}
    for seed in range(5):
        run = f"s{seed}"
        points = {}
        for i, step in enumerate(steps):
            phase = 0 if i < 5 else 1 if i < 10 else 2
            if run == departing and step >= depart_at:
                phase = 3
            centre = phases[phase]
            noise = rng.normal(0, 0.3, size=4)
            points[step] = {f"f{j}": float(centre[j] + noise[j]) for j in range(4)}
        series[run] = points
    return series


def test_training_map_flags_the_departing_seed():
    tmap = fit_training_map(_synthetic_series("s3", 400), states=(1, 2, 3, 4), n_init=3)
    assert tmap.n_states == 3 and min(tmap.heldout_bic, key=tmap.heldout_bic.get) == 3
    # z-scored per run, the departing seed's whole path is rescaled: it may be flagged
    # before the step where its values leave, never after
    assert tmap.departures["s3"] is not None and tmap.departures["s3"] <= 400
    assert all(tmap.departures[r] is None for r in ("s0", "s1", "s2", "s4"))
    # States are numbered in order of first visit: every run starts in state 0.
    assert {path[0] for path in tmap.paths.values()} == {0}
    assert len(tmap.paths["s3"]) == len(tmap.steps["s3"]) == 16


def test_cohen_kappa_and_agreement():
    a = [0, 1, 1, 0, 1, 0, 0, 1]
    b = [0, 1, 0, 0, 1, 1, 0, 1]
    # po = 6/8, pe = 0.5 -> kappa = 0.5
    assert cohen_kappa(a, b) == pytest.approx(0.5)
    assert cohen_kappa(a, a) == pytest.approx(1.0)
    assert cohen_kappa([1, 1], [1, 1]) is None
    flipped = [1 - x for x in a]
    assert cohen_kappa(a, flipped) == pytest.approx(-1.0)

    def preds(p):
        return {"task": {"doc_id": list(range(len(p))), "pred": p}}

    table = {
        "s0": {10: preds(b), 20: preds(a)},
        "s1": {10: preds(a), 20: preds(flipped)},
    }
    result = agreement(table, reference="s0")
    assert result["self_consistency"]["s0"]["task"] == {10: pytest.approx(0.5), 20: 1.0}
    assert result["inter_seed"]["s1"]["task"][20] == pytest.approx(-1.0)
    assert "s0" not in result["inter_seed"]
