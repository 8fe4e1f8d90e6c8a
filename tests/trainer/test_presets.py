"""Built models have exactly the published Pythia parameter counts (meta device)."""

from __future__ import annotations

import pytest

from polypythia import presets
from polypythia_trainer.config import ModelConfig
from polypythia_trainer.model import build_model

# The Pythia README's totals, written out here so the test does not trust the table.
PUBLISHED = {
    "14m": 14_067_712,
    "31m": 30_494_720,
    "70m": 70_426_624,
    "160m": 162_322_944,
    "410m": 405_334_016,
    "1b": 1_011_781_632,
    "1.4b": 1_414_647_808,
    "2.8b": 2_775_208_960,
    "6.9b": 6_857_302_016,
    "12b": 11_846_072_320,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_pythia_sizes_match_published_totals(name: str) -> None:
    preset = presets.get(name)
    assert presets.count_parameters(preset) == PUBLISHED[name]
    assert preset.published_params == PUBLISHED[name]


@pytest.mark.parametrize("name", list(presets.PRESETS))
def test_torch_free_count_equals_transformers_model(name: str) -> None:
    """`presets` counts without torch (operator image); transformers' model is the referee."""
    import torch
    from transformers import GPTNeoXForCausalLM

    preset = presets.get(name)
    with torch.device("meta"):
        model = GPTNeoXForCausalLM(presets.hf_config(preset))
    assert presets.count_parameters(preset) == sum(p.numel() for p in model.parameters())


def test_trainer_builds_the_preset_model() -> None:
    """The trainer's model (from the run config's model block) is the preset's model."""
    preset = presets.get("micro")
    model = build_model(ModelConfig.from_dict(preset.model_block()), weight_seed=0)
    assert sum(p.numel() for p in model.parameters()) == presets.count_parameters(preset)
    assert model.config.rope_parameters["partial_rotary_factor"] == 0.25
    assert model.config.use_parallel_residual is True
    assert model.lm_head.weight.data_ptr() != model.gpt_neox.embed_in.weight.data_ptr()
