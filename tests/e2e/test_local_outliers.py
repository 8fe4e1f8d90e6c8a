"""The local driver flags a seed whose evaluation scores fall away from the others',
reading the evaluation files from storage as they land (no training needed here)."""

from __future__ import annotations

import urllib.request

from polypythia.local.driver import DriverOptions, LocalDriver
from polypythia.local.metrics import LocalExporter
from polypythia.spec import sweep_from_object
from support.sweeps import sweep_object


def _sweep(seeds: int) -> dict:
    return sweep_object(
        "evals",
        {
            "sizes": ["nano"],
            "seeds": {"list": list(range(seeds))},
            "training": {"steps": 40},
            "checkpoints": {"schedule": "every", "every": 10},
            "evaluation": {"tasks": ["pp_cloze"], "schedule": "all"},
        },
    )


def _result(acc: float) -> dict:
    return {"results": {"pp_cloze": {"acc,none": acc, "acc_stderr,none": 0.02}}}


def test_low_eval_scores_flag_the_run_and_reach_summary_and_metrics(tmp_path):
    sweep = sweep_from_object(_sweep(6))
    driver = LocalDriver(sweep, str(tmp_path / "store"), DriverOptions(workdir=tmp_path))
    exporter = LocalExporter(sweep)
    try:
        for i, run in enumerate(driver.runs):
            for step in (10, 20, 30):
                acc = 0.2 if (i == 3 and step >= 20) else 0.6 + 0.01 * i + 0.01 * step / 10
                run.store.write_eval(step, _result(acc))
                run.checkpoint_losses[step] = 4.0 - step / 100 + 0.001 * i
            run.evaluated = set(run.store.evaluated_steps())
        driver._outliers()
        exporter.observe_sweep(driver)
        flagged = {r.plan.name: r.outlier for r in driver.runs if r.outlier}
        assert list(flagged) == [driver.runs[3].plan.name]
        verdict = flagged[driver.runs[3].plan.name]
        assert (verdict.signal, verdict.first_step) == ("eval:pp_cloze/acc", 20)
        with urllib.request.urlopen(f"http://127.0.0.1:{exporter.port}/metrics") as resp:
            text = resp.read().decode()
        line = next(
            ln
            for ln in text.splitlines()
            if ln.startswith("polypythia_outlier{")
            and 'signal="eval"' in ln
            and f'seed="{driver.runs[3].plan.seed}"' in ln
        )
        assert line.endswith(" 1.0")
    finally:
        exporter.close()
