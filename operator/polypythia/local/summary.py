"""The table printed when a local sweep ends, and where to find what it made."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from polypythia.local.display import outlier_text
from polypythia.tables import render_table

if TYPE_CHECKING:
    from polypythia.local.driver import LocalDriver


def print_summary(driver: LocalDriver, *, report: Path | None, wall_s: float) -> None:
    rows = []
    for run in sorted(driver.runs, key=lambda r: r.plan.order):
        rows.append(
            [
                run.plan.name,
                run.plan.size,
                run.plan.seed,
                run.phase,
                f"{run.step}/{run.total_steps}",
                run.loss,
                len(run.checkpoints),
                len(run.evaluated),
                len(run.spikes),
                len(run.rewinds),
                outlier_text(driver, run),
            ]
        )
    print()
    print(
        render_table(
            [
                "RUN",
                "SIZE",
                "SEED",
                "PHASE",
                "STEP",
                "LOSS",
                "CKPTS",
                "EVALS",
                "SPIKES",
                "REWINDS",
                "OUTLIER",
            ],
            rows,
        )
    )
    for run in driver.runs:
        for entry in run.rewinds:
            spike = entry["spike"]
            print(
                f"\n{run.plan.name}: rewound to step {entry['restartStep']} after a "
                f"{spike['signal']} spike at step {spike['onsetStep']}, skipped batches "
                f"[{entry['skipBatches'][0]}, {entry['skipBatches'][1]})"
            )
        for entry in run.refused:
            print(f"\n{run.plan.name}: rewind refused: {entry['reason']}")
    for run in driver.runs:
        if run.error:
            print(f"\n{run.plan.name}: {run.error}")
    print(f"\nwall time {wall_s:.0f} s")
    print(f"checkpoints, telemetry, evaluations: {driver.base_uri}/{driver.sweep.name}/")
    print(f"logs: {driver.options.workdir / 'logs'}/")
    if report is not None:
        print(f"report: {report}")
