"""`polypythia train`: train one run from its resolved run config (the RayJob entrypoint)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from polypythia.errors import UsageError

EXIT = {"completed": 0, "stopped": 130, "failed": 1}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        required=True,
        metavar="PATH_OR_JSON",
        help="the resolved run config: a run.json path, or JSON text starting with '{'",
    )
    parser.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="Ray cluster to join ('auto' inside a RayJob); default: start a local Ray",
    )
    parser.add_argument(
        "--no-ray",
        action="store_true",
        help="train in this process (one worker), skipping Ray's start-up",
    )
    parser.add_argument(
        "--allow-changes",
        action="store_true",
        help="resume even though the config differs from the stored run.json in what "
        "determines the result; each change is recorded in the run's history.json",
    )


def load_config(text: str) -> dict:
    """The run config from inline JSON or a JSON file; errors name --config."""
    if text.lstrip().startswith("{"):
        source, body = "--config (inline JSON)", text
    else:
        path = Path(text).expanduser()
        if not path.is_file():
            raise UsageError(f"--config: {text}: no such file (give a run.json path or JSON text)")
        try:
            source, body = f"--config {path}", path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UsageError(f"--config {path}: not a UTF-8 text file (expected JSON)") from None
    try:
        config = json.loads(body)
    except ValueError as exc:
        raise UsageError(f"{source}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise UsageError(f"{source}: expected a JSON object, got {type(config).__name__}")
    return config


def main(args: argparse.Namespace) -> int:
    from polypythia_trainer.launch import run_local, run_training

    config = load_config(args.config)
    if args.no_ray:
        if args.ray_address:
            raise UsageError("--no-ray: cannot be combined with --ray-address")
        summary = run_local(config, allow_changes=args.allow_changes)
    else:
        summary = run_training(
            config, ray_address=args.ray_address, allow_changes=args.allow_changes
        )
    print(json.dumps(summary), flush=True)
    return EXIT.get(summary.get("status"), 1)
