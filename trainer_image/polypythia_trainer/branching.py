"""A branched run's start: fetch its parent checkpoint and load the weights.

The rest of a branch is an ordinary resume (`Trainer._restore`): the parent's optimiser
state, schedule position and RNG states are the ones a resumed run would load (the
settings, learning rate and schedule included, are the branch's own), and batch ``k`` depends
only on (data seed, k), so the branch reads batches ``step, step + 1, ...`` of its own
data seed. What to load is decided once, at claim time (`polypythia.branch.resolve`),
and recorded in run.json's `branch` block.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from polypythia.branch import URI_FIELD, fetch_parent, open_parent
from polypythia.errors import UsageError
from polypythia_trainer.checkpoint import STATE_DIR, STATE_FILE
from polypythia_trainer.config import BranchConfig, StorageConfig
from polypythia_trainer.inits import _LEGACY_BUFFERS as LEGACY_BUFFERS
from polypythia_trainer.model import _SAVED_NAMES


def fetch(branch: BranchConfig, storage: StorageConfig, work_dir: Path) -> Path:
    """The parent checkpoint of run.json's `branch` block as a local folder, verified."""
    connection = storage.connection()
    parent = open_parent(branch.parent, branch.step, connection)
    checksum = branch.checksum
    if checksum and checksum != parent.checksum:
        raise UsageError(
            f"{URI_FIELD}: {parent.uri} step {parent.step} is {parent.checksum}, but run.json "
            f"records {checksum}; allowed: the checkpoint the branch was claimed from"
        )
    return fetch_parent(parent, work_dir, connection)


def has_trainer_state(folder: Path) -> bool:
    """Whether a checkpoint folder holds scheduler and RNG state (the trainer's do)."""
    return (Path(folder) / STATE_DIR / STATE_FILE).is_file()


@torch.no_grad()
def load_parent_weights(model: nn.Module, folder: Path) -> None:
    """Load every parameter of ``model`` from the parent's safetensors, exactly.

    Legacy GPT-NeoX buffers are dropped; a missing or extra tensor or another shape is
    a UsageError naming `spec.branch.from.uri`.
    """
    from safetensors.torch import load_file

    own = model.state_dict()
    state = {}
    for file in sorted(Path(folder).glob("*.safetensors")):
        for key, value in load_file(str(file)).items():
            name = key if key in own else _SAVED_NAMES.get(key, key)
            if name not in own and key.endswith(LEGACY_BUFFERS):
                continue
            state[name] = value
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        raise UsageError(
            f"{URI_FIELD}: {folder} does not match this run's model (missing: "
            f"{', '.join(missing[:3]) or 'none'}; extra: {', '.join(extra[:3]) or 'none'})"
        )
    for name, value in state.items():
        if tuple(value.shape) != tuple(own[name].shape):
            raise UsageError(
                f"{URI_FIELD}: tensor {name} has shape {tuple(value.shape)} in the parent but "
                f"{tuple(own[name].shape)} in this run's model"
            )
    model.load_state_dict(state, strict=True)
