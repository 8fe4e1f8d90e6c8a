"""Expand a sweep into runs: names, seeds, resolved run configs. Pure: no I/O.

The same plan drives `polypythia run` (local Ray) and the operator (one RayJob per
run), so a run means the same thing wherever it trains.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from polypythia import crd, presets
from polypythia.runkey import RunKey
from polypythia.spec import Sweep, resources_for

MAX_RUN_NAME = 42  # 47 (KubeRay) minus room for a retry suffix `-r<N>`
PYTHIA_STEPS = presets.TRAIN_STEPS
PYTHIA_CHECKPOINT_COUNT = 143


@dataclass(frozen=True)
class RunPlan:
    """One run of a sweep: (size, seed[, init]) and the resolved config the trainer gets."""

    name: str
    size: str
    seed: int
    weight_seed: int
    data_seed: int
    init: str
    order: int
    config: dict
    requires: str | None = None

    @property
    def parent(self) -> str | None:
        """`<parent URI>@step<N>` of a branch (its cross-seed family); None otherwise."""
        branch = self.config.get("branch")
        return f"{branch['parent']}@step{branch['step']}" if branch else None

    @property
    def key(self) -> RunKey:
        """The run's identity (sweep, size, seed, init, name) for labels and rows."""
        return RunKey(self.config["sweep"], self.size, self.seed, self.init, self.name)


def pythia_checkpoint_steps(steps: int, count: int = PYTHIA_CHECKPOINT_COUNT) -> list[int]:
    """Pythia's schedule scaled to `steps`: 0, powers of two below the first regular
    checkpoint, then `count` evenly spaced ones ending at `steps`.

    For 143,000 steps and count 143 this is exactly Pythia's 154 revisions:
    0, 1, 2, 4, ..., 512, 1000, 2000, ..., 143000.
    """
    count = min(count, steps)
    regular = sorted({round(k * steps / count) for k in range(1, count + 1)})
    early = [0]
    power = 1
    while power < regular[0]:
        early.append(power)
        power *= 2
    return sorted(set(early + regular))


def checkpoint_steps(spec: dict) -> list[int]:
    """The planned checkpoint steps; a branch writes only those after its start (the
    ones before are its parent's)."""
    checkpoints = spec["checkpoints"]
    steps = spec["training"]["steps"]
    schedule = checkpoints["schedule"]
    if schedule == "pythia":
        planned = pythia_checkpoint_steps(steps, checkpoints.get("count", PYTHIA_CHECKPOINT_COUNT))
    elif schedule == "every":
        every = checkpoints["every"]
        planned = sorted({0, *range(every, steps + 1, every), steps})
    else:
        planned = sorted({0, *checkpoints["steps"], steps})
    start = branch_step(spec)
    return [s for s in planned if s > start] if start is not None else planned


def branch_step(spec: dict) -> int | None:
    """The parent step a branch sweep starts at; None for an ordinary sweep."""
    branch = spec.get("branch")
    return int(branch["from"]["step"]) if branch else None


def branch_block(spec: dict, size: str) -> dict | None:
    """The run config's `branch` (docs/contracts.md): parent URI for this size, step, and
    the optimiser the sweep asks for; the trainer adds the checkpoint's checksum and turns
    `restored` into `fresh` when the parent has no optimiser state."""
    branch = spec.get("branch")
    if not branch:
        return None
    return {
        "parent": branch["from"]["uri"].replace("{size}", dns_label(size)),
        "step": int(branch["from"]["step"]),
        "optimizer": "fresh" if branch.get("resetOptimizer") else "restored",
    }


def evaluation_steps(
    spec: dict, available: list[int], planned: list[int] | None = None
) -> list[int]:
    """Which of the `available` checkpoint steps the sweep's evaluation schedule selects.

    With the run's ``planned`` checkpoint steps, resume-only checkpoints (``resumeEvery``)
    are left out: the trainer prunes them as it goes, often before an evaluation reaches one.
    """
    if planned is not None:
        kept = set(planned)
        available = [step for step in available if step in kept]
    evaluation = spec["evaluation"]
    schedule = evaluation["schedule"]
    final = spec["training"]["steps"]
    if schedule == "none":
        return []
    if schedule == "all":
        return sorted(available)
    if schedule == "final":
        return [s for s in available if s == final]
    if schedule == "every":
        return sorted(s for s in available if s % evaluation["every"] == 0 or s == final)
    wanted = set(evaluation["steps"])
    return sorted(s for s in available if s in wanted)


# The PolyPythias paper's evaluation (CrowS-Pairs restricted to gender, as the paper reports).
POLYPYTHIAS_TASKS = (
    "arc_easy",
    "arc_challenge",
    "lambada_openai",
    "logiqa",
    "piqa",
    "sciq",
    "winogrande",
    "wsc",
    "blimp_anaphor_gender_agreement",
    "crows_pairs_english_gender",
    "simple_cooccurrence_bias",
)
# The project's offline tasks: what a tiny model trained on the generated corpus can be scored on.
OFFLINE_TASKS = ("pp_subject_verb_agreement", "pp_anaphor_gender_agreement", "pp_cloze")


def evaluation_tasks(spec: dict, size: str) -> list[str]:
    """The sweep's tasks; unset, PolyPythias' for Pythia sizes and pp_* for tiny CPU sizes."""
    tasks = spec["evaluation"].get("tasks")
    if tasks is not None:
        return list(tasks)
    return list(OFFLINE_TASKS if presets.get(size).tiny else POLYPYTHIAS_TASKS)


def evaluate_args(spec: dict, run_uri: str, steps: list[int], size: str) -> list[str]:
    """`polypythia evaluate` arguments for ``steps`` of one run: the eval Job's and the
    local driver's evaluation are the same command."""
    evaluation = spec["evaluation"]
    args = [
        "evaluate",
        run_uri,
        "--steps",
        ",".join(map(str, sorted(set(steps)))),
        "--tasks",
        ",".join(evaluation_tasks(spec, size)),
    ]
    if evaluation.get("limit"):
        args += ["--limit", str(evaluation["limit"])]
    return args


def dns_label(text: str) -> str:
    """Lower-case DNS-1035 label characters: `1.4b` -> `1p4b`."""
    text = text.lower().replace(".", "p").replace("_", "-")
    text = re.sub(r"[^a-z0-9-]", "-", text)
    return re.sub(r"-+", "-", text).strip("-")


def run_name(sweep: str, size: str, seed: int, init: str | None = None) -> str:
    """`<sweep>-<size>-s<seed>[-<init>]`, DNS-1035, at most MAX_RUN_NAME characters.

    A long sweep name is cut and given a short hash, so names stay unique and stable.
    """
    tail = f"-{dns_label(size)}-s{seed}" + (f"-{dns_label(init)}" if init else "")
    head = dns_label(sweep)
    if not head or not head[0].isalpha():
        head = "r" + head
    if len(head) + len(tail) > MAX_RUN_NAME:
        digest = hashlib.sha256(sweep.encode()).hexdigest()[:6]
        keep = MAX_RUN_NAME - len(tail) - len(digest) - 1
        head = f"{head[:keep].rstrip('-')}-{digest}"
    return head + tail


PYTHIA_SEED = 1234  # the original Pythia's GPT-NeoX seed: PolyPythias' "seed 0"


def gpt_neox_seed(seeds: dict, seed: int) -> int:
    """The GPT-NeoX seed of a sweep seed: with ``pythiaNumbering``, seed 0 is 1234."""
    return PYTHIA_SEED if seeds.get("pythiaNumbering") and seed == 0 else seed


def seed_pair(seeds: dict, seed: int) -> tuple[int, int]:
    """(weight seed, data seed) of a sweep seed, by the sweep's seed axis."""
    axis, fixed = seeds["axis"], seeds["fixed"]
    real = gpt_neox_seed(seeds, seed)
    if axis == "weight":
        return real, fixed
    if axis == "data":
        return fixed, real
    return real, real


def storage_uri(sweep: Sweep) -> str:
    """Where the sweep's tree lives in the object store (`s3://bucket/prefix`)."""
    storage = sweep.spec["storage"]
    prefix = storage.get("prefix", "").strip("/")
    return f"s3://{storage.get('bucket', '')}" + (f"/{prefix}" if prefix else "")


def sweep_uri(sweep: Sweep, base_uri: str | None = None) -> str:
    """The sweep's folder: its runs' folders and the applied sweep (`sweep.json`)."""
    return f"{(base_uri or storage_uri(sweep)).rstrip('/')}/{sweep.name}"


def seed_perturbations(perturbations: list[dict], seed: int) -> list[dict]:
    """The learning-rate shocks a seed's run gets: those without ``seeds`` and those naming
    it; ``seeds`` is left out so a run's config says only what its trainer does."""
    return [
        {k: v for k, v in p.items() if k != "seeds"}
        for p in perturbations
        if seed in p.get("seeds", [seed])
    ]


def run_config(sweep: Sweep, size: str, seed: int, name: str, base_uri: str) -> dict:
    """The resolved run config (docs/contracts.md): everything the trainer needs."""
    spec = sweep.spec
    preset = presets.get(size)
    training = spec["training"]
    resources = resources_for(spec, size)
    steps = training["steps"]
    peak = training.get("learningRate", preset.learning_rate)
    workers = resources["workers"]
    per_worker = training["globalBatchSize"] // workers
    weight_seed, data_seed = seed_pair(spec["seeds"], seed)
    storage = spec["storage"]
    model = preset.model_block()
    model.update(zLoss=training["zLoss"], qkLayerNorm=training["qkLayerNorm"])
    data = spec["data"]
    return {
        "apiVersion": crd.API_VERSION,
        "sweep": sweep.name,
        "namespace": sweep.namespace,
        "run": name,
        "size": size,
        "seed": seed,
        "weightSeed": weight_seed,
        "dataSeed": data_seed,
        "init": {"strategy": "pythia"},
        "model": model,
        "training": {
            "steps": steps,
            "globalBatchSize": training["globalBatchSize"],
            "microBatchSize": training.get("microBatchSize")
            or presets.default_micro_batch(preset.micro_batch_size, per_worker),
            "sequenceLength": training["sequenceLength"],
            "learningRate": peak,
            "minLearningRate": training.get("minLearningRate", peak * presets.MIN_LR_FRACTION),
            "warmupSteps": training["warmupFraction"] * steps,
            "adamBeta1": presets.ADAM_BETAS[0],
            "adamBeta2": presets.ADAM_BETAS[1],
            "adamEps": presets.ADAM_EPS,
            "weightDecay": training["weightDecay"],
            "gradientClipping": training["gradientClipping"],
            "precision": training["precision"],
            "strategy": training["strategy"],
            "zeroStage": training["zeroStage"] if training["strategy"] == "deepspeed" else 0,
            "workers": workers,
            "gpusPerWorker": resources["gpusPerWorker"],
            "cpusPerWorker": resources["cpusPerWorker"],
            "perturbations": seed_perturbations(training.get("perturbations", []), seed),
        },
        "data": {
            "format": data["format"],
            "path": data.get("path"),
            "tokenizer": data.get("tokenizer"),
            "skipBatches": [list(pair) for pair in data.get("skipBatches", [])],
            "order": data.get("order")
            or ("megatron" if data["format"] == "megatron" else "permutation"),
            "indexDir": data["indexDir"].replace("{seed}", str(seed))
            if data.get("indexDir")
            else None,
            "validationPath": data.get("validationPath"),
            "split": data.get("split"),
        },
        "checkpoints": {
            "steps": checkpoint_steps(spec),
            "resumeEvery": spec["checkpoints"].get("resumeEvery"),
            "keepResume": spec["checkpoints"]["keepResume"],
            "optimizerState": spec["checkpoints"]["optimizerState"],
        },
        "telemetry": {"flushEvery": max(1, min(50, steps // 20 or 1))},
        "metrics": {
            "wandbProject": (spec.get("metrics") or {}).get("wandbProject"),
            "wandbEntity": (spec.get("metrics") or {}).get("wandbEntity"),
        },
        "storage": {
            "uri": base_uri,
            "endpoint": storage.get("endpoint"),
            "secure": storage["secure"],
            "region": storage["region"],
        },
        "runUri": f"{sweep_uri(sweep, base_uri)}/{name}",
        **({"branch": branch} if (branch := branch_block(spec, size)) else {}),
    }


def init_block(sweep: Sweep, init: dict | None, size: str, base_uri: str) -> dict:
    """The run config's `init`: strategy plus where its reference checkpoint lives."""
    if init is None:
        return {"strategy": "pythia", "name": None, "reference": None}
    reference = init.get("reference")
    block = {"strategy": init["strategy"], "name": init["name"], "reference": None}
    if not reference:
        return block
    if "checkpoint" in reference:
        checkpoint = reference["checkpoint"].replace("{size}", dns_label(size))
        match = re.match(r"^(?P<run>.+)/checkpoints/step(?P<step>\d+)/?$", checkpoint)
        block["reference"] = (
            {"uri": match["run"], "step": int(match["step"])} if match else {"path": checkpoint}
        )
        return block
    run = reference["run"]
    name = run_name(sweep.name, run.get("size", size), run["seed"], run["init"])
    step = reference.get("step", sweep.spec["training"]["steps"])
    block["reference"] = {
        "uri": f"{base_uri.rstrip('/')}/{sweep.name}/{name}",
        "step": step,
        "run": name,
    }
    return block


def plan_sweep(sweep: Sweep, *, base_uri: str | None = None) -> list[RunPlan]:
    """All runs of a sweep in scheduling order: seed-major, so every size gets several
    seeds early (the cross-seed comparison is the point of a sweep). With `inits`, a
    run is (size, seed, init) and runs that need a reference run's checkpoint say so
    in `requires`."""
    base_uri = base_uri or storage_uri(sweep)
    sizes = sweep.sizes()
    inits = sweep.spec.get("inits") or [None]
    runs = []
    for seed in sweep.seeds():
        for init in inits:
            for size in sizes:
                init_name = init["name"] if init else None
                name = run_name(sweep.name, size, seed, init_name)
                weight_seed, data_seed = seed_pair(sweep.spec["seeds"], seed)
                config = run_config(sweep, size, seed, name, base_uri)
                config["init"] = init_block(sweep, init, size, base_uri)
                reference = config["init"]["reference"] or {}
                runs.append(
                    RunPlan(
                        name=name,
                        size=size,
                        seed=seed,
                        weight_seed=weight_seed,
                        data_seed=data_seed,
                        init=init_name or "pythia",
                        order=len(runs),
                        config=config,
                        requires=reference.get("run"),
                    )
                )
    return runs
