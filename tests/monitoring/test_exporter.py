"""The exporter: catalogue metrics, valid exposition, sweep removal, HTTP endpoint."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from polypythia import planner
from polypythia.monitoring import catalog
from polypythia.monitoring.exporter import RunLabels, SweepExporter
from polypythia.monitoring.spikes import RunSpikeDetector
from polypythia.monitoring.synthetic import make_history
from polypythia.spec import load_sweep_file
from support.prometheus import promtool

RUN = RunLabels("default", "tiny", "nano", "0", "pythia", "tiny-nano-s0")
OTHER = RunLabels("default", "other", "nano", "1", "pythia", "other-nano-s1")
INIT_STUDY = Path(__file__).resolve().parents[2] / "manifests/examples/sweep-init-study.yaml"


def _fill(ex: SweepExporter, run: RunLabels) -> None:
    h = make_history(4_000, 5, spikes=1)
    detector, events = RunSpikeDetector.rebuild(run.seed, h.steps, h.loss, h.grad_norm)
    ex.observe_telemetry(
        run,
        [
            {
                "step": int(s),
                "loss": float(v),
                "grad_norm": float(g),
                "time": 1e9 + s,
                "tokens_per_s": 5e3,
            }
            for s, v, g in zip(h.steps, h.loss, h.grad_norm, strict=True)
        ],
    )
    ex.observe_spikes(run, events)
    ex.set_spike_score(run, "loss", detector.score("loss"))
    ex.set_outlier(run, "eval", -5.0, True)
    ex.observe_eval(run, 2000, {"lambada_openai": {"acc": 0.31, "perplexity": 40.0}})
    ex.observe_eval(run, 1000, {"lambada_openai": {"acc": 0.2}})  # older: ignored
    ex.set_phase(run, "Running")
    ex.set_progress(
        run,
        checkpoints=12,
        last_checkpoint_step=2000,
        evaluations=10,
        evaluation_failures=1,
        evaluations_pending=1,
        retries=1,
        rewinds=0,
    )


def _samples(ex: SweepExporter) -> dict[tuple[str, frozenset], float]:
    out = {}
    for family in text_string_to_metric_families(ex.exposition().decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def _value(samples, name, **labels):
    want = {**RUN._asdict(), **labels}
    return samples[(name, frozenset(want.items()))]


def test_exposition_passes_promtool_and_uses_only_catalogue_names():
    ex = SweepExporter()
    _fill(ex, RUN)
    _fill(ex, OTHER)
    ex.observe_reconcile(0.02)
    ex.observe_reconcile(0.5, error=True)
    text = ex.exposition()
    result = promtool("check", "metrics", stdin=text)
    assert result.returncode == 0, result.stdout + result.stderr
    names = {name for name, _ in _samples(ex)}
    assert names <= catalog.series_names()
    for _name, labels in _samples(ex):
        assert "step" not in dict(labels)


def test_values_follow_the_inputs():
    ex = SweepExporter()
    _fill(ex, RUN)
    s = _samples(ex)
    assert _value(s, "polypythia_run_step") == 4000
    assert (
        _value(s, "polypythia_spikes_total", signal="loss", kind="seed-specific", cause="none") == 1
    )
    assert _value(s, "polypythia_spike_in_progress", signal="loss") == 0
    assert _value(s, "polypythia_eval_score", task="lambada_openai", metric="acc") == 0.31
    assert _value(s, "polypythia_eval_step") == 2000
    assert _value(s, "polypythia_run_phase", phase="Running") == 1
    assert _value(s, "polypythia_run_phase", phase="Failed") == 0
    assert _value(s, "polypythia_outlier", signal="eval") == 1
    assert _value(s, "polypythia_run_retries_total") == 1
    assert (
        s[
            (
                "polypythia_sweep_runs",
                frozenset({"namespace": "default", "sweep": "tiny", "phase": "Running"}.items()),
            )
        ]
        == 1
    )


def test_replayed_spike_events_are_counted_once():
    ex = SweepExporter()
    h = make_history(4_000, 5, spikes=1)
    _, events = RunSpikeDetector.rebuild("0", h.steps, h.loss, h.grad_norm)
    opened = [e for e in events if e.status == "open" and e.signal == "loss"]
    ex.observe_spikes(RUN, opened)
    s = _samples(ex)
    assert _value(s, "polypythia_spike_in_progress", signal="loss") == 1
    ex.observe_spikes(RUN, events)  # a restarted monitor replays everything
    s = _samples(ex)
    assert (
        _value(s, "polypythia_spikes_total", signal="loss", kind="seed-specific", cause="none") == 1
    )
    assert _value(s, "polypythia_spike_in_progress", signal="loss") == 0


def test_remove_sweep_drops_its_series_only():
    ex = SweepExporter()
    _fill(ex, RUN)
    _fill(ex, OTHER)
    ex.remove_sweep("default", "tiny")
    sweeps = {dict(labels).get("sweep") for _, labels in _samples(ex)}
    assert sweeps == {None, "other"}


def test_serve_answers_scrapes():
    ex = SweepExporter()
    _fill(ex, RUN)
    server = ex.serve(port=0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as r:
            body = r.read().decode()
        assert (
            'polypythia_run_step{init="pythia",namespace="default",run="tiny-nano-s0",'
            'seed="0",size="nano",sweep="tiny"}'
        ) in body
    finally:
        server.close()


def test_runs_differing_only_by_init_are_separate_series():
    """The init-study example runs seed 0 of `nano` under five inits: five loss series,
    each with its own value, none overwriting another."""
    sweep = load_sweep_file(str(INIT_STUDY))
    seed0 = [r for r in planner.plan_sweep(sweep) if r.seed == 0]
    assert len({(r.size, r.seed) for r in seed0}) == 1 and len(seed0) == 5
    ex = SweepExporter()
    for i, plan in enumerate(seed0):
        ex.observe_telemetry(RunLabels.of("default", plan.key), [{"step": 10, "loss": 5.0 + i}])
        ex.set_phase(RunLabels.of("default", plan.key), "Running")
    losses = {
        (dict(labels)["init"], dict(labels)["run"]): value
        for (name, labels), value in _samples(ex).items()
        if name == "polypythia_run_loss"
    }
    assert losses == {(r.init, r.name): 5.0 + i for i, r in enumerate(seed0)}
    running = [
        v
        for (name, labels), v in _samples(ex).items()
        if name == "polypythia_sweep_runs" and dict(labels)["phase"] == "Running"
    ]
    assert running == [5.0]


def test_heldout_loss_is_the_last_step_that_measured_one():
    ex = SweepExporter()
    ex.observe_telemetry(
        RUN,
        [
            {"step": 1, "loss": 4.0, "heldout_loss": 4.4},
            {"step": 2, "loss": 3.9, "heldout_loss": 4.2},
            {"step": 3, "loss": 3.8},
        ],
    )
    s = _samples(ex)
    assert _value(s, "polypythia_run_heldout_loss") == 4.2
    assert _value(s, "polypythia_run_loss") == 3.8
