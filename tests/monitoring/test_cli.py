"""`polypythia spikes` and `polypythia outliers` on files, as a user runs them."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from polypythia.cli import main
from polypythia.monitoring.synthetic import make_history

ROOT = Path(__file__).resolve().parents[2]
MAPS = ROOT / "tests/fixtures/polypythias/training_maps.tsv"


def _write_csv(path: Path, runs: dict[str, object]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "step", "loss", "grad_norm"])
        for run, h in runs.items():
            for s, loss, g in zip(h.steps, h.loss, h.grad_norm, strict=True):
                w.writerow([run, int(s), f"{loss:.6f}", f"{g:.6f}"])


def test_spikes_json_from_csv_with_several_runs(tmp_path, capsys):
    runs = {"a": make_history(6_000, 1, spikes=2), "b": make_history(6_000, 2, spikes=0)}
    path = tmp_path / "log.csv"
    _write_csv(path, runs)
    assert main(["spikes", str(path), "-o", "json", "--signals", "loss"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(o["run"], o["onsetStep"]) for o in out] == [("a", p.step) for p in runs["a"].planted]
    assert set(out[0]) >= {
        "run",
        "signal",
        "onsetStep",
        "peakStep",
        "magnitude",
        "recoveryStep",
        "kind",
    }
    assert all(o["recoveryStep"] and o["kind"] == "seed-specific" for o in out)


def test_spikes_shared_by_most_runs_are_common_mode_without_a_data_order(tmp_path, capsys):
    """A shock at step 2500 in every run (a schedule or system event) and one seed's own
    spike: common-mode without knowing the data order; the order column names the cause."""
    runs = {
        f"r{i}": make_history(4_000, 10 + i, spikes=0, data_spike_steps=(2_499,)) for i in range(4)
    }
    runs["r4"] = make_history(4_000, 14, spikes=0, data_spike_steps=(3_199,))
    path = tmp_path / "log.csv"
    _write_csv(path, runs)
    assert main(["spikes", str(path), "-o", "json", "--signals", "loss"]) == 0
    out = {
        (o["run"], o["onsetStep"]): (o["kind"], o["cause"])
        for o in json.loads(capsys.readouterr().out)
    }
    assert out == {(f"r{i}", 2_500): ("common-mode", "unknown") for i in range(4)} | {
        ("r4", 3_200): ("seed-specific", "none")
    }
    with_order = tmp_path / "ordered.csv"
    rows = path.read_text().splitlines()
    with_order.write_text(
        "\n".join([rows[0] + ",order"] + [r + "," + r.split(",")[0] for r in rows[1:]]) + "\n"
    )
    assert (
        main(["spikes", str(with_order), "--signals", "loss", "--data-order-column", "order"]) == 0
    )
    table = capsys.readouterr().out
    assert table.count("schedule-or-system") == 4 and "CAUSE" in table.splitlines()[0]


def test_spikes_table_from_telemetry_jsonl_takes_the_latest_attempt(tmp_path, capsys):
    h = make_history(3_000, 4, spikes=0)
    lines = [
        {"step": int(s), "loss": float(v), "grad_norm": float(g), "attempt": 0}
        for s, v, g in zip(h.steps, h.loss, h.grad_norm, strict=True)
    ]
    # attempt 0 blew up at 2000-2010; the rewound attempt 1 replaced those steps
    bad = [dict(r, loss=r["loss"] + 5.0) for r in lines[1999:2010]]
    redo = [dict(r, attempt=1) for r in lines[1999:2010]]
    path = tmp_path / "000000001-000003000.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in lines[:1999] + bad + redo + lines[2010:]))
    assert main(["spikes", str(path)]) == 0
    assert capsys.readouterr().out.strip() == "no spikes found"


@pytest.mark.parametrize(
    "content, message",
    [
        (
            "run,step,loss\na,1,2.5\na,2,abc\n",
            "log.csv:3: column 'loss': must be a number, got 'abc'",
        ),
        ("run,step,loss\na,1,2.5\na,,2.0\n", "log.csv:3: column 'step' is missing or empty"),
        ("run,step,loss\na,1,2.5,7\n", "log.csv:2: 4 fields, the header has 3"),
    ],
)
def test_bad_files_name_line_and_column_and_exit_2(tmp_path, content, message):
    path = tmp_path / "log.csv"
    path.write_text(content)
    proc = subprocess.run(
        [sys.executable, "-m", "polypythia.cli", "spikes", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT / "operator"), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_outliers_on_polypythias_training_maps(capsys):
    assert main(["outliers", str(MAPS), "-o", "json", "--value-column", "score"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(o["run"], o["signal"], o["firstStep"]) for o in out] == [
        ("3", "score", 83000),
        ("4", "score", 123000),
    ]
    assert main(["outliers", str(MAPS)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:5] == ["GROUP", "RUN", "SIGNAL", "TEST", "FIRST_STEP"]
    assert len(table) == 3


def test_outliers_jsonl_loss_direction_and_bad_column(tmp_path, capsys):
    rows = [
        {
            "size": "70m",
            "run": f"s{seed}",
            "step": step,
            "loss": 3.0 + 0.01 * seed + (1.0 if seed == 2 and step >= 2000 else 0.0),
        }
        for seed in range(6)
        for step in (1000, 2000, 3000)
    ]
    path = tmp_path / "evals.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    assert main(["outliers", str(path), "-o", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(o["group"], o["run"], o["firstStep"]) for o in out] == [("70m", "s2", 2000)]
    assert main(["outliers", str(path), "--value-column", "acc"]) == 2
    assert "--value-column 'acc': no such column" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["spikes", "--min-history", "1"], "--min-history: must be in [2, window=128]"),
        (["spikes", "--signals", "loss,lr"], "--signals: must be a non-empty subset of"),
        (["outliers", "--min-runs", "2"], "--min-runs: must be >= 4, got 2"),
        (["outliers", "--false-alarm-rate", "1.5"], "--false-alarm-rate: must be in (0, 1)"),
    ],
)
def test_bad_detector_settings_name_the_flag_and_exit_2(tmp_path, capsys, argv, message):
    path = tmp_path / "log.csv"
    _write_csv(path, {"a": make_history(300, 1, spikes=0)})
    assert main([argv[0], str(path), *argv[1:]]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_bad_jsonl_line_is_named_and_blank_lines_are_skipped(tmp_path, capsys):
    path = tmp_path / "log.jsonl"
    path.write_text('{"run": "a", "step": 1, "loss": 2.5}\n\n{"run": "a", "step": 2, loss}\n')
    assert main(["spikes", str(path)]) == 2
    assert f"{path}:3: not valid JSON" in capsys.readouterr().err
