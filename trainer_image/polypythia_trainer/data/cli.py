"""``polypythia data build``: bring your own corpus as a GPT-NeoX/Megatron indexed dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from polypythia.argtypes import int_at_least
from polypythia.errors import UsageError

_vocab = int_at_least(258, "256 bytes + EOD")


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    build = sub.add_parser(
        "build",
        help="tokenise text/JSONL files into PREFIX.bin + PREFIX.idx (+ PREFIX.tokenizer/)",
        description=(
            "Tokenise text files (one document per file) or JSON-lines files (.jsonl: one "
            "document per line, in the --text-field field) into a GPT-NeoX/Megatron indexed "
            "dataset PREFIX.bin + PREFIX.idx, with the tokenizer's HF files in PREFIX.tokenizer/. "
            "Use it in a sweep as data: {format: megatron, path: PREFIX}."
        ),
    )
    build.add_argument(
        "inputs", nargs="+", type=Path, metavar="INPUT", help="text files and .jsonl files"
    )
    build.add_argument(
        "--out", required=True, type=Path, metavar="PREFIX", help="output path without .bin/.idx"
    )
    which = build.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--tokenizer", type=Path, metavar="PATH", help="HF tokenizer folder or tokenizer.json"
    )
    which.add_argument(
        "--train-tokenizer",
        type=_vocab,
        metavar="VOCAB",
        help="train a byte-level BPE with VOCAB entries on the inputs",
    )
    build.add_argument(
        "--append-eod",
        action="store_true",
        help="end every document with <|endoftext|> (as Pythia's data does)",
    )
    build.add_argument("--text-field", default="text", help="JSONL field holding the text")


def main(args: argparse.Namespace) -> int:
    if getattr(args, "data_command", None) != "build":
        raise UsageError("expected an action: polypythia data build INPUT... --out PREFIX")
    from polypythia_trainer.data.build import build_dataset

    result = build_dataset(
        list(args.inputs),
        args.out,
        tokenizer=args.tokenizer,
        train_vocab=args.train_tokenizer,
        append_eod=args.append_eod,
        text_field=args.text_field,
    )
    print(
        f"wrote {result.prefix}.bin and {result.prefix}.idx: {result.documents} documents, "
        f"{result.tokens} tokens, vocabulary {result.vocab_size}; tokenizer in "
        f"{result.tokenizer_dir}/ ({result.seconds:.1f} s)"
    )
    return 0
