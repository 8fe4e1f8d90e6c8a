"""Sweep specs: read a PolyPythiaSweep, check it against the CRD, default it, check meaning.

The schema part comes from the CRD file (`polypythia.crd`); what a schema cannot
say (one of list/range, a schedule's required companion field, sizes that fit
the sequence length, batch divisibility) is checked here, with the same kind of
message: the field path and what is allowed.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from polypythia import crd, presets
from polypythia.errors import UsageError

NAME_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Bounds that keep the planner and the driver finite (Pythia: 143,000 steps, 154
# checkpoints, 10 seeds); far above any real sweep, far below what exhausts memory.
MAX_STEPS = 100_000_000
MAX_SEEDS = 10_000
MAX_RUNS = 10_000
MAX_CHECKPOINTS = 100_000
MAX_YAML_DEPTH = 64


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping key given twice (YAML says keys are unique;
    PyYAML silently keeps the last, so a typo'd override would pass unseen)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                continue  # the base class reports unhashable keys itself
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first at line {seen[key] + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def _depth(obj: object) -> int:
    """Nesting depth of lists and mappings, without recursion."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if depth <= MAX_YAML_DEPTH:
                stack += [
                    (v, depth + 1) for v in (item.values() if isinstance(item, dict) else item)
                ]
    return deepest


def _nonfinite(obj: object, path: str = "") -> list[str]:
    """Paths of NaN / infinite numbers (YAML's .nan and .inf pass every schema bound)."""
    found: list[str] = []
    stack = [(obj, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            found.append(f"{where}: {item} is not a finite number")
        elif isinstance(item, dict):
            stack += [(v, f"{where}.{k}" if where else str(k)) for k, v in item.items()]
        elif isinstance(item, list):
            stack += [(v, f"{where}[{i}]") for i, v in enumerate(item)]
    return sorted(found)


class SpecError(UsageError):
    """A sweep that cannot run; `errors` holds every problem found, one per line."""

    def __init__(self, errors: list[str], source: str = "sweep") -> None:
        self.errors = errors
        self.source = source
        lines = "\n  ".join(errors)
        super().__init__(f"{source} is not a valid {crd.KIND}:\n  {lines}")


@dataclass(frozen=True)
class Sweep:
    """A validated, defaulted sweep: metadata plus the spec exactly as the API server keeps it."""

    name: str
    namespace: str
    spec: dict
    generation: int | None = None
    uid: str | None = None
    labels: dict = field(default_factory=dict)

    def seeds(self) -> list[int]:
        return seed_list(self.spec["seeds"])

    def sizes(self) -> list[str]:
        return list(self.spec["sizes"])


def applied_manifest(sweep: Sweep) -> dict:
    """The sweep as the API server would hold it once applied: its defaults filled in."""
    metadata = {"name": sweep.name, "namespace": sweep.namespace}
    if sweep.generation is not None:
        metadata["generation"] = sweep.generation
    return {
        "apiVersion": crd.API_VERSION,
        "kind": crd.KIND,
        "metadata": metadata,
        "spec": sweep.spec,
    }


def seed_list(seeds: dict) -> list[int]:
    if "list" in seeds:
        return list(seeds["list"])
    start = seeds["range"].get("start", 0)
    return list(range(start, start + seeds["range"]["count"]))


def load_sweep_file(path: str | Path) -> Sweep:
    """Read one sweep from a YAML file; every problem is a SpecError or UsageError naming it."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such file")
    if path.is_dir():
        raise UsageError(f"{path}: is a directory, expected a YAML file")
    try:
        text = path.read_text(encoding="utf-8")
        documents = [doc for doc in yaml.load_all(text, Loader=_UniqueKeyLoader) if doc is not None]
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a UTF-8 text file") from None
    except RecursionError:
        raise UsageError(f"{path}: nested deeper than {MAX_YAML_DEPTH} levels") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise UsageError(f"{path}: malformed YAML{where}: {problem}") from None
    if not documents:
        raise UsageError(f"{path}: empty file, expected one {crd.KIND}")
    if len(documents) > 1:
        raise UsageError(
            f"{path}: {len(documents)} YAML documents, expected exactly one {crd.KIND}"
        )
    if _depth(documents[0]) > MAX_YAML_DEPTH:
        raise UsageError(f"{path}: nested deeper than {MAX_YAML_DEPTH} levels")
    return sweep_from_object(documents[0], source=str(path))


def sweep_from_object(obj: object, *, source: str = "sweep", namespace: str = "default") -> Sweep:
    """Validate against the CRD schema, apply its defaults, then check meaning."""
    if not isinstance(obj, dict):
        raise SpecError([f"<document>: must be a mapping, got {type(obj).__name__}"], source)
    if _depth(obj) > MAX_YAML_DEPTH:
        raise SpecError([f"<document>: nested deeper than {MAX_YAML_DEPTH} levels"], source)
    obj = copy.deepcopy(obj)
    errors = _nonfinite(obj)
    if obj.get("apiVersion") != crd.API_VERSION:
        errors.append(f"apiVersion: must be {crd.API_VERSION}, got {obj.get('apiVersion')!r}")
    if obj.get("kind") != crd.KIND:
        errors.append(f"kind: must be {crd.KIND}, got {obj.get('kind')!r}")
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict) or not metadata.get("name"):
        errors.append("metadata.name: is required")
        metadata = metadata if isinstance(metadata, dict) else {}
    elif not NAME_PATTERN.match(str(metadata["name"])) or len(str(metadata["name"])) > 63:
        errors.append(
            f"metadata.name: {metadata['name']!r} must be a DNS-1123 label "
            "(lower-case letters, digits and '-', at most 63 characters)"
        )
    errors += crd.validate(obj)
    if errors:
        raise SpecError(errors, source)
    crd.apply_defaults(crd.schema(), obj)
    spec = obj["spec"]
    errors = bound_errors(spec) or semantic_errors(spec)
    if errors:
        raise SpecError(errors, source)
    return Sweep(
        name=metadata["name"],
        namespace=metadata.get("namespace") or namespace,
        spec=spec,
        generation=metadata.get("generation"),
        uid=metadata.get("uid"),
        labels=dict(metadata.get("labels") or {}),
    )


def bound_errors(spec: dict) -> list[str]:
    """Counts that must stay finite before anything expands them (planner, driver)."""
    errors: list[str] = []
    steps = spec["training"]["steps"]
    if steps > MAX_STEPS:
        errors.append(f"spec.training.steps: {steps} is above the limit of {MAX_STEPS}")
        return errors
    seeds = spec["seeds"]
    count = len(seeds["list"]) if "list" in seeds else seeds.get("range", {}).get("count", 0)
    if count > MAX_SEEDS:
        errors.append(f"spec.seeds: {count} seeds is above the limit of {MAX_SEEDS}")
    runs = count * len(spec["sizes"]) * max(1, len(spec.get("inits", [])))
    if count <= MAX_SEEDS and runs > MAX_RUNS:
        errors.append(f"spec: {runs} runs (sizes x seeds x inits) is above the limit of {MAX_RUNS}")
    checkpoints = spec["checkpoints"]
    planned = {
        "every": steps // max(1, checkpoints.get("every") or steps) + 2,
        "pythia": checkpoints.get("count", 0) + 12,
        "list": len(checkpoints.get("steps", [])) + 2,
    }.get(checkpoints["schedule"], 0)
    if planned > MAX_CHECKPOINTS:
        errors.append(
            f"spec.checkpoints: {checkpoints['schedule']} schedule plans about {planned} "
            f"checkpoints, above the limit of {MAX_CHECKPOINTS}; checkpoint less often"
        )
    return errors


def semantic_errors(spec: dict) -> list[str]:
    """What the schema cannot express; `spec` is already schema-valid and defaulted."""
    errors: list[str] = []
    seeds = spec["seeds"]
    if ("list" in seeds) == ("range" in seeds):
        errors.append("spec.seeds: give exactly one of `list` or `range`")
    training = spec["training"]
    steps = training["steps"]
    for size in spec["sizes"]:
        preset = presets.get(size)
        if training["sequenceLength"] > preset.max_position_embeddings:
            errors.append(
                f"spec.training.sequenceLength: {training['sequenceLength']} exceeds the "
                f"{size} preset's maximum of {preset.max_position_embeddings}"
            )
        errors += _resource_errors(spec, size)
    for name in spec.get("resources", {}).get("perSize", {}):
        if name not in presets.PRESETS:
            errors.append(
                f"spec.resources.perSize.{name}: unknown size; allowed: {', '.join(presets.PRESETS)}"
            )
    min_lr, peak = training.get("minLearningRate"), training.get("learningRate")
    if min_lr is not None and peak is not None and min_lr > peak:
        errors.append(f"spec.training.minLearningRate: {min_lr} is above learningRate {peak}")
    errors += _init_errors(spec)
    errors += _branch_errors(spec)
    for index, shock in enumerate(training.get("perturbations", [])):
        if shock["step"] >= steps:
            errors.append(
                f"spec.training.perturbations[{index}].step: {shock['step']} is not below "
                f"spec.training.steps ({steps})"
            )
        unknown = sorted(set(shock.get("seeds", [])) - set(seed_list(spec["seeds"])))
        if unknown:
            errors.append(
                f"spec.training.perturbations[{index}].seeds: {unknown} not among the "
                f"sweep's seeds {seed_list(spec['seeds'])}"
            )
    checkpoints = spec["checkpoints"]
    errors += _companion(checkpoints, "spec.checkpoints", {"every": "every", "list": "steps"})
    for step in checkpoints.get("steps", []):
        if step > steps:
            errors.append(
                f"spec.checkpoints.steps: step {step} is beyond spec.training.steps ({steps})"
            )
    evaluation = spec["evaluation"]
    errors += _companion(evaluation, "spec.evaluation", {"every": "every", "list": "steps"})
    data = spec["data"]
    if data["format"] == "megatron" and "path" not in data:
        errors.append("spec.data.path: is required when spec.data.format is megatron")
    if data["format"] == "megatron" and "tokenizer" not in data:
        errors.append("spec.data.tokenizer: is required when spec.data.format is megatron")
    if "split" in data and data["format"] != "megatron":
        errors.append(
            "spec.data.split: only used with format megatron (the generated corpus has its "
            "own held-out documents)"
        )
    elif "split" in data and not any(float(w) for w in re.split(r"[,/]", data["split"])):
        errors.append(f"spec.data.split: {data['split']!r} gives every part weight 0")
    for index, pair in enumerate(data.get("skipBatches", [])):
        if pair[0] >= pair[1]:
            errors.append(
                f"spec.data.skipBatches[{index}]: start {pair[0]} must be below end {pair[1]}"
            )
    if training["strategy"] == "ddp" and training.get("zeroStage", 0) not in (0, 1):
        errors.append("spec.training.zeroStage: only applies to strategy deepspeed")
    return errors


def _init_errors(spec: dict) -> list[str]:
    """Init strategies: every non-pythia one needs a reference; a reference run must be a
    `pythia` run of this sweep, so no run waits on a run that waits on it."""
    errors: list[str] = []
    inits = {init["name"]: init for init in spec.get("inits", [])}
    one_of = ("list" in spec["seeds"]) != ("range" in spec["seeds"])
    seeds = set(seed_list(spec["seeds"])) if one_of else set()
    for index, init in enumerate(spec.get("inits", [])):
        path = f"spec.inits[{index}]"
        reference = init.get("reference")
        if init["strategy"] == "pythia":
            if reference:
                errors.append(f"{path}.reference: the pythia strategy takes no reference")
            continue
        if not reference or ("checkpoint" in reference) == ("run" in reference):
            errors.append(
                f"{path}.reference: strategy {init['strategy']} needs exactly one of "
                "`checkpoint` or `run`"
            )
            continue
        run = reference.get("run")
        if run is None:
            continue
        target = inits.get(run["init"])
        if target is None:
            errors.append(
                f"{path}.reference.run.init: {run['init']!r} is not in spec.inits; "
                f"allowed: {', '.join(inits)}"
            )
        elif target["strategy"] != "pythia":
            errors.append(
                f"{path}.reference.run.init: {run['init']!r} must use the pythia strategy "
                "(a reference run cannot itself wait for a reference)"
            )
        if seeds and run["seed"] not in seeds:
            errors.append(f"{path}.reference.run.seed: {run['seed']} is not in spec.seeds")
        if "size" in run and run["size"] not in spec["sizes"]:
            errors.append(f"{path}.reference.run.size: {run['size']!r} is not in spec.sizes")
        if reference.get("step", 0) > spec["training"]["steps"]:
            errors.append(f"{path}.reference.step: beyond spec.training.steps")
    return errors


def _branch_errors(spec: dict) -> list[str]:
    """A branch starts at its parent's step: it must leave steps to train, and nothing
    the sweep asks for may fall at or before that step (it would never happen)."""
    branch = spec.get("branch")
    if not branch:
        return []
    errors: list[str] = []
    start, steps = branch["from"]["step"], spec["training"]["steps"]
    uri = branch["from"]["uri"]
    if "://" not in uri and not uri.startswith("/"):
        errors.append(
            f"spec.branch.from.uri: {uri!r} is a relative path; allowed: s3://bucket/prefix/... "
            "or an absolute path (workers do not share the driver's working directory)"
        )
    elif "://" in uri and not uri.startswith("s3://"):
        errors.append(f"spec.branch.from.uri: {uri!r}; allowed: s3:// URIs or absolute paths")
    if start >= steps:
        errors.append(
            f"spec.branch.from.step: {start} is not below spec.training.steps ({steps}); "
            "a branch trains steps from.step + 1 to training.steps"
        )
    if spec["seeds"]["axis"] == "weight":
        errors.append(
            "spec.seeds.axis: weight varies only the initialisation, which a branch takes from "
            "its parent (every run would be the same); allowed with branch: data or both"
        )
    derived = [init["name"] for init in spec.get("inits", []) if init["strategy"] != "pythia"]
    if derived:
        errors.append(
            f"spec.inits: {', '.join(derived)} derive new weights, but spec.branch starts from "
            "the parent's weights; allowed with branch: no inits or the pythia strategy only"
        )
    for index, shock in enumerate(spec["training"].get("perturbations", [])):
        if shock["step"] + shock.get("steps", 1) - 1 <= start:
            errors.append(
                f"spec.training.perturbations[{index}].step: {shock['step']} ends at or before "
                f"spec.branch.from.step ({start}), so the branch never trains it"
            )
    return errors


def _companion(section: dict, path: str, needs: dict[str, str]) -> list[str]:
    schedule = section.get("schedule")
    if schedule in needs and needs[schedule] not in section:
        return [f"{path}.{needs[schedule]}: is required when {path}.schedule is {schedule}"]
    return []


def resources_for(spec: dict, size: str) -> dict:
    """The per-run resources of a size: built-in defaults < `default` < `perSize[size]`."""
    tiny = presets.get(size).tiny
    resolved = {
        "workers": 1,
        "gpusPerWorker": 0 if tiny else 1,
        "cpusPerWorker": 1 if tiny else 8,
    }
    resources = spec.get("resources", {})
    resolved.update(resources.get("default", {}))
    resolved.update(resources.get("perSize", {}).get(size, {}))
    return resolved


def _resource_errors(spec: dict, size: str) -> list[str]:
    errors = []
    resources = resources_for(spec, size)
    training = spec["training"]
    workers = resources["workers"]
    if training["globalBatchSize"] % workers:
        errors.append(
            f"spec.training.globalBatchSize: {training['globalBatchSize']} is not divisible by "
            f"the {workers} workers of size {size}"
        )
    micro = training.get("microBatchSize")
    per_worker = training["globalBatchSize"] // workers
    if micro and per_worker % micro:
        errors.append(
            f"spec.training.microBatchSize: {micro} does not divide the per-worker batch "
            f"{per_worker} of size {size}"
        )
    errors += _logits_errors(spec, size, resources, per_worker, bool(micro))
    if training["precision"] in ("bf16", "fp16") and resources["gpusPerWorker"] == 0:
        errors.append(
            f"spec.training.precision: {training['precision']} needs GPUs, but size {size} has "
            "gpusPerWorker 0; use fp32 or auto"
        )
    return errors


def _logits_errors(
    spec: dict, size: str, resources: dict, per_worker: int, explicit: bool
) -> list[str]:
    """A micro-batch whose logits alone exceed the GPU's memory can never run."""
    if not resources["gpusPerWorker"] or per_worker < 1:
        return []
    training, preset = spec["training"], presets.get(size)
    micro = training.get("microBatchSize") or presets.default_micro_batch(
        preset.micro_batch_size, per_worker
    )
    memory = resources.get("gpuMemory")
    limit = presets.quantity_bytes(memory) if memory else presets.DEFAULT_GPU_MEMORY
    seq, vocab, precision = training["sequenceLength"], preset.vocab_size, training["precision"]
    need = presets.logits_bytes(micro, seq, vocab, precision)
    if need <= limit:
        return []
    fits = limit // presets.logits_bytes(1, seq, vocab, precision)
    per_size = spec.get("resources", {}).get("perSize", {}).get(size, {})
    where = (
        f"spec.resources.perSize.{size}" if "gpuMemory" in per_size else "spec.resources.default"
    )
    named = f"{where}.gpuMemory {memory}" if memory else f"{where}.gpuMemory unset, 80Gi assumed"
    source = "" if explicit else f" (the default for {size})"
    return [
        f"spec.training.microBatchSize: {micro}{source} sequences of {seq} tokens make "
        f"{need / 2**30:.1f} GiB of logits (vocabulary {vocab}) for size {size}, more than the "
        f"GPU memory ({named}); the largest micro-batch that fits is {fits}"
    ]


STORAGE_DEFAULT_FIELDS = ("endpoint", "bucket", "secretName")


def with_storage_defaults(sweep: Sweep, defaults: dict) -> Sweep:
    """The sweep with the operator's object-store defaults in the fields it leaves unset.

    A sweep that names no bucket and meets an operator without a default one cannot
    run: that is a SpecError naming `spec.storage.bucket`.
    """
    spec = copy.deepcopy(sweep.spec)
    storage = spec["storage"]
    for name in STORAGE_DEFAULT_FIELDS:
        if not storage.get(name) and defaults.get(name):
            storage[name] = defaults[name]
    if not storage.get("bucket"):
        raise SpecError(
            [
                "spec.storage.bucket: is required (the operator has no default bucket; "
                "set it here or the chart's storage.bucket)"
            ],
            f"{crd.KIND} {sweep.namespace}/{sweep.name}",
        )
    return Sweep(sweep.name, sweep.namespace, spec, sweep.generation, sweep.uid, sweep.labels)
