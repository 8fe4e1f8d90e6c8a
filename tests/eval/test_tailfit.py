"""Per-tensor Student-t tail fits with intervals: one fitter for weight statistics,
`polypythia weights` and the init samplers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import GPTNeoXForCausalLM

from polypythia.cli import main
from polypythia_eval.tailfit import fit_tail
from polypythia_eval.tiny import save_tiny_checkpoint
from polypythia_eval.weightstats import StatsConfig, weight_statistics

GAUSS_SMALL = "gpt_neox.layers.0.mlp.dense_h_to_4h.weight"
GAUSS_LARGE = "gpt_neox.layers.1.mlp.dense_h_to_4h.weight"
HEAVY = "gpt_neox.layers.0.attention.dense.weight"


def _planted(rng: np.random.Generator, shapes: dict[str, tuple]) -> dict[str, torch.Tensor]:
    """Gaussian matrices at scales 20x apart, and one Student-t (nu = 3) matrix."""
    return {
        GAUSS_SMALL: torch.from_numpy(rng.normal(0, 0.02, shapes[GAUSS_SMALL])).float(),
        GAUSS_LARGE: torch.from_numpy(rng.normal(0, 0.4, shapes[GAUSS_LARGE])).float(),
        HEAVY: torch.from_numpy(0.02 * rng.standard_t(3.0, shapes[HEAVY])).float(),
    }


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer):
    folder = save_tiny_checkpoint(tmp_path_factory.mktemp("tails"), tokenizer=tokenizer)
    model = GPTNeoXForCausalLM.from_pretrained(folder)
    state = model.state_dict()
    planted = _planted(
        np.random.default_rng(13),
        {k: tuple(state[k].shape) for k in (GAUSS_SMALL, GAUSS_LARGE, HEAVY)},
    )
    with torch.no_grad():
        for name, value in planted.items():
            state[name].copy_(value)
    model.save_pretrained(folder, safe_serialization=True)
    return folder, planted


def test_weights_cli_fits_each_tensor_on_its_own(checkpoint, capsys):
    folder, planted = checkpoint
    assert main(["weights", str(folder), "-o", "json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    for name in (GAUSS_SMALL, GAUSS_LARGE):
        assert rows[name]["tail"] == "gaussian" and rows[name]["nuHigh"] is None, rows[name]
    heavy = rows[HEAVY]
    assert heavy["tail"] == "heavy" and heavy["nuLow"] <= 3.0 <= heavy["nuHigh"]
    assert rows[GAUSS_LARGE]["scale"] == pytest.approx(20 * rows[GAUSS_SMALL]["scale"], rel=0.05)
    # an untrained LayerNorm gain (all ones) has nothing to fit, and says so
    assert rows["gpt_neox.final_layer_norm.weight"]["tail"].startswith("not fitted")
    assert rows["gpt_neox.final_layer_norm.weight"]["kind"] == "layernorm_gain"
    assert rows["gpt_neox.final_layer_norm.bias"]["kind"] == "layernorm_bias"
    # pooled per kind, the two Gaussian matrices look heavy-tailed: a scale mixture
    pooled = fit_tail(np.concatenate([planted[GAUSS_SMALL].numpy().ravel(),
                                      planted[GAUSS_LARGE].numpy().ravel()]))  # fmt: skip
    assert pooled.tail == "heavy" and pooled.nu_high < 3.0
    assert main(["weights", str(folder)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["NAME", "KIND", "NUMEL", "NU", "NU_95%", "TAIL"]


def test_weight_statistics_summarise_kinds_by_their_tensors_fits():
    rng = np.random.default_rng(21)
    planted = _planted(rng, {GAUSS_SMALL: (256, 64), GAUSS_LARGE: (256, 64), HEAVY: (64, 64)})
    out = weight_statistics(planted, StatsConfig(fit_sample_size=20_000))
    mlp_in = out["kinds"]["mlp_in"]["nu"]
    assert mlp_in["tensors"] == 2 and mlp_in["heavy"] == 0 and mlp_in["nuHighMedian"] is None
    tail = out["tensors"][HEAVY]["fit"]["tail"]
    assert tail["nuLow"] <= 3.0 <= tail["nuHigh"]
    assert out["kinds"]["attn_out"]["nu"]["heavy"] == 1


def test_interval_coverage_and_gaussian_false_alarms():
    """Across fresh samples: nu = 5 inside its 95% interval about 95% of the time; a
    Gaussian sample called heavy at most about 2.5% of the time (boundary test)."""
    rng = np.random.default_rng(8)
    covered = sum(
        (f := fit_tail(rng.standard_t(5.0, 4000))).nu_low <= 5.0 <= f.nu_high for _ in range(60)
    )
    heavy = sum(fit_tail(rng.normal(0, 3.0, 4000)).tail == "heavy" for _ in range(60))
    assert covered >= 52 and heavy <= 4


def test_bad_checkpoint_folders_are_usage_errors(tmp_path, capsys):
    assert main(["weights", str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    assert main(["weights", str(tmp_path)]) == 2
    assert "expected 'gpt_neox'" in capsys.readouterr().err
