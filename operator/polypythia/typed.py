"""Frozen dataclasses from the camelCase dicts of a sweep or a run config.

The dataclass is the one declaration of a block: each field is read from the key that is
its name in camelCase (``metadata={"key": ...}`` where the CRD spells it otherwise, or
``FIXED`` for a setting no sweep sets), typed by its annotation and defaulted by its
default; a field without a default is required. Keys the dataclass does not declare are
ignored. A bad value raises a one-line UsageError naming its full path
(``training.adamBeta1: expected float, got 'x'``). Checks that span fields stay with
the caller, after the parse.

Written here rather than taken from dacite, cattrs or pydantic: none reads camelCase
keys, refuses ``True`` for an int and names the failing path in one line without as
much glue as this module has code.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from polypythia.errors import UsageError
from polypythia.output import camel

T = TypeVar("T")

FIXED: Mapping[str, Any] = types.MappingProxyType({"key": None})
"""Field metadata of a setting that keeps its default whatever the block holds."""

_PLAIN = (bool, int, float, str, list)


def camel_names(message: str) -> str:
    """Rewrite the snake_case field names in a message the way the CRD spells them."""
    return re.sub(r"\b[a-z]+(?:_[a-z]+)+\b", lambda m: camel(m.group(0)), message)


def build(cls: type[T], block: Mapping[str, Any], path: str, /, **given: Any) -> T:
    """An instance of dataclass ``cls`` read from ``block``; ``given`` fields are not read
    (the caller parsed them itself). Absent and null keys take the field's default."""
    hints = _hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in given or not f.init:
            continue
        key = f.metadata.get("key", camel(f.name))
        if key is None:
            continue
        where = f"{path}.{key}" if path else key
        value = block.get(key)
        if value is None:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise UsageError(f"{where}: required field is missing")
            continue
        values[f.name] = read(value, hints[f.name], where)
    return cls(**values, **given)


def read(value: Any, hint: Any, path: str) -> Any:
    """``value`` checked against type ``hint``: a scalar, a list or a union of those (an
    int is taken for a float), ``tuple[X, ...]`` from a list, a dataclass from an object
    (through its ``from_dict(block, path)`` when it has one), ``X | None``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        kinds = tuple(a for a in args if a is not type(None))
        if len(kinds) == 1:
            return read(value, kinds[0], path)
        if all(k in _PLAIN for k in kinds):
            return _plain(value, kinds, path)
        raise TypeError(f"{path}: unsupported union {hint}")
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        items = _plain(value, (list,), path)
        return tuple(read(item, args[0], f"{path}[{i}]") for i, item in enumerate(items))
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise UsageError(f"{path}: expected an object, got {value!r}")
        parse = getattr(hint, "from_dict", None)
        return parse(value, path) if parse else build(hint, value, path)
    if hint in _PLAIN:
        return _plain(value, (hint,), path)
    raise TypeError(f"{path}: unsupported type {hint}")


def _plain(value: Any, kinds: tuple[type, ...], path: str) -> Any:
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds):
        return value
    names = " or ".join(k.__name__ for k in kinds)
    raise UsageError(f"{path}: expected {names}, got {value!r}")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)
