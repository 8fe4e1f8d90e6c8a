"""lm-eval output made storable: JSON-safe, per-item predictions kept compactly.

Pure functions over the dict ``lm_eval.simple_evaluate`` returns, and readers that
take both our evaluation files and older lm-eval result files (the Pythia ones use
``"acc"`` where lm-eval 0.4 writes ``"acc,none"``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

# Dropped from lm-eval's output: bulky and not about the model.
DROP_KEYS = frozenset({"samples", "pretty_env_info"})


def json_safe(value):
    """A copy of ``value`` that ``json.dumps(..., allow_nan=False)`` accepts.

    Tuples become lists, non-finite floats None, numpy/torch scalars plain
    numbers, other objects their ``str`` (e.g. ``torch.float32``); callables go.
    """
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if callable(v) and not isinstance(v, type):
                continue
            out[str(k)] = json_safe(v)
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item") and callable(value.item):
        try:
            return json_safe(value.item())
        except (TypeError, ValueError):
            return str(value)
    return str(value)


def _output_type(results: Mapping, task: str) -> str | None:
    return (results.get("configs") or {}).get(task, {}).get("output_type")


def extract_predictions(results: Mapping) -> dict[str, dict]:
    """Per task, per item: the model's prediction and the gold answer.

    multiple_choice: ``pred`` is the index of the most likely choice, ``target``
    the gold index. loglikelihood: ``pred`` is 1 when the target is the greedy
    continuation (lm-eval's ``acc``), ``target`` is always 1. Items are sorted by
    ``doc_id`` so two checkpoints' lists line up.
    """
    out: dict[str, dict] = {}
    for task, samples in (results.get("samples") or {}).items():
        kind = _output_type(results, task)
        rows = []
        for sample in samples:
            resps = sample.get("filtered_resps") or []
            doc_id = int(sample["doc_id"])
            if kind == "multiple_choice":
                lls = [float(r[0] if isinstance(r, (list, tuple)) else r) for r in resps]
                if not lls:
                    continue
                pred = max(range(len(lls)), key=lls.__getitem__)
                target = sample.get("target")
                rows.append((doc_id, pred, int(target) if str(target).isdigit() else None))
            elif kind == "loglikelihood" and resps:
                first = resps[0]
                greedy = bool(first[1]) if isinstance(first, (list, tuple)) else False
                rows.append((doc_id, int(greedy), 1))
        if rows:
            rows.sort()
            out[task] = {
                "output_type": kind,
                "doc_id": [r[0] for r in rows],
                "pred": [r[1] for r in rows],
                "target": [r[2] for r in rows],
            }
    return out


def compact_results(results: Mapping) -> dict:
    """lm-eval's result structure (results, versions, configs, config, n-shot, ...) made
    JSON-safe, with ``samples`` replaced by compact ``predictions``."""
    out = {k: json_safe(v) for k, v in results.items() if k not in DROP_KEYS}
    out["predictions"] = extract_predictions(results)
    return out
