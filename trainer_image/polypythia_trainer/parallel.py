"""Data parallelism applied outside the model: torch DDP or DeepSpeed ZeRO 0/1/2.

Both engines expose the same small surface to the trainer: run a micro-batch forward and
backward, take an optimiser step (clipping, loss scaling, skip on overflow), and save or
load the optimiser state of this rank. Losses are averaged the same way in both, so ZeRO
stage 0 and DDP give the same numbers.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from polypythia.presets import FP16_LOSS_SCALING
from polypythia_trainer.config import TrainingConfig


@dataclass
class StepResult:
    grad_norm: float
    clipped: bool
    applied: bool
    loss_scale: float | None


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """GPT-NeoX's split: weight decay on matrices and embeddings, none on biases and norms."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if name.endswith("bias") or "norm" in name:
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(model: nn.Module, training: TrainingConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        decay_groups(model, training.weight_decay),
        lr=training.learning_rate,
        betas=(training.adam_beta1, training.adam_beta2),
        eps=training.adam_eps,
        foreach=True,
    )


@contextlib.contextmanager
def settings_kept(base: torch.optim.Optimizer, wrapper: object = None) -> Iterator[None]:
    """Load optimiser state inside this block and keep this run's settings.

    torch's ``load_state_dict`` brings back each param group as saved: learning rate,
    betas, eps and weight decay of the run that wrote the checkpoint, and DeepSpeed's
    wrappers also bring back their gradient clipping. Those come from the run config (a
    resume after ``--allow-changes`` runs the new values); only the state (Adam's
    moments and step counts, fp32 master weights, the loss scale) comes from the file.
    """
    groups = [{k: v for k, v in g.items() if k != "params"} for g in base.param_groups]
    clip = getattr(wrapper, "clip_grad", None)
    yield
    for group, settings in zip(base.param_groups, groups, strict=True):
        stale = set(group) - set(settings) - {"params"}
        for key in stale:
            del group[key]
        group.update(settings)
    if clip is not None:
        wrapper.clip_grad = clip


class DynamicLossScaler:
    """DeepSpeed's dynamic fp16 loss scaling with Pythia's settings, for the DDP engine.

    Same rule as ``deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler`` (which needs
    DeepSpeed's process group): an overflow skips the update and, once ``hysteresis``
    overflows have been spent, halves the scale (not below ``min_loss_scale``); after
    ``loss_scale_window`` clean steps since the last overflow the scale doubles and the
    hysteresis refills. GradScaler has no hysteresis and no floor, hence this class.
    """

    def __init__(
        self,
        initial_scale_power: int = FP16_LOSS_SCALING["initial_scale_power"],
        loss_scale_window: int = FP16_LOSS_SCALING["loss_scale_window"],
        hysteresis: int = FP16_LOSS_SCALING["hysteresis"],
        min_loss_scale: float = FP16_LOSS_SCALING["min_loss_scale"],
    ) -> None:
        self.scale = 2.0**initial_scale_power
        self.window = loss_scale_window
        self.hysteresis = hysteresis
        self.min_scale = float(min_loss_scale)
        self.cur_hysteresis = hysteresis
        self.cur_iter = 0
        self.last_overflow_iter = -1

    def get_scale(self) -> float:
        return self.scale

    def update(self, overflow: bool) -> None:
        if overflow:
            if self.hysteresis == 1 or self.cur_hysteresis == 1:
                self.scale = max(self.scale / 2.0, self.min_scale)
            else:
                self.cur_hysteresis -= 1
            self.last_overflow_iter = self.cur_iter
        else:
            stable = self.cur_iter - self.last_overflow_iter - 1
            if stable > 0 and stable % self.window == 0:
                self.cur_hysteresis = self.hysteresis
                self.scale *= 2.0
        self.cur_iter += 1

    def state_dict(self) -> dict:
        return {
            "scale": self.scale,
            "cur_hysteresis": self.cur_hysteresis,
            "cur_iter": self.cur_iter,
            "last_overflow_iter": self.last_overflow_iter,
        }

    def load_state_dict(self, state: dict) -> None:
        """Also reads a GradScaler state (checkpoints written before this class): its scale."""
        self.scale = float(state["scale"])
        self.cur_hysteresis = int(state.get("cur_hysteresis", self.hysteresis))
        self.cur_iter = int(state.get("cur_iter", 0))
        self.last_overflow_iter = int(state.get("last_overflow_iter", -1))


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class DDPEngine:
    """torch DDP (no wrapper in a single process); autocast for bf16/fp16, and for fp16
    DeepSpeed's dynamic loss scaling with Pythia's settings (:class:`DynamicLossScaler`)."""

    sharded_optimizer = False

    def __init__(self, model: nn.Module, training: TrainingConfig, precision: str, device):
        self.module = model
        self.training = training
        self.device = device
        self.optimizer = make_optimizer(model, training)
        self.base_optimizer = self.optimizer
        self.wrapped: nn.Module = model
        if _distributed() and torch.distributed.get_world_size() > 1:
            ids = [device.index] if device.type == "cuda" else None
            self.wrapped = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.scaler = DynamicLossScaler() if precision == "fp16" else None
        self.params = [p for p in model.parameters() if p.requires_grad]

    def micro_step(self, input_ids: torch.Tensor, loss_fn, accumulation: int, last: bool):
        """Forward, loss and backward of one micro-batch; gradients sync only on the last."""
        sync = contextlib.nullcontext()
        if not last and self.wrapped is not self.module:
            sync = self.wrapped.no_sync()
        with sync:
            if self.autocast_dtype is None:
                logits = self.wrapped(input_ids).logits
            else:
                with torch.autocast(self.device.type, dtype=self.autocast_dtype):
                    logits = self.wrapped(input_ids).logits
            objective, *stats = loss_fn(logits)
            objective = objective / accumulation
            if self.scaler is not None:
                objective = objective * self.scaler.get_scale()
            objective.backward()
        return stats

    def step(self) -> StepResult:
        clip = self.training.gradient_clipping
        scale = None
        if self.scaler is not None:
            scale = self.scaler.get_scale()
            grads = [p.grad for p in self.params if p.grad is not None]
            torch._foreach_mul_(grads, 1.0 / scale)
        norm = float(torch.nn.utils.clip_grad_norm_(self.params, clip if clip > 0 else math.inf))
        applied = math.isfinite(norm)
        if applied:
            self.optimizer.step()
        if self.scaler is not None:
            self.scaler.update(overflow=not applied)
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(norm, applied and 0 < clip < norm, applied, scale)

    def optimizer_state(self) -> dict:
        state = {"optimizer": self.optimizer.state_dict()}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_optimizer_state(self, states: list[dict]) -> None:
        with settings_kept(self.optimizer):
            self.optimizer.load_state_dict(states[0]["optimizer"])
        if self.scaler is not None and "scaler" in states[0]:
            self.scaler.load_state_dict(states[0]["scaler"])


class DeepSpeedEngine:
    """DeepSpeed ZeRO 0/1/2 over a torch AdamW (DeepSpeed's own optimisers compile C++ ops).

    In fp32 with ZeRO 0 the engine leaves clipping to us (it keeps no norm there), which
    also makes the arithmetic identical to DDP; otherwise DeepSpeed clips and reports.
    """

    def __init__(self, model: nn.Module, training: TrainingConfig, precision: str, device):
        os.environ.setdefault(
            "TORCH_EXTENSIONS_DIR",
            os.path.join(os.path.expanduser("~"), ".cache", "polypythia", "torch_extensions"),
        )
        if device.type == "cpu":
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        os.environ.setdefault("LOCAL_RANK", str(device.index or 0))
        import deepspeed

        if device.type == "cpu" and not os.environ.get(CPU_SHM_ENV):
            _skip_cpu_shm_build()

        self.training = training
        self.own_clipping = precision == "fp32" and training.zero_stage == 0
        world = torch.distributed.get_world_size() if _distributed() else 1
        config = {
            "train_batch_size": training.global_batch_size,
            "train_micro_batch_size_per_gpu": training.micro_batch_size,
            "gradient_accumulation_steps": training.global_batch_size
            // (training.micro_batch_size * world),
            "gradient_clipping": 0.0 if self.own_clipping else training.gradient_clipping,
            "zero_optimization": {"stage": training.zero_stage},
            "steps_per_print": 2**62,
            "wall_clock_breakdown": False,
        }
        if precision == "bf16":
            config["bf16"] = {"enabled": True}
        elif precision == "fp16":
            config["fp16"] = {"enabled": True, **FP16_LOSS_SCALING}
        self.precision = precision
        if not _distributed():
            _init_single_process_group(device)
        optimizer = make_optimizer(model, training)
        self.base_optimizer = optimizer
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model.to(device), optimizer=optimizer, config=config, dist_init_required=False
        )
        self.module = self.engine.module
        self.sharded_optimizer = hasattr(self.optimizer, "single_partition_of_fp32_groups")

    def micro_step(self, input_ids: torch.Tensor, loss_fn, accumulation: int, last: bool):
        """Forward, loss and backward; DeepSpeed divides by the accumulation steps itself."""
        objective, *stats = loss_fn(self.engine(input_ids).logits)
        self.engine.backward(objective)
        if not last:
            self.engine.step()
        return stats

    def step(self) -> StepResult:
        norm = None
        if self.own_clipping:
            clip = self.training.gradient_clipping
            params = [p for p in self.module.parameters() if p.grad is not None]
            norm = float(torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else math.inf))
        scale = self.loss_scale()
        self.engine.step()
        if norm is None:
            value = self.engine.get_global_grad_norm()
            norm = float(value) if value is not None else math.nan
        applied = self.engine.was_step_applied() and math.isfinite(norm)
        clip = self.training.gradient_clipping
        return StepResult(norm, applied and 0 < clip < norm, applied, scale)

    def loss_scale(self) -> float | None:
        if self.precision != "fp16":
            return None
        return float(getattr(self.optimizer, "cur_scale", getattr(self.optimizer, "loss_scale", 0)))

    def optimizer_state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def load_optimizer_state(self, states: list[dict]) -> None:
        with settings_kept(self.base_optimizer, self.optimizer):
            if self.sharded_optimizer:
                self.optimizer.load_state_dict(
                    [s["optimizer"] for s in states],
                    load_optimizer_states=True,
                    load_from_fp32_weights=True,
                )
            else:
                self.optimizer.load_state_dict(states[0]["optimizer"])


CPU_SHM_ENV = "POLYPYTHIA_DS_CPU_SHM"


def _skip_cpu_shm_build() -> None:
    """On CPU, DeepSpeed compiles a shared-memory all-reduce op at every fresh start (minutes
    on a small machine); gloo's all-reduce serves instead. Set $POLYPYTHIA_DS_CPU_SHM=1 to
    let DeepSpeed build and use it."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def _init_single_process_group(device) -> None:
    """DeepSpeed needs a process group even for one process; make a private one."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torch.distributed.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=0,
        world_size=1,
    )


def build_engine(model: nn.Module, training: TrainingConfig, precision: str, device):
    """The engine for ``training.strategy``; the model is moved to ``device`` first."""
    model.to(device)
    if training.strategy == "deepspeed":
        return DeepSpeedEngine(model, training, precision, device)
    return DDPEngine(model, training, precision, device)
