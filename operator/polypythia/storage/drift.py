"""Config drift: what changed between a run's stored ``run.json`` and a new resolved config.

Pure: no I/O. Only fields that determine the result count (model, training recipe,
data, seeds, init); where the run trains (resources), where it is stored and how often
it checkpoints or flushes telemetry may change freely between starts.
"""

from __future__ import annotations

RESULT_FIELDS = (
    "size",
    "seed",
    "weightSeed",
    "dataSeed",
    "init",
    "model",
    "training",
    "data",
    "branch",
)
# Placement, not recipe: the global batch and its order stay the same. A branch's
# checksum and optimiser are read from its parent at start (polypythia.branch.resolve,
# which refuses a parent that changed); a plan does not know them.
FREE_FIELDS = frozenset(
    {
        "training.workers",
        "training.gpusPerWorker",
        "training.cpusPerWorker",
        "branch.checksum",
        "branch.optimizer",
    }
)
# Fields that change the weights' tensor shapes: the old checkpoints cannot be loaded
# into the new model, so no resume crosses them, --allow-changes or not. numHeads joins
# them under qkLayerNorm (the per-head norms are head-size wide).
SHAPE_FIELDS = frozenset(
    {
        "model.numLayers",
        "model.hiddenSize",
        "model.intermediateSize",
        "model.vocabSize",
        "model.tieWordEmbeddings",
        "model.qkLayerNorm",
    }
)
_ABSENT = object()


def _flatten(value, path: str, out: dict) -> None:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _flatten(item, f"{path}.{key}", out)
    else:
        out[path] = value


def _fields(config: dict) -> dict:
    out: dict = {}
    for name in RESULT_FIELDS:
        if name in config:
            _flatten(config[name], name, out)
    return {k: v for k, v in out.items() if k not in FREE_FIELDS}


def config_changes(stored: dict, new: dict) -> list[dict]:
    """``[{field, old, new}]`` for each result-determining field that differs, sorted."""
    old_fields, new_fields = _fields(stored), _fields(new)
    changes = []
    for name in sorted(old_fields.keys() | new_fields.keys()):
        old, fresh = old_fields.get(name, _ABSENT), new_fields.get(name, _ABSENT)
        if old != fresh:
            changes.append(
                {
                    "field": name,
                    "old": None if old is _ABSENT else old,
                    "new": None if fresh is _ABSENT else fresh,
                }
            )
    return changes


def describe_changes(run_uri: str, changes: list[dict]) -> str:
    """The refusal: each changed field with its old and new value, and the way out."""
    listed = "; ".join(f"{c['field']}: {c['old']!r} -> {c['new']!r}" for c in changes)
    return (
        f"{run_uri}: the config differs from the stored run.json in what determines the "
        f"result ({listed}); resuming would mix two runs. Use a new sweep name or storage, "
        "or pass --allow-changes to continue with the new values (recorded in history.json)"
    )


def shape_changes(stored: dict, new: dict, changes: list[dict]) -> list[dict]:
    """The ``changes`` that alter the model's tensor shapes (no resume can cross them)."""
    qk_norm = any((c.get("model") or {}).get("qkLayerNorm") for c in (stored, new))
    return [
        c
        for c in changes
        if c["field"] in SHAPE_FIELDS or (qk_norm and c["field"] == "model.numHeads")
    ]


def describe_shape_changes(run_uri: str, changes: list[dict]) -> str:
    """The refusal of a resume into a model of other shapes."""
    listed = "; ".join(f"{c['field']}: {c['old']!r} -> {c['new']!r}" for c in changes)
    return (
        f"{run_uri}: the config changes the model's tensor shapes ({listed}); its "
        "checkpoints cannot be loaded into that model, --allow-changes or not. Use a new "
        "sweep name or storage"
    )
