"""`polypythia evaluate` on a tiny checkpoint with the real lm-eval harness and offline tasks."""

from __future__ import annotations

import json
import shutil

import pytest

from polypythia import cli
from polypythia.storage import RunStore
from polypythia_eval.evaluate import EvaluateOptions, evaluate_run
from polypythia_eval.offline_tasks import OfflineItems

TASKS = ["pp_subject_verb_agreement", "pp_cloze"]


@pytest.fixture(scope="module")
def evaluated(tiny_run, tmp_path_factory):
    options = EvaluateOptions(
        tasks=TASKS,
        limit=12,
        batch_size=16,
        items=OfflineItems(pairs_per_phenomenon=20, cloze=20),
        workdir=tmp_path_factory.mktemp("work"),
    )
    summary = evaluate_run(str(tiny_run), "all", options, log=lambda _: None)
    return summary, options


def test_evaluates_every_complete_checkpoint_with_lm_eval(tiny_run, evaluated):
    summary, _ = evaluated
    assert summary.evaluated == [0, 8] and not summary.failed
    store = RunStore.open(str(tiny_run))
    assert store.evaluated_steps() == [0, 8]
    raw = (tiny_run / "evals" / "step8.json").read_text()
    result = json.loads(raw)
    json.dumps(result, allow_nan=False)  # strictly JSON, no NaN
    # lm-eval's own structure is kept.
    for key in ("results", "versions", "configs", "config", "n-shot", "n-samples"):
        assert key in result, key
    assert set(result["results"]) == set(TASKS)
    assert 0.0 <= result["results"]["pp_subject_verb_agreement"]["acc,none"] <= 1.0
    assert result["results"]["pp_cloze"]["perplexity,none"] > 1.0
    assert result["n-samples"]["pp_cloze"]["effective"] == 12
    # Per-item predictions for kappa: one per item, in doc order.
    pairs = result["predictions"]["pp_subject_verb_agreement"]
    assert pairs["doc_id"] == list(range(12))
    assert set(pairs["pred"]) <= {0, 1} and set(pairs["target"]) == {0}
    acc = sum(p == t for p, t in zip(pairs["pred"], pairs["target"], strict=True)) / 12
    assert acc == pytest.approx(result["results"]["pp_subject_verb_agreement"]["acc,none"])
    # Weight statistics of that checkpoint and who it is.
    kinds = result["weight_stats"]["kinds"]
    assert {"embedding", "attn_qkv", "mlp_in", "unembedding", "layernorm_gain"} <= set(kinds)
    assert result["polypythia"]["step"] == 8 and result["polypythia"]["run"] == "sw-nano-s0"


def test_second_run_skips_and_force_redoes(tiny_run, evaluated, tmp_path, capsys):
    _, options = evaluated
    path = tiny_run / "evals" / "step0.json"
    before = path.read_text()
    again = evaluate_run(str(tiny_run), "all", options, log=lambda _: None)
    assert again.evaluated == [] and again.skipped == [0, 8]
    assert path.read_text() == before
    argv = ["evaluate", str(tiny_run), "--steps", "0", "--force", "--tasks", "none"]
    assert cli.main(argv) == 0
    redone = json.loads(path.read_text())
    assert "results" not in redone and "weight_stats" in redone
    assert redone["polypythia"]["started"] > json.loads(before)["polypythia"]["started"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--steps", "1,x"], "--steps '1,x'"),
        (["--steps", "16"], "no complete checkpoint for step 16; complete checkpoints: 0, 8"),
        (["--tasks", "pp_nonsense"], "unknown project task 'pp_nonsense'"),
    ],
)
def test_bad_input_exits_2_with_a_message(tiny_run, argv, message, capsys):
    assert cli.main(["evaluate", str(tiny_run), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_evaluates_and_reports_a_run_in_s3(s3_endpoint, tokenizer, tmp_path):
    from polypythia_eval.report import render_report
    from polypythia_eval.tiny import save_tiny_checkpoint

    run_uri = f"{s3_endpoint.uri}/sw/sw-nano-s0"
    store = RunStore.open(run_uri, **s3_endpoint.store_kwargs())
    store.write_run_config({"sweep": "sw", "run": "sw-nano-s0", "size": "nano", "seed": 0})
    store.commit_checkpoint(4, save_tiny_checkpoint(tmp_path / "ck", tokenizer=tokenizer))
    argv = ["evaluate", run_uri, "--tasks", "none", "--endpoint", s3_endpoint.url, "--insecure"]
    assert cli.main(argv) == 0
    result = store.read_eval(4)
    assert result["weight_stats"]["kinds"]["embedding"]["numel"] == 1024 * 64
    assert result["polypythia"]["checkpoint"] == f"{run_uri}/checkpoints/step4"
    index = render_report(
        f"{s3_endpoint.uri}/sw", tmp_path / "report", **s3_endpoint.store_kwargs()
    )
    assert "sw-nano-s0" in index.read_text()


def test_eval_scores_reach_the_trained_runs_wandb_run_and_tensorboard(
    tiny_run, tmp_path, monkeypatch
):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from polypythia.metrics_sinks import TENSORBOARD_FOLDER, build_processor
    from support.wandb_log import wandb_history

    for name, value in {
        "WANDB_MODE": "offline",
        "WANDB_PROJECT": "polypythia-test",
        "WANDB_SILENT": "true",
        "WANDB_DIR": str(tmp_path / "wandb-files"),
        "WANDB_CONFIG_DIR": str(tmp_path / "config"),
        "WANDB_CACHE_DIR": str(tmp_path / "cache"),
    }.items():
        monkeypatch.setenv(name, value)
    run = tmp_path / "sw" / "sw-nano-s0"
    shutil.copytree(tiny_run, run)
    store = RunStore.open(str(run))
    for earlier in ("evals", TENSORBOARD_FOLDER):  # left by the module's other evaluations
        shutil.rmtree(run / earlier, ignore_errors=True)
    config = {**store.read_run_config(), "runUri": store.uri}
    store.write_run_config(config)
    trained = build_processor(store, config, attempt=0, work_dir=tmp_path / "unused")
    trained.log_records([{"step": s, "loss": 6.0 - s / 4} for s in range(1, 9)])
    trained.close()
    options = EvaluateOptions(
        tasks=["pp_cloze"], limit=4, batch_size=4, items=OfflineItems(cloze=8), weight_stats=False
    )
    summary = evaluate_run(str(run), [8], options, log=lambda _: None)
    assert summary.evaluated == [8]
    perplexity = json.loads((run / "evals" / "step8.json").read_text())["results"]["pp_cloze"][
        "perplexity,none"
    ]
    # Two offline W&B files (training, then evaluation) of ONE W&B run: the trained run's id.
    files = sorted((tmp_path / "wandb-files" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2 and len({f.name for f in files}) == 1
    rows = [row for f in files for row in wandb_history(f)]
    assert [row["eval/pp_cloze/perplexity"] for row in rows if "eval/step" in row] == [
        pytest.approx(perplexity)
    ]
    assert [row["eval/step"] for row in rows if "eval/step" in row] == [8]
    # TensorBoard's own reader finds the score at its checkpoint step.
    board = EventAccumulator(str(run / TENSORBOARD_FOLDER / "eval"), size_guidance={"scalars": 0})
    board.Reload()
    (event,) = board.Scalars("eval/pp_cloze/perplexity")
    assert (event.step, event.value) == (8, pytest.approx(perplexity, rel=1e-6))
