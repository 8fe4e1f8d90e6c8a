"""The detector benchmark runs and meets its quality targets on a smaller history."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench/bench_detectors.py"


def test_bench_reports_json_lines_meeting_the_targets(capsys):
    spec = importlib.util.spec_from_file_location("bench_detectors", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--runs", "6", "--steps", "40000", "--seeds", "3"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by = {line["metric"]: line for line in lines}
    for name in ("loss_precision", "loss_recall", "grad_norm_precision", "grad_norm_recall"):
        assert by[name]["value"] >= 0.95, by[name]
    assert by["common_mode_accuracy"]["value"] >= 0.95
    assert by["common_mode_accuracy"]["data_driven"] == 4  # orders 0 and 1 x 2 runs
    assert by["points_per_s"]["value"] > 0 and by["feed_us_per_step"]["value"] > 0
