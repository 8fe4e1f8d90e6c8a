"""What `polypythia run` shows: elapsed time, ETA and tokens/s per run, evaluation progress
per checkpoint, spikes, rewinds and outlier verdicts as they happen, and a summary that
says when the cross-seed test could not run."""

from __future__ import annotations

import io
import math
from concurrent.futures import Future
from pathlib import Path

from rich.console import Console

from polypythia.local.display import LineDisplay, LiveDisplay, duration, make_display
from polypythia.local.driver import DriverOptions, LocalDriver
from polypythia.local.summary import print_summary
from polypythia.monitoring.cross_seed import CrossSeedResult
from polypythia.monitoring.outliers import OutlierVerdict
from polypythia.monitoring.spikes import SpikeEvent
from polypythia.spec import sweep_from_object
from support.sweeps import sweep_object


def _driver(tmp_path: Path, seeds: int) -> LocalDriver:
    sweep = sweep_from_object(
        sweep_object(
            "show",
            {
                "sizes": ["nano"],
                "seeds": {"list": list(range(seeds))},
                "training": {"steps": 100, "precision": "fp32"},
                "checkpoints": {"schedule": "every", "every": 20},
                "evaluation": {"tasks": ["pp_cloze"], "schedule": "all"},
            },
        )
    )
    return LocalDriver(sweep, str(tmp_path / "store"), DriverOptions(workdir=tmp_path / "work"))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_give_elapsed_eta_tokens_per_second_and_each_evaluated_checkpoint(
    tmp_path: Path,
) -> None:
    driver = _driver(tmp_path, 3)
    run = driver.runs[0]
    lines: list[str] = []
    clock = Clock()
    display = LineDisplay(lines.append, clock)
    display.update(driver)
    assert "Pending" in lines[0] and "ETA      -" in lines[0] and "evals 0/6" in lines[0]
    run.phase = "Running"
    display.update(driver)
    clock.now += 30
    run.monitor.step = 10
    display.update(driver)  # start-up (30 s at step 0) is not in the rate
    clock.now += 40
    run.monitor.step, run.monitor.loss, run.monitor.tokens_per_s = 50, 3.25, 1234.4
    run.checkpoints = [0, 20, 40]
    display.update(driver)
    mine = [line for line in lines if line.startswith("show-nano-s0")]
    assert "step     50/100" in mine[-1] and "loss  3.2500" in mine[-1]
    assert "1,234 tok/s" in mine[-1]
    assert "elapsed  1m10s" in mine[-1] and "ETA    50s" in mine[-1]  # 40 steps in 40 s
    # Training ended; the evaluations still run: not a silent `Succeeded`.
    clock.now += 50
    busy: Future = Future()
    run.phase, run.monitor.step = "Succeeded", 100
    run.checkpoints = [0, 20, 40, 60, 80, 100]
    run.eval_future, run.evaluated = busy, {0, 20}
    run.evals = {0: {"validation": {"loss": 6.9, "tokens": 10}}, 20: {}}
    display.update(driver)
    assert "Evaluating" in lines[-3] and "evals 2/6 (step40)" in lines[-3]
    assert lines[-2:] == [
        "eval     show-nano-s0: step0 evaluated, held-out loss 6.9000",
        "eval     show-nano-s0: step20 evaluated",
    ]
    clock.now += 30
    busy.set_result(None)
    run.evaluated = {0, 20, 40, 60, 80, 100}
    display.update(driver)
    assert "Succeeded" in lines[-5] and "evals 6/6" in lines[-5]
    assert "elapsed  2m00s" in lines[-5]  # training time: the clock stopped when it ended
    display.update(driver)
    assert len(lines) == len(set(lines))  # nothing repeated without a change


def test_spikes_rewinds_and_outliers_are_announced_when_they_happen(tmp_path: Path) -> None:
    driver = _driver(tmp_path, 4)
    run = driver.runs[2]
    lines: list[str] = []
    display = LineDisplay(lines.append, Clock())
    display.update(driver)
    lines.clear()
    run.spikes.append(
        SpikeEvent("show-nano-s2", "loss", 61, 62, 7.5, 18.3, 3.1, None, status="open")
    )
    run.rewinds.append(
        {"restartStep": 40, "skipBatches": [40, 70], "spike": {"signal": "loss", "onsetStep": 61}}
    )
    run.outlier = OutlierVerdict("nano/None", run.plan.name, "loss:validation", 20, 25.3, 3, 8.6)
    driver.cross_seed = CrossSeedResult({run.plan.name: [run.outlier]}, {})
    display.update(driver)
    news = [line for line in lines if not line.startswith("show-nano-s")]
    assert news == [
        "spike    show-nano-s2: loss at step 61 (18.3 sd above its baseline 3.1)",
        "rewind   show-nano-s2: back to step 40 after a loss spike at step 61, skipping "
        "batches [40, 70)",
        "outlier  show-nano-s2: yes (loss:validation level 25.3 > 8.6 from step 20)",
    ]
    lines.clear()
    display.update(driver)
    assert lines == []


def test_summary_says_why_the_outlier_test_did_not_run(tmp_path: Path, capsys) -> None:
    driver = _driver(tmp_path, 3)
    print_summary(driver, report=None, wall_s=1.0)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("show-")]
    assert len(rows) == 3 and all(row.endswith("  not tested (3 seeds)") for row in rows)
    driver = _driver(tmp_path, 4)
    driver.cross_seed = CrossSeedResult(
        {}, {r.plan.name: {"loss:validation": 0.3} for r in driver.runs}
    )
    print_summary(driver, report=None, wall_s=1.0)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("show-")]
    assert len(rows) == 4 and all(row.rstrip().endswith(" no") for row in rows)


def test_a_terminal_gets_a_live_table_with_time_columns(tmp_path: Path) -> None:
    driver = _driver(tmp_path, 3)
    driver.runs[1].phase, driver.runs[1].monitor.step = "Running", 5
    buffer = io.StringIO()
    clock = Clock()
    display = LiveDisplay(Console(file=buffer, force_terminal=True, width=160), clock)
    display.start()
    display.update(driver)
    clock.now += 10
    driver.runs[1].monitor.step, driver.runs[1].monitor.tokens_per_s = 25, 2048.0
    display.update(driver)
    clock.now += 10
    driver.runs[1].monitor.step = 45
    display.update(driver)
    display.stop()
    out = buffer.getvalue()
    for header in ("RUN", "PHASE", "TOK/S", "ELAPSED", "ETA", "EVALS", "SPIKES", "REWINDS"):
        assert header in out
    assert "2,048" in out and "show-nano-s1" in out and "trained 0/3" in out
    assert "28s" in out  # 55 steps left at 2 steps/s


def test_not_a_terminal_means_plain_lines() -> None:
    assert isinstance(make_display(False), LineDisplay)
    assert isinstance(make_display(True), LiveDisplay)


def test_durations_read_like_a_clock() -> None:
    assert [duration(s) for s in (None, math.nan, 0.4, 42, 185, 3725)] == [
        "-",
        "-",
        "0s",
        "42s",
        "3m05s",
        "1h02m",
    ]
