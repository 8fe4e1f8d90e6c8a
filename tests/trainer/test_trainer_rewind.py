"""A rewound run (spike action `rewind`): the trainer obeys the rewind record in storage.

It resumes from the restart checkpoint, skips the recorded batches on this and every
later attempt, and its telemetry reads as one history: identical to the un-rewound run
up to the first skipped batch, different after it.
"""

from __future__ import annotations

from trainer_helpers import losses, nano_config

from polypythia.storage import RunStore
from polypythia_trainer import checkpoint as ckpt
from polypythia_trainer.loop import run_worker

STEPS = 10
CHECKPOINTS = {"steps": [0, 4, 10]}
SPIKE = {"signal": "loss", "onsetStep": 7, "magnitude": 8.0, "attempt": 0}


def stop_after(n: int):
    """A should_stop that asks to stop once ``n`` steps have been started."""
    calls = iter(range(10**9))
    return lambda: next(calls) >= n - 1


def test_rewound_run_skips_batches_on_every_later_attempt(tmp_path) -> None:
    plain, rewound, skipped = (str(tmp_path / n) for n in ("plain", "rewound", "skipped"))
    run_worker(nano_config(plain, steps=STEPS, checkpoints=CHECKPOINTS))
    reference = losses(plain)

    # The first timeline gets to step 8, then the driver rewinds it to step 4 and asks
    # to skip batches [5, 7): step 5 still eats batch 4, step 6 eats batch 7.
    cfg = nano_config(rewound, steps=STEPS, checkpoints=CHECKPOINTS)
    run_worker(cfg, should_stop=stop_after(8))
    store = RunStore.open(rewound)
    assert len(losses(rewound)) == 8 and store.complete_checkpoints() == [0, 4]
    store.record_rewind(4, (5, 7), SPIKE)
    assert [r["step"] for r in store.read_telemetry()] == [1, 2, 3, 4]

    # The rewound attempt is stopped early and retried: the retry must skip the same batches.
    first = run_worker(cfg, should_stop=stop_after(2))
    assert first["resumed_from"] == 4 and first["attempt"] == 1 and first["step"] == 6
    second = run_worker(cfg)
    assert second["status"] == "completed" and second["attempt"] == 2

    got = losses(rewound)
    assert len(got) == STEPS
    assert got[:5] == reference[:5]  # batches 0..4: bit-identical
    assert all(a != b for a, b in zip(got[5:], reference[5:], strict=True))
    history = store.read_telemetry()
    # Attempt 1 stopped without a checkpoint after step 4: the retry redid steps 5 and 6.
    assert [r["attempt"] for r in history] == [0] * 4 + [2] * 6
    final = ckpt.read_state(store.local_path(STEPS))
    assert final["next_batch_index"] == STEPS + 2 and final["attempt"] == 2

    # The same as a run that skipped [5, 7) from the start (config data.skipBatches).
    run_worker(
        nano_config(skipped, steps=STEPS, checkpoints=CHECKPOINTS, data={"skipBatches": [[5, 7]]})
    )
    assert losses(skipped) == got
