"""Read the long tables the CLIs take (CSV, TSV, JSONL) with errors that name the
file, line and column."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from polypythia.errors import UsageError
from polypythia.jsonlines import json_lines

FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


class Row(dict):
    """One record plus where it came from, for error messages."""

    where: str = ""


def read_rows(path: str | Path) -> list[Row]:
    """Every record of a CSV/TSV (header line) or JSONL file (one object per line)."""
    path = Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise UsageError(f"{path}: unknown file type {path.suffix!r}; use one of {sorted(FORMATS)}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read: {exc}") from None
    rows: list[Row] = []
    if kind == "jsonl":
        for no, obj in json_lines(text.splitlines(), path):
            if not isinstance(obj, dict):
                raise UsageError(f"{path}:{no}: must be a JSON object, got {type(obj).__name__}")
            row = Row(obj)
            row.where = f"{path}:{no}"
            rows.append(row)
        return rows
    reader = csv.reader(text.splitlines(), delimiter="," if kind == "csv" else "\t")
    header = next(reader, None)
    if not header:
        raise UsageError(f"{path}:1: empty file; expected a header line")
    for no, cells in enumerate(reader, 2):
        if not cells:
            continue
        if len(cells) != len(header):
            raise UsageError(f"{path}:{no}: {len(cells)} fields, the header has {len(header)}")
        row = Row(zip(header, cells, strict=True))
        row.where = f"{path}:{no}"
        rows.append(row)
    return rows


def columns(rows: list[Row]) -> set[str]:
    return set().union(*(r.keys() for r in rows)) if rows else set()


def require(row: Row, column: str) -> Any:
    if column not in row or row[column] in ("", None):
        raise UsageError(f"{row.where}: column {column!r} is missing or empty")
    return row[column]


def number(row: Row, column: str, optional: bool = False) -> float | None:
    """A float from the cell (nan/inf allowed: a diverged loss is data)."""
    if optional and (column not in row or row[column] in ("", None)):
        return None
    value = require(row, column)
    if isinstance(value, bool):
        raise UsageError(f"{row.where}: column {column!r}: must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UsageError(
            f"{row.where}: column {column!r}: must be a number, got {value!r}"
        ) from None


def integer(row: Row, column: str) -> int:
    value = number(row, column)
    assert value is not None
    if not math.isfinite(value) or value != int(value):
        raise UsageError(f"{row.where}: column {column!r}: must be an integer, got {row[column]!r}")
    return int(value)


def text(row: Row, column: str) -> str:
    return str(require(row, column))


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """Plain aligned columns."""
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)
