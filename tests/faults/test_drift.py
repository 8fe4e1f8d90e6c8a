"""Resuming with another recipe is refused naming each changed field, unless
--allow-changes, which records (old, new, step) before run.json changes."""

from __future__ import annotations

from pathlib import Path

import pytest
from trainer_helpers import nano_config

from polypythia.errors import UsageError
from polypythia.storage import RunStore, config_changes, shape_changes
from polypythia_trainer.config import RunConfig
from polypythia_trainer.launch import claim_run


def test_only_result_fields_count() -> None:
    old = nano_config("/s", steps=6)
    assert config_changes(old, nano_config("/elsewhere", steps=6, cpusPerWorker=4)) == []
    new = nano_config("/s", steps=6, learningRate=0.01, weightSeed=3)
    assert config_changes(old, new) == [
        {"field": "training.learningRate", "old": 0.003, "new": 0.01},
        {"field": "weightSeed", "old": 0, "new": 3},
    ]


def claim(config: dict, **kwargs) -> None:
    lease = claim_run(RunConfig.from_dict(config), config, **kwargs)
    lease.release()


@pytest.fixture
def trained(tmp_path: Path) -> tuple[Path, RunStore]:
    """A run that wrote run.json and one checkpoint (step 4) with the original recipe."""
    store = tmp_path / "run"
    claim(nano_config(store, steps=6))
    run = RunStore.open(str(store))
    src = tmp_path / "ckpt"
    src.mkdir()
    (src / "model.safetensors").write_bytes(b"w" * 10)
    run.commit_checkpoint(4, src)
    return store, run


def test_drift_is_refused_and_run_json_keeps_what_ran(trained) -> None:
    store, run = trained
    changed = nano_config(store, steps=6, learningRate=0.01)
    with pytest.raises(UsageError) as refused:
        claim(changed)
    assert "training.learningRate: 0.003 -> 0.01" in str(refused.value)
    assert "--allow-changes" in str(refused.value)
    assert run.read_run_config()["training"]["learningRate"] == 0.003
    assert not run.store.exists(run.key("LEASE"))  # the refusal released the lease


def test_allow_changes_records_the_history(trained) -> None:
    store, run = trained
    claim(nano_config(store, steps=6, learningRate=0.01), allow_changes=True)
    assert run.read_run_config()["training"]["learningRate"] == 0.01
    (change,) = run.read_history()
    assert (change["field"], change["old"], change["new"], change["step"]) == (
        "training.learningRate",
        0.003,
        0.01,
        4,
    )


def test_the_history_names_the_step_the_run_resumes_from(trained, tmp_path: Path) -> None:
    # Checkpoints 4 and 5, and 5 is damaged (a file cut short): the run resumes from 4,
    # and history.json must say the new values apply from 4, not from the newest COMPLETE.
    store, run = trained
    src = tmp_path / "ckpt5"
    src.mkdir()
    (src / "model.safetensors").write_bytes(b"w" * 10)
    run.commit_checkpoint(5, src)
    (store / "checkpoints" / "step5" / "model.safetensors").write_bytes(b"w" * 3)
    claim(nano_config(store, steps=6, learningRate=0.01), allow_changes=True)
    assert [c["step"] for c in run.read_history()] == [4]
    assert run.complete_checkpoints() == [4]  # step 5 quarantined, as the trainer would
    # A shorter run resumes from its last checkpoint within the new length.
    src6 = tmp_path / "ckpt6"
    src6.mkdir()
    (src6 / "model.safetensors").write_bytes(b"w" * 10)
    run.commit_checkpoint(6, src6)
    claim(nano_config(store, steps=5, learningRate=0.01), allow_changes=True)
    assert [c["step"] for c in run.read_history()] == [4, 4]


def test_a_run_that_never_trained_takes_the_new_config(tmp_path: Path) -> None:
    store = tmp_path / "run"
    claim(nano_config(store, steps=6))
    claim(nano_config(store, steps=6, learningRate=0.01))
    assert RunStore.open(str(store)).read_run_config()["training"]["learningRate"] == 0.01


@pytest.mark.parametrize(
    ("model", "field"),
    [({"numLayers": 3}, "model.numLayers"), ({"vocabSize": 2048}, "model.vocabSize")],
)
def test_a_change_of_tensor_shapes_is_refused_even_with_allow_changes(
    trained, model: dict, field: str
) -> None:
    store, run = trained
    with pytest.raises(UsageError) as refused:
        claim(nano_config(store, steps=6, model=model), allow_changes=True)
    assert f"{field}: " in str(refused.value)
    assert "tensor shapes" in str(refused.value)
    assert run.read_run_config()["model"] == nano_config(store)["model"]  # what ran
    assert run.read_history() == []
    assert not run.store.exists(run.key("LEASE"))


def test_heads_change_shapes_only_under_qk_layernorm() -> None:
    old = nano_config("/s")
    plain = nano_config("/s", model={"numHeads": 8})
    changes = config_changes(old, plain)
    assert shape_changes(old, plain, changes) == []
    normed = nano_config("/s", model={"qkLayerNorm": True})
    both = nano_config("/s", model={"qkLayerNorm": True, "numHeads": 8})
    assert [c["field"] for c in shape_changes(normed, both, config_changes(normed, both))] == [
        "model.numHeads"
    ]
