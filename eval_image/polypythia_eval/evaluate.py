"""Evaluate a run's complete checkpoints: lm-eval on the sweep's tasks plus weight statistics.

One ``evals/step<N>.json`` per checkpoint, written through the storage contract. A
step already evaluated is skipped unless forced, so the operator may start the
same evaluation Job twice and nothing is done twice.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from polypythia.errors import UsageError
from polypythia.metrics_sinks import build_processor
from polypythia.monitoring.eval_scores import task_scores
from polypythia.planner import OFFLINE_TASKS, POLYPYTHIAS_TASKS
from polypythia.storage import CheckpointDamaged, RunStore, StorageNotFound
from polypythia_eval.offline_tasks import (
    OfflineItems,
    expand_tasks,
    is_offline,
    prepare_offline_tasks,
)
from polypythia_eval.results import compact_results
from polypythia_eval.validation import ValidationSet, heldout_loss, validation_set
from polypythia_eval.weightstats import StatsConfig, weight_statistics

# Unset --tasks: the project's offline tasks (the planner names a run's tasks by size).
DEFAULT_TASKS = OFFLINE_TASKS
EVAL_SCHEMA = "polypythia.io/eval/v1"


@dataclass
class EvaluateOptions:
    """What to evaluate and how; ``tasks`` empty means weight statistics only."""

    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))
    limit: int | None = None
    batch_size: int = 8
    device: str = "cpu"
    force: bool = False
    workdir: Path | None = None
    items: OfflineItems = field(default_factory=OfflineItems)
    stats: StatsConfig = field(default_factory=StatsConfig)
    weight_stats: bool = True
    validation: bool = True


@dataclass
class EvaluateSummary:
    """What one ``evaluate_run`` call did, step by step."""

    evaluated: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)


def parse_steps(text: str) -> str | list[int]:
    """``all``, ``latest`` or a comma-separated list of non-negative step numbers."""
    text = (text or "").strip()
    if text in ("all", "latest"):
        return text
    if not re.fullmatch(r"\d+(\s*,\s*\d+)*", text):
        raise UsageError(
            f"--steps {text!r}: expected 'all', 'latest' or step numbers like 0,512,1000"
        )
    return sorted({int(s) for s in text.split(",")})


def parse_tasks(text: str | None) -> list[str]:
    """Comma-separated lm-eval task names; ``none`` for weight statistics only."""
    if text is None:
        return list(DEFAULT_TASKS)
    if text.strip() == "none":
        return []
    if text.strip() == "polypythias":
        return list(POLYPYTHIAS_TASKS)
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in tasks if not re.fullmatch(r"[A-Za-z0-9_.\-]+", t)]
    if not tasks or bad:
        raise UsageError(
            f"--tasks {text!r}: expected comma-separated lm-eval task names "
            "(letters, digits, _ . -), 'polypythias' or 'none'"
        )
    return expand_tasks(tasks)


def select_steps(
    wanted: str | list[int], complete: list[int], evaluated: list[int], force: bool
) -> tuple[list[int], list[int]]:
    """(steps to evaluate, steps skipped as already evaluated). Pure.

    Explicit steps must be complete checkpoints: a UsageError lists what exists.
    """
    if wanted == "all":
        steps = list(complete)
    elif wanted == "latest":
        steps = complete[-1:]
    else:
        missing = [s for s in wanted if s not in set(complete)]
        if missing:
            have = ", ".join(map(str, complete)) or "none"
            raise UsageError(
                f"--steps: no complete checkpoint for step {', '.join(map(str, missing))}; "
                f"complete checkpoints: {have}"
            )
        steps = list(wanted)
    done = set(evaluated)
    if force:
        return steps, []
    return [s for s in steps if s not in done], [s for s in steps if s in done]


def _check_device(device: str) -> str:
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise UsageError(f"--device {device!r}: must be cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA device is available here")
    return device


def task_manager(tasks: list[str], workdir: Path, items: OfflineItems):
    """An lm-eval TaskManager that knows the offline tasks; UsageError for unknown names.

    Built-in tasks are indexed only when a non-project task is asked for (indexing
    the ~15,000 built-ins takes seconds).
    """
    from lm_eval.tasks import TaskManager

    include = prepare_offline_tasks(tasks, workdir, items)
    manager = TaskManager(
        include_path=str(include) if include else None,
        include_defaults=not all(is_offline(t) for t in tasks),
    )
    known = set(manager.all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise UsageError(
            f"--tasks: lm-eval knows no task {', '.join(map(repr, unknown))} "
            "(see `lm_eval ls tasks`; pp_* are the project's offline tasks)"
        )
    return manager


def run_lm_eval(model, tokenizer, manager, options: EvaluateOptions) -> dict:
    """Run lm-eval's ``simple_evaluate`` on an already loaded model; raw result dict."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=options.batch_size)
    result = lm_eval.simple_evaluate(
        model=lm,
        tasks=options.tasks,
        task_manager=manager,
        limit=options.limit,
        log_samples=True,
        bootstrap_iters=100,
    )
    if result is None:
        raise RuntimeError("lm-eval returned no results")
    return result


class HeldOut:
    """The run's held-out set, built once from the first checkpoint's tokenizer."""

    def __init__(self, config: dict) -> None:
        self.data = config.get("data") or {}
        self.sequence_length = (config.get("training") or {}).get("sequenceLength")
        self.storage = config.get("storage")
        self._set: ValidationSet | None = None
        self._why: str | None = None

    def measure(self, model, tokenizer, batch_size: int) -> dict:
        """``{loss, tokens, dataset, source}``, or ``{skipped: reason}``."""
        if self._set is None and self._why is None:
            if not self.sequence_length:
                self._why = "no run config with training.sequenceLength"
            else:
                self._set = validation_set(self.data, tokenizer, self.storage)
                if self._set is None:
                    self._why = (
                        "megatron data without spec.data.validationPath or a "
                        "spec.data.split with a validation part"
                    )
        if self._set is None:
            return {"skipped": self._why}
        measured = heldout_loss(model, self._set.tokens, self.sequence_length, batch_size)
        return {**measured, "dataset": self._set.dataset, "source": self._set.source}


def evaluate_checkpoint(
    model_dir: Path, options: EvaluateOptions, workdir: Path, manager=None, held_out=None
):
    """Load one HF checkpoint folder and evaluate it; the result without run identity."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    # float32 whatever the checkpoint was saved in (the dtype kwarg differs across versions).
    model = AutoModelForCausalLM.from_pretrained(model_dir).float()
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    timing["load"] = time.perf_counter() - t0
    out: dict = {}
    if options.weight_stats:
        t0 = time.perf_counter()
        params = {name: p.detach() for name, p in model.named_parameters()}
        out["weight_stats"] = weight_statistics(params, options.stats)
        timing["weight_stats"] = time.perf_counter() - t0
    if held_out is not None:
        t0 = time.perf_counter()
        model.to(options.device)
        out["validation"] = held_out.measure(model, tokenizer, options.batch_size)
        timing["validation"] = time.perf_counter() - t0
    if options.tasks:
        t0 = time.perf_counter()
        manager = manager or task_manager(options.tasks, workdir, options.items)
        model.to(options.device)
        out.update(compact_results(run_lm_eval(model, tokenizer, manager, options)))
        timing["lm_eval"] = time.perf_counter() - t0
    out["timing_s"] = {k: round(v, 3) for k, v in timing.items()}
    return out


def _config(store: RunStore) -> dict:
    try:
        return store.read_run_config()
    except StorageNotFound:
        return {}


def _identity(store: RunStore) -> dict:
    cfg = _config(store)
    name = cfg.get("run") or store.uri.rstrip("/").rsplit("/", 1)[-1]
    return {
        "run": name,
        "sweep": cfg.get("sweep"),
        "size": cfg.get("size"),
        "seed": cfg.get("seed"),
    }


def evaluate_run(
    run_uri: str,
    steps: str | list[int] = "all",
    options: EvaluateOptions | None = None,
    *,
    store: RunStore | None = None,
    log: Callable[[str], None] = print,
) -> EvaluateSummary:
    """Evaluate the requested complete checkpoints of one run; write ``evals/step<N>.json``.

    A checkpoint that fails is recorded in the summary and the others go on.
    """
    options = options or EvaluateOptions()
    _check_device(options.device)
    store = store or RunStore.open(run_uri)
    complete = store.complete_checkpoints()
    todo, skipped = select_steps(steps, complete, store.evaluated_steps(), options.force)
    summary = EvaluateSummary(skipped=skipped)
    for step in skipped:
        log(f"step{step}: already evaluated (use --force to redo)")
    if not todo:
        return summary
    held_out = HeldOut(_config(store)) if options.validation else None
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="polypythia-eval-") as tmp:
        workdir = Path(options.workdir) if options.workdir else Path(tmp)
        # Scores at their checkpoint steps beside the training curves: TensorBoard's `eval`
        # sub-run, and the trained run's own W&B run (same id) when a project is named.
        board = build_processor(store, _config(store), attempt=0, work_dir=workdir, job_type="eval")
        try:
            _evaluate_steps(store, todo, options, workdir, Path(tmp), held_out, board, summary, log)
        finally:
            board.close()
    return summary


def _evaluate_steps(store, todo, options, workdir, tmp, held_out, board, summary, log) -> None:
    """Evaluate each step of ``todo`` in turn; a failed step is recorded and skipped."""
    identity = _identity(store)
    manager = task_manager(options.tasks, workdir, options.items) if options.tasks else None
    for step in todo:
        started = time.time()
        fetched = None
        try:
            model_dir = store.local_path(step)
            if model_dir is None:
                fetched = tmp / f"step{step}"
                model_dir = store.fetch_checkpoint(step, fetched)
            result = evaluate_checkpoint(model_dir, options, workdir, manager, held_out)
        except (OSError, RuntimeError, ValueError, StorageNotFound, CheckpointDamaged) as exc:
            summary.failed[step] = f"{type(exc).__name__}: {exc}"
            log(f"step{step}: FAILED {summary.failed[step]}")
            continue
        finally:
            if fetched is not None:
                shutil.rmtree(fetched, ignore_errors=True)
        result["polypythia"] = {
            "schema": EVAL_SCHEMA,
            **identity,
            "step": step,
            "tasks": list(options.tasks),
            "limit": options.limit,
            "items": asdict(options.items),
            "checkpoint": f"{store.uri}/checkpoints/step{step}",
            "started": started,
            "finished": time.time(),
        }
        store.write_eval(step, result)
        board.log_eval(step, task_scores(result))
        summary.evaluated.append(step)
        scores = ", ".join(
            f"{task} {k.split(',')[0]}={v:.3f}"
            for task, metrics in result.get("results", {}).items()
            for k, v in metrics.items()
            if k in ("acc,none",)
        )
        log(f"step{step}: evaluated in {time.time() - started:.1f}s {scores}".rstrip())
