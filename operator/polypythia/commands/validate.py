"""`polypythia validate SWEEP.yaml`: schema (the CRD's own) + meaning, defaults applied."""

from __future__ import annotations

import argparse
import sys

import yaml

from polypythia import planner
from polypythia.spec import load_sweep_file


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep", help="PolyPythiaSweep YAML file")
    parser.add_argument(
        "--show-defaults", action="store_true", help="print the sweep with the CRD defaults applied"
    )


def main(args: argparse.Namespace) -> int:
    sweep = load_sweep_file(args.sweep)
    runs = len(planner.plan_sweep(sweep, base_uri="s3://plan"))
    inits = len(sweep.spec.get("inits") or [None])
    if args.show_defaults:
        obj = {
            "apiVersion": "polypythia.io/v1alpha1",
            "kind": "PolyPythiaSweep",
            "metadata": {"name": sweep.name, "namespace": sweep.namespace},
            "spec": sweep.spec,
        }
        yaml.safe_dump(obj, sys.stdout, sort_keys=False)
    steps = len(planner.checkpoint_steps(sweep.spec))
    print(
        f"{args.sweep}: valid {sweep.name}: {len(sweep.sizes())} size(s) x "
        f"{len(sweep.seeds())} seed(s)"
        + (f" x {inits} inits" if inits > 1 else "")
        + f" = {runs} run(s), {steps} checkpoints each",
        file=sys.stderr if args.show_defaults else sys.stdout,
    )
    return 0
