"""`polypythia verify RUN_OR_SWEEP_URI`: every checkpoint against its COMPLETE manifest.

Read-only: damaged checkpoints are named (exit 1), never moved; a resuming trainer or
an evaluation quarantines them when it meets them.
"""

from __future__ import annotations

import argparse
import sys

from polypythia.commands.common import add_output_flag, add_storage_flags, storage_options
from polypythia.errors import RuntimeFault
from polypythia.output import emit
from polypythia.storage.verify import RunCheck, verify_uri


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "uri", metavar="URI", help="a run or sweep folder: local path or s3://bucket/prefix"
    )
    parser.add_argument(
        "--sizes-only",
        action="store_true",
        help="compare file sizes only, not sha256 (fast on large S3 checkpoints)",
    )
    add_output_flag(parser, help="output format (default: %(default)s)")
    add_storage_flags(parser)


def _as_dict(runs: list[RunCheck]) -> dict:
    return {
        "runs": [
            {
                "run": r.run,
                "checkpoints": [
                    {
                        "step": c.step,
                        "uri": c.uri,
                        "sound": c.sound,
                        "files": c.files,
                        "bytes": c.size,
                        **({"problem": c.problem} if c.problem else {}),
                    }
                    for c in r.checks
                ],
            }
            for r in runs
        ],
        "checked": sum(len(r.checks) for r in runs),
        "damaged": sum(len(r.damaged) for r in runs),
    }


def main(args: argparse.Namespace) -> int:
    runs = verify_uri(args.uri, checksums=not args.sizes_only, **storage_options(args, args.uri))
    checked = sum(len(r.checks) for r in runs)
    if not checked:
        raise RuntimeFault(f"{args.uri}: no complete checkpoint to verify (no run or sweep there)")
    damaged = sum(len(r.damaged) for r in runs)
    if args.output != "table":
        emit(_as_dict(runs), args.output)
    else:
        for run in runs:
            for check in run.checks:
                if check.problem:
                    print(f"DAMAGED {run.run} step{check.step}: {check.problem}")
            print(f"{run.run}: {len(run.sound)} sound, {len(run.damaged)} damaged")
    how = "sizes" if args.sizes_only else "sizes and sha256"
    print(
        f"verified {checked} checkpoint(s) of {len(runs)} run(s) ({how}): {damaged} damaged",
        file=sys.stderr,
    )
    return 1 if damaged else 0
