"""Live exporters label spikes common-mode (cause: data, for runs sharing a data order) or
seed-specific, with the one classification of common_mode.py: the exporter helper itself, the local driver's exporter and the
operator's storage observer, each also rebuilt from storage as after a restart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from polypythia import cli, planner
from polypythia.k8s.observe import SweepObserver
from polypythia.local.driver import DriverOptions, LocalDriver
from polypythia.local.metrics import LocalExporter
from polypythia.monitoring.common_mode import CommonModeTracker
from polypythia.monitoring.exporter import RunLabels, SweepExporter
from polypythia.monitoring.spikes import RunSpikeDetector
from polypythia.monitoring.synthetic import History, make_history
from polypythia.runcore.monitor import SweepSpikes
from polypythia.runcore.phase import RunPhase
from polypythia.spec import Sweep, sweep_from_object
from polypythia.storage import RunStore
from support.fixtures import s3_endpoint  # noqa: F401
from support.sweeps import sweep_object

STEPS = 3_000
SHARED, ALONE = 1_500, 2_200  # onsets: a bad batch of data order 0; a spike of one seed


def _histories(sweep: str) -> dict[str, History]:
    """nano and micro of seed 0 share a data order and its bad batch; nano-s1 spikes alone."""
    return {
        f"{sweep}-nano-s0": make_history(STEPS, 1, spikes=0, data_spike_steps=(SHARED - 1,)),
        f"{sweep}-micro-s0": make_history(STEPS, 2, spikes=0, data_spike_steps=(SHARED - 1,)),
        f"{sweep}-nano-s1": make_history(STEPS, 3, spikes=0, data_spike_steps=(ALONE - 1,)),
        f"{sweep}-micro-s1": make_history(STEPS, 4, spikes=0),
    }


def _labels(sweep: str, run: str) -> RunLabels:
    size, seed = run.removeprefix(f"{sweep}-").split("-s")
    return RunLabels("default", sweep, size, seed, "pythia", run)


def _spike_counts(ex: SweepExporter) -> dict[tuple[str, str, str, str, str], float]:
    """(size, seed, signal, kind, cause) -> polypythia_spikes_total."""
    out = {}
    for family in text_string_to_metric_families(ex.exposition().decode()):
        for s in family.samples:
            if s.name == "polypythia_spikes_total":
                labels = ("size", "seed", "signal", "kind", "cause")
                out[tuple(s.labels[k] for k in labels)] = s.value
    return out


def _in_progress(ex: SweepExporter) -> set[tuple[str, str, str]]:
    out = set()
    for family in text_string_to_metric_families(ex.exposition().decode()):
        for s in family.samples:
            if s.name == "polypythia_spike_in_progress" and s.value == 1:
                out.add((s.labels["size"], s.labels["seed"], s.labels["signal"]))
    return out


EXPECTED = {
    (size, "0", signal, "common-mode", "data"): 1.0
    for size in ("nano", "micro")
    for signal in ("loss", "grad_norm")
} | {("nano", "1", signal, "seed-specific", "none"): 1.0 for signal in ("loss", "grad_norm")}


class _Live:
    """What both adapters do: events in progress at once, counted once the run core
    settled their kind."""

    def __init__(self, sweep: str, ex: SweepExporter, orders: dict[str, int]) -> None:
        self.sweep, self.ex = sweep, ex
        self.core = SweepSpikes(CommonModeTracker(orders))

    def observe(self, name: str, events, last_step) -> None:  # type: ignore[no-untyped-def]
        self.ex.observe_spikes(_labels(self.sweep, name), events, count=False)
        self._count(self.core.observe(name, events, last_step))

    def finish(self, name: str) -> None:
        self._count(self.core.finish(name))

    def _count(self, settled) -> None:  # type: ignore[no-untyped-def]
        for e in settled:
            self.ex.observe_spikes(_labels(self.sweep, e.run), [e])


def test_spikes_are_counted_once_their_kind_is_settled():
    sweep = "cm"
    histories = _histories(sweep)
    ex = SweepExporter()
    spikes = _Live(sweep, ex, {name: int(name[-1]) for name in histories})
    detectors = {name: RunSpikeDetector(name) for name in histories}

    def advance(name: str, upto: int) -> None:
        h, d = histories[name], detectors[name]
        lo = 0 if d.last_step is None else d.last_step
        events = d.feed_many(h.steps[lo:upto], h.loss[lo:upto], h.grad_norm[lo:upto])
        spikes.observe(name, events, d.last_step)

    advance(f"{sweep}-nano-s0", SHARED + 2)
    # The spike is in progress at once (the alert does not wait) but its kind is not
    # certain while any run of the sweep has not reached its step.
    assert ("nano", "0", "loss") in _in_progress(ex)
    assert _spike_counts(ex) == {}
    advance(f"{sweep}-micro-s0", SHARED + 10)
    advance(f"{sweep}-micro-s1", SHARED - 100)
    assert _spike_counts(ex) == {}
    advance(f"{sweep}-nano-s1", STEPS)
    advance(f"{sweep}-micro-s1", SHARED + 10)
    assert _spike_counts(ex) == {k: v for k, v in EXPECTED.items() if k[1] == "0"}
    advance(f"{sweep}-nano-s0", STEPS)
    advance(f"{sweep}-micro-s0", STEPS)
    assert _spike_counts(ex) == {k: v for k, v in EXPECTED.items() if k[1] == "0"}
    spikes.finish(f"{sweep}-micro-s1")  # it ended early: nano-s1's spike is its own
    assert _spike_counts(ex) == EXPECTED

    # A restarted monitor rebuilds the same labels from the whole histories at once.
    again = SweepExporter()
    rebuilt = _Live(sweep, again, {name: int(name[-1]) for name in histories})
    for name, h in histories.items():
        detector, events = RunSpikeDetector.rebuild(name, h.steps, h.loss, h.grad_norm)
        rebuilt.observe(name, events, detector.last_step)
    assert _spike_counts(again) == EXPECTED


def _sweep(name: str, storage: dict, instability: dict | None = None) -> Sweep:
    spec = {
        "sizes": ["nano", "micro"],
        "seeds": {"list": [0, 1]},
        "training": {"steps": STEPS, "globalBatchSize": 8, "sequenceLength": 32},
        "checkpoints": {"schedule": "every", "every": 1_000},
        "evaluation": {"tasks": [], "schedule": "none"},
        "storage": storage,
    }
    if instability:
        spec["instability"] = instability
    return sweep_from_object(sweep_object(name, spec))


def _write_telemetry(store: RunStore, h: History, upto: int = STEPS) -> None:
    for lo in range(0, upto, 1_000):
        hi = min(lo + 1_000, upto)
        store.append_telemetry(
            [
                {"step": int(s), "loss": float(v), "grad_norm": float(g)}
                for s, v, g in zip(h.steps[lo:hi], h.loss[lo:hi], h.grad_norm[lo:hi], strict=True)
            ],
            attempt=0,
        )


def _in_s3(s3_endpoint, name: str, short: str | None = None, instability: dict | None = None):  # noqa: F811
    """The sweep's runs in the S3 bucket (run.json and telemetry); run ``short`` stopped
    at step 2,000."""
    sweep = _sweep(name, {"bucket": s3_endpoint.bucket, "secure": False}, instability)
    plan = planner.plan_sweep(sweep)
    histories = _histories(name)
    for run in plan:
        store = RunStore.open(run.config["runUri"], **s3_endpoint.store_kwargs())
        store.write_run_config(run.config)
        _write_telemetry(store, histories[run.name], 2_000 if run.name == short else STEPS)
    return sweep, plan


def test_local_exporter_labels_spikes_by_data_order(tmp_path: Path):
    sweep = _sweep("lcm", {})
    histories = _histories("lcm")
    exporter = LocalExporter(sweep, port=0)
    try:
        driver = LocalDriver(
            sweep, str(tmp_path / "store"), DriverOptions(workdir=tmp_path), exporter=exporter
        )
        for run in driver.runs:
            assert run.plan.data_seed == run.plan.seed
            # micro-s1 stopped before nano-s1's spike: that spike's kind waits for it
            upto = 2_000 if run.plan.name == "lcm-micro-s1" else STEPS
            _write_telemetry(run.store, histories[run.plan.name], upto)
        driver.prepare()  # what a restarted `polypythia run` does: everything from storage
        assert _spike_counts(exporter.metrics) == {k: v for k, v in EXPECTED.items() if k[1] == "0"}
        failed = next(r for r in driver.runs if r.plan.name == "lcm-micro-s1")
        failed.phase = RunPhase.FAILED
        driver.finish_spikes()
        assert _spike_counts(exporter.metrics) == EXPECTED
    finally:
        exporter.close()


def test_operator_observer_labels_spikes_by_data_order(s3_endpoint):  # noqa: F811
    # micro-s1 failed for good before nano-s1's spike: that spike's kind waits for it
    sweep, plan = _in_s3(s3_endpoint, "ocm", short="ocm-micro-s1")
    server = s3_endpoint.server
    names = [r.name for r in plan]
    creds = (server.access_key, server.secret_key)
    for attempt in range(2):  # the second observer is a restarted operator
        ex = SweepExporter()
        observer = SweepObserver(("default", "ocm"), ex)
        observations = observer.observe(sweep, plan, names, creds, s3_endpoint.endpoint)
        assert observations["ocm-micro-s1"].step == 2_000
        assert {n: o.step for n, o in observations.items() if n != "ocm-micro-s1"} == {
            n: STEPS for n in names if n != "ocm-micro-s1"
        }
        assert _spike_counts(ex) == {k: v for k, v in EXPECTED.items() if k[1] == "0"}, attempt
        observer.finish(["ocm-micro-s1"])  # reconcile saw its RayJob fail after the last retry
        assert _spike_counts(ex) == EXPECTED, attempt


@pytest.mark.parametrize(
    ("name", "instability"),
    [("lab", None), ("lol", {"signals": ["loss"]})],
    ids=["crd-defaults", "loss-only"],
)
def test_the_same_spike_gets_the_same_label_live_in_status_and_in_the_report(
    s3_endpoint,  # noqa: F811
    tmp_path: Path,
    name: str,
    instability: dict | None,
    capsys,
):
    """One sweep in storage, read three ways: the operator's observer feeding the
    exporter (live), reconcile's status (``recentSpikes``), and the report made later
    from storage alone (its settings from the sweep.json the operator wrote: a sweep
    that watches only the loss has no gradient-norm spikes in its report either)."""
    from polypythia.k8s import reconcile as R
    from polypythia_eval.report import render_report

    sweep, plan = _in_s3(s3_endpoint, name, instability=instability)
    server = s3_endpoint.server
    ex = SweepExporter()
    observer = SweepObserver(("default", name), ex)
    names = [r.name for r in plan]
    creds = (server.access_key, server.secret_key)
    observations = observer.observe(sweep, plan, names, creds, s3_endpoint.endpoint)
    observer.record_applied(sweep, creds, s3_endpoint.endpoint)
    live = _spike_counts(ex)
    signals = ("loss",) if instability else ("loss", "grad_norm")
    assert live == {k: v for k, v in EXPECTED.items() if k[2] in signals}

    out = R.reconcile(
        sweep, plan, [], [], {}, observations, R.Images("t:1", "e:1"), "2026-12-01T12:00:00Z"
    )
    status = {
        (s["run"], s["signal"], s["onsetStep"]): (s["kind"], s["cause"])
        for s in out.status["recentSpikes"]
    }
    size_seed = {r.name: (r.size, str(r.seed)) for r in plan}
    assert {
        (*size_seed[run], signal, *label): 1.0 for (run, signal, _), label in status.items()
    } == live

    sweep_uri = plan[0].config["runUri"].rsplit("/", 1)[0]
    render_report(sweep_uri, tmp_path, **s3_endpoint.store_kwargs())
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["spikeSettings"]["from"] == "sweep.json"
    report = {(e["run"], e["signal"], e["onset_step"]): (e["kind"], e["cause"])
              for e in summary["spikes"]}  # fmt: skip
    assert report == status
    # `polypythia spikes` on the stored sweep, no flags: the sweep's settings too.
    storage = ["--endpoint", s3_endpoint.endpoint, "--insecure"]
    assert cli.main(["spikes", sweep_uri, "-o", "json", *storage]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert {(e["run"], e["signal"], e["onsetStep"]): (e["kind"], e["cause"])
            for e in shown} == status  # fmt: skip
