"""`polypythia plan SWEEP.yaml`: the runs of a sweep and, as YAML, what the operator creates."""

from __future__ import annotations

import argparse
import json
import os
import sys

import yaml

from polypythia import __version__, planner
from polypythia.spec import load_sweep_file
from polypythia.tables import render_table

# The chart's default trainer image (charts/polypythia/values.yaml, tag = appVersion).
DEFAULT_TRAINER_IMAGE = f"ghcr.io/polypythia/polypythia-trainer:{__version__}"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep", help="PolyPythiaSweep YAML file")
    parser.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
    parser.add_argument(
        "--namespace", default=None, help="namespace of the rendered objects (yaml output)"
    )
    parser.add_argument(
        "--trainer-image",
        default=None,
        help="trainer image for the RayJobs (default: spec.images.trainer or the operator's)",
    )


def main(args: argparse.Namespace) -> int:
    sweep = load_sweep_file(args.sweep)
    if args.namespace:
        sweep = type(sweep)(**{**sweep.__dict__, "namespace": args.namespace})
    runs = planner.plan_sweep(sweep)
    if args.output == "json":
        payload = [
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
        print(json.dumps(payload, indent=2))
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
        yaml.safe_dump_all(objects, sys.stdout, sort_keys=False)
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
    return 0
