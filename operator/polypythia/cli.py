"""`polypythia` command line: one sub-command per module, loaded lazily.

Each command module exposes ``configure(parser)`` and ``main(args) -> int``, so
the operator image never imports torch and the trainer never imports kopf.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

from polypythia import __version__
from polypythia.errors import RuntimeFault, UsageError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "validate": ("polypythia.commands.validate", "check a sweep file against the CRD schema"),
    "presets": ("polypythia.commands.presets", "list the model-size presets"),
    "plan": ("polypythia.commands.plan", "expand a sweep into runs (and Kubernetes objects)"),
    "verify": ("polypythia.commands.verify", "check checkpoints against their COMPLETE manifests"),
    "run": ("polypythia.local.cli", "run a sweep on this machine or a Ray cluster"),
    "train": ("polypythia_trainer.cli", "train one run from a resolved run config"),
    "data": ("polypythia_trainer.data.cli", "build indexed token datasets"),
    "spikes": ("polypythia.monitoring.cli_spikes", "find loss spikes in training logs"),
    "outliers": ("polypythia.monitoring.cli_outliers", "find cross-seed outlier runs"),
    "evaluate": ("polypythia_eval.cli_evaluate", "evaluate a run's checkpoints"),
    "report": ("polypythia_eval.cli_report", "render the HTML report of a sweep"),
    "weights": ("polypythia_eval.cli_weights", "Student-t tail fits of a checkpoint's tensors"),
    "operator": ("polypythia.k8s.cli", "run the Kubernetes operator"),
}


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on usage errors already; keep its message on one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = _Parser(prog="polypythia", description="PolyPythias-style pre-training sweeps")
    parser.add_argument("--version", action="version", version=f"polypythia {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:
            module = importlib.import_module(module_name)
            module.configure(command)
            command.set_defaults(_main=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "_main", None):
        parser.print_help()
        return 2
    try:
        return int(args._main(args) or 0)
    except UsageError as exc:
        print(f"polypythia {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeFault as exc:
        print(f"polypythia {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `polypythia plan -o yaml | head`: the reader left; that is not an error.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        return 0
    except OSError as exc:
        # A file the command could not read or write (full disk, read-only, a missing
        # or non-folder parent): the path and the reason, not a traceback.
        where = f"{exc.filename}: " if exc.filename else ""
        what = "disk full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else exc.strerror or exc
        print(f"polypythia {args.command}: error: {where}{what}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
