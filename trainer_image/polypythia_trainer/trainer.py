"""The stateful trainer of one run on one worker: `train_step`, `save_checkpoint`, `train`.

Every rank runs the same code; rank 0 alone writes to storage. A start always resumes
from the last complete checkpoint in storage (the source of truth), restoring model,
optimiser, scheduler, RNG and data cursor, so a killed run continues bit for bit.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch

from polypythia.errors import UsageError
from polypythia.metrics_sinks import build_processor
from polypythia.retention import optimizer_state_kept
from polypythia.storage import CheckpointDamaged, StorageNotFound, pins
from polypythia.storage.lease import check_lease
from polypythia_trainer import branching
from polypythia_trainer import checkpoint as ckpt
from polypythia_trainer.config import BranchConfig, RunConfig
from polypythia_trainer.data.training import RankShare
from polypythia_trainer.inits import apply_init
from polypythia_trainer.model import build_model, lm_loss, load_weights
from polypythia_trainer.parallel import build_engine
from polypythia_trainer.schedule import pythia_scheduler
from polypythia_trainer.telemetry import (
    AttentionLogitProbe,
    TelemetryBuffer,
    device_peak_flops,
    flops_per_token,
)


def _dist() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class Trainer:
    """Builds model, engine, optimiser and schedule for ``cfg`` and runs its steps."""

    def __init__(
        self,
        cfg: RunConfig,
        *,
        data,
        store,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
        work_dir: Path,
        instrument: bool = True,
        on_record: Callable[[dict], None] | None = None,
        lease_token: str | None = None,
    ) -> None:
        from polypythia_trainer.data import batch_index

        self.cfg = cfg
        self.data = data
        self.store = store
        self.device = device
        self.rank = rank
        self.world_size = world_size
        self.work_dir = Path(work_dir)
        self.instrument = instrument
        self.on_record = on_record
        self.lease_token = lease_token
        self._batch_index = batch_index
        self.skips = [list(r) for r in cfg.data.skip_batches]
        training = cfg.training
        self.precision = training.resolved_precision(device.type == "cuda")
        self.stop_requested = False

        ckpt.seed_everything(cfg.weight_seed)
        self.attempt = self._broadcast(store.next_attempt() if rank == 0 else None)
        rewound = self._broadcast(self._apply_rewinds() if rank == 0 else None)
        self.skips += [r for r in rewound if r not in self.skips]
        found = self._sound_checkpoint() if rank == 0 else (None, None)
        resume_step = self._broadcast(found[0])
        model = build_model(cfg.model, cfg.weight_seed)
        ckpt_dir = parent_dir = None
        if resume_step is not None:
            ckpt_dir = found[1] if rank == 0 else self._fetch(resume_step)
            load_weights(model, ckpt_dir)
        elif cfg.branch is not None:
            parent_dir = branching.fetch(cfg.branch, cfg.storage, self.work_dir)
            branching.load_parent_weights(model, parent_dir)
        else:
            apply_init(
                model, cfg.init, cfg.weight_seed, storage=cfg.storage, work_dir=self.work_dir
            )
        self.engine = build_engine(model, training, self.precision, device)
        self.module = self.engine.module
        self.scheduler = pythia_scheduler(
            self.engine.base_optimizer,
            peak=training.learning_rate,
            minimum=training.min_learning_rate,
            warmup_steps=training.warmup_steps,
            total_steps=training.steps,
            perturbations=training.perturbations,
        )
        self.step = 0
        self.resumed_from = resume_step
        self.optimizer_restored = None  # a resume says whether the optimiser came back
        self._without_optimizer: set[int] = set()
        if ckpt_dir is not None:
            self._restore(ckpt_dir)
        elif parent_dir is not None and cfg.branch is not None:
            self._start_branch(parent_dir, cfg.branch)

        self.params = [p for p in self.module.parameters() if p.requires_grad]
        self._prev = [torch.empty_like(p) for p in self.params] if instrument else []
        self.probe = (
            AttentionLogitProbe(self.module.gpt_neox.layers[0].attention) if instrument else None
        )
        self.tokens_per_step = training.global_batch_size * training.sequence_length
        self.flops_per_token = flops_per_token(self.module.config, training.sequence_length)
        self.peak_flops = device_peak_flops(device)
        self.buffer = TelemetryBuffer(self._write_telemetry, cfg.telemetry.flush_every)
        # TensorBoard files beside the telemetry (and W&B if asked): rank 0 writes storage.
        self.metrics = (
            build_processor(
                store,
                cfg.raw,
                attempt=self.attempt,
                work_dir=self.work_dir,
                resumed_from=resume_step,
            )
            if rank == 0
            else None
        )

    # collectives

    def _broadcast(self, obj):
        if self.world_size == 1 or not _dist():
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def _gather(self, obj) -> list | None:
        if self.world_size == 1 or not _dist():
            return [obj]
        out = [None] * self.world_size if self.rank == 0 else None
        torch.distributed.gather_object(obj, out, dst=0)
        return out

    # resume

    def _apply_rewinds(self) -> list[list[int]]:
        """Obey the run's recorded rewinds (rank 0): drop what an abandoned timeline left
        behind, return the batch ranges to skip on top of the config's ``skipBatches``."""
        dropped = self.store.drop_abandoned()
        if dropped:
            print(f"rewound run: dropped abandoned checkpoints {dropped}", flush=True)
        return self.store.skip_ranges()

    def _sound_checkpoint(self) -> tuple[int | None, Path | None]:
        """The newest checkpoint that matches its COMPLETE manifest, fetched (rank 0).

        A damaged one (truncated, corrupted, a file missing) is quarantined with a
        warning naming it, and the next older one is tried: a crash inside a write or a
        bad disk costs the steps since the previous checkpoint, never the run.
        """
        local = self.store.store.local_dir(self.store.key()) is not None
        total = self.cfg.training.steps
        newest = max((s for s in self.store.complete_checkpoints() if s <= total), default=None)
        while True:
            # Remote stores: sizes now, checksums while downloading (one read, not two).
            step = self.store.sound_checkpoint(total, checksums=local)
            if step is None:
                return None, None
            try:
                ckpt_dir = self._fetch(step)
            except CheckpointDamaged as exc:
                self.store.quarantine(step, exc)
                continue
            if step != newest:
                print(f"resuming from the newest sound checkpoint: step{step}", flush=True)
            return step, ckpt_dir

    def _fetch(self, step: int) -> Path:
        local = self.store.store.local_dir(self.store.checkpoint_key(step))
        if local is not None:
            return local
        target = self.work_dir / f"resume-step{step}-rank{self.rank}"
        shutil.rmtree(target, ignore_errors=True)
        return self.store.fetch_checkpoint(step, target)

    def _restore(self, ckpt_dir: Path) -> None:
        state = ckpt.read_state(ckpt_dir)
        sharded = self.engine.sharded_optimizer
        if sharded and state.get("world_size") != self.world_size:
            raise RuntimeError(
                f"checkpoint step{state['step']} was written by {state.get('world_size')} "
                f"ZeRO workers; resume needs the same number, got {self.world_size}"
            )
        self.optimizer_restored = ckpt.has_optimizer_state(ckpt_dir)
        if self.optimizer_restored:
            self.engine.load_optimizer_state(
                ckpt.read_optimizer_states(ckpt_dir, self.world_size, sharded)
            )
        elif self.rank == 0:
            self._record_fresh_optimizer(int(state["step"]))
        self.scheduler.load_state_dict(state["scheduler"])
        rngs = state["rng"]
        ckpt.set_rng_state(rngs[self.rank] if self.rank < len(rngs) else rngs[0])
        self.step = int(state["step"])

    def _start_branch(self, parent_dir: Path, branch: BranchConfig) -> None:
        """Continue the parent at its step: its optimiser, schedule and RNG when run.json
        says `restored`; else a fresh optimiser at the schedule position of that step
        (with the parent's RNG and exact scheduler state when it has them)."""
        start = branch.step
        if branch.optimizer == "restored":
            self._restore(parent_dir)
        elif branching.has_trainer_state(parent_dir):
            state = ckpt.read_state(parent_dir)
            self.scheduler.load_state_dict(state["scheduler"])
            rngs = state["rng"]
            ckpt.set_rng_state(rngs[self.rank] if self.rank < len(rngs) else rngs[0])
            self.step = int(state["step"])
        else:
            self.scheduler.seek(start)
            self.step = start
        if self.step != start:
            raise UsageError(
                f"spec.branch.from.step: the parent checkpoint of step {start} says it was "
                f"written at step {self.step}; allowed: a checkpoint of that step"
            )

    def _record_fresh_optimizer(self, step: int) -> None:
        """A checkpoint without optimiser state (``optimizerState: latest`` dropped it: a
        rewind to an analysis checkpoint, or the newer ones were damaged) still resumes:
        weights, schedule, RNG and data cursor are restored and Adam starts from zero,
        recorded in ``optimizer-restarts.json`` so the run's history says so."""
        reason = (
            f"checkpoint step{step} holds no optimiser state (checkpoints.optimizerState: "
            "latest keeps it on the newest and resume checkpoints only); Adam restarts from zero"
        )
        self.store.record_optimizer_restart(step, self.attempt, reason)
        print(f"warning: {reason}", flush=True)

    # one step

    def _loss_fn(self, targets: torch.Tensor):
        z_loss = self.cfg.model.z_loss
        return lambda logits: lm_loss(logits, targets, z_loss)

    def train_step(self) -> dict:
        """One optimiser step over the global batch; returns its telemetry record."""
        training = self.cfg.training
        t0 = time.perf_counter()
        batch_id = self._batch_index(self.step, self.skips)
        share = RankShare(self.rank, self.world_size, training.micro_batch_size)
        rows = self.data.batch(batch_id, training.global_batch_size, share)
        batch = torch.from_numpy(rows).to(self.device, non_blocking=True)
        micro = batch.split(training.micro_batch_size)
        accumulation = len(micro)
        if self.probe is not None:
            self.probe.armed, self.probe.value = True, None
        ce_sum = torch.zeros((), device=self.device)
        lz_sum = torch.zeros((), device=self.device)
        for i, chunk in enumerate(micro):
            inputs, targets = chunk[:, :-1], chunk[:, 1:]
            ce, log_z = self.engine.micro_step(
                inputs, self._loss_fn(targets), accumulation, last=i == accumulation - 1
            )
            ce_sum += ce
            lz_sum += log_z
        lr = self.scheduler.get_last_lr()[0]
        if self.instrument:
            torch._foreach_copy_(self._prev, [p.detach() for p in self.params])
        result = self.engine.step()
        if result.applied:
            self.scheduler.step()
        self.step += 1

        stop_flag = torch.tensor(float(self.stop_requested), device=self.device)
        stats = torch.stack([ce_sum / accumulation, lz_sum / accumulation, stop_flag])
        if self.world_size > 1 and _dist():
            torch.distributed.all_reduce(stats)
        loss, log_z, stop = stats.tolist()
        loss /= self.world_size
        log_z /= self.world_size
        self.stop_requested = stop > 0

        param_norm = update_ratio = None
        if self.instrument:
            torch._foreach_sub_(self._prev, [p.detach() for p in self.params])
            delta = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(self._prev)))
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(self.params)))
            param_norm, delta_norm = (float(x) for x in torch.stack([norm, delta]).tolist())
            update_ratio = delta_norm / param_norm if param_norm > 0 else None
        step_time = time.perf_counter() - t0
        tokens_per_s = self.tokens_per_step / step_time
        mfu = None
        if self.peak_flops:
            mfu = tokens_per_s * self.flops_per_token / (self.peak_flops * self.world_size)
        return {
            "step": self.step,
            "loss": loss,
            "grad_norm": result.grad_norm,
            "clipped": result.clipped,
            "lr": lr,
            "param_norm": param_norm,
            "update_ratio": update_ratio,
            "max_attn_logit": self.probe.value if self.probe is not None else None,
            "logit_lognorm": log_z,
            "loss_scale": result.loss_scale,
            "nonfinite": not (math.isfinite(loss) and math.isfinite(result.grad_norm)),
            "tokens_per_s": tokens_per_s,
            "step_time_s": step_time,
            "mfu": mfu,
            "attempt": self.attempt,
            "time": time.time(),
        }

    # checkpoints

    def state_dict(self) -> dict:
        """This rank's resumable state besides model and optimiser."""
        return {
            "step": self.step,
            "next_batch_index": self._batch_index(self.step, self.skips),
            "scheduler": self.scheduler.state_dict(),
            "world_size": self.world_size,
            "strategy": self.cfg.training.strategy,
            "zero_stage": self.cfg.training.zero_stage,
            "precision": self.precision,
            "attempt": self.attempt,
        }

    def save_checkpoint(self) -> None:
        """Collective: gather shards and RNG states to rank 0, which writes and commits."""
        sharded = self.engine.sharded_optimizer
        optimizer = ckpt.to_cpu(self.engine.optimizer_state())
        optimizers = self._gather(optimizer) if sharded else [optimizer]
        rngs = self._gather(ckpt.rng_state())
        if self.rank != 0:
            return
        if self.lease_token is not None:  # staging deletes this step's old files: ours only
            check_lease(self.store, self.lease_token)
        step = self.step
        out_dir = self._staging_dir(step)
        ckpt.write_checkpoint(
            out_dir,
            model=self.module,
            save_tokenizer=self.data.save_tokenizer,
            state={**self.state_dict(), "rng": rngs},
            optimizer_states=optimizers,
            sharded=sharded,
            config=self.cfg.raw,
        )
        if self.lease_token is not None:
            check_lease(self.store, self.lease_token)
        self.store.commit_checkpoint(step, out_dir, attempt=self.attempt)
        if self.store.store.local_dir(self.store.checkpoint_key(step)) != out_dir:
            shutil.rmtree(out_dir, ignore_errors=True)
        released = pins.release_reached(self.store, step, self.attempt)
        if released:
            print(f"restart checkpoints no longer pinned: {released}", flush=True)
        self._prune(step)
        self._drop_optimizer_states()

    def _drop_optimizer_states(self) -> None:
        """``optimizerState: latest``: drop optimiser state from checkpoints that no longer
        need it, once the newer checkpoint that replaces them is complete."""
        plan = self.cfg.checkpoints
        if plan.optimizer_state == "all":
            return
        complete = self.store.complete_checkpoints()
        kept = optimizer_state_kept(
            complete,
            policy=plan.optimizer_state,
            planned=set(plan.steps),
            resume_every=plan.resume_every,
            keep_resume=plan.keep_resume,
            pinned=pins.pinned_steps(self.store),
        )
        for step in complete:
            if step in kept or step in self._without_optimizer:
                continue
            reason = f"checkpoints.optimizerState {plan.optimizer_state}"
            try:
                freed = pins.prune_files(self.store, step, ckpt.is_optimizer_file, reason)
            except (StorageNotFound, CheckpointDamaged):
                continue  # deleted meanwhile (a rewind), or for a resume to quarantine
            if freed is not None:  # None: pinned since the listing, kept for its restart
                self._without_optimizer.add(step)

    def _staging_dir(self, step: int) -> Path:
        """Write in place on a local store (commit then only adds COMPLETE), else in work_dir."""
        self.store.delete_checkpoint(step)
        in_store = self.store.store.local_dir(self.store.checkpoint_key(step))
        if in_store is not None:
            return in_store
        out = self.work_dir / f"stage-step{step}"
        shutil.rmtree(out, ignore_errors=True)
        return out

    def _prune(self, newest: int) -> None:
        """Keep the last ``keepResume`` resume-only checkpoints; planned ones stay forever,
        and so does a pinned one: a rewind's restart step, pinned from the moment it is
        chosen (``storage.pins``), also while this attempt still runs."""
        plan = self.cfg.checkpoints
        extra = [s for s in self.store.complete_checkpoints() if not plan.is_planned(s)]
        for step in extra[: -plan.keep_resume]:
            if step != newest:
                pins.prune(self.store, step)

    # the loop

    def _write_telemetry(self, records: list[dict]) -> None:
        if self.rank == 0:
            self.store.append_telemetry(records, self.attempt)
            if self.metrics is not None:
                self.metrics.log_records(records)

    def train(self, should_stop: Callable[[], bool] = lambda: False) -> dict:
        """Run to ``training.steps`` or until a stop is requested (on any rank)."""
        total = self.cfg.training.steps
        plan = self.cfg.checkpoints
        if self.step == 0 and self.resumed_from is None and plan.is_planned(0):
            self.save_checkpoint()
        last: dict | None = None
        while self.step < total and not self.stop_requested:
            self.stop_requested = bool(should_stop())
            last = self.train_step()
            if self.rank == 0:
                self.buffer.add(last)
                if self.on_record is not None:
                    self.on_record(last)
            if plan.wants(self.step) or self.step == total:
                self.buffer.flush()
                self.save_checkpoint()
        self.buffer.flush()
        done = self.step >= total
        return {
            "run": self.cfg.run,
            "status": "completed" if done else "stopped",
            "step": self.step,
            "steps": total,
            "loss": last["loss"] if last else None,
            "attempt": self.attempt,
            "resumed_from": self.resumed_from,
            # a resume restores the optimiser, or restarts it where none was kept
            "optimizer": None
            if self.resumed_from is None
            else ("restored" if self.optimizer_restored else "fresh"),
        }

    def close(self) -> None:
        """Flush telemetry and drop hooks; the process group belongs to the caller."""
        self.buffer.flush()
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        if self.probe is not None:
            self.probe.remove()
