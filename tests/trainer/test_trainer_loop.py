"""The training loop in this process: determinism, seeds, checkpoints, telemetry, resume."""

from __future__ import annotations

import json
import math

import pytest
import torch
from trainer_helpers import losses, nano_config
from transformers import AutoTokenizer, GPTNeoXForCausalLM

from polypythia.storage import RunStore, pins
from polypythia_trainer.launch import run_local
from polypythia_trainer.loop import run_worker
from support.fixtures import s3_endpoint  # noqa: F401

RECORD_FIELDS = {
    "step", "loss", "grad_norm", "clipped", "lr", "param_norm", "update_ratio",
    "max_attn_logit", "logit_lognorm", "loss_scale", "nonfinite", "tokens_per_s",
    "step_time_s", "mfu", "attempt", "time",
}  # fmt: skip


def stop_after(n: int):
    """A should_stop that asks to stop once ``n`` steps have been started."""
    calls = iter(range(10**9))
    return lambda: next(calls) >= n - 1


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[str, list[float]]:
    """An uninterrupted 6-step run of seed 0."""
    store = str(tmp_path_factory.mktemp("reference"))
    summary = run_local(nano_config(store))
    assert summary["status"] == "completed" and summary["step"] == 6
    return store, losses(store)


def test_same_seed_gives_bit_identical_losses(reference, tmp_path) -> None:
    store, expected = reference
    run_worker(nano_config(tmp_path))
    assert len(expected) == 6
    assert losses(str(tmp_path)) == expected  # exact, not approx


@pytest.mark.parametrize("axis", ["weightSeed", "dataSeed"])
def test_each_seed_axis_changes_the_losses(reference, tmp_path, axis: str) -> None:
    _, expected = reference
    run_worker(nano_config(tmp_path, steps=2, checkpoints={"steps": [0]}, **{axis: 1}))
    got = losses(str(tmp_path))
    assert got[0] != expected[0] and got[1] != expected[1]


def test_telemetry_records_carry_the_contract_fields(reference) -> None:
    store, _ = reference
    records = RunStore.open(store).read_telemetry()
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    for r in records:
        assert set(r) == RECORD_FIELDS
        assert r["attempt"] == 0 and r["nonfinite"] is False and r["mfu"] is None
        assert r["loss_scale"] is None
        assert r["grad_norm"] > 0 and r["param_norm"] > 0 and 0 <= r["update_ratio"] < 1
        # AnnealingLR: the first update uses rate 0 (Pythia's step1 equals step0)
        assert (r["update_ratio"] == 0) == (r["step"] == 1)
        assert r["max_attn_logit"] > 0 and r["logit_lognorm"] > 0 and r["tokens_per_s"] > 0
        assert r["clipped"] == (r["grad_norm"] > 1.0)
    # AnnealingLR after s - 1 steps, W = 2, T = 6: 0, peak/2, peak, then cosine, m capped at T-W
    assert [r["lr"] for r in records[:3]] == pytest.approx([0.0, 0.0015, 0.003], rel=1e-12)
    assert records[3]["lr"] == pytest.approx(0.0015 * (math.cos(math.pi / 6) + 1), rel=1e-12)
    assert records[-1]["lr"] == records[-2]["lr"] < records[3]["lr"]


def test_checkpoints_load_in_hugging_face(reference) -> None:
    store, _ = reference
    run = RunStore.open(store)
    assert run.complete_checkpoints() == [0, 1, 2, 4, 6]  # planned + the final step
    assert json.loads((run.local_path(0) / ".." / ".." / "run.json").read_text())["run"]
    path = run.local_path(4)
    model = GPTNeoXForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = tokenizer("the cat", return_tensors="pt").input_ids
    assert model(ids).logits.shape[-1] == 1024
    assert (path / "trainer_state" / "state.pt").is_file()
    step0 = GPTNeoXForCausalLM.from_pretrained(run.local_path(0), dtype=torch.float32)
    assert not torch.equal(step0.lm_head.weight, model.lm_head.weight)


def test_stop_then_resume_matches_uninterrupted_run(reference, tmp_path) -> None:
    _, expected = reference
    first = run_worker(nano_config(tmp_path), should_stop=stop_after(3))
    assert first["status"] == "stopped" and first["step"] == 3
    assert losses(str(tmp_path)) == expected[:3]  # telemetry flushed on stop
    second = run_worker(nano_config(tmp_path))
    assert second["status"] == "completed" and second["resumed_from"] == 2
    assert second["attempt"] == 1
    assert losses(str(tmp_path)) == expected


def test_resume_only_checkpoints_are_pruned(tmp_path) -> None:
    cfg = nano_config(
        tmp_path, steps=6, checkpoints={"steps": [0, 4], "resumeEvery": 1, "keepResume": 2}
    )
    run_worker(cfg)
    assert RunStore.open(str(tmp_path)).complete_checkpoints() == [0, 4, 5, 6]


def test_resume_through_s3_storage(reference, s3_endpoint) -> None:  # noqa: F811
    _, expected = reference
    uri = f"{s3_endpoint.uri}/t/t-nano-s0"
    storage = {"uri": s3_endpoint.uri, "endpoint": s3_endpoint.url, "secure": False,
               "region": s3_endpoint.server.region}  # fmt: skip
    cfg = nano_config("unused", steps=4, storage=storage, runUri=uri)
    run_worker(cfg, should_stop=stop_after(3))
    summary = run_worker(cfg)
    assert summary["resumed_from"] == 2 and summary["status"] == "completed"
    kwargs = s3_endpoint.store_kwargs()
    assert losses(uri, **kwargs) == expected[:4]
    assert RunStore.open(uri, **kwargs).complete_checkpoints() == [0, 1, 2, 4]


@pytest.mark.parametrize(("pinned_for", "left"), [(1, [0, 2, 4, 5, 6]), (0, [0, 4, 5, 6])])
def test_a_pinned_restart_checkpoint_is_pruned_only_once_its_attempt_passed_it(
    tmp_path, pinned_for: int, left: list[int]
) -> None:
    """The operator pinned step 2 for the attempt that restarts from it while this one
    (attempt 0) still runs: attempt 0 prunes around it. A pin for attempt 0 itself is
    released once it checkpoints past step 2, and the step is pruned as usual."""
    store = RunStore.open(str(tmp_path))
    pin = {"step": 2, "attempt": pinned_for, "reason": "rewind", "at": 0.0}
    store.store.put_bytes(store.key("pins/step2.json"), json.dumps(pin).encode())
    cfg = nano_config(
        tmp_path, steps=6, checkpoints={"steps": [0, 4], "resumeEvery": 1, "keepResume": 2}
    )
    run_worker(cfg)
    assert RunStore.open(str(tmp_path)).complete_checkpoints() == left
    assert sorted(pins.pins(store)) == ([2] if pinned_for else [])


@pytest.mark.parametrize("order", ["megatron", "permutation"])
def test_resume_with_skipped_batches_is_bit_identical_on_both_orders(order, tmp_path) -> None:
    data = {"order": order, "skipBatches": [[1, 3]]}
    whole = run_local(nano_config(tmp_path / "whole", data=data))
    assert whole["status"] == "completed"
    expected = losses(str(tmp_path / "whole"))
    first = run_worker(nano_config(tmp_path / "split", data=data), should_stop=stop_after(3))
    assert first["step"] == 3
    second = run_worker(nano_config(tmp_path / "split", data=data))
    assert second["status"] == "completed" and second["resumed_from"] == 2
    assert losses(str(tmp_path / "split")) == expected


def test_megatron_order_trains_on_other_batches_than_the_permutation(reference, tmp_path) -> None:
    _, permutation = reference
    run_local(nano_config(tmp_path, data={"order": "megatron"}))
    megatron = losses(str(tmp_path))
    assert megatron[0] != permutation[0]
