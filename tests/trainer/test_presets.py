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
    """`presets` counts without torch (operator image); transformers' model, built by the
    trainer's one config builder from the run config's model block, is the referee."""
    import torch
    from transformers import GPTNeoXForCausalLM

    from polypythia_trainer.model import hf_config

    preset = presets.get(name)
    with torch.device("meta"):
        model = GPTNeoXForCausalLM(hf_config(ModelConfig.from_dict(preset.model_block())))
    assert presets.count_parameters(preset) == sum(p.numel() for p in model.parameters())


def test_trainer_builds_the_preset_model() -> None:
    """The trainer's model (from the run config's model block) is the preset's model."""
    preset = presets.get("micro")
    model = build_model(ModelConfig.from_dict(preset.model_block()), weight_seed=0)
    assert sum(p.numel() for p in model.parameters()) == presets.count_parameters(preset)
    assert model.config.rope_parameters["partial_rotary_factor"] == 0.25
    assert model.config.use_parallel_residual is True
    assert model.lm_head.weight.data_ptr() != model.gpt_neox.embed_in.weight.data_ptr()


# FIDELITY.md's table (from EleutherAI/pythia models/<size>/pythia-<size>.yml), written out:
# size: (peak LR, min LR, micro-batch per GPU, init method)
PYTHIA_CONFIGS = {
    "14m": (1.0e-3, 1.0e-4, 32, "small_init"),
    "31m": (1.0e-3, 1.0e-4, 32, "small_init"),
    "70m": (1.0e-3, 1.0e-4, 32, "small_init"),
    "160m": (6.0e-4, 6.0e-5, 32, "small_init"),
    "410m": (3.0e-4, 3.0e-5, 32, "small_init"),
    "1b": (2.5e-4, 2.5e-5, 16, "small_init"),
    "1.4b": (2.0e-4, 2.0e-5, 16, "small_init"),
    "2.8b": (1.6e-4, 1.6e-5, 16, "small_init"),
    "6.9b": (1.2e-4, 1.2e-5, 8, "normal"),
    "12b": (1.2e-4, 1.2e-5, 8, "normal"),
}


@pytest.mark.parametrize("name", sorted(PYTHIA_CONFIGS))
def test_presets_carry_the_pythia_config_of_their_size(name: str) -> None:
    peak, minimum, micro, init = PYTHIA_CONFIGS[name]
    preset = presets.get(name)
    assert preset.learning_rate == peak
    assert preset.min_learning_rate == pytest.approx(minimum, rel=1e-12)
    assert preset.micro_batch_size == micro
    assert preset.model_block()["initMethod"] == init


def test_recipe_constants_are_pythias() -> None:
    assert presets.WEIGHT_DECAY == 0.1  # not the paper's typo 0.01
    assert presets.ADAM_BETAS == (0.9, 0.95) and presets.ADAM_EPS == 1e-8
    assert presets.FP16_LOSS_SCALING == {
        "loss_scale": 0,
        "initial_scale_power": 12,
        "loss_scale_window": 1000,
        "hysteresis": 2,
        "min_loss_scale": 1,
    }


def test_gelu_is_gpt_neox_tanh_approximation() -> None:
    """bias-gelu-fusion: 0.5 x (1 + tanh(0.79788456 x (1 + 0.044715 x^2))) (GPT-NeoX)."""
    import torch
    from transformers.activations import ACT2FN

    model = build_model(ModelConfig.from_dict(presets.get("nano").model_block()), weight_seed=0)
    act = ACT2FN[model.config.hidden_act]
    x = torch.linspace(-4, 4, 81, dtype=torch.float64)
    neox = x * 0.5 * (1.0 + torch.tanh(0.79788456 * x * (1 + 0.044715 * x * x)))
    assert torch.allclose(act(x), neox, atol=1e-7)
    assert not torch.allclose(torch.nn.functional.gelu(x), neox, atol=1e-5)  # not the erf form


def test_large_sizes_use_gpt_neox_default_init() -> None:
    """6.9b/12b name no init method: normal(0.02), output layers 0.02 / sqrt(2 L)."""
    from polypythia_trainer.model import init_std

    assert init_std("gpt_neox.layers.0.mlp.dense_h_to_4h.weight", 4096, 32, "normal") == 0.02
    out = init_std("gpt_neox.layers.0.attention.dense.weight", 4096, 32, "normal")
    assert out == pytest.approx(0.02 / 8.0)
    small = init_std("gpt_neox.layers.0.mlp.dense_h_to_4h.weight", 1024, 24, "small_init")
    assert small == pytest.approx((2 / (5 * 1024)) ** 0.5)
