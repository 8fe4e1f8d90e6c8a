"""A tiny random GPT-NeoX checkpoint with its own tokenizer, for smoke tests and benchmarks.

No hub access is needed: the tokenizer is a byte-level BPE trained on the project's
generated corpus, the model is randomly initialised from a seed. The result is a
Hugging Face folder that transformers and lm-eval load like any checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

from polypythia import corpus

EOS = "<|endoftext|>"


def build_tokenizer(vocab_size: int = 512, docs: int = 200) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``docs`` generated documents."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus.generate_documents(docs, seed=0), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS)


def save_tiny_checkpoint(
    folder: Path,
    *,
    seed: int = 0,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    vocab_size: int = 1024,
    tokenizer: PreTrainedTokenizerFast | None = None,
    scale: float | None = None,
) -> Path:
    """Write a random GPTNeoXForCausalLM (+ tokenizer) to ``folder``; return it.

    ``scale`` multiplies every weight matrix, so tests can make checkpoints whose
    statistics differ in a known direction.
    """
    folder = Path(folder)
    tokenizer = tokenizer or build_tokenizer(min(vocab_size, 512))
    config = GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=256,
        rotary_pct=0.25,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = GPTNeoXForCausalLM(config)
    if scale is not None:
        with torch.no_grad():
            for p in model.parameters():
                if p.ndim == 2:
                    p.mul_(scale)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder
