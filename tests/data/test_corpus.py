"""The grammar corpus: deterministic, held-out evaluation items, minimal pairs that differ in one word."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from polypythia import corpus


def test_documents_are_deterministic_and_seed_dependent() -> None:
    assert corpus.generate_documents(50, seed=3) == corpus.generate_documents(50, seed=3)
    assert corpus.generate_documents(50, seed=3) != corpus.generate_documents(50, seed=4)
    assert corpus.generate_documents(20, 3) == corpus.generate_documents(50, 3)[:20]


def test_documents_identical_in_another_process() -> None:
    """String seeds must not depend on PYTHONHASHSEED: workers on other machines agree."""
    code = "from polypythia import corpus; print(repr(corpus.generate_documents(5, 1)))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123", "PYTHONPATH": ":".join(sys.path)},
    ).stdout
    assert out.strip() == repr(corpus.generate_documents(5, 1))


@pytest.mark.parametrize("phenomenon", corpus.PHENOMENA)
def test_minimal_pairs_differ_in_exactly_the_agreeing_word(phenomenon: str) -> None:
    pairs = corpus.minimal_pairs(phenomenon, 200, seed=0)
    assert len(pairs) == 200
    assert len({p["sentence_good"] for p in pairs}) == 200
    for pair in pairs:
        good = pair["sentence_good"].rstrip(".").split(" ")
        bad = pair["sentence_bad"].rstrip(".").split(" ")
        assert len(good) == len(bad)
        diff = [(g, b) for g, b in zip(good, bad, strict=True) if g != b]
        assert len(diff) == 1, pair
        assert (diff[0][0].lower(), diff[0][1].lower()) == (pair["word_good"], pair["word_bad"])
    assert corpus.minimal_pairs(phenomenon, 20, seed=0) == pairs[:20]
    assert corpus.minimal_pairs(phenomenon, 20, seed=1) != pairs[:20]


def test_minimal_pairs_test_the_named_phenomenon() -> None:
    words = {
        p: {(x["word_good"], x["word_bad"]) for x in corpus.minimal_pairs(p, 100, seed=0)}
        for p in corpus.PHENOMENA
    }
    assert words["anaphor_gender_agreement"] == {("himself", "herself"), ("herself", "himself")}
    assert words["determiner_noun_agreement"] <= {
        ("this", "these"), ("these", "this"), ("that", "those"), ("those", "that")
    }  # fmt: skip
    assert ("is", "are") in words["subject_verb_agreement"]
    with pytest.raises(ValueError, match="must be one of"):
        corpus.minimal_pairs("island_effects", 3, seed=0)


def test_attractors_make_agreement_hard() -> None:
    """Many pairs put a noun of the other number between subject and verb."""
    pairs = corpus.minimal_pairs("subject_verb_agreement", 300, seed=0)
    long = [p for p in pairs if " who " in p["sentence_good"] or " near " in p["sentence_good"]]
    assert len(long) > 60


def test_evaluation_items_never_occur_in_training_documents() -> None:
    text = " ".join(corpus.generate_documents(3000, seed=0))
    sentences = set(text.replace(". ", ".\n").splitlines())
    for phenomenon in corpus.PHENOMENA:
        for pair in corpus.minimal_pairs(phenomenon, 100, seed=0):
            assert corpus.is_held_out(pair["sentence_good"])
            assert pair["sentence_good"] not in sentences
            assert pair["sentence_bad"] not in sentences
    assert not any(corpus.is_held_out(s) for s in sentences if not _is_fact(s))


def _is_fact(sentence: str) -> bool:
    """Facts and a document's opening ("Laura is a pilot.") are exempt from the split."""
    if re.fullmatch(r"[A-Z][a-z]+ is an? [a-z]+\.", sentence):
        return True
    return any(
        marker in sentence for marker in (" works at the ", " lives in ", "The colour of", "Every ")
    )


def test_cloze_targets_are_facts_the_training_data_states() -> None:
    items = corpus.cloze_items(100, seed=0)
    assert items == corpus.cloze_items(100, seed=0)
    text = " ".join(corpus.generate_documents(3000, seed=0))
    for item in items:
        assert item["target"].startswith(" ") and " " not in item["target"][1:]
        last_sentence = item["context"].split(". ")[-1]
        assert f"{last_sentence}{item['target']}." in text, item
        # the context never states its own answer: the model must have learned it
        assert item["target"].strip() not in last_sentence.split(" ")
    assert {i["kind"] for i in items} == {"place", "colour", "sound", "city"}
