"""`polypythia weights CHECKPOINT`: the Student-t tail of every tensor of a Hugging Face
GPT-NeoX checkpoint folder (a run's checkpoint or a downloaded Pythia revision)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from polypythia.commands.common import add_output_flag, show
from polypythia.errors import UsageError
from polypythia.output import camel_keys
from polypythia_eval.tailfit import DEFAULT_SAMPLE, fit_tail
from polypythia_eval.weightstats import tensor_kind


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="HF GPT-NeoX checkpoint folder")
    add_output_flag(parser, help="output format (default: %(default)s)")
    parser.add_argument(
        "--sample",
        type=int,
        default=DEFAULT_SAMPLE,
        help="entries per tensor the fit sees (seeded subsample; default %(default)s)",
    )


def load_state(folder: Path) -> dict[str, np.ndarray]:
    """Every floating-point tensor of the folder's weight files, as float32 numpy arrays."""
    config = folder / "config.json"
    if not config.is_file():
        raise UsageError(f"CHECKPOINT {str(folder)!r}: no config.json; expected a HF model folder")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"{config}: cannot read: {exc}") from None
    if model_type != "gpt_neox":
        raise UsageError(f"{config}: model_type {model_type!r}; expected 'gpt_neox'")
    import torch

    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise UsageError(f"CHECKPOINT {str(folder)!r}: no *.safetensors or pytorch_model*.bin")
    state: dict[str, np.ndarray] = {}
    for path in files:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(path))
        else:
            tensors = torch.load(path, map_location="cpu", weights_only=True)
        for name, t in tensors.items():
            if t.is_floating_point():
                state[name] = t.detach().to(torch.float32).numpy()
    return state


def tensor_rows(state: dict[str, np.ndarray], sample: int = DEFAULT_SAMPLE) -> list[dict]:
    """One row per tensor: kind, size, spread and the tail fit (``tail`` says why not fitted)."""
    rows = []
    for name, values in state.items():
        x = values.astype(np.float64).ravel()
        centred = x - x.mean()
        var = float((centred**2).mean())
        row: dict[str, object] = {
            "name": name,
            "kind": tensor_kind(name),
            "shape": list(values.shape),
            "numel": int(x.size),
            "std": math.sqrt(var),
            "kurtosis": float((centred**4).mean() / var**2 - 3) if var > 0 else None,
        }
        try:
            row.update(fit_tail(x, sample=sample).to_dict())
        except ValueError as exc:
            row.update({"nu": None, "nuLow": None, "nuHigh": None, "tail": f"not fitted: {exc}"})
        rows.append(row)
    return rows


def _nu(value: object) -> str:
    return "inf" if value is None else f"{value:.3g}"


def main(args: argparse.Namespace) -> int:
    folder = Path(args.checkpoint)
    if not folder.is_dir():
        raise UsageError(f"CHECKPOINT {args.checkpoint!r}: no such folder")
    if args.sample < 8:
        raise UsageError(f"--sample: must be >= 8, got {args.sample}")
    rows = tensor_rows(load_state(folder), args.sample)
    header = ["NAME", "KIND", "NUMEL", "NU", "NU_95%", "TAIL"]
    table = [
        [
            r["name"],
            r["kind"],
            str(r["numel"]),
            _nu(r["nu"]) if r["nuLow"] is not None else "-",
            f"[{_nu(r['nuLow'])}, {_nu(r['nuHigh'])}]" if r["nuLow"] is not None else "-",
            str(r["tail"]),
        ]
        for r in rows
    ]
    return show(args.output, camel_keys(rows), header, table)
