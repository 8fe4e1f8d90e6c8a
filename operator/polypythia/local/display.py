"""What `polypythia run` shows while a sweep trains: per run its phase, step, loss, tokens/s,
elapsed time and ETA, how far evaluation of its checkpoints has got, and a line for each
spike, rewind and outlier verdict when it happens.

The driver only hands its state over (``update(driver)`` once per poll); everything shown
is derived here from that state and the display's own clock. A terminal gets a live table
(rich); anything else (a CI log, ``| tee``) gets plain lines, one per change.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from polypythia import planner
from polypythia.monitoring.cross_seed import seed_group
from polypythia.runcore.phase import RunPhase

if TYPE_CHECKING:
    from polypythia.local.driver import LocalDriver, RunState


def duration(seconds: float | None) -> str:
    """``1h02m``, ``3m05s``, ``42s``; ``-`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "-"
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


@dataclass
class _Timing:
    """When the display first saw a run train, and when it first saw the step advance:
    the rate an ETA comes from counts from there, so start-up time is not in it."""

    started: float | None = None
    ended: float | None = None
    base: tuple[float, int] | None = None
    moved: bool = False


@dataclass
class RunTimer:
    """Per-run elapsed time and ETA from (time, step) observations."""

    _runs: dict[str, _Timing] = field(default_factory=dict)

    def observe(self, name: str, phase: str, step: int, now: float) -> None:
        t = self._runs.setdefault(name, _Timing())
        if phase == RunPhase.RUNNING:
            if t.started is None:
                t.started = now
            t.ended = None
            if t.base is None or step < t.base[1]:  # first sight, or a rewind went back
                t.base, t.moved = (now, step), False
            elif not t.moved and step > t.base[1]:  # the first steps: start-up is over
                t.base, t.moved = (now, step), True
        elif t.started is not None and t.ended is None:
            t.ended = now

    def elapsed(self, name: str, now: float) -> float | None:
        t = self._runs.get(name)
        if t is None or t.started is None:
            return None
        return (t.ended or now) - t.started

    def steps_per_s(self, name: str, step: int, now: float) -> float | None:
        t = self._runs.get(name)
        if t is None or t.base is None or step <= t.base[1] or now <= t.base[0]:
            return None
        return (step - t.base[1]) / (now - t.base[0])

    def eta(self, name: str, step: int, total: int, now: float) -> float | None:
        rate = self.steps_per_s(name, step, now)
        if step >= total:
            return 0.0
        return (total - step) / rate if rate else None


@dataclass(frozen=True)
class RunView:
    """One run as shown: all text-ready, computed from the driver's state."""

    name: str
    phase: str
    step: int
    total: int
    loss: float | None
    tokens_per_s: float | None
    elapsed_s: float | None
    eta_s: float | None
    evals_done: int
    evals_total: int
    evaluating: int | None
    spikes: int
    rewinds: int

    @property
    def evals(self) -> str:
        """``2/6 (step40)`` while a checkpoint is evaluated, ``6/6`` when done."""
        if not self.evals_total:
            return "-"
        now = f" (step{self.evaluating})" if self.evaluating is not None else ""
        return f"{self.evals_done}/{self.evals_total}{now}"

    @property
    def state(self) -> str:
        """The phase, with `evaluating` for a run whose training ended but whose
        checkpoints are still being evaluated (not a silent `Succeeded`)."""
        if self.phase == RunPhase.SUCCEEDED and self.evals_done < self.evals_total:
            return "Evaluating" if self.evaluating is not None else "Eval queued"
        return self.phase


def evaluation_progress(driver: LocalDriver, run: RunState) -> tuple[int, int, int | None]:
    """(evaluated, to evaluate over the whole run, the checkpoint being evaluated now)."""
    if not driver.options.evaluate or not planner.evaluation_tasks(
        driver.sweep.spec, run.plan.size
    ):
        return 0, 0, None
    planned = planner.evaluation_steps(driver.sweep.spec, run.plan.config["checkpoints"]["steps"])
    done = len(set(planned) & set(run.evaluated))
    busy = run.eval_future is not None and not run.eval_future.done()
    waiting = planner.evaluation_steps(
        driver.sweep.spec, run.checkpoints, run.plan.config["checkpoints"]["steps"]
    )
    current = next((s for s in waiting if s not in run.evaluated), None) if busy else None
    return done, len(planned), current


def views(driver: LocalDriver, timer: RunTimer, now: float) -> list[RunView]:
    out = []
    for run in sorted(driver.runs, key=lambda r: r.plan.order):
        name = run.plan.name
        timer.observe(name, run.phase, run.step, now)
        done, total, current = evaluation_progress(driver, run)
        running = run.phase == RunPhase.RUNNING
        out.append(
            RunView(
                name=name,
                phase=run.phase,
                step=run.step,
                total=run.total_steps,
                loss=run.loss,
                tokens_per_s=run.tokens_per_s if running else None,
                elapsed_s=timer.elapsed(name, now),
                eta_s=timer.eta(name, run.step, run.total_steps, now) if running else None,
                evals_done=done,
                evals_total=total,
                evaluating=current,
                spikes=len(run.spikes),
                rewinds=len(run.rewinds),
            )
        )
    return out


def outlier_text(driver: LocalDriver, run: RunState) -> str:
    """The outlier verdict in words: flagged (signal, test, score > threshold, from which
    step), ``no`` when the cross-seed test ran, else ``not tested`` and why."""
    verdict = run.outlier
    if verdict is not None:
        return (
            f"yes ({verdict.signal} {verdict.test} {verdict.score:.1f} > "
            f"{verdict.threshold:.1f} from step {verdict.first_step})"
        )
    if driver.cross_seed.latest_z.get(run.plan.name):
        return "no"
    group = seed_group(run.plan.size, run.plan.init, run.plan.parent)
    seeds = sum(
        1 for r in driver.runs if seed_group(r.plan.size, r.plan.init, r.plan.parent) == group
    )
    needed = driver.settings.outliers.min_runs
    if seeds < needed:
        return f"not tested ({seeds} seeds)"
    return f"not tested (fewer than {needed} seeds with checkpoint values)"


@dataclass
class NewsFeed:
    """Lines for what happened since the last call: spikes, rewinds, refused rewinds,
    outlier verdicts, finished evaluations. Each is reported once."""

    _seen: dict[tuple[str, str], int] = field(default_factory=dict)
    _flagged: set[str] = field(default_factory=set)
    _primed: bool = False

    def _new(self, run: str, kind: str, items: Sequence[Any]) -> Sequence[Any]:
        before = self._seen.get((run, kind), 0)
        self._seen[(run, kind)] = len(items)
        return items[before:] if len(items) > before else ()

    def lines(self, driver: LocalDriver) -> list[str]:
        out: list[str] = []
        for run in sorted(driver.runs, key=lambda r: r.plan.order):
            name = run.plan.name
            if not self._primed:  # a resumed sweep's old evaluations are not news
                self._seen[(name, "evaluated")] = len(run.evaluated)
            for spike in self._new(name, "spike", run.spikes):
                size = "non-finite" if math.isinf(spike.magnitude) else f"{spike.magnitude:.1f} sd"
                out.append(
                    f"spike    {name}: {spike.signal} at step {spike.onset_step} "
                    f"({size} above its baseline {spike.baseline:.4g})"
                )
            for entry in self._new(name, "rewind", run.rewinds):
                spike = entry["spike"]
                out.append(
                    f"rewind   {name}: back to step {entry['restartStep']} after a "
                    f"{spike['signal']} spike at step {spike['onsetStep']}, skipping batches "
                    f"[{entry['skipBatches'][0]}, {entry['skipBatches'][1]})"
                )
            for entry in self._new(name, "refused", run.refused):
                out.append(f"rewind   {name}: refused: {entry['reason']}")
            for step in self._new(name, "evaluated", sorted(run.evaluated)):
                result = run.evals.get(step, {})
                held = result.get("validation") if isinstance(result, dict) else None
                loss = f", held-out loss {held['loss']:.4f}" if held and held.get("loss") else ""
                out.append(f"eval     {name}: step{step} evaluated{loss}")
            if run.outlier is not None and name not in self._flagged:
                self._flagged.add(name)
                out.append(f"outlier  {name}: {outlier_text(driver, run)}")
        self._primed = True
        return out


class LineDisplay:
    """Plain lines (not a terminal): one per run whenever its phase, checkpoint count or
    evaluation count changes, plus the news lines."""

    def __init__(self, write: Callable[[str], None] | None = None, clock=time.monotonic) -> None:
        self._write = write or (lambda line: print(line, flush=True))
        self._clock = clock
        self._timer = RunTimer()
        self._news = NewsFeed()
        self._last: dict[str, tuple] = {}

    def start(self) -> None:
        return None

    def update(self, driver: LocalDriver) -> None:
        now = self._clock()
        for view, run in zip(
            views(driver, self._timer, now),
            sorted(driver.runs, key=lambda r: r.plan.order),
            strict=True,
        ):
            key = (view.state, len(run.checkpoints), view.evals_done, view.evaluating)
            if self._last.get(view.name) == key:
                continue
            self._last[view.name] = key
            self._write(line(view))
        for news in self._news.lines(driver):
            self._write(news)

    def stop(self) -> None:
        return None


def line(view: RunView) -> str:
    loss = f"{view.loss:.4f}" if view.loss is not None else "-"
    speed = f"{view.tokens_per_s:,.0f} tok/s" if view.tokens_per_s else "- tok/s"
    return (
        f"{view.name:<28} {view.state:<11} step {view.step:>6}/{view.total:<6} loss {loss:>7}  "
        f"{speed:>12}  elapsed {duration(view.elapsed_s):>6}  ETA {duration(view.eta_s):>6}  "
        f"evals {view.evals}"
    )


class LiveDisplay:
    """A live table on a terminal; news lines scroll above it."""

    def __init__(self, console=None, clock=time.monotonic) -> None:
        from rich.console import Console
        from rich.live import Live

        self._console = console or Console()
        self._live = Live(console=self._console, refresh_per_second=4, transient=False)
        self._clock = clock
        self._timer = RunTimer()
        self._news = NewsFeed()
        self._started = clock()

    def start(self) -> None:
        self._live.start()

    def update(self, driver: LocalDriver) -> None:
        now = self._clock()
        for news in self._news.lines(driver):
            self._live.console.print(news, highlight=False, markup=False)
        self._live.update(self.table(views(driver, self._timer, now), now - self._started))

    def table(self, rows: list[RunView], elapsed: float):
        from rich.table import Table

        trained = sum(1 for v in rows if v.step >= v.total)
        evals = sum(v.evals_done for v in rows), sum(v.evals_total for v in rows)
        table = Table(
            title=f"elapsed {duration(elapsed)}  trained {trained}/{len(rows)}  "
            f"evaluated {evals[0]}/{evals[1]}",
            title_justify="left",
            box=None,
            pad_edge=False,
        )
        for header, justify in (
            ("RUN", "left"),
            ("PHASE", "left"),
            ("STEP", "right"),
            ("LOSS", "right"),
            ("TOK/S", "right"),
            ("ELAPSED", "right"),
            ("ETA", "right"),
            ("EVALS", "left"),
            ("SPIKES", "right"),
            ("REWINDS", "right"),
        ):
            table.add_column(header, justify=justify, no_wrap=True)
        for v in rows:
            table.add_row(
                v.name,
                v.state,
                f"{v.step}/{v.total}",
                f"{v.loss:.4f}" if v.loss is not None else "-",
                f"{v.tokens_per_s:,.0f}" if v.tokens_per_s else "-",
                duration(v.elapsed_s),
                duration(v.eta_s),
                v.evals,
                str(v.spikes),
                str(v.rewinds),
            )
        return table

    def stop(self) -> None:
        self._live.stop()


def make_display(tty: bool) -> LineDisplay | LiveDisplay:
    return LiveDisplay() if tty else LineDisplay()
