"""``polypythia data build``: bring your own corpus as a GPT-NeoX/Megatron indexed dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from polypythia.argtypes import int_at_least
from polypythia.errors import UsageError

_vocab = int_at_least(258, "256 bytes + EOD")
_seed = int_at_least(0)
_positive = int_at_least(1)


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

    batch = sub.add_parser(
        "batch",
        help="print one global batch of a seed's order (Pythia's batch viewer)",
        description=(
            "Print global batch STEP (the one the update from step STEP to STEP+1 trains on) "
            "of the dataset PREFIX in the order of --seed: GPT-NeoX's index maps (built once "
            "next to the data, or read from --index-dir, e.g. a released "
            "EleutherAI/pile-preshuffled-seeds folder) or the project's permutation. Reads only "
            "the samples it shows, memory-mapped."
        ),
    )
    batch.add_argument("prefix", metavar="PREFIX", help="dataset prefix, without .bin/.idx")
    batch.add_argument("--seed", type=_seed, required=True, help="GPT-NeoX seed (Pythia: 1234)")
    batch.add_argument("--seq-length", type=_positive, required=True, metavar="L")
    batch.add_argument("--global-batch-size", type=_positive, required=True, metavar="B")
    batch.add_argument(
        "--train-iters", type=_positive, required=True, metavar="T", help="steps of the run"
    )
    batch.add_argument("--step", type=_seed, required=True, metavar="K", help="batch index")
    batch.add_argument("--index-dir", metavar="DIR", help="folder of prebuilt index maps")
    batch.add_argument(
        "--order",
        choices=("megatron", "permutation"),
        default="megatron",
        help="GPT-NeoX's order (default) or the project's permutation",
    )
    batch.add_argument("-o", "--output", choices=("table", "json"), default="table")
    batch.add_argument("--decode", action="store_true", help="print each sample's whole text")


def main(args: argparse.Namespace) -> int:
    command = getattr(args, "data_command", None)
    if command == "batch":
        return _batch(args)
    if command != "build":
        raise UsageError(
            "expected an action: polypythia data build INPUT... --out PREFIX, "
            "or polypythia data batch PREFIX ..."
        )
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


def _batch(args: argparse.Namespace) -> int:
    from polypythia_trainer.data import open_training_data
    from polypythia_trainer.data.tokenizer import load
    from polypythia_trainer.data.viewer import as_json, as_table, view_batch
    from polypythia_trainer.loop import cache_dir

    data = open_training_data(
        {
            "format": "megatron",
            "path": args.prefix,
            "order": args.order,
            "indexDir": args.index_dir,
        },
        sequence_length=args.seq_length,
        vocab_size=2**31,
        data_seed=args.seed,
        cache_dir=cache_dir() / "data",
        train_iters=args.train_iters,
        global_batch_size=args.global_batch_size,
        require_tokenizer=False,
    )
    samples = view_batch(data, args.step, args.global_batch_size)
    if args.output == "json":
        print(as_json(args.step, samples))
        return 0
    decode = None
    if data.tokenizer is not None:
        tokenizer = load(data.tokenizer, "tokenizer")
        decode = tokenizer.decode
    from polypythia.tables import render_table

    text = "text" if decode is not None else "token ids"
    rows = as_table(samples, decode, full=args.decode)
    if args.decode:
        for index, docs, shown in rows:
            print(f"--- sample {index} (documents {docs})")
            print(shown)
    else:
        print(render_table(["index", "documents", text], rows))
    print(
        f"batch {args.step} of {args.prefix}: {len(samples)} samples of {args.seq_length + 1} "
        f"tokens, order {data.order_name}, seed {args.seed}"
    )
    return 0
