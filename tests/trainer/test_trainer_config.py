"""Bad run configs fail at once with the field named (UsageError, exit 2 in the CLI)."""

from __future__ import annotations

import json

import pytest
from trainer_helpers import nano_config

from polypythia.cli import main as cli_main
from polypythia.errors import UsageError
from polypythia_trainer.cli import load_config
from polypythia_trainer.config import RunConfig


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"steps": -5}, "training.steps"),
        ({"globalBatchSize": 7}, "training.globalBatchSize"),
        ({"strategy": "fsdp"}, "training.strategy"),
        ({"zeroStage": 3}, "training.zeroStage"),
        ({"precision": "bf16"}, "training.precision"),
        ({"learningRate": "fast"}, "training.learningRate"),
        ({"sequenceLength": 4096}, "training.sequenceLength"),
        ({"model": {"numHeads": 3}}, "model.hiddenSize"),
        ({"checkpoints": {"steps": [0, 99]}}, "checkpoints.steps[1]"),
        ({"data": {"format": "parquet"}}, "spec.data.format"),
    ],
)
def test_bad_field_is_named(tmp_path, change: dict, field: str) -> None:
    with pytest.raises(UsageError, match=field.replace("[", r"\[").replace("]", r"\]")):
        RunConfig.from_dict(nano_config(tmp_path, **change))


def test_missing_block_is_named(tmp_path) -> None:
    cfg = nano_config(tmp_path)
    del cfg["training"]
    with pytest.raises(UsageError, match="^training"):
        RunConfig.from_dict(cfg)


def test_config_from_file_or_inline_json(tmp_path) -> None:
    cfg = nano_config(tmp_path)
    path = tmp_path / "run.json"
    path.write_text(json.dumps(cfg))
    assert load_config(str(path)) == cfg
    assert load_config(json.dumps(cfg)) == cfg
    with pytest.raises(UsageError, match="--config .*not valid JSON"):
        load_config("{not json")
    with pytest.raises(UsageError, match="no such file"):
        load_config(str(tmp_path / "missing.json"))


def test_cli_exits_2_naming_the_field(tmp_path, capsys) -> None:
    cfg = nano_config(tmp_path, workers=2)
    code = cli_main(["train", "--no-ray", "--config", json.dumps(cfg)])
    assert code == 2
    assert "training.workers" in capsys.readouterr().err
