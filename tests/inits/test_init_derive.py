"""Per-tensor init strategies: determinism, exact permutations, matching distributions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from polypythia.errors import UsageError
from polypythia_trainer.inits import derive_state, derive_tensor, fit_studentt

N = 20_000


def _heavy(seed: int = 0) -> torch.Tensor:
    """A heavy-tailed, skewed, trained-looking weight matrix (Laplace + a few outliers)."""
    rng = np.random.default_rng(seed)
    values = rng.laplace(0.01, 0.02, size=N)
    values[:50] = rng.normal(0.3, 0.05, size=50)
    return torch.from_numpy(values).float().reshape(100, 200)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _state() -> dict[str, torch.Tensor]:
    return {
        "a.weight": _heavy(0),
        "b.weight": _heavy(1)[:10],
        "norm.weight": torch.ones(64),
        "norm.bias": torch.zeros(64),
    }


@pytest.mark.parametrize("strategy", ["permute", "empirical", "studentt", "matched-gaussian"])
def test_same_seed_is_identical_and_other_seed_differs(strategy):
    ref = _state()
    one = derive_state(strategy, ref, seed=3)
    again = derive_state(strategy, {k: ref[k] for k in reversed(list(ref))}, seed=3)
    other = derive_state(strategy, ref, seed=4)
    for name, tensor in ref.items():
        assert one[name].shape == tensor.shape and one[name].dtype == tensor.dtype
        assert torch.equal(one[name], again[name])
    assert not torch.equal(one["a.weight"], other["a.weight"])
    assert not torch.equal(one["a.weight"], ref["a.weight"])
    # tensors of one run differ from each other too (seeded by name, not shared)
    assert not torch.equal(one["b.weight"], one["a.weight"][:10])


@pytest.mark.parametrize("strategy", ["permute", "empirical", "studentt", "matched-gaussian"])
def test_constant_tensors_are_copied(strategy):
    out = derive_state(strategy, _state(), seed=0)
    assert torch.equal(out["norm.weight"], torch.ones(64))
    assert torch.equal(out["norm.bias"], torch.zeros(64))


def test_permute_is_an_exact_permutation():
    ref = _heavy()
    out = derive_tensor("permute", ref, _gen(1))
    assert torch.equal(out.flatten().sort().values, ref.flatten().sort().values)
    assert (out != ref).float().mean() > 0.9


def _ks(out: torch.Tensor, ref: torch.Tensor) -> float:
    return stats.ks_2samp(out.flatten().double().numpy(), ref.flatten().double().numpy()).pvalue


def test_empirical_matches_a_heavy_tailed_reference():
    ref = _heavy()
    out = derive_tensor("empirical", ref, _gen(2))
    assert _ks(out, ref) > 0.01
    assert ref.min() <= out.min() and out.max() <= ref.max()
    assert not torch.equal(out.flatten().sort().values, ref.flatten().sort().values)


def test_matched_gaussian_matches_a_gaussian_reference_but_not_a_heavy_one():
    ref = torch.randn(N, generator=_gen(5)) * 0.02 + 0.003
    out = derive_tensor("matched-gaussian", ref, _gen(6))
    assert _ks(out, ref) > 0.01
    assert abs(out.mean() - ref.mean()) < 0.001 and abs(out.std() / ref.std() - 1) < 0.03
    heavy = _heavy()
    assert _ks(derive_tensor("matched-gaussian", heavy, _gen(6)), heavy) < 0.01


def test_studentt_matches_a_t_reference():
    values = stats.t.rvs(3.0, loc=-0.002, scale=0.015, size=N, random_state=7)
    ref = torch.from_numpy(values).float()
    out = derive_tensor("studentt", ref, _gen(8))
    assert _ks(out, ref) > 0.01
    loc, scale, df = fit_studentt(values)
    assert abs(df - 3.0) < 0.5 and abs(scale / 0.015 - 1) < 0.05 and abs(loc + 0.002) < 0.001


def test_studentt_fit_agrees_with_scipy():
    values = stats.t.rvs(5.0, loc=0.1, scale=2.0, size=3000, random_state=1)
    ours = fit_studentt(values)
    df, loc, scale = stats.t.fit(values, 5.0, loc=0.1, scale=2.0)
    np.testing.assert_allclose(ours, (loc, scale, df), rtol=0.02, atol=0.01)


def test_bfloat16_reference_keeps_its_dtype():
    ref = _heavy().to(torch.bfloat16)
    for strategy in ("permute", "empirical", "studentt", "matched-gaussian"):
        assert derive_tensor(strategy, ref, _gen(0)).dtype == torch.bfloat16


def test_bad_input_is_a_usage_error():
    with pytest.raises(UsageError, match="init.strategy"):
        derive_tensor("pythia", _heavy(), _gen(0))
    bad = _heavy()
    bad[0, 0] = float("nan")
    with pytest.raises(UsageError, match=r"spec.inits\[\].reference.*a.weight"):
        derive_state("permute", {"a.weight": bad}, seed=0)
