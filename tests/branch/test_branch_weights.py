"""Parent weights load exactly, Pythia's legacy buffers aside; another model is refused.

User story: a Pythia revision folder stores old attention-mask and rotary buffers beside
its weights; those are not parameters and must not stop a branch. A folder of another
shape must stop it with a message naming `spec.branch.from.uri`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from polypythia import presets
from polypythia.errors import UsageError
from polypythia_trainer.branching import load_parent_weights
from polypythia_trainer.config import ModelConfig
from polypythia_trainer.model import build_model


def _model(seed: int, size: str = "nano") -> torch.nn.Module:
    return build_model(ModelConfig.from_dict(presets.get(size).model_block()), seed)


def test_legacy_buffers_are_skipped_and_every_parameter_is_loaded(tmp_path: Path) -> None:
    parent = _model(1)
    parent.save_pretrained(tmp_path)
    legacy = {
        "gpt_neox.layers.0.attention.bias": torch.ones(1, 1, 4, 4, dtype=torch.bool),
        "gpt_neox.layers.0.attention.masked_bias": torch.tensor(-1e9),
        "gpt_neox.layers.0.attention.rotary_emb.inv_freq": torch.ones(4),
    }
    save_file(legacy, str(tmp_path / "legacy.safetensors"))
    child = _model(2)
    load_parent_weights(child, tmp_path)
    want = parent.state_dict()
    assert all(torch.equal(value, want[name]) for name, value in child.state_dict().items())


def test_another_shape_is_a_usage_error_naming_the_field(tmp_path: Path) -> None:
    _model(1, "micro").save_pretrained(tmp_path)
    with pytest.raises(
        UsageError, match=r"^spec\.branch\.from\.uri: .*does not match this run's model"
    ):
        load_parent_weights(_model(2), tmp_path)
