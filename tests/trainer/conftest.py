"""Trainer tests share one dataset cache, so the demo corpus is built once per session."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

ENV = ("POLYPYTHIA_CACHE", "DS_ACCELERATOR", "TORCH_EXTENSIONS_DIR")


@pytest.fixture(scope="session", autouse=True)
def trainer_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """$POLYPYTHIA_CACHE for the trainer tests (kept if the caller set one, to reuse a corpus)."""
    saved = {name: os.environ.get(name) for name in ENV}
    cache = saved["POLYPYTHIA_CACHE"] or str(tmp_path_factory.mktemp("cache"))
    os.environ["POLYPYTHIA_CACHE"] = cache
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(cache, "torch_extensions"))
    yield cache
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
