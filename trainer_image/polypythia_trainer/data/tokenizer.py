"""Byte-level BPE tokenizers (as GPT-NeoX's): training, loading, saving in Hugging Face form.

Checkpoints carry the tokenizer files so that ``AutoTokenizer.from_pretrained(ckpt)``
and lm-evaluation-harness load a checkpoint directory with nothing else.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from polypythia.errors import UsageError

EOD = "<|endoftext|>"  # end of document, between documents, as in Pythia
HF_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE of ``vocab_size`` entries (``EOD`` is id 0) on ``texts``."""
    if vocab_size < 258:
        raise UsageError(
            f"tokenizer vocabulary: must be >= 258 (256 bytes + EOD), got {vocab_size}"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def save_hf(tokenizer: Tokenizer, out_dir: Path) -> None:
    """Write ``tokenizer`` as PreTrainedTokenizerFast files into ``out_dir``."""
    from transformers import PreTrainedTokenizerFast

    special = EOD if tokenizer.token_to_id(EOD) is not None else None
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=special, eos_token=special, unk_token=special
    )
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))


def load(path: Path, field: str) -> Tokenizer:
    """A tokenizer from a folder of HF files or a ``tokenizer.json``."""
    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if file.is_file():
        try:
            return Tokenizer.from_file(str(file))
        except Exception as exc:  # the Rust error names no file: add it
            raise UsageError(f"{field}: {file} is not a tokenizer.json file ({exc})") from None
    if path.is_dir():
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(path)).backend_tokenizer
        except Exception as exc:
            raise UsageError(f"{field}: {path} holds no loadable tokenizer ({exc})") from None
    raise UsageError(f"{field}: {path} does not exist (a tokenizer folder or tokenizer.json)")


def copy_hf(source: Path, out_dir: Path) -> None:
    """Put the tokenizer at ``source`` (folder or tokenizer.json) into ``out_dir`` as HF files."""
    source, out_dir = Path(source), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if (source / "tokenizer.json").is_file() and (source / "tokenizer_config.json").is_file():
        for name in HF_FILES:
            if (source / name).is_file():
                shutil.copyfile(source / name, out_dir / name)
    elif source.is_dir():
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(source)).save_pretrained(str(out_dir))
    else:
        save_hf(load(source, "tokenizer"), out_dir)
