"""Training and evaluation scalars for the tools researchers watch: TensorBoard event files
in each run's storage folder (always) and Weights & Biases (when a project is named).

One interface, several back-ends, as torchtitan's ``MetricsProcessor``: the trainer hands
its telemetry batches and the evaluator its scores to a ``MetricsProcessor``, which maps
them to scalar tags once and passes them to every sink. A sink that fails warns and the
run goes on: a side channel must never stop a multi-day training run.

TensorBoard: each telemetry flush becomes one immutable event file under
``<run>/tensorboard/`` (storage never rewrites in place), named so that files sort in
the order they were written (attempt, then first step); a resumed attempt starts with a
SessionLog START at its first step, so TensorBoard drops the abandoned tail of the
previous attempt, as it does for a restarted TensorFlow job. Evaluation scores go to
``<run>/tensorboard/eval/`` (their own TensorBoard run: they arrive from another process,
out of step order with training). Writer: tensorboardX's event protobufs and TFRecord
checksum (pure Python + protobuf; torch's ``torch.utils.tensorboard`` needs the whole
``tensorboard`` package in the trainer image), assembled in memory: its ``SummaryWriter``
fsyncs a local file, twenty times slower per flush, and storage may not be local.

W&B: one W&B run per polypythia run (stable id from the run URI, so a resumed attempt
continues it), grouped by sweep, config = the resolved run config; ``WANDB_MODE=offline``
and every other ``WANDB_*`` variable are W&B's own and respected as such.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

TENSORBOARD_FOLDER = "tensorboard"
EVAL_SUBFOLDER = "eval"
WANDB_PROJECT_ENV = "WANDB_PROJECT"

# Telemetry record field (docs/contracts.md) -> scalar tag, grouped as TensorBoard shows them.
SCALAR_TAGS: dict[str, str] = {
    "loss": "loss/train",
    "heldout_loss": "loss/heldout",
    "grad_norm": "optim/grad_norm",
    "lr": "optim/lr",
    "loss_scale": "optim/loss_scale",
    "clipped": "optim/clipped",
    "tokens_per_s": "perf/tokens_per_second",
    "step_time_s": "perf/step_time_seconds",
    "mfu": "perf/mfu",
    "param_norm": "instability/param_norm",
    "update_ratio": "instability/update_ratio",
    "max_attn_logit": "instability/max_attn_logit",
    "logit_lognorm": "instability/logit_lognorm",
    "nonfinite": "instability/nonfinite",
}
EVAL_STEP_TAG = "eval/step"

Rows = Sequence[tuple[int, Mapping[str, float]]]


def record_scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The scalars of one telemetry record under their tags (absent or null fields left out;
    booleans as 0/1; a non-finite loss is kept: it is the news)."""
    out = {}
    for field, tag in SCALAR_TAGS.items():
        value = record.get(field)
        if isinstance(value, (int, float)):  # bool is an int: 0/1
            out[tag] = float(value)
    return out


def eval_scalars(scores: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """``{task: {metric: value}}`` (``monitoring.eval_scores.task_scores``) as
    ``eval/<task>/<metric>`` tags, finite values only."""
    return {
        f"eval/{task}/{metric}": float(value)
        for task, metrics in scores.items()
        for metric, value in metrics.items()
        if isinstance(value, (int, float)) and math.isfinite(value)
    }


class MetricsSink(Protocol):
    """A back-end: scalars of consecutive training steps, and evaluation scores."""

    def log_steps(self, rows: Rows) -> None: ...

    def log_eval(self, step: int, scalars: Mapping[str, float]) -> None: ...

    def close(self) -> None: ...


def event_file_name(attempt: int, first: int, last: int) -> str:
    """Sorts in write order (attempt, then step); `tfevents` marks it for TensorBoard."""
    return f"events.out.tfevents.a{attempt:04d}.{first:012d}-{last:012d}.polypythia"


def eval_event_file_name(step: int) -> str:
    return f"events.out.tfevents.step{step:012d}.polypythia"


def _event_bytes(rows: Rows, start_step: int | None = None) -> bytes:
    """One TensorBoard event file holding ``rows``, built in memory from tensorboardX's
    protobufs and TFRecord checksum (no temporary file, no fsync per flush)."""
    import struct
    import time

    from tensorboardX.proto.event_pb2 import Event, SessionLog
    from tensorboardX.record_writer import masked_crc32c
    from tensorboardX.summary import scalar

    now = time.time()
    events = [Event(wall_time=now, file_version="brain.Event:2")]
    if start_step is not None:
        events.append(
            Event(wall_time=now, step=start_step, session_log=SessionLog(status=SessionLog.START))
        )
    for step, scalars in rows:
        for tag, value in scalars.items():
            events.append(Event(wall_time=now, step=step, summary=scalar(tag, value)))
    out = bytearray()
    for event in events:
        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        out += header + struct.pack("<I", masked_crc32c(header))
        out += data + struct.pack("<I", masked_crc32c(data))
    return bytes(out)


class TensorBoardSink:
    """Event files into the run's storage folder through ``put(relative_key, bytes)``."""

    def __init__(
        self, put: Callable[[str, bytes], None], attempt: int, resumed_from: int | None = None
    ) -> None:
        self.put = put
        self.attempt = attempt
        self._restart_at = None if resumed_from is None else resumed_from + 1

    def log_steps(self, rows: Rows) -> None:
        """One file per call (the trainer calls it once per telemetry flush)."""
        rows = [(step, scalars) for step, scalars in rows if scalars]
        if not rows:
            return
        data = _event_bytes(rows, self._restart_at)
        self._restart_at = None
        name = event_file_name(self.attempt, rows[0][0], rows[-1][0])
        self.put(f"{TENSORBOARD_FOLDER}/{name}", data)

    def log_eval(self, step: int, scalars: Mapping[str, float]) -> None:
        """One file per evaluated checkpoint, in the `eval` sub-run."""
        if scalars:
            name = f"{TENSORBOARD_FOLDER}/{EVAL_SUBFOLDER}/{eval_event_file_name(step)}"
            self.put(name, _event_bytes([(step, scalars)]))

    def close(self) -> None:
        """Nothing stays open: every call wrote a whole file."""
        return None


def wandb_run_id(run_uri: str, run: str) -> str:
    """Stable across attempts of one run, distinct for a re-created sweep elsewhere."""
    digest = hashlib.sha256(run_uri.encode()).hexdigest()[:8]
    return f"{run[:55]}-{digest}"


def secondary_settings(label: str, mode: str | None) -> dict[str, object]:
    """W&B settings of a process that adds to a run another process owns (an evaluation
    beside its training run): its data labelled, the run's final state and metadata files
    left to the trainer, and, online, W&B's ``shared`` mode (several processes writing one
    run at once; offline runs are synced one after the other)."""
    settings: dict[str, object] = {
        "x_label": label,
        "x_primary": False,
        "x_update_finish_state": False,
    }
    if (mode or "online") == "online":
        settings["mode"] = "shared"
    return settings


class WandbSink:
    """One W&B run per polypythia run, grouped by sweep; eval scores on their own axis."""

    def __init__(
        self,
        project: str,
        config: Mapping[str, Any],
        directory: Path,
        *,
        job_type: str = "train",
    ) -> None:
        import wandb

        directory.mkdir(parents=True, exist_ok=True)
        extra = {}
        if job_type != "train":
            extra["settings"] = wandb.Settings(
                **secondary_settings(job_type, os.environ.get("WANDB_MODE"))
            )
        self.run = wandb.init(
            project=project,
            entity=(config.get("metrics") or {}).get("wandbEntity") or None,
            group=config["sweep"],
            name=config["run"],
            id=wandb_run_id(config.get("runUri") or config["run"], config["run"]),
            resume="allow",
            config=dict(config),
            dir=str(directory),
            job_type=job_type,
            tags=[f"size:{config.get('size')}", f"seed:{config.get('seed')}"],
            **extra,
        )
        self.run.define_metric(EVAL_STEP_TAG)
        self.run.define_metric("eval/*", step_metric=EVAL_STEP_TAG)

    def log_steps(self, rows: Rows) -> None:
        for step, scalars in rows:
            self.run.log(dict(scalars), step=step)

    def log_eval(self, step: int, scalars: Mapping[str, float]) -> None:
        self.run.log({**scalars, EVAL_STEP_TAG: step})

    def close(self) -> None:
        self.run.finish()


class MetricsProcessor:
    """Maps records once and fans them out to every sink; a failing sink warns, once."""

    def __init__(self, sinks: Sequence[MetricsSink]) -> None:
        self.sinks = list(sinks)
        self._warned: set[int] = set()

    def log_records(self, records: Sequence[Mapping[str, Any]]) -> None:
        """A batch of telemetry records (one flush), in step order."""
        rows = [(int(r["step"]), record_scalars(r)) for r in records]
        self._each(lambda sink: sink.log_steps(rows))

    def log_eval(self, step: int, scores: Mapping[str, Mapping[str, float]]) -> None:
        """Scores of one evaluated checkpoint."""
        scalars = eval_scalars(scores)
        self._each(lambda sink: sink.log_eval(step, scalars))

    def close(self) -> None:
        self._each(lambda sink: sink.close())

    def _each(self, call: Callable[[MetricsSink], None]) -> None:
        for sink in self.sinks:
            try:
                call(sink)
            except Exception as exc:  # noqa: BLE001 - a metrics back-end must not stop training
                if id(sink) not in self._warned:
                    self._warned.add(id(sink))
                    print(
                        f"warning: metrics sink {type(sink).__name__} failed "
                        f"({type(exc).__name__}: {exc}); training goes on",
                        file=sys.stderr,
                        flush=True,
                    )


def wandb_project(config: Mapping[str, Any]) -> str | None:
    """``$WANDB_PROJECT``, else the run config's ``metrics.wandbProject``."""
    return os.environ.get(WANDB_PROJECT_ENV) or (config.get("metrics") or {}).get("wandbProject")


def store_put(store: Any) -> Callable[[str, bytes], None]:
    """``put(relative_key, bytes)`` into a ``RunStore``'s run folder."""

    def put(relative: str, data: bytes) -> None:
        store.store.put_bytes(store.key(relative), data)

    return put


def build_processor(
    store: Any,
    config: Mapping[str, Any],
    *,
    attempt: int,
    work_dir: Path,
    resumed_from: int | None = None,
    job_type: str = "train",
) -> MetricsProcessor:
    """The sinks of one run: TensorBoard into ``store`` (a ``RunStore``), W&B if asked
    (its files under ``$WANDB_DIR`` if set, else ``work_dir``: an offline run must outlive
    an evaluation's temporary folder)."""
    sinks: list[MetricsSink] = [TensorBoardSink(store_put(store), attempt, resumed_from)]
    project = wandb_project(config)
    if project:
        try:
            directory = Path(os.environ.get("WANDB_DIR") or work_dir)
            sinks.append(WandbSink(project, config, directory, job_type=job_type))
        except Exception as exc:  # noqa: BLE001 - no W&B must not mean no training
            print(
                f"warning: W&B run not started for project {project!r} "
                f"({type(exc).__name__}: {exc}); TensorBoard files are still written",
                file=sys.stderr,
                flush=True,
            )
    return MetricsProcessor(sinks)
