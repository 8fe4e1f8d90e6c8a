"""`polypythia presets`: the size table, with parameter counts from the built model."""

from __future__ import annotations

import argparse

from polypythia import presets
from polypythia.commands.common import add_output_flag
from polypythia.output import emit
from polypythia.tables import render_table


def configure(parser: argparse.ArgumentParser) -> None:
    add_output_flag(parser)


def rows() -> list[dict]:
    out = []
    for preset in presets.PRESETS.values():
        out.append(
            {
                "name": preset.name,
                "layers": preset.num_layers,
                "dModel": preset.hidden_size,
                "heads": preset.num_heads,
                "vocab": preset.vocab_size,
                "learningRate": preset.learning_rate,
                "minLearningRate": preset.min_learning_rate,
                "microBatchSize": preset.micro_batch_size,
                "initMethod": preset.init_method,
                "parameters": presets.count_parameters(preset),
                "publishedParameters": preset.published_params,
                "tiny": preset.tiny,
            }
        )
    return out


def main(args: argparse.Namespace) -> int:
    table = rows()
    if args.output != "table":
        emit(table, args.output)
        return 0
    headers = [
        "NAME", "LAYERS", "D_MODEL", "HEADS", "LR", "MIN_LR", "MICRO", "INIT", "PARAMETERS",
        "PUBLISHED",
    ]  # fmt: skip
    print(
        render_table(
            headers,
            [
                [
                    r["name"],
                    r["layers"],
                    r["dModel"],
                    r["heads"],
                    r["learningRate"],
                    r["minLearningRate"],
                    r["microBatchSize"] or "-",
                    r["initMethod"],
                    r["parameters"],
                    r["publishedParameters"],
                ]
                for r in table
            ],
        )
    )
    print(
        f"\nAll sizes: Adam {presets.ADAM_BETAS}, eps {presets.ADAM_EPS}, clip "
        f"{presets.GRADIENT_CLIPPING}, warmup {presets.WARMUP_FRACTION:.0%}, cosine to "
        f"{presets.MIN_LR_FRACTION:.0%} of peak, batch {presets.GLOBAL_BATCH_SIZE} x "
        f"{presets.SEQUENCE_LENGTH}, {presets.TRAIN_STEPS:,} steps"
    )
    return 0
