"""`polypythia report` on a synthetic sweep (planted spikes, outlier seed, rewind, branch) and on
real Pythia evaluation files: what a researcher reads in it, checked against the data written."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from polypythia import cli
from polypythia.monitoring.common_mode import label_common_mode
from polypythia.monitoring.spikes import RunSpikeDetector
from polypythia.storage import RunStore
from polypythia_eval import figures
from polypythia_eval.analysis import analyse, loss_history
from polypythia_eval.report import outlier_verdict, render_report, sweep_context
from polypythia_eval.sources import RunData, load_sweep
from support.report_sweep import (
    BRANCH_RUN,
    BRANCH_STEP,
    COMMON_STEP,
    OUTLIER_RUN,
    REPORT_EVAL_STEPS,
    REWIND_RUN,
    REWIND_STEP,
    SPIKE_RUN,
    SPIKE_STEP,
    report_eval,
)

PYTHIA_EVALS = Path(__file__).resolve().parents[1] / "fixtures" / "pythia-evals"
SEEDS = [f"sw-micro-s{s}" for s in range(5)]


@pytest.fixture(scope="module")
def loaded(report_sweep):
    sweep = load_sweep(str(report_sweep), run_errors={"sw-nano-s0": "worker OOM-killed"})
    result = analyse(sweep)
    return sweep, result, sweep_context(sweep, result)


@pytest.fixture()
def page(report_page) -> tuple[Path, str]:
    return report_page


def _section(context: dict, size: str) -> dict:
    return next(s for s in context["sections"] if s["name"] == size)


def _text(html: str) -> str:
    body = re.sub(r"<script.*?</script>", " ", html, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body))


def test_summary_table_says_each_runs_verdict_and_why_untested(loaded):
    _, _, context = loaded
    rows = {r["run"]: r for r in _section(context, "micro")["rows"]}
    assert rows[OUTLIER_RUN]["outlier"].startswith("outlier: eval:pp_cloze/acc from step 150 (")
    assert "score" in rows[OUTLIER_RUN]["outlier"] and "> threshold" in rows[OUTLIER_RUN]["outlier"]
    for run in set(SEEDS) - {OUTLIER_RUN}:
        assert rows[run]["outlier"] == "not an outlier (tested on 2 signals)", run
    # A branch is compared with the other branches of its parent checkpoint, as live.
    assert rows[BRANCH_RUN]["outlier"] == (
        "not tested (1 branch of its parent checkpoint; the test needs 4)"
    )
    assert (
        rows[BRANCH_RUN]["branch"]
        == f"branch of {SPIKE_RUN} at step {BRANCH_STEP} (optimizer fresh)"
    )
    nano = _section(context, "nano")["rows"]
    assert nano[0]["outlier"] == "not tested (1 seed; the test needs 4)"
    assert nano[0]["status"] == "FAILED: worker OOM-killed"
    assert outlier_verdict("x", 3, [], []) == "not tested (3 seeds; the test needs 4)"
    assert (
        outlier_verdict("x", 5, [], []) == "not tested (no checkpoint with 4 seeds evaluated yet)"
    )
    # Rewinds, final losses: what storage holds.
    assert rows[REWIND_RUN]["rewinds"] == f"restarted at step {REWIND_STEP} (spike at step 120)"
    assert all(rows[r]["rewinds"] == "none" for r in SEEDS if r != REWIND_RUN)
    for seed, run in enumerate(SEEDS):
        assert rows[run]["heldout_loss"] == pytest.approx(6.0 - 3.0 + 0.01 * seed)
        assert rows[run]["heldout_step"] == 300
    sweep, _, _ = loaded
    s0 = next(r for r in sweep.runs if r.name == "sw-micro-s0")
    assert rows["sw-micro-s0"]["train_loss"] == pytest.approx(
        float(np.mean([r["loss"] for r in s0.telemetry[-10:]]))
    )
    assert any(f"onset step {SPIKE_STEP}" in s for s in rows[SPIKE_RUN]["spikes"])


def test_findings_answer_which_seed_when_recovered_outlier_and_scores(page):
    text = _text(page[1])
    assert f"{SPIKE_RUN}: loss spike (seed-specific): onset step {SPIKE_STEP}" in text
    spike = re.search(rf"{SPIKE_RUN}: loss spike \(seed-specific\).*?recovered at step (\d+)", text)
    assert spike and SPIKE_STEP < int(spike[1]) < SPIKE_STEP + 20
    assert f"common-mode loss spike at step {COMMON_STEP} in 6 of 6 runs" in text
    assert f"{OUTLIER_RUN} is a cross-seed outlier on eval:pp_cloze/acc from step 150" in text
    assert "pp_cloze/acc: median 0.52 at step 0 → 0.91 at step 300" in text
    assert "held-out loss: median 6.02 at step 0 → 3.02 at step 300" in text
    assert f"{REWIND_RUN} was rewound: restarted at step {REWIND_STEP}" in text


def test_eval_table_values_are_the_medians_of_the_per_seed_results(loaded, page):
    _, _, context = loaded
    (row,) = _section(context, "micro")["evals"]
    assert row.task == "pp_cloze/acc" and row.steps == REPORT_EVAL_STEPS
    for step in REPORT_EVAL_STEPS:
        written = [report_eval(s, step)["results"]["pp_cloze"]["acc,none"] for s in range(5)]
        assert row.median[step] == pytest.approx(float(np.median(written)))
        assert (row.low[step], row.high[step]) == pytest.approx((min(written), max(written)))
        assert row.seeds[step] == 5
        shown = re.search(
            rf'data-task="pp_cloze/acc" data-step="{step}">([^<]+)<', page[1]
        )  # fmt: skip
        assert shown and float(shown[1]) == pytest.approx(np.median(written), abs=5e-4)
    assert row.per_seed[OUTLIER_RUN][300] == pytest.approx(0.3)
    assert "<details><summary>pp_cloze/acc: per seed</summary>" in page[1]


def test_spike_labels_agree_with_the_monitoring_module(loaded, page):
    sweep, result, context = loaded
    expected = []
    for run in sweep.runs:
        steps, loss, grad = loss_history(run)
        if len(steps) > 1:
            _, found = RunSpikeDetector.rebuild(run.name, steps, loss, grad)
            expected.extend({(e.signal, e.onset_step): e for e in found}.values())
    last = {r.name: (r.telemetry[-1]["step"] if r.telemetry else -math.inf) for r in sweep.runs}
    labelled = label_common_mode(
        expected, {r.name: r.data_seed for r in sweep.runs}, last_step=last
    )
    want = {(e.run, e.signal, e.onset_step, figures.spike_label(e)) for e in labelled}
    # The planted truth: seed 1's own spike, and the shared one in every run at step 250.
    assert (SPIKE_RUN, "loss", SPIKE_STEP, "seed-specific") in want
    shared = {r for r, s, o, lab in want if o == COMMON_STEP or o == COMMON_STEP + 1}
    assert shared == {*SEEDS, BRANCH_RUN}
    assert all(
        lab == "common-mode (schedule-or-system)" for _, _, o, lab in want if o >= COMMON_STEP
    )
    table = {(e["run"], e["signal"], e["onset"], e["label"]) for e in context["spikes"]}
    assert table == want
    train = _section(context, "micro")["figures"]["train"].figure
    markers = {
        (t.meta["run"], t.meta["signal"], t.meta["onset"], t.text[0])
        for t in train.data
        if isinstance(t.meta, dict)
    }
    assert markers == want
    for run, signal, _onset, label in want:
        assert f'<td>{run}</td><td>{signal}</td><td class="spike-label">{label}</td>' in page[1]


def test_branch_is_drawn_from_its_parents_step(loaded):
    sweep, result, context = loaded
    train = _section(context, "micro")["figures"]["train"].figure
    lines = {t.legendgroup: t for t in train.data if t.mode == "lines" and t.yaxis == "y"}
    branch, parent = lines[BRANCH_RUN], lines[SPIKE_RUN]
    assert branch.name.startswith(f"{BRANCH_RUN}: branch of {SPIKE_RUN} at step {BRANCH_STEP}")
    assert branch.line.dash == "dot"
    assert branch.x[0] == BRANCH_STEP and branch.x[1] == BRANCH_STEP + 1
    assert branch.y[0] == parent.y[list(parent.x).index(BRANCH_STEP)]
    marker = next(t for t in train.data if t.legendgroup == BRANCH_RUN and t.mode == "markers+text")
    assert (marker.x[0], marker.text[0]) == (BRANCH_STEP, "branch")
    # A parent outside the sweep: labelled so, the curve starts at the branch's own steps.
    orphan = RunData(
        "sw-micro-b", "micro", 1,
        telemetry=[{"step": s, "loss": 3.0 - s / 100, "lr": 1e-3} for s in range(51, 60)],
        branch={"parent": "s3://b/other/other-micro-s1", "step": 50, "optimizer": "restored"},
    )  # fmt: skip
    fig = figures.training_curves("micro", [orphan], [], figures.colours(["sw-micro-b"])).figure
    (line,) = [t for t in fig.data if t.mode == "lines" and t.yaxis == "y"]
    assert "other-micro-s1 (not in this sweep)" in line.name and line.x[0] == 51


def test_no_figure_is_drawn_with_fewer_than_two_points(loaded, page):
    _, _, context = loaded
    nano = _section(context, "nano")["figures"]
    assert all(f.figure is None and f.absent for f in nano.values())
    assert "nano: training loss, gradient norm, learning rate: no logged steps yet" in page[1]
    for section in context["sections"]:
        for f in section["figures"].values():
            if f.figure is None:
                continue
            xs = {x for t in f.figure.data if t.x is not None for x in t.x if x is not None}
            assert len(xs) >= 2, f.key
    one = {"run-a": {100: 0.5}, "run-b": {100: 0.6}}
    fig = figures.eval_curves("micro", {"t/acc": one}, ["t/acc"], [], {})
    assert fig.figure is None
    assert fig.absent == (
        "micro: evaluation scores over checkpoints: only one evaluated checkpoint (step 100) "
        "so far; a curve needs two. Its values are in the tables."
    )


def test_page_is_self_contained_with_plotly_once(loaded, page):
    index, html = page
    _, _, context = loaded
    drawn = [f for s in context["sections"] for f in s["figures"].values() if f.figure is not None]
    assert {f.key.split("-")[0] for f in drawn} >= {
        "train", "heldout", "evals", "weights", "map", "outliers", "kappa"
    }  # fmt: skip
    assert html.count('class="plotly-graph-div"') == len(drawn)
    assert html.count("Plotly.newPlot(") == len(drawn)
    assert len(re.findall(r"plotly\.js v\d", html)) == 1  # the library's banner: inlined once
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=\"(https?:)?//", html)
    assert {p.name for p in index.parent.iterdir()} == {"index.html", "summary.json"}
    summary = json.loads((index.parent / "summary.json").read_text())
    assert summary["sizes"]["micro"][0]["run"] == "sw-micro-s0"
    loss_spikes = {
        (s["run"], s["onset_step"]) for s in summary["spikes"] if s["kind"] == "seed-specific"
    }
    assert loss_spikes == {(SPIKE_RUN, SPIKE_STEP)}


def test_outlier_scores_are_drawn_with_their_threshold(loaded):
    _, result, context = loaded
    fig = _section(context, "micro")["figures"]["outliers"].figure
    scores = {fs.signal: fs for fs in result.scores}
    assert set(scores) == {"loss:validation", "eval:pp_cloze/acc"}
    lines = [s for s in fig.layout.shapes if s.type == "line"]
    assert sorted(s.y0 for s in lines) == pytest.approx(
        sorted(fs.level_threshold for fs in scores.values())
    )
    ev = scores["eval:pp_cloze/acc"]
    i = ev.runs.index(OUTLIER_RUN)
    assert ev.change[i] > ev.change_threshold
    assert all(ev.change[j] <= ev.change_threshold and ev.level[j] <= ev.level_threshold
               for j in range(len(ev.runs)) if j != i)  # fmt: skip


SWEEP_YAML = """\
apiVersion: polypythia.io/v1alpha1
kind: PolyPythiaSweep
metadata: {name: sw}
spec:
  sizes: [micro]
  seeds: {list: [0, 1, 2, 3, 4]}
  instability: {outliers: {falseAlarmRate: 0.2, signals: [eval]}}
"""


def test_report_cli_writes_the_page(report_sweep, tmp_path, capsys):
    # --sweep: the cross-seed test runs with the sweep's own outlier settings, as live.
    (tmp_path / "sweep.yaml").write_text(SWEEP_YAML)
    argv = ["report", str(report_sweep), "--out", str(tmp_path / "out"),
            "--sweep", str(tmp_path / "sweep.yaml")]  # fmt: skip
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "out" / "index.html")
    assert "sw-micro-s3" in (tmp_path / "out" / "index.html").read_text()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["outlierSettings"] == {
        "falseAlarmRate": 0.2, "consecutive": 2, "signals": ["eval"], "from": "given"
    }  # fmt: skip
    assert {v["signal"] for v in summary["outliers"]} == {"eval:pp_cloze/acc"}


def test_report_bad_sweep_file_exits_2(report_sweep, tmp_path, capsys):
    argv = ["report", str(report_sweep), "--sweep", str(tmp_path / "nope.yaml")]
    assert cli.main(argv) == 2
    assert "nope.yaml: no such file" in capsys.readouterr().err


def test_report_of_an_empty_sweep_is_refused(tmp_path, capsys):
    # Issue #14: a report of nothing used to exit 0 with an empty page.
    (tmp_path / "sweep").mkdir()
    assert cli.main(["report", str(tmp_path / "sweep"), "--out", str(tmp_path / "out")]) == 2
    assert "no runs in it" in capsys.readouterr().err
    assert not (tmp_path / "out" / "index.html").exists()


def test_report_bad_source_exits_2(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_report_renders_the_real_pythia_evaluations(tmp_path):
    index = render_report(str(PYTHIA_EVALS), tmp_path)
    html = index.read_text()
    for size in ("70m", "160m", "410m"):
        assert f'id="fig-evals-{size}"' in html
        assert f"pythia-{size}" in html
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["runs"]["pythia-410m"]["size"] == "410m"
    # The same files also render as a reference section next to a sweep.
    ref = render_report(str(tmp_path / "none"), tmp_path / "with-ref", pythia_evals=PYTHIA_EVALS)
    text = ref.read_text()
    assert "Reference: pythia-evals" in text
    assert 'id="fig-ref-evals-70m"' in text
    assert text.count("Plotly.newPlot(") >= 3


def test_rewound_runs_history_is_the_new_timeline(report_sweep):
    store = RunStore.open(str(report_sweep / REWIND_RUN))
    steps = [r["step"] for r in store.read_telemetry()]
    assert steps == list(range(1, 301))


def test_init_study_section_is_kept_with_its_figure_inlined(tmp_path):
    root = tmp_path / "init-sw"
    for init, strategy, rate in (("base", "pythia", 60.0), ("gauss", "matched-gaussian", 40.0)):
        for seed in (0, 1):
            name = f"init-sw-nano-s{seed}-{init}"
            store = RunStore.open(str(root / name))
            store.write_run_config(
                {"sweep": "init-sw", "run": name, "size": "nano", "seed": seed,
                 "init": {"name": init, "strategy": strategy}, "training": {"steps": 60}}
            )  # fmt: skip
            losses = [2.0 + 5.0 * math.exp(-s / rate) + 0.01 * seed for s in range(1, 61)]
            store.append_telemetry(
                [{"step": s, "loss": v} for s, v in zip(range(1, 61), losses, strict=True)], 0
            )
    index = render_report(str(root), tmp_path / "out")
    html = index.read_text()
    assert "Initialisation study" in html and "matched-gaussian" in html
    assert 'src="data:image/png;base64,' in html
    assert {p.name for p in index.parent.iterdir()} == {"index.html", "summary.json"}


def test_long_histories_are_thinned_but_keep_their_spike_peaks():
    from polypythia.monitoring.spikes import SpikeEvent

    steps = range(1, 20_001)
    run = RunData(
        "sw-micro-s0", "micro", 0,
        telemetry=[{"step": s, "loss": 3.0 + (4.0 if s == 12_345 else 0.0), "grad_norm": 1.0,
                    "lr": 1e-3} for s in steps],
    )  # fmt: skip
    spike = SpikeEvent("sw-micro-s0", "loss", 12_345, 12_345, 7.0, 50.0, 3.0, 12_346, "seed-specific", "recovered")  # fmt: skip
    fig = figures.training_curves("micro", [run], [spike], figures.colours([run.name]))
    (loss,) = [t for t in fig.figure.data if t.mode == "lines" and t.yaxis == "y"]
    assert len(loss.x) <= figures.MAX_POINTS + 1
    assert 12_345 in loss.x and loss.y[list(loss.x).index(12_345)] == 7.0
    assert "thinned" in fig.caption
