"""Flags and output shared by the commands, so each is spelled and behaves the same everywhere.

`-o/--output` (table, json, yaml), the S3 connection flags (`--endpoint`, `--insecure`,
`--region`), detector settings given as one flag per field, and the table-or-JSON/YAML
printing that follows from `-o`. Light imports only: the operator image runs these
commands without torch.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from polypythia.errors import UsageError
from polypythia.monitoring.tables import format_table
from polypythia.output import FORMATS, emit

CAMEL_HELP = "table, or json/yaml with camelCase keys (default: %(default)s)"

DEFAULT_REGION = "us-east-1"

T = TypeVar("T")


def add_output_flag(parser: argparse.ArgumentParser, help: str = CAMEL_HELP) -> None:
    """`-o/--output` with the formats every command prints."""
    parser.add_argument("-o", "--output", choices=FORMATS, default="table", help=help)


def add_storage_flags(parser: argparse.ArgumentParser) -> None:
    """The S3 connection flags of commands that read runs from storage."""
    parser.add_argument("--endpoint", default=None, help="S3 endpoint (host:port or URL)")
    parser.add_argument("--insecure", action="store_true", help="plain HTTP to the endpoint")
    parser.add_argument("--region", default=DEFAULT_REGION, help="S3 region (default: %(default)s)")


def storage_options(args: argparse.Namespace, uri: str) -> dict[str, Any]:
    """S3 connection options from the storage flags for an s3:// ``uri``; none for a local
    folder (the flags mean nothing there)."""
    if not uri.startswith("s3://"):
        return {}
    return {"endpoint": args.endpoint, "secure": not args.insecure, "region": args.region}


# What a settings flag left unset means for runs in storage (``settings_from_args``'s base).
STORED_DEFAULT = "for runs in storage, their sweep's own from its sweep.json"


def add_settings_flags(
    parser: argparse.ArgumentParser, defaults: object, flags: Sequence[tuple[str, type, str]]
) -> None:
    """One `--field-name` flag per settings field (name, type, help). Unset, a flag takes
    the stored sweep's own setting when there is one, else the settings class's own
    value (shown in the help), so the CLI never repeats a default."""
    for field, kind, help_text in flags:
        shown = f"{getattr(defaults, field)}, or {STORED_DEFAULT}"
        parser.add_argument(
            f"--{field.replace('_', '-')}",
            type=kind,
            default=None,
            help=help_text.replace("%(default)s", shown),
        )


def settings_from_args(
    cls: Callable[..., T],
    args: argparse.Namespace,
    flags: Sequence[tuple[str, type, str]],
    base: T | None = None,
    **extra: Any,
) -> T:
    """``base`` (a stored sweep's settings; else the class's defaults) with the flags
    given; the class's own check (a ``ValueError`` starting with the field name) becomes
    a usage error naming the flag."""
    given = {field: getattr(args, field) for field, _, _ in flags}
    given = {field: value for field, value in given.items() if value is not None}
    try:
        return dataclasses.replace(base if base is not None else cls(), **given, **extra)
    except ValueError as exc:
        field, _, reason = str(exc).partition(":")
        raise UsageError(f"--{field.replace('_', '-')}:{reason}") from None


def show(
    output: str,
    data: Any,
    header: list[str],
    rows: list[list[str]],
    empty: str | None = None,
) -> int:
    """Print ``data`` as JSON/YAML, or ``rows`` as an aligned table (``empty`` instead of a
    table without rows, when given). Returns the exit code, 0."""
    if output != "table":
        emit(data, output)
    elif not rows and empty is not None:
        print(empty)
    else:
        print(format_table(header, rows))
    return 0
