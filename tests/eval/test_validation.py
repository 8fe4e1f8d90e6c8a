"""The held-out loss: the same tokens for every seed, recorded with each evaluation, and
the default loss signal of the cross-seed test."""

from __future__ import annotations

import json
import math

import numpy as np
import torch

from polypythia.monitoring.cross_seed import RunHistory, cross_seed_outliers
from polypythia.storage import RunStore
from polypythia_eval.evaluate import EvaluateOptions, evaluate_run
from polypythia_eval.tiny import save_tiny_checkpoint
from polypythia_eval.validation import generated_set, heldout_loss


def _run(root, name: str, seed: int, tokenizer, tmp_path_factory, scale=None):
    store = RunStore.open(str(root / name))
    store.write_run_config(
        {"sweep": "sw", "run": name, "size": "nano", "seed": seed,
         "training": {"sequenceLength": 32}, "data": {"format": "generated"}}
    )  # fmt: skip
    folder = tmp_path_factory.mktemp(f"ck{seed}")
    save_tiny_checkpoint(folder, seed=seed, tokenizer=tokenizer, scale=scale)
    store.commit_checkpoint(0, folder)
    return store


def test_every_seed_is_scored_on_the_same_held_out_tokens(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("store") / "sw"
    stores = [_run(root, f"sw-nano-s{s}", s, tokenizer, tmp_path_factory) for s in (0, 1)]
    options = EvaluateOptions(tasks=[], weight_stats=False)
    blocks = []
    for store in stores:
        evaluate_run(store.uri, "all", options, store=store, log=lambda _: None)
        result = json.loads((root / store.uri.rsplit("/", 1)[-1] / "evals/step0.json").read_text())
        blocks.append(result["validation"])
    assert (
        blocks[0]["dataset"] == blocks[1]["dataset"] and blocks[0]["tokens"] == blocks[1]["tokens"]
    )
    assert blocks[0]["tokens"] > 1000
    # two differently seeded random models: near the uniform loss ln(1024), not identical
    for b in blocks:
        assert abs(b["loss"] - math.log(1024)) < 0.5
    assert blocks[0]["loss"] != blocks[1]["loss"]


def test_held_out_documents_are_not_training_documents(tokenizer):
    from polypythia import corpus
    from polypythia_eval import validation
    from polypythia_trainer.data import generated

    held = generated_set(lambda t: tokenizer(t)["input_ids"], tokenizer.eos_token_id)
    again = generated_set(lambda t: tokenizer(t)["input_ids"], tokenizer.eos_token_id)
    assert held.dataset == again.dataset and np.array_equal(held.tokens, again.tokens)
    training = set(corpus.generate_documents(generated.DOCUMENTS, generated.CORPUS_SEED))
    docs = corpus.generate_documents(
        2 * validation.VALIDATION_DOCUMENTS, validation.VALIDATION_SEED
    )
    assert not training & set(docs[: validation.VALIDATION_DOCUMENTS])


def test_heldout_loss_is_the_mean_token_cross_entropy():
    class Uniform(torch.nn.Module):
        """Predicts every token with the same logit: loss ln(vocab) exactly."""

        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids):
            return type("Out", (), {"logits": torch.zeros(*input_ids.shape, 50) + self.w})

    out = heldout_loss(Uniform(), np.arange(100) % 50, sequence_length=9, batch_size=3)
    assert out["tokens"] == 10 * 9 and abs(out["loss"] - math.log(50)) < 1e-6


def _history(seed: int, loss: float | None, train: float) -> RunHistory:
    evals = {
        step: {"validation": {"loss": (loss + 0.01 * seed) if loss is not None else None,
                              "tokens": 4096, "dataset": "abc"}}
        for step in (100, 200, 300)
    }  # fmt: skip
    return RunHistory("nano", f"s{seed}", {100: train, 200: train, 300: train}, evals)


def test_the_cross_seed_loss_signal_is_the_held_out_loss():
    histories = [_history(s, 3.0, 3.0 + (5.0 if s == 2 else 0.0)) for s in range(6)]
    # the training loss of s2 is off (its own batches); on the held-out tokens it is not
    assert cross_seed_outliers(histories).verdicts == {}
    histories[4] = _history(4, None, 3.0)  # diverged: the evaluator recorded no loss
    verdict = cross_seed_outliers(histories).first("s4")
    assert (verdict.signal, verdict.test) == ("loss:validation", "non-finite")


def test_the_held_out_loss_is_exported_as_an_eval_score_but_not_tested_twice():
    from polypythia.monitoring.eval_scores import task_scores
    from polypythia.monitoring.exporter import RunLabels, SweepExporter

    result = _history(0, 3.0, 3.0).evals[100]
    assert task_scores(result) == {"validation": {"loss": 3.0}}
    ex = SweepExporter()
    ex.observe_eval(
        RunLabels("ns", "sw", "nano", "0", "pythia", "sw-nano-s0"), 100, task_scores(result)
    )
    text = ex.exposition().decode()
    assert "polypythia_eval_score{" in text and 'task="validation"' in text
    histories = [_history(s, 3.0, 3.0) for s in range(5)]
    assert cross_seed_outliers(histories).latest_z["s0"].keys() == {"loss:validation"}


def test_the_held_out_loss_falls_as_a_model_trains(tokenizer):
    """A few dozen steps on training documents lower the loss on the held-out ones."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from polypythia import corpus

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    eod = tokenizer.eos_token_id
    held = generated_set(encode, eod)
    stream = np.array([t for doc in corpus.generate_documents(400, 0) for t in [*encode(doc), eod]])
    torch.manual_seed(0)
    config = GPTNeoXConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=256,
                           max_position_embeddings=64)  # fmt: skip
    model = GPTNeoXForCausalLM(config)
    before = heldout_loss(model, held.tokens, sequence_length=32)["loss"]
    windows = torch.as_tensor(stream[: len(stream) // 33 * 33].reshape(-1, 33))
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(60):
        batch = windows[
            torch.randint(0, len(windows), (8,), generator=torch.Generator().manual_seed(step))
        ]
        loss = model(input_ids=batch[:, :-1], labels=batch[:, :-1]).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    after = heldout_loss(model, held.tokens, sequence_length=32)["loss"]
    assert after < before - 1.0, (before, after)
