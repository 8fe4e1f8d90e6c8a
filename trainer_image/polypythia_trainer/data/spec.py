"""The run config's ``data`` block, checked: bad values name ``spec.data.<field>``."""

from __future__ import annotations

from dataclasses import dataclass

from polypythia.errors import UsageError
from polypythia_trainer.data.split import split_weights

FORMATS = ("generated", "megatron")
ORDERS = ("megatron", "permutation")
FIELDS = (
    "format",
    "path",
    "tokenizer",
    "skipBatches",
    "order",
    "indexDir",
    "validationPath",
    "split",
)


@dataclass(frozen=True)
class DataSpec:
    format: str
    path: str | None
    tokenizer: str | None
    skip_batches: tuple[tuple[int, int], ...]
    order: str = "permutation"
    index_dir: str | None = None
    split: str | None = None


def _optional_str(data: dict, field: str) -> str | None:
    value = data.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise UsageError(f"spec.data.{field}: expected a non-empty string or null, got {value!r}")
    return value


def _skip_batches(value: object) -> tuple[tuple[int, int], ...]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise UsageError(f"spec.data.skipBatches: expected a list of [start, end], got {value!r}")
    ranges = []
    for i, item in enumerate(value):
        ok = (
            isinstance(item, list | tuple)
            and len(item) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in item)
        )
        if not ok or not 0 <= item[0] < item[1]:
            raise UsageError(
                f"spec.data.skipBatches[{i}]: expected [start, end] with 0 <= start < end "
                f"(batch indices, end excluded), got {item!r}"
            )
        ranges.append((item[0], item[1]))
    return tuple(ranges)


def parse_data_spec(data: dict) -> DataSpec:
    """Check a ``data`` block (docs/contracts.md) and return it typed."""
    if not isinstance(data, dict):
        raise UsageError(f"spec.data: expected a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise UsageError(f"spec.data.{unknown[0]}: unknown field (allowed: {', '.join(FIELDS)})")
    fmt = data.get("format", "generated")
    if fmt not in FORMATS:
        raise UsageError(f"spec.data.format: must be one of {', '.join(FORMATS)}, got {fmt!r}")
    path = _optional_str(data, "path")
    tokenizer = _optional_str(data, "tokenizer")
    if fmt == "megatron" and path is None:
        raise UsageError(
            "spec.data.path: required for format megatron (the dataset prefix, "
            "without .bin/.idx: a local path or s3://bucket/key)"
        )
    if fmt == "generated" and (path is not None or tokenizer is not None):
        field = "path" if path is not None else "tokenizer"
        raise UsageError(
            f"spec.data.{field}: not used with format generated (the project builds the corpus "
            "and its tokenizer); set format: megatron to read your own dataset"
        )
    order = data.get("order") or default_order(fmt)
    if order not in ORDERS:
        raise UsageError(f"spec.data.order: must be one of {', '.join(ORDERS)}, got {order!r}")
    index_dir = _optional_str(data, "indexDir")
    if index_dir is not None and order != "megatron":
        raise UsageError(
            "spec.data.indexDir: only used with order megatron (GPT-NeoX's index maps), "
            f"got order {order}"
        )
    split = _optional_str(data, "split")
    if split is not None:
        if fmt != "megatron":
            raise UsageError(
                "spec.data.split: only used with format megatron (the generated corpus has "
                "its own held-out documents)"
            )
        split_weights(split)
    skips = _skip_batches(data.get("skipBatches"))
    return DataSpec(fmt, path, tokenizer, skips, order, index_dir, split)


def default_order(fmt: str) -> str:
    """GPT-NeoX's order for megatron datasets (what Pythia trained on); ours for the demo."""
    return "megatron" if fmt == "megatron" else "permutation"
