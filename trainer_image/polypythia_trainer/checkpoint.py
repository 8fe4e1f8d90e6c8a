"""Checkpoint contents: HF model + tokenizer + `trainer_state/` (optimiser, scheduler, RNG,
data cursor, config), written so that a resumed run continues bit for bit.

Pure file I/O on a local folder; moving the folder to storage (COMPLETE last) is
`RunStore.commit_checkpoint`'s job.
"""

from __future__ import annotations

import errno
import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch

STATE_DIR = "trainer_state"
STATE_FILE = "state.pt"


def rng_state() -> dict:
    """Every RNG a step may draw from: python, numpy, torch CPU and CUDA."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def to_cpu(obj):
    """A copy of a (nested) state dict with every tensor on the CPU, for gathering and saving."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def optimizer_file(rank: int | None) -> str:
    return "optimizer.pt" if rank is None else f"optimizer.rank{rank}.pt"


def is_optimizer_file(path: str) -> bool:
    """Whether a checkpoint-relative path is optimiser state (what ``optimizerState:
    latest`` drops from older checkpoints; model, tokenizer and ``state.pt`` stay)."""
    folder, _, name = path.rpartition("/")
    return folder == STATE_DIR and name.startswith("optimizer") and name.endswith(".pt")


def has_optimizer_state(ckpt_dir: Path) -> bool:
    """Whether the checkpoint still holds optimiser state (any shard: a missing one of
    several is an error ``read_optimizer_states`` names)."""
    state_dir = Path(ckpt_dir) / STATE_DIR
    return state_dir.is_dir() and any(
        is_optimizer_file(f"{STATE_DIR}/{p.name}") for p in state_dir.iterdir()
    )


def write_checkpoint(
    out_dir: Path,
    *,
    model: torch.nn.Module,
    save_tokenizer,
    state: dict,
    optimizer_states: list[dict],
    sharded: bool,
    config: dict,
) -> None:
    """Write one checkpoint folder (rank 0 only); ``optimizer_states`` has one entry per rank
    when the optimiser is sharded (ZeRO 1/2), else one. A full disk is StorageFull naming
    the folder (torch reports it as an opaque ``inline_container`` RuntimeError)."""
    try:
        _write_checkpoint(out_dir, model, save_tokenizer, state, optimizer_states, sharded, config)
    except (OSError, RuntimeError) as exc:
        if _disk_full(exc, out_dir):
            from polypythia.storage.local import disk_full

            raise disk_full(out_dir) from None
        raise


FULL_BELOW_BYTES = 16 << 20  # what counts as "no room" when torch hides the errno


def _disk_full(exc: BaseException, folder: Path) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(exc, RuntimeError):
        probe = next((p for p in (folder, *folder.parents) if p.exists()), None)
        return probe is not None and shutil.disk_usage(probe).free < FULL_BELOW_BYTES
    return False


def _write_checkpoint(out_dir, model, save_tokenizer, state, optimizer_states, sharded, config):
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per checkpoint would flood the logs
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    save_tokenizer(out_dir)
    state_dir = out_dir / STATE_DIR
    state_dir.mkdir(exist_ok=True)
    for rank, opt in enumerate(optimizer_states):
        torch.save(opt, state_dir / optimizer_file(rank if sharded else None))
    torch.save(state, state_dir / STATE_FILE)
    (state_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def read_state(ckpt_dir: Path) -> dict:
    return torch.load(ckpt_dir / STATE_DIR / STATE_FILE, weights_only=False)


def read_optimizer_states(ckpt_dir: Path, world_size: int, sharded: bool) -> list[dict]:
    """The optimiser states a rank needs: all shards (ZeRO loads the list) or the one file."""
    state_dir = ckpt_dir / STATE_DIR
    if not sharded:
        return [torch.load(state_dir / optimizer_file(None), weights_only=False)]
    files = [state_dir / optimizer_file(r) for r in range(world_size)]
    missing = [f.name for f in files if not f.exists()]
    if missing:
        raise RuntimeError(
            f"{ckpt_dir}: ZeRO optimiser shards {missing} missing; resume with the "
            "same number of workers as the run that wrote it"
        )
    return [torch.load(f, weights_only=False) for f in files]
