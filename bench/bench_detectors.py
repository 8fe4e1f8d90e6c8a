"""Benchmark of the instability detectors on a PolyPythias-sized history.

50 runs (5 sizes x 10 seeds; the data order is the seed, shared across sizes as in
Pythia) x 143,000 steps of loss and gradient norm, generated with realistic decay
and noise, 3 seed-specific spikes per run and one common-mode (cause data) spike per data order
(the same step in the 5 runs sharing it). Prints JSON lines: detection throughput
and total time on one core, precision/recall on the planted loss spikes, common-mode
labelling accuracy, the streaming cost per step, and the restart rebuild time.

    PYTHONPATH=operator python bench/bench_detectors.py [--runs 50] [--steps 143000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

from polypythia.monitoring.common_mode import label_common_mode  # noqa: E402
from polypythia.monitoring.spikes import RunSpikeDetector  # noqa: E402
from polypythia.monitoring.synthetic import make_history  # noqa: E402

MATCH_STEPS = 5


def emit(**fields: object) -> None:
    print(json.dumps({"bench": "detectors", **fields}), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--steps", type=int, default=143_000)
    parser.add_argument("--spikes", type=int, default=3, help="seed-specific spikes per run")
    parser.add_argument("--seeds", type=int, default=10, help="data orders (runs / sizes)")
    parser.add_argument(
        "--heights", default="0.3,1.5", help="range of planted loss-spike heights (loss units)"
    )
    args = parser.parse_args(argv)
    heights = tuple(float(x) for x in args.heights.split(","))
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    t0 = time.perf_counter()
    runs = {}
    orders = {}
    for i in range(args.runs):
        order = i % args.seeds
        shared = (20_750 + 9_001 * order,) if args.steps > 30_000 + 9_001 * order else ()
        runs[f"run{i}"] = make_history(
            args.steps, seed=i, spikes=args.spikes, data_spike_steps=shared, heights=heights
        )
        orders[f"run{i}"] = order
    emit(
        metric="generate_s",
        value=round(time.perf_counter() - t0, 3),
        runs=args.runs,
        steps=args.steps,
        heights=list(heights),
    )

    t0, c0 = time.perf_counter(), time.process_time()
    events = []
    for name, h in runs.items():
        _, found = RunSpikeDetector.rebuild(name, h.steps, h.loss, h.grad_norm)
        events += found
    detect_s = time.perf_counter() - t0
    opened = [e for e in events if e.status == "open"]
    labelled = label_common_mode(opened, orders)
    classify_s = time.perf_counter() - t0 - detect_s
    cpu_s = time.process_time() - c0
    points = args.runs * args.steps * 2
    emit(
        metric="detect_total_s",
        value=round(detect_s + classify_s, 3),
        target_s=10.0,
        cpu_s=round(cpu_s, 3),
        detect_s=round(detect_s, 3),
        common_mode_s=round(classify_s, 3),
        cores=1,
    )
    emit(
        metric="points_per_s",
        value=round(points / detect_s),
        points=points,
        steps_per_s=round(points / 2 / detect_s),
    )

    shared_steps = {name: {20_750 + 9_001 * orders[name]} for name in runs}
    for signal, lead in (("loss", 0), ("grad_norm", 3)):
        planted = {(n, p.step - lead) for n, h in runs.items() for p in h.planted}
        found = [(e.run, e.onset_step) for e in labelled if e.signal == signal]
        hit = {
            (run, step)
            for run, step in planted
            if any(r == run and abs(o - step) <= MATCH_STEPS for r, o in found)
        }
        good = [
            f for f in found if any(r == f[0] and abs(f[1] - s) <= MATCH_STEPS for r, s in planted)
        ]
        emit(
            metric=f"{signal}_precision",
            value=round(len(good) / max(len(found), 1), 4),
            target=0.95,
            detected=len(found),
        )
        emit(
            metric=f"{signal}_recall",
            value=round(len(hit) / max(len(planted), 1), 4),
            target=0.95,
            planted=len(planted),
        )
    loss_events = [e for e in labelled if e.signal == "loss"]
    right = sum(
        (e.kind == "common-mode" and e.cause == "data")
        == any(abs(e.onset_step - s) <= MATCH_STEPS for s in shared_steps[e.run])
        for e in loss_events
    )
    emit(
        metric="common_mode_accuracy",
        value=round(right / max(len(loss_events), 1), 4),
        data_driven=sum(e.cause == "data" for e in loss_events),
    )

    h = runs["run0"]
    n = min(50_000, args.steps)
    detector = RunSpikeDetector("live")
    t0, c0 = time.perf_counter(), time.process_time()
    for s, loss, g in zip(
        h.steps[:n].tolist(), h.loss[:n].tolist(), h.grad_norm[:n].tolist(), strict=True
    ):
        detector.feed(s, loss, g)
    per_step = (time.perf_counter() - t0) / n
    cpu_step = (time.process_time() - c0) / n
    emit(
        metric="feed_us_per_step",
        value=round(per_step * 1e6, 2),
        cpu_us=round(cpu_step * 1e6, 2),
        signals=2,
        steps=n,
    )

    t0, c0 = time.perf_counter(), time.process_time()
    RunSpikeDetector.rebuild("restart", h.steps, h.loss, h.grad_norm)
    emit(
        metric="rebuild_one_run_s",
        value=round(time.perf_counter() - t0, 4),
        cpu_s=round(time.process_time() - c0, 4),
        steps=args.steps,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
