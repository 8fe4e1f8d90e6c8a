"""`polypythia plan SWEEP.yaml`: the runs of a sweep, what they cost (tokens, FLOPs,
accelerator-hours, checkpoint bytes, evaluations) and, as YAML, what the operator creates."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from polypythia import __version__, estimate, planner
from polypythia.argtypes import float_in
from polypythia.output import dump_yaml_all, emit
from polypythia.spec import load_sweep_file
from polypythia.tables import render_table

# The chart's default trainer image (charts/polypythia/values.yaml, tag = appVersion).
DEFAULT_TRAINER_IMAGE = f"ghcr.io/polypythia/polypythia-trainer:{__version__}"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep", help="PolyPythiaSweep YAML file")
    parser.add_argument(
        "-o",
        "--output",
        choices=["table", "json", "yaml"],
        default="table",
        help="table: runs and cost estimate; json: runs with their resolved configs and "
        "the estimate; yaml: the RayJobs the operator creates (default: %(default)s)",
    )
    parser.add_argument(
        "--namespace",
        default=None,
        help="namespace of the rendered objects (yaml output; default: the file's or `default`)",
    )
    parser.add_argument(
        "--trainer-image",
        default=None,
        help="trainer image for the RayJobs (default: spec.images.trainer or the operator's)",
    )
    parser.add_argument(
        "--device",
        choices=sorted(estimate.DEVICES),
        default=estimate.DEFAULT_DEVICE,
        help="accelerator the hours are stated for, at its dense bf16 peak (default: %(default)s)",
    )
    parser.add_argument(
        "--mfu",
        type=float_in(0, 1),
        default=estimate.DEFAULT_MFU,
        help="model FLOPs utilisation assumed, in (0, 1] (default: %(default)s)",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float_in(0, 1e6),
        default=None,
        help="override the device's peak dense TFLOP/s (default: the device's datasheet value)",
    )


def main(args: argparse.Namespace) -> int:
    sweep = load_sweep_file(args.sweep)
    if args.namespace:
        sweep = type(sweep)(**{**sweep.__dict__, "namespace": args.namespace})
    base_uri = None
    if not sweep.spec["storage"].get("bucket"):
        # No bucket: the runs live where `polypythia run` would put them (its --workdir).
        workdir = Path(os.environ.get("POLYPYTHIA_WORKDIR", "polypythia-work"))
        base_uri = str((workdir / "store").resolve())
        if args.output == "yaml":
            print(
                f"{args.sweep}: warning: spec.storage.bucket is unset, so these RayJobs "
                f"would write to {base_uri} inside their pods; set spec.storage.bucket",
                file=sys.stderr,
            )
    runs = planner.plan_sweep(sweep, base_uri=base_uri)
    assumptions = estimate.Assumptions.build(args.device, args.mfu, args.peak_tflops)
    cost = estimate.estimate_sweep(sweep.spec, runs, assumptions)
    if args.output == "json":
        plans = [
            {
                "name": r.name,
                "size": r.size,
                "seed": r.seed,
                "weightSeed": r.weight_seed,
                "dataSeed": r.data_seed,
                "init": r.init,
                "order": r.order,
                "requires": r.requires,
                "config": r.config,
            }
            for r in runs
        ]
        emit({"runs": plans, "estimate": cost.as_dict()}, "json")
        return 0
    if args.output == "yaml":
        from polypythia.k8s import rayjob

        image = (
            args.trainer_image
            or sweep.spec.get("images", {}).get("trainer")
            or os.environ.get("POLYPYTHIA_TRAINER_IMAGE")
            or DEFAULT_TRAINER_IMAGE
        )
        objects = [rayjob.render_rayjob(sweep, run, trainer_image=image) for run in runs]
        dump_yaml_all(objects, sys.stdout)
        return 0
    rows = [
        [
            r.order,
            r.name,
            r.size,
            r.seed,
            r.weight_seed,
            r.data_seed,
            r.init,
            r.config["training"]["steps"],
            len(r.config["checkpoints"]["steps"]),
            r.config["training"]["workers"],
            r.config["training"]["gpusPerWorker"],
        ]
        for r in runs
    ]
    headers = ["#", "RUN", "SIZE", "SEED", "W_SEED", "D_SEED", "INIT", "STEPS", "CKPTS", "WORKERS"]
    print(render_table(headers + ["GPUS"], rows))
    print()
    print(estimate_table(cost))
    return 0


def estimate_table(cost: estimate.SweepEstimate) -> str:
    """Per-run cost rows, a TOTAL row, and the assumptions they rest on."""
    a = cost.assumptions
    h = estimate.human_count
    b = estimate.human_bytes
    rows = [
        [
            r.run,
            r.size,
            h(r.parameters),
            h(r.tokens),
            f"{r.flops:.3g}",
            _hours(r.accelerator_hours),
            "-" if r.wall_hours is None else _hours(r.wall_hours),
            r.checkpoints,
            b(r.checkpoint_bytes),
            r.evaluations,
        ]
        for r in cost.runs
    ]
    rows.append(
        [
            f"TOTAL ({len(cost.runs)} runs)",
            "",
            "",
            h(cost.tokens),
            f"{cost.flops:.3g}",
            _hours(cost.accelerator_hours),
            "",
            cost.checkpoints,
            b(cost.checkpoint_bytes),
            cost.evaluations,
        ]
    )
    headers = ["RUN", "SIZE", "PARAMS", "TOKENS", "FLOPS", "ACC_HOURS", "WALL_H", "CKPTS"]
    table = render_table(headers + ["CKPT_BYTES", "EVALS"], rows)
    note = (
        f"estimate: FLOPs = tokens x (6N + 12LdT) (PaLM); hours at {a.mfu:.0%} MFU of "
        f"{a.device} ({a.peak_flops / 1e12:g} TFLOP/s peak); WALL_H = hours / the run's "
        "accelerators; CKPT_BYTES = weights of every kept checkpoint + optimiser state where kept"
    )
    saved = cost.optimizer_bytes_saved
    if saved:
        policies = ", ".join(sorted({r.optimizer_state for r in cost.runs}))
        note += (
            f"\ncheckpoints.optimizerState {policies}: optimiser state kept on the newest and "
            f"resume checkpoints only, saving {b(saved)} ({b(cost.checkpoint_bytes + saved)} "
            "with optimizerState all)"
        )
    return f"{table}\n{note}"


def _hours(value: float) -> str:
    return f"{value:,.1f}" if value >= 1 else f"{value:.2g}"
