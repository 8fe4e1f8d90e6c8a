"""`make demo` as a benchmark: wall time, per-run start-up overhead and peak memory.

Prints one JSON line. Start-up overhead of a run is the time from its process
start to its first telemetry record (Ray worker start, imports, data, model).
Run on an otherwise idle machine; the figure is only as quiet as the machine.
``cpu_s`` is the CPU time of the driver and all its descendants (sampled, so processes
shorter than the sampling interval are missed): divided by the cores it bounds the wall
time the demo needs on a quiet machine, a figure that other work on the machine inflates
far less than the wall time.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
SWEEP = REPO / "manifests" / "examples" / "sweep-tiny.yaml"


def _sample(proc: psutil.Process, stop: threading.Event, out: list[float]) -> None:
    """Peaks of the summed RSS and of the summed PSS over the driver and all its descendants
    (Ray included), and their summed CPU time (each process's last sample), every 0.5 s.

    RSS counts the shared libraries (torch's alone is hundreds of MB) once per process that
    maps them; PSS shares them out, so its sum is the memory the demo takes from the machine.
    """
    peak_rss = peak_pss = 0
    cpu: dict[tuple[int, float], float] = {}
    while not stop.is_set():
        rss = pss = 0
        for p in [proc, *_children(proc)]:
            with contextlib.suppress(psutil.Error):  # a process may exit while sampled
                memory = p.memory_full_info()
                rss, pss = rss + memory.rss, pss + memory.pss
                times = p.cpu_times()
                cpu[(p.pid, p.create_time())] = times.user + times.system
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        time.sleep(0.5)
    out += [peak_rss, sum(cpu.values()), peak_pss]


def _children(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return proc.children(recursive=True)
    except psutil.Error:
        return []


def main() -> int:
    from polypythia.storage import SweepStore

    # `--no-ray`: the same demo with each run in its own process, to show Ray's share.
    no_ray = ["--no-ray"] if "--no-ray" in sys.argv[1:] else []
    work = Path(tempfile.mkdtemp(prefix="bench-demo-"))
    load_start = os.getloadavg()[0]
    started = time.time()
    proc = subprocess.Popen(
        [sys.executable, "-m", "polypythia.cli", "run", str(SWEEP), "--workdir", str(work),
         "--metrics-port", "-1", "--no-report", *no_ray],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "POLYPYTHIA_CACHE": str(work / "cache")},
    )  # fmt: skip
    stop, peak = threading.Event(), []
    sampler = threading.Thread(target=_sample, args=(psutil.Process(proc.pid), stop, peak))
    sampler.start()
    code = proc.wait()
    wall = time.time() - started
    stop.set()
    sampler.join()
    sweep = SweepStore.open(str(work / "store" / "tiny"))
    overheads = []
    evaluations = sum(len(sweep.run(name).evaluated_steps()) for name in sweep.runs())
    for name in sweep.runs():
        log = work / "logs" / f"{name}.log"
        history = sweep.run(name).read_telemetry()
        if history and log.exists():
            first = history[0]
            steps_time = first["time"] - first.get("step_time_s", 0)
            launch = _launch_time(log)
            if launch is not None:
                overheads.append(steps_time - launch)
    print(
        json.dumps(
            {
                "bench": "demo-no-ray" if no_ray else "demo",
                "exit_code": code,
                "wall_s": round(wall, 1),
                "runs": len(sweep.runs()),
                "startup_overhead_s_mean": round(sum(overheads) / len(overheads), 1)
                if overheads
                else None,
                "startup_overhead_s_max": round(max(overheads), 1) if overheads else None,
                "evaluations": evaluations,
                "peak_rss_gb": round(peak[0] / 2**30, 2) if peak else None,
                "peak_pss_gb": round(peak[2] / 2**30, 2) if peak else None,
                "cpu_s": round(peak[1], 1) if peak else None,
                "cpus": os.cpu_count(),
                "load_avg_1m_start": round(load_start, 2),
                "load_avg_1m": round(os.getloadavg()[0], 2),
            }
        )
    )
    return code


def _launch_time(log: Path) -> float | None:
    """The driver writes `=== YYYY-mm-dd HH:MM:SS <command>` when it starts a run."""
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("=== "):
            return time.mktime(time.strptime(line[4:23], "%Y-%m-%d %H:%M:%S"))
    return None


if __name__ == "__main__":
    sys.exit(main())
