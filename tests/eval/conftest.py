"""Fixtures for the evaluation tests: offline Hugging Face settings and a tiny run."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.fixtures import s3_endpoint  # noqa: F401  (fixture)
from support.report_sweep import write_report_sweep


@pytest.fixture(scope="session", autouse=True)
def offline_hf(tmp_path_factory):
    """No hub: lm-eval and transformers must work from local files only."""
    home = tmp_path_factory.mktemp("hf_home")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HF_HOME", str(home))
        env.setenv("HF_HUB_OFFLINE", "1")
        env.setenv("HF_DATASETS_OFFLINE", "1")
        yield home


@pytest.fixture(scope="session")
def tokenizer():
    from polypythia_eval.tiny import build_tokenizer

    return build_tokenizer(256, docs=60)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tokenizer) -> Path:
    """A run folder with two complete checkpoints (steps 0 and 8) and a run config."""
    from polypythia.storage import RunStore
    from polypythia_eval.tiny import save_tiny_checkpoint

    root = tmp_path_factory.mktemp("store") / "sw" / "sw-nano-s0"
    store = RunStore.open(str(root))
    store.write_run_config({"sweep": "sw", "run": "sw-nano-s0", "size": "nano", "seed": 0})
    for step, seed in ((0, 0), (8, 1)):
        folder = tmp_path_factory.mktemp(f"ck{step}")
        save_tiny_checkpoint(folder, seed=seed, tokenizer=tokenizer)
        store.commit_checkpoint(step, folder)
    # An incomplete checkpoint must be invisible to the evaluator.
    (root / "checkpoints" / "step16").mkdir(parents=True)
    (root / "checkpoints" / "step16" / "config.json").write_text("{}")
    return root


@pytest.fixture(scope="session")
def report_sweep(tmp_path_factory) -> Path:
    """The synthetic sweep of ``support.report_sweep.write_report_sweep`` in a fresh folder."""
    return write_report_sweep(tmp_path_factory.mktemp("store") / "sw")


@pytest.fixture(scope="session")
def report_page(report_sweep, tmp_path_factory) -> tuple[Path, str]:
    """The report of ``report_sweep`` (its failed nano run marked so): the page and its text."""
    from polypythia_eval.report import render_report

    out = tmp_path_factory.mktemp("report")
    index = render_report(str(report_sweep), out, run_errors={"sw-nano-s0": "worker OOM-killed"})
    return index, index.read_text()
