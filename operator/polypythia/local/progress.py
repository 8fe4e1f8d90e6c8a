"""Progress of a local sweep: live bars on a terminal, plain lines elsewhere (CI, logs)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from polypythia.local.driver import LocalDriver


class LineProgress:
    """One line per phase change and per new checkpoint: readable in a log file."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[str, int]] = {}

    def start(self) -> None:
        return None

    def update(self, driver: LocalDriver) -> None:
        for run in driver.runs:
            key = (run.phase, len(run.checkpoints), len(run.rewinds))
            if self._seen.get(run.plan.name) == key:
                continue
            self._seen[run.plan.name] = key
            loss = f"{run.loss:.4f}" if run.loss is not None else "-"
            last = run.checkpoints[-1] if run.checkpoints else "-"
            rewound = f"  rewinds {len(run.rewinds)}" if run.rewinds else ""
            print(
                f"{run.plan.name:<32} {run.phase:<9} step {run.step:>7}/{run.total_steps} "
                f"loss {loss:>8}  checkpoint {last}{rewound}",
                flush=True,
            )

    def stop(self) -> None:
        return None


class BarProgress:
    """rich progress bars, one per run: step/total, loss, tokens/s, phase."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self._progress = Progress(
            TextColumn("{task.description:<28}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:>7}"),
            TextColumn("{task.fields[speed]:>9}"),
            TextColumn("{task.fields[phase]}"),
            refresh_per_second=4,
        )
        self._tasks: dict[str, int] = {}

    def start(self) -> None:
        self._progress.start()

    def update(self, driver: LocalDriver) -> None:
        for run in driver.runs:
            fields = {
                "loss": f"{run.loss:.4f}" if run.loss is not None else "-",
                "speed": f"{run.tokens_per_s:,.0f} t/s" if run.tokens_per_s else "",
                "phase": run.phase + (f" ({len(run.rewinds)} rewinds)" if run.rewinds else ""),
            }
            if run.plan.name not in self._tasks:
                self._tasks[run.plan.name] = self._progress.add_task(
                    run.plan.name, total=run.total_steps, **fields
                )
            self._progress.update(self._tasks[run.plan.name], completed=run.step, **fields)

    def stop(self) -> None:
        self._progress.stop()


def make_progress(tty: bool) -> LineProgress | BarProgress:
    return BarProgress() if tty else LineProgress()
