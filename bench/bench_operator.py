"""Operator benchmark against the emulated API server: JSON lines on stdout.

sweep_to_rayjobs_seconds (50 runs, target < 3; 1000 runs, target < 60), operator peak RSS
at 1000 runs (target < 300 MB), checkpoint_to_eval_job_seconds (target < poll + 1 s).
Run: PYTHONPATH=operator:tests python bench/bench_operator.py [--runs 50 1000]
"""

from __future__ import annotations

import argparse
import io
import json
import time

import psutil
from k8s.harness import Cluster, sweep_body

from support.moto_s3 import shared_s3_server

POLL = 1.0


def _peak_rss(proc: psutil.Process, peak: float) -> float:
    try:
        return max(peak, proc.memory_info().rss / 2**20)
    except psutil.Error:
        return peak


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def bench_runs(cluster: Cluster, runs: int) -> dict:
    ns = f"bench{runs}"
    cluster.create_namespace(ns)
    cluster.create_secret(ns, "s3")
    storage = {"bucket": cluster.s3.make_bucket(), "secretName": "s3", "secure": False}
    seeds = runs // 2
    body = sweep_body("b", seeds=seeds, maxConcurrentRuns=runs, storage=storage)
    proc = psutil.Process(cluster.operator.pid)
    here = psutil.Process()
    cpu0 = (_cpu(proc), _cpu(here))
    start = time.perf_counter()
    cluster.apply_sweep(ns, body)
    peak = 0.0
    while cluster.emulator.count_objects("ray.io/v1/rayjobs", ns, "polypythia.io/sweep=b") < runs:
        peak = _peak_rss(proc, peak)
        time.sleep(0.05)
    took = time.perf_counter() - start
    cpu = (_cpu(proc) - cpu0[0], _cpu(here) - cpu0[1])
    for _ in range(int(3 / 0.1)):  # status write-back and the next pass
        peak = _peak_rss(proc, peak)
        time.sleep(0.1)
    return {
        "metric": "sweep_to_rayjobs_seconds",
        "runs": runs,
        "value": round(took, 3),
        "operator_peak_rss_mb": round(peak, 1),
        # CPU seconds until the last RayJob existed: the operator process, and this process
        # (the emulated API server's thread, plus this loop's polling).
        "operator_cpu_s": round(cpu[0], 2),
        "emulator_cpu_s": round(cpu[1], 2),
        "load_average_1m": round(psutil.getloadavg()[0], 2),
        "cpus": psutil.cpu_count(),
    }


def bench_eval_latency(cluster: Cluster) -> dict:
    ns = "benchev"
    cluster.create_namespace(ns)
    cluster.create_secret(ns, "s3")
    bucket = cluster.s3.make_bucket()
    storage = {"bucket": bucket, "secretName": "s3", "secure": False}
    cluster.apply_sweep(ns, sweep_body("ev", seeds=1, sizes=("nano",), storage=storage))
    cluster.wait_for("RayJob", lambda: cluster.rayjobs(ns, "ev"))
    cluster.set_rayjob_status(ns, "ev-nano-s0", "Running", "RUNNING")
    time.sleep(2 * POLL)
    client = cluster.s3.client()
    start = time.perf_counter()
    client.put_object(
        bucket, "sweeps/ev/ev-nano-s0/checkpoints/step5/COMPLETE", io.BytesIO(b"{}"), 2
    )
    cluster.wait_for("eval Job", lambda: cluster.eval_jobs(ns, "ev"), timeout=30)
    return {
        "metric": "checkpoint_to_eval_job_seconds",
        "poll_interval_s": POLL,
        "value": round(time.perf_counter() - start, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, nargs="+", default=[50, 1000])
    args = parser.parse_args()
    with Cluster(shared_s3_server()) as cluster:
        cluster.start_operator(poll_interval=POLL)
        cluster.wait_for("operator up", lambda: cluster.emulator.calls, timeout=60)
        time.sleep(1)
        print(json.dumps(bench_eval_latency(cluster)), flush=True)
        for runs in args.runs:
            print(json.dumps(bench_runs(cluster, runs)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
