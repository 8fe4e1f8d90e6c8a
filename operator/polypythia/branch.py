"""Branches (`spec.branch`): a run that starts at another run's checkpoint.

A parent is either a run in storage (`<run URI>/checkpoints/step<N>/COMPLETE`, any
sweep's prefix, read only) or a Hugging Face GPT-NeoX model folder (`config.json` +
`*.safetensors`, e.g. a Pythia `stepN` revision) that holds no optimiser state. The
pure part judges a parent against a run config (model, data order, step); the thin
adapter (:func:`open_parent`, :func:`fetch_parent`) reads it from storage. The same
checks run in `polypythia validate`, `polypythia run` and the trainer's start, so a
bad parent is refused with the same one-line message wherever it is met.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from polypythia.errors import UsageError

URI_FIELD = "spec.branch.from.uri"
STEP_FIELD = "spec.branch.from.step"
OPTIMIZER_PREFIX = "trainer_state/optimizer"
TRAINER_STATE = "trainer_state/state.pt"
HF_CONFIG = "config.json"
_STEP_NAME = re.compile(r"^step(\d+)$")

# run.json `model` field -> (config.json keys that may hold it, default when absent).
_MODEL_FIELDS = {
    "numLayers": (("num_hidden_layers",), None),
    "hiddenSize": (("hidden_size",), None),
    "numHeads": (("num_attention_heads",), None),
    "intermediateSize": (("intermediate_size",), None),
    "vocabSize": (("vocab_size",), None),
    "rotaryPct": (("rotary_pct", "rope_parameters.partial_rotary_factor"), 0.25),
    "parallelResidual": (("use_parallel_residual",), True),
    "tieWordEmbeddings": (("tie_word_embeddings",), False),
    "qkLayerNorm": (("polypythia_qk_layernorm",), False),
}
# What makes batch k of data seed s the same batch in parent and branch.
_DATA_FIELDS = (
    ("data", "format"),
    ("data", "path"),
    ("data", "order"),
    ("data", "split"),
    ("training", "sequenceLength"),
    ("training", "globalBatchSize"),
)


@dataclass(frozen=True)
class Parent:
    """One parent checkpoint as storage holds it."""

    uri: str
    step: int
    kind: str  # "run" (a run's checkpoint) or "folder" (a Hugging Face model folder)
    files: tuple[tuple[str, str], ...]  # (path, sha256), sorted by path
    hf_config: dict
    run_config: dict | None

    @property
    def has_optimizer(self) -> bool:
        """Whether the checkpoint holds optimiser state (only the trainer's do)."""
        return any(path.startswith(OPTIMIZER_PREFIX) for path, _ in self.files)

    @property
    def has_trainer_state(self) -> bool:
        """Whether the checkpoint holds the scheduler position and RNG states."""
        return any(path == TRAINER_STATE for path, _ in self.files)

    @property
    def checksum(self) -> str:
        """`sha256:<hex>` over the (path, sha256) list of the checkpoint's files except its
        optimiser state: the same checkpoint gives the same value whether it is read from
        COMPLETE or hashed here, and after `checkpoints.optimizerState: latest` drops it."""
        return files_checksum(f for f in self.files if not f[0].startswith(OPTIMIZER_PREFIX))


def files_checksum(files) -> str:
    """`sha256:<hex>` of ``path<TAB>sha256`` lines, sorted by path."""
    text = "".join(f"{path}\t{digest}\n" for path, digest in sorted(files))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _hf_value(config: dict, dotted: str):
    value: object = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def model_mismatches(parent: Parent, model: dict, size: str) -> list[str]:
    """The architecture fields where the parent differs from the run's ``model`` block."""
    found = []
    for name, (keys, default) in _MODEL_FIELDS.items():
        value = next(
            (v for v in (_hf_value(parent.hf_config, k) for k in keys) if v is not None), default
        )
        want = model.get(name, default)
        if value is not None and want is not None and value != want:
            found.append(f"{name} {value} (this sweep's size {size}: {want})")
        elif value is None and want is not None:
            found.append(f"{name} missing from {HF_CONFIG} (this sweep's size {size}: {want})")
    return found


def data_mismatches(parent_config: dict, config: dict) -> list[str]:
    """Where the parent's data order differs from the run's (batch k would differ)."""
    found = []
    for block, name in _DATA_FIELDS:
        old = (parent_config.get(block) or {}).get(name)
        new = (config.get(block) or {}).get(name)
        if old != new:
            found.append(f"{block}.{name} {old!r} (this sweep: {new!r})")
    old_steps = (parent_config.get("training") or {}).get("steps")
    new_steps = config["training"]["steps"]
    megatron = (config.get("data") or {}).get("order") == "megatron"
    if megatron and old_steps != new_steps:
        # GPT-NeoX sizes its index maps (and so the shuffle) by train_iters x batch.
        found.append(
            f"training.steps {old_steps} (this sweep: {new_steps}; the megatron order's "
            "index maps are sized by the steps)"
        )
    return found


def parent_errors(parent: Parent, config: dict) -> list[str]:
    """Every reason ``parent`` cannot start the run ``config``; one line each."""
    errors = []
    model = model_mismatches(parent, config["model"], config.get("size", "?"))
    if model:
        errors.append(
            f"{URI_FIELD}: {parent.uri} step {parent.step} is another model: "
            + "; ".join(model)
            + "; allowed: a parent of the same architecture and vocabulary"
        )
    if parent.run_config is not None:
        data = data_mismatches(parent.run_config, config)
        if data:
            errors.append(
                f"{URI_FIELD}: {parent.uri} trained on another data order: "
                + "; ".join(data)
                + "; allowed: the parent's data (a branch changes only the data seed)"
            )
    return errors


def resolve(config: dict, parent: Parent, stored: dict | None = None) -> dict:
    """The run config's `branch` block as run.json records it (docs/contracts.md):
    parent URI, step, checksum, and whether the optimiser is restored or fresh.

    A stored run.json of the same branch that names another checksum means the parent
    checkpoint changed under a branch that already trained from it: refused.
    """
    errors = parent_errors(parent, config)
    if errors:
        raise UsageError("\n".join(errors))
    planned = config["branch"]
    fresh = planned.get("optimizer") == "fresh" or not parent.has_optimizer
    block = {
        "parent": planned["parent"],
        "step": int(planned["step"]),
        "checksum": parent.checksum,
        "optimizer": "fresh" if fresh else "restored",
    }
    before = ((stored or {}).get("branch") or {}).get("checksum")
    if before and before != block["checksum"]:
        raise UsageError(
            f"{URI_FIELD}: {parent.uri} step {parent.step} changed since this branch started "
            f"from it (run.json {before}, now {block['checksum']}); allowed: the checkpoint "
            "the branch started from"
        )
    return block


# adapters: read a parent from storage (read only)


def open_parent(
    uri: str,
    step: int,
    storage: dict | None = None,
    *,
    checksums: bool = True,
    credentials: tuple[str | None, str | None] = (None, None),
) -> Parent:
    """Read the parent at ``uri`` (run or model folder) for checkpoint ``step``.

    ``checksums`` False skips hashing a model folder's files (a check that only judges
    the parent, as `validate` does, need not read gigabytes); its checksum is then empty.
    """
    from polypythia.storage import RunStore, StorageNotFound
    from polypythia.storage.layout import CheckpointDamaged
    from polypythia.storage.uri import connection

    runs = RunStore.open(
        uri, access_key=credentials[0], secret_key=credentials[1], **connection(storage)
    )
    complete = runs.complete_checkpoints()
    try:
        run_config = runs.read_run_config()
    except StorageNotFound:
        run_config = None
    if complete or run_config is not None:
        if step not in complete:
            raise UsageError(
                f"{STEP_FIELD}: {runs.uri} has no complete checkpoint at step {step}; "
                f"allowed: {', '.join(map(str, complete)) or 'none yet'}"
            )
        try:
            manifest = runs.read_manifest(step)
        except CheckpointDamaged as exc:
            raise UsageError(f"{URI_FIELD}: {exc}") from None
        files = tuple(sorted((f["path"], f.get("sha256", "")) for f in manifest["files"]))
        hf_config = _read_json(runs.store, runs.checkpoint_key(step, HF_CONFIG), runs.uri)
        return Parent(runs.uri, step, "run", files, hf_config, run_config)
    return _open_folder(runs, step, checksums)


def _open_folder(runs, step: int, checksums: bool) -> Parent:
    """A Hugging Face model folder at the run URI's place: config.json + safetensors."""
    from polypythia.storage.layout import sha256_file

    store, prefix = runs.store, runs.prefix
    keys = store.list(prefix + "/") if prefix else store.list("")
    rel = [k[len(prefix) + 1 :] if prefix else k for k in keys]
    if not rel:
        raise UsageError(
            f"{URI_FIELD}: {runs.uri}: no such parent (nothing stored there); allowed: a run "
            "URI or a Hugging Face model folder"
        )
    weights = [r for r in rel if "/" not in r and r.endswith(".safetensors")]
    if HF_CONFIG not in rel or not weights:
        raise UsageError(
            f"{URI_FIELD}: {runs.uri} is neither a run (no run.json, no complete checkpoint) "
            "nor a Hugging Face model folder (config.json and *.safetensors); allowed: a run "
            "URI or such a folder"
        )
    name = _STEP_NAME.match(runs.uri.rstrip("/").rpartition("/")[2])
    if name and int(name[1]) != step:
        raise UsageError(
            f"{STEP_FIELD}: {step}, but the model folder {runs.uri} is revision step{name[1]}; "
            f"allowed: {name[1]}"
        )
    files = []
    for path in sorted(r for r in rel if "/" not in r):
        key = f"{prefix}/{path}" if prefix else path
        local = store.local_dir(key)
        if not checksums:
            files.append((path, ""))
        elif local is not None:
            files.append((path, sha256_file(local)))
        else:
            files.append((path, _remote_sha256(store, key)))
    hf_config = _read_json(store, f"{prefix}/{HF_CONFIG}" if prefix else HF_CONFIG, runs.uri)
    return Parent(runs.uri, step, "folder", tuple(files), hf_config, None)


def _remote_sha256(store, key: str, chunk: int = 8 << 20) -> str:
    digest, offset = hashlib.sha256(), 0
    while data := store.get_range(key, offset, chunk):
        digest.update(data)
        offset += len(data)
    return digest.hexdigest()


def _read_json(store, key: str, uri: str) -> dict:
    from polypythia.storage import StorageNotFound

    try:
        value = json.loads(store.get_bytes(key))
    except StorageNotFound:
        raise UsageError(f"{URI_FIELD}: {uri} has no {HF_CONFIG} beside its weights") from None
    except ValueError as exc:
        raise UsageError(f"{URI_FIELD}: {uri}/{HF_CONFIG} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise UsageError(f"{URI_FIELD}: {uri}/{HF_CONFIG} is not a JSON object")
    return value


def fetch_parent(parent: Parent, work_dir: Path, storage: dict | None = None) -> Path:
    """A local folder with the parent checkpoint's files, every checksum verified: the
    folder itself on a local store, else a download into ``work_dir``."""
    from polypythia.storage import RunStore
    from polypythia.storage.layout import sha256_file
    from polypythia.storage.uri import connection

    runs = RunStore.open(parent.uri, **connection(storage))
    target = Path(work_dir) / f"branch-step{parent.step}"
    if parent.kind == "run":
        return runs.local_path(parent.step) or runs.fetch_checkpoint(parent.step, target)
    folder = runs.store.local_dir(runs.prefix)
    for path, digest in parent.files:
        if folder is None:
            key = f"{runs.prefix}/{path}" if runs.prefix else path
            runs.store.get_file(key, target / path)
        where = (folder or target) / path
        if sha256_file(where) != digest:
            raise UsageError(f"{URI_FIELD}: {where} changed while the branch read it")
    return folder or target


def check_sweep(
    sweep,
    *,
    base_uri: str | None = None,
    endpoint: str | None = None,
    credentials: tuple[str | None, str | None] = (None, None),
) -> list[str]:
    """Every reason the parents of a branch sweep cannot start its runs (I/O: reads
    each parent once); ``[]`` for an ordinary sweep. ``endpoint`` and ``credentials``
    (the operator's default endpoint, the sweep's Secret) fill what the spec leaves out.
    An unreachable store is StorageUnavailable (a runtime fault, not a refusal)."""
    from polypythia import planner
    from polypythia.storage import StorageError, StorageUnavailable

    if not sweep.spec.get("branch"):
        return []
    storage = dict(sweep.spec.get("storage") or {})
    storage["endpoint"] = storage.get("endpoint") or endpoint
    errors: list[str] = []
    seen: dict[str, Parent | None] = {}
    for run in planner.plan_sweep(sweep, base_uri=base_uri or "s3://plan"):
        block = run.config["branch"]
        key = block["parent"]
        if key not in seen:
            try:
                seen[key] = open_parent(
                    key, block["step"], storage, checksums=False, credentials=credentials
                )
            except StorageUnavailable as exc:
                raise StorageUnavailable(
                    f"{URI_FIELD}: {key}: cannot be read ({exc}); `validate --skip-parent` "
                    "checks the rest offline"
                ) from None
            except (UsageError, StorageError, ValueError) as exc:
                errors.append(str(exc))
                seen[key] = None
        parent = seen[key]
        if parent is not None:
            errors += [e for e in parent_errors(parent, run.config) if e not in errors]
    return errors
