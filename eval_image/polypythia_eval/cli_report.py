"""``polypythia report SWEEP_URI_OR_DIR``: render the HTML report of a sweep."""

from __future__ import annotations

import argparse
from pathlib import Path

from polypythia.commands.common import add_storage_flags, storage_options
from polypythia.errors import UsageError
from polypythia_eval.report import render_report


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        metavar="SWEEP_URI_OR_DIR",
        help="sweep folder (local path or s3://bucket/prefix/<sweep>) or a folder of "
        "lm-eval result files (<model>/.../*step<N>.json)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("report"), help="output folder (default: %(default)s)"
    )
    parser.add_argument(
        "--pythia-evals", default=None, help="folder of Pythia lm-eval files to show alongside"
    )
    parser.add_argument("--title", default=None, help="report title (default: the sweep name)")
    parser.add_argument(
        "--sweep",
        metavar="SWEEP_YAML",
        default=None,
        help="the sweep's manifest: its spec.instability sets the spike detector and the "
        "cross-seed test (default: the sweep as applied, recorded in sweep.json beside its "
        "runs; the CRD defaults when there is none)",
    )
    add_storage_flags(parser)


def main(args: argparse.Namespace) -> int:
    source = str(args.source)
    if not source.startswith("s3://") and not Path(source).exists():
        raise UsageError(f"SWEEP_URI_OR_DIR {source!r}: no such folder")
    if args.pythia_evals and not Path(args.pythia_evals).is_dir():
        raise UsageError(f"--pythia-evals {args.pythia_evals!r}: no such folder")
    settings = None
    if args.sweep:
        from polypythia.monitoring.settings import settings_from_spec
        from polypythia.spec import load_sweep_file

        settings = settings_from_spec(load_sweep_file(args.sweep).spec.get("instability"))
    store_kwargs = storage_options(args, source)
    from polypythia.storage import SweepStore

    if not SweepStore.open(source, **store_kwargs).runs():
        raise UsageError(f"SWEEP_URI_OR_DIR {source!r}: no runs in it (nothing to report)")
    index = render_report(
        source,
        args.out,
        pythia_evals=args.pythia_evals,
        title=args.title,
        settings=settings,
        **store_kwargs,
    )
    print(index)
    return 0
