"""`polypythia validate SWEEP.yaml`: schema (the CRD's own) + meaning, defaults applied."""

from __future__ import annotations

import argparse
import sys

from polypythia import branch, estimate, planner
from polypythia.argtypes import float_in
from polypythia.output import dump_yaml
from polypythia.spec import SpecError, load_sweep_file

DEFAULT_CHECKPOINT_WARN_TB = 1.0


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep", help="PolyPythiaSweep YAML file")
    parser.add_argument(
        "--show-defaults", action="store_true", help="print the sweep with the CRD defaults applied"
    )
    parser.add_argument(
        "--skip-parent",
        action="store_true",
        help="with spec.branch: do not read the parent checkpoint (offline validation)",
    )
    parser.add_argument(
        "--checkpoint-warn-tb",
        type=float_in(0, 1e9),
        default=DEFAULT_CHECKPOINT_WARN_TB,
        help="warn when the sweep's checkpoints (weights + optimiser state) would take more "
        "than this many terabytes (default: %(default)s)",
    )


def main(args: argparse.Namespace) -> int:
    sweep = load_sweep_file(args.sweep)
    if not args.skip_parent:
        problems = branch.check_sweep(sweep)
        if problems:
            raise SpecError(problems, args.sweep)
    plans = planner.plan_sweep(sweep, base_uri="s3://plan")
    runs = len(plans)
    inits = len(sweep.spec.get("inits") or [None])
    if args.show_defaults:
        obj = {
            "apiVersion": "polypythia.io/v1alpha1",
            "kind": "PolyPythiaSweep",
            "metadata": {"name": sweep.name, "namespace": sweep.namespace},
            "spec": sweep.spec,
        }
        dump_yaml(obj, sys.stdout)
    steps = len(planner.checkpoint_steps(sweep.spec))
    print(
        f"{args.sweep}: valid {sweep.name}: {len(sweep.sizes())} size(s) x "
        f"{len(sweep.seeds())} seed(s)"
        + (f" x {inits} inits" if inits > 1 else "")
        + f" = {runs} run(s), {steps} checkpoints each",
        file=sys.stderr if args.show_defaults else sys.stdout,
    )
    cost = estimate.estimate_sweep(sweep.spec, plans)
    if cost.checkpoint_bytes > args.checkpoint_warn_tb * 1e12:
        biggest = max(cost.runs, key=lambda r: r.checkpoint_bytes)
        print(
            f"{args.sweep}: warning: checkpoints would take "
            f"{estimate.human_bytes(cost.checkpoint_bytes)} (over "
            f"--checkpoint-warn-tb {args.checkpoint_warn_tb:g}); the largest run, "
            f"{biggest.run}, keeps {biggest.checkpoints} checkpoints of "
            f"{estimate.human_bytes(biggest.weight_bytes)} weights, "
            f"{biggest.with_optimizer} of them with "
            f"{estimate.human_bytes(biggest.optimizer_bytes)} optimiser state "
            f"(checkpoints.optimizerState {biggest.optimizer_state}; "
            "`polypythia plan` shows the estimate)",
            file=sys.stderr,
        )
    return 0
