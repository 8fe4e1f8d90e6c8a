"""``polypythia evaluate RUN_URI``: the evaluation image's entry point."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from polypythia.argtypes import int_at_least
from polypythia.commands.common import add_storage_flags, storage_options
from polypythia.storage import RunStore
from polypythia_eval.evaluate import (
    EvaluateOptions,
    evaluate_run,
    parse_steps,
    parse_tasks,
)
from polypythia_eval.offline_tasks import OfflineItems
from polypythia_eval.weightstats import StatsConfig

_positive = int_at_least(1)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_uri", metavar="RUN_URI", help="run folder: local path or s3://...")
    parser.add_argument(
        "--steps", default="all", help="all (default), latest, or step numbers: 0,512,1000"
    )
    parser.add_argument(
        "--tasks",
        default=None,
        help="comma-separated lm-eval tasks (pp_* are offline; pp_blimp = all minimal-pair "
        "tasks; 'polypythias' = the paper's list; 'none' = weight statistics only); "
        "default: pp_subject_verb_agreement,pp_anaphor_gender_agreement,pp_cloze",
    )
    parser.add_argument("--force", action="store_true", help="re-evaluate evaluated steps")
    parser.add_argument("--limit", type=_positive, default=None, help="items per task")
    parser.add_argument(
        "--batch-size",
        type=_positive,
        default=8,
        help="sequences per forward pass (default: %(default)s)",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--workdir", type=Path, default=None, help="where task data goes")
    parser.add_argument(
        "--pairs",
        type=_positive,
        default=OfflineItems.pairs_per_phenomenon,
        help="minimal pairs generated per phenomenon (default: %(default)s)",
    )
    parser.add_argument(
        "--cloze-items",
        type=_positive,
        default=OfflineItems.cloze,
        help="cloze items generated (default: %(default)s)",
    )
    parser.add_argument(
        "--fit-sample",
        type=_positive,
        default=StatsConfig.fit_sample_size,
        help="weights sampled per distribution fit (default: %(default)s)",
    )
    parser.add_argument("--no-weight-stats", action="store_true", help="skip the weight statistics")
    add_storage_flags(parser)


def main(args: argparse.Namespace) -> int:
    steps = parse_steps(args.steps)
    options = EvaluateOptions(
        tasks=parse_tasks(args.tasks),
        limit=args.limit,
        batch_size=args.batch_size,
        device=args.device,
        force=args.force,
        workdir=args.workdir,
        items=OfflineItems(pairs_per_phenomenon=args.pairs, cloze=args.cloze_items),
        stats=StatsConfig(fit_sample_size=args.fit_sample),
        weight_stats=not args.no_weight_stats,
    )
    store = RunStore.open(args.run_uri, **storage_options(args, args.run_uri))
    summary = evaluate_run(
        args.run_uri, steps, options, store=store, log=lambda m: print(m, file=sys.stderr)
    )
    print(
        f"evaluated {len(summary.evaluated)}, skipped {len(summary.skipped)}, "
        f"failed {len(summary.failed)}"
    )
    if not (summary.evaluated or summary.skipped or summary.failed):
        print(
            f"polypythia evaluate: error: {store.uri}: no complete checkpoint to evaluate",
            file=sys.stderr,
        )
        return 1
    return 1 if summary.failed else 0
