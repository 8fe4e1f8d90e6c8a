"""An English-like corpus from a small probabilistic grammar, for demos that must learn something.

A tiny model trained for a few hundred steps on real text learns little that can be
measured. This grammar is built so that it can: its sentences carry agreement
phenomena that BLiMP tests (subject-verb number agreement, also across a
prepositional phrase or a relative clause with an "attractor" noun of the other
number; reflexive anaphors that agree in gender and number with their antecedent;
determiner-noun number agreement) and a fixed world of facts (each occupation works
at one place, each person lives in one city, things have fixed colours) whose last
word a model can learn to predict.

Held-out evaluation items. Every sentence the grammar can make falls, by a hash of
its text (``zlib.crc32``), into the training part or the held-out part
(:func:`is_held_out`, one in eight). Training documents never contain a held-out
sentence (the generator draws again), while the good sentence of every minimal pair
is a held-out sentence: a model scores them without ever having seen them. Fact
sentences and a document's opening ("Laura is a pilot.") are the exception on purpose
(a fact cannot be learned unseen): cloze items test facts inside held-out contexts. Random streams are also kept apart: documents
draw from ``Random("train:<seed>")``, evaluation items from ``Random("eval:<kind>:<seed>")``.

Everything is pure Python and deterministic across processes and platforms
(string seeds hash with SHA-512 in :class:`random.Random`, not with ``hash()``).
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

# Bump when the grammar changes, so caches of generated data are rebuilt.
CORPUS_VERSION = 1

PHENOMENA = (
    "subject_verb_agreement",
    "anaphor_gender_agreement",
    "determiner_noun_agreement",
)

HELD_OUT_BUCKETS = 8  # one sentence in eight is reserved for evaluation


@dataclass(frozen=True)
class Noun:
    singular: str
    plural: str
    gender: str  # "m", "f" or "n" (no grammatical gender)
    kind: str  # "person", "animal" or "thing"

    def form(self, plural: bool) -> str:
        return self.plural if plural else self.singular


@dataclass(frozen=True)
class Verb:
    third: str  # "sees": third person singular present
    base: str  # "see": plural present
    past: str  # "saw"

    def present(self, plural: bool) -> str:
        return self.base if plural else self.third


def _words(text: str) -> list[str]:
    return text.split()


def _nouns(kind: str, gender: str, pairs: str) -> list[Noun]:
    return [Noun(*p.split("/"), gender, kind) for p in pairs.split()]


GENDERED = _nouns(
    "person",
    "m",
    "man/men boy/boys king/kings father/fathers brother/brothers uncle/uncles "
    "prince/princes actor/actors waiter/waiters son/sons",
) + _nouns(
    "person",
    "f",
    "woman/women girl/girls queen/queens mother/mothers sister/sisters "
    "aunt/aunts princess/princesses actress/actresses waitress/waitresses daughter/daughters",
)
PEOPLE = _nouns(
    "person",
    "n",
    "teacher/teachers doctor/doctors student/students farmer/farmers "
    "lawyer/lawyers pilot/pilots baker/bakers driver/drivers artist/artists child/children "
    "person/people nurse/nurses",
)
ANIMALS = _nouns(
    "animal",
    "n",
    "dog/dogs cat/cats horse/horses bird/birds mouse/mice goose/geese rabbit/rabbits",
)
THINGS = _nouns(
    "thing",
    "n",
    "book/books box/boxes table/tables window/windows car/cars "
    "picture/pictures letter/letters key/keys cup/cups chair/chairs door/doors "
    "apple/apples lamp/lamps coat/coats bag/bags",
)
HUMANS = GENDERED + PEOPLE

MALE_NAMES = _words(
    "John David Michael James Robert Thomas Daniel Peter George Henry Paul Mark Steven "
    "Kevin Brian Eric"
)
FEMALE_NAMES = _words(
    "Mary Sarah Emma Laura Anna Lisa Julia Helen Alice Susan Rachel Karen Nancy Diana Grace Clara"
)


def _verbs(triples: str) -> list[Verb]:
    return [Verb(*t.split("/")) for t in triples.split()]


# Verbs whose object may be a person (and so a reflexive).
PERSON_VERBS = _verbs(
    "sees/see/saw likes/like/liked helps/help/helped admires/admire/admired "
    "knows/know/knew watches/watch/watched praises/praise/praised hurts/hurt/hurt "
    "blames/blame/blamed trusts/trust/trusted describes/describe/described "
    "remembers/remember/remembered"
)
THING_VERBS = _verbs(
    "carries/carry/carried buys/buy/bought cleans/clean/cleaned finds/find/found "
    "wants/want/wanted brings/bring/brought moves/move/moved paints/paint/painted"
)
INTRANSITIVE = _verbs(
    "sleeps/sleep/slept laughs/laugh/laughed smiles/smile/smiled runs/run/ran "
    "waits/wait/waited sings/sing/sang works/work/worked arrives/arrive/arrived"
)
BE = Verb("is", "are", "was")
ADJECTIVES = _words("happy tall old young quiet tired kind angry clever busy")
PREPOSITIONS = _words("near behind beside with")

# Determiners by number: (singular-only, plural-only, either).
DET_SINGULAR = ("this", "that", "a", "every")
DET_PLURAL = ("these", "those", "many", "two", "several")
DET_AGREEING = {"this": "these", "that": "those", "these": "this", "those": "that"}

# The fixed world: facts every training seed states the same way.
OCCUPATION_PLACE = {
    "teacher": "school", "doctor": "hospital", "farmer": "farm", "lawyer": "court",
    "pilot": "airport", "baker": "bakery", "nurse": "clinic", "driver": "garage",
    "artist": "studio", "waiter": "restaurant", "waitress": "restaurant", "actor": "theatre",
    "actress": "theatre",
}  # fmt: skip
THING_COLOUR = {
    "apple": "red", "lamp": "yellow", "coat": "black", "door": "green", "cup": "white",
    "car": "blue", "bag": "brown", "box": "grey",
}  # fmt: skip
ANIMAL_SOUND = {
    "dog": "barks", "cat": "meows", "horse": "neighs", "bird": "sings", "goose": "honks",
    "mouse": "squeaks",
}  # fmt: skip
PROTAGONIST_OCCUPATIONS = [o.singular for o in PEOPLE if o.singular in OCCUPATION_PLACE]
CITIES = _words(
    "Paris London Berlin Rome Madrid Vienna Prague Dublin Oslo Lisbon Athens Warsaw Boston "
    "Tokyo Cairo Lima"
)


def _name_cities() -> dict[str, str]:
    """Each person lives in one city; a fixed shuffle, the same for every training seed."""
    names = MALE_NAMES + FEMALE_NAMES
    cities = [CITIES[i % len(CITIES)] for i in range(len(names))]
    random.Random("world:cities").shuffle(cities)
    return dict(zip(names, cities, strict=True))


NAME_CITY = _name_cities()


def is_held_out(sentence: str) -> bool:
    """Whether a sentence belongs to the evaluation part (never in training documents)."""
    return zlib.crc32(sentence.encode("utf-8")) % HELD_OUT_BUCKETS == 0


# ---- noun phrases ---------------------------------------------------------------


def _determiner(rng: random.Random, plural: bool) -> str:
    if rng.random() < 0.45:
        return "the"
    return rng.choice(DET_PLURAL if plural else DET_SINGULAR)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _np(rng: random.Random, noun: Noun, plural: bool, adjective: bool = True) -> str:
    det = _determiner(rng, plural)
    if det == "a":
        if adjective and rng.random() < 0.3:
            adj = rng.choice(ADJECTIVES)
            return f"{_article(adj)} {adj} {noun.form(plural)}"
        return f"{_article(noun.singular)} {noun.form(plural)}"
    return f"{det} {noun.form(plural)}"


def _cap(sentence: str) -> str:
    return sentence[0].upper() + sentence[1:]


def _reflexive(gender: str, plural: bool) -> str:
    if plural:
        return "themselves"
    return {"m": "himself", "f": "herself", "n": "itself"}[gender]


# ---- sentence templates ---------------------------------------------------------
# Each returns (sentence, agreement slots) where a slot names the word that a minimal
# pair flips: ("verb", good, bad), ("anaphor", good, bad) or ("det", good, bad).

Slot = tuple[str, str, str]
Built = tuple[str, Slot | None]


def _predicate(rng: random.Random, plural: bool) -> tuple[str, str, str]:
    """(verb, rest, wrong verb): a present-tense predicate agreeing with the subject."""
    choice = rng.random()
    if choice < 0.3:
        verb = rng.choice(INTRANSITIVE)
        return verb.present(plural), "", verb.present(not plural)
    if choice < 0.5:
        return BE.present(plural), rng.choice(ADJECTIVES), BE.present(not plural)
    if choice < 0.75:
        verb = rng.choice(THING_VERBS)
        obj = _np(rng, rng.choice(THINGS), rng.random() < 0.5)
        return verb.present(plural), obj, verb.present(not plural)
    verb = rng.choice(PERSON_VERBS)
    obj = _np(rng, rng.choice(HUMANS + ANIMALS), rng.random() < 0.5)
    return verb.present(plural), obj, verb.present(not plural)


def _subject_noun(rng: random.Random) -> Noun:
    return rng.choice(HUMANS + ANIMALS + THINGS) if rng.random() < 0.2 else rng.choice(HUMANS)


def simple_agreement(rng: random.Random) -> Built:
    """The dogs sleep. / The teacher likes the book."""
    plural = rng.random() < 0.5
    noun = rng.choice(HUMANS + ANIMALS)
    subject = _np(rng, noun, plural)
    verb, rest, wrong = _predicate(rng, plural)
    return _cap(" ".join(w for w in (subject, verb, rest) if w)) + ".", (
        "verb",
        verb,
        wrong,
    )


def pp_agreement(rng: random.Random) -> Built:
    """The key near the boxes is old: the verb agrees with `key`, not the nearer `boxes`."""
    plural = rng.random() < 0.5
    subject = _np(rng, _subject_noun(rng), plural, adjective=False)
    attractor_plural = not plural if rng.random() < 0.7 else plural
    pp = f"{rng.choice(PREPOSITIONS)} " + _np(
        rng, rng.choice(THINGS + ANIMALS + HUMANS), attractor_plural, adjective=False
    )
    verb, rest, wrong = _predicate(rng, plural)
    words = (subject, pp, verb, rest)
    return _cap(" ".join(w for w in words if w)) + ".", ("verb", verb, wrong)


def rc_agreement(rng: random.Random) -> Built:
    """The doctor who the students admire sleeps: agreement across a relative clause."""
    plural = rng.random() < 0.5
    subject = _np(rng, rng.choice(HUMANS), plural, adjective=False)
    inner_plural = not plural if rng.random() < 0.7 else plural
    inner_verb = rng.choice(PERSON_VERBS)
    if rng.random() < 0.5:  # object relative: "who the students admire"
        inner = _np(rng, rng.choice(HUMANS), inner_plural, adjective=False)
        rc = f"who {inner} {inner_verb.present(inner_plural)}"
    else:  # subject relative: "who admires the students"
        inner = _np(rng, rng.choice(HUMANS), inner_plural, adjective=False)
        rc = f"who {inner_verb.present(plural)} {inner}"
    verb, rest, wrong = _predicate(rng, plural)
    words = (subject, rc, verb, rest)
    return _cap(" ".join(w for w in words if w)) + ".", ("verb", verb, wrong)


def reflexive(rng: random.Random) -> Built:
    """Mary hurt herself. / The kings near the girl praised themselves."""
    verb = rng.choice(PERSON_VERBS)
    tense_past = rng.random() < 0.5
    if rng.random() < 0.5:
        gender = rng.choice("mf")
        subject = rng.choice(MALE_NAMES if gender == "m" else FEMALE_NAMES)
        plural = False
    else:
        noun = rng.choice(GENDERED)
        gender, plural = noun.gender, rng.random() < 0.35
        subject = _np(rng, noun, plural, adjective=False)
        if rng.random() < 0.4:
            other = rng.choice([n for n in GENDERED if n.gender != gender])
            subject += f" {rng.choice(PREPOSITIONS)} " + _np(
                rng, other, rng.random() < 0.5, adjective=False
            )
    good = _reflexive(gender, plural)
    form = verb.past if tense_past else verb.present(plural)
    sentence = _cap(f"{subject} {form} {good}.")
    if plural:  # "themselves" carries no gender: no gender minimal pair
        return sentence, None
    return sentence, ("anaphor", good, "herself" if good == "himself" else "himself")


def determiner_noun(rng: random.Random) -> Built:
    """Peter cleaned those boxes: this/that agree with singular, these/those with plural."""
    plural = rng.random() < 0.5
    det = rng.choice(("these", "those") if plural else ("this", "that"))
    noun = rng.choice(THINGS + ANIMALS)
    subject = rng.choice(MALE_NAMES + FEMALE_NAMES)
    verb = rng.choice(THING_VERBS) if noun.kind == "thing" else rng.choice(PERSON_VERBS)
    form = verb.past if rng.random() < 0.5 else verb.third
    sentence = f"{subject} {form} {det} {noun.form(plural)}."
    return sentence, ("det", det, DET_AGREEING[det])


def intro(rng: random.Random, name: str, pronoun: str) -> list[str]:
    """A protagonist: occupation and city, with the facts they imply."""
    occ = rng.choice(PROTAGONIST_OCCUPATIONS)
    out = [
        f"{name} is {_article(occ)} {occ}.",
        f"{pronoun} works at the {OCCUPATION_PLACE[occ]}.",
    ]
    if rng.random() < 0.7:
        out.append(f"{name} lives in {NAME_CITY[name]}.")
    return out


def fact(rng: random.Random) -> str:
    """A sentence of the fixed world; its last word is determined by what came before."""
    choice = rng.random()
    if choice < 0.3:
        occ = rng.choice(list(OCCUPATION_PLACE))
        return f"The {occ} works at the {OCCUPATION_PLACE[occ]}."
    if choice < 0.55:
        thing = rng.choice(list(THING_COLOUR))
        return f"The colour of the {thing} is {THING_COLOUR[thing]}."
    if choice < 0.75:
        animal = rng.choice(list(ANIMAL_SOUND))
        return f"Every {animal} {ANIMAL_SOUND[animal]}."
    name = rng.choice(MALE_NAMES + FEMALE_NAMES)
    return f"{name} lives in {NAME_CITY[name]}."


def protagonist_sentence(rng: random.Random, name: str, pronoun: str, gender: str) -> Built:
    """A sentence about the protagonist, with a gender-agreeing pronoun or reflexive."""
    subject = name if rng.random() < 0.6 else pronoun
    choice = rng.random()
    if choice < 0.5:
        verb = rng.choice(PERSON_VERBS)
        good = _reflexive(gender, False)
        bad = "herself" if good == "himself" else "himself"
        return f"{subject} {verb.past} {good}.", ("anaphor", good, bad)
    if choice < 0.7:
        verb = rng.choice(THING_VERBS)
        return (
            f"{subject} {verb.third} {_np(rng, rng.choice(THINGS), rng.random() < 0.5)}.",
            None,
        )
    verb = rng.choice(INTRANSITIVE)
    return f"{subject} {verb.past}.", None


TEMPLATES: dict[str, tuple[Callable[[random.Random], Built], ...]] = {
    "subject_verb_agreement": (simple_agreement, pp_agreement, rc_agreement),
    "anaphor_gender_agreement": (reflexive,),
    "determiner_noun_agreement": (determiner_noun,),
}
_ALL_TEMPLATES = tuple(t for ts in TEMPLATES.values() for t in ts)
_WEIGHTS = (3, 3, 2, 6, 2)


def _training_sentence(rng: random.Random) -> str:
    """A random grammatical sentence outside the held-out part."""
    while True:
        sentence, _ = rng.choices(_ALL_TEMPLATES, weights=_WEIGHTS)[0](rng)
        if not is_held_out(sentence):
            return sentence


def _document(rng: random.Random) -> str:
    gender = rng.choice("mf")
    name = rng.choice(MALE_NAMES if gender == "m" else FEMALE_NAMES)
    pronoun = "He" if gender == "m" else "She"
    sentences = intro(rng, name, pronoun)
    for _ in range(rng.randint(3, 8)):
        choice = rng.random()
        if choice < 0.25:
            sentence, _ = protagonist_sentence(rng, name, pronoun, gender)
            if is_held_out(sentence):
                continue
        elif choice < 0.4:
            sentence = fact(rng)
        else:
            sentence = _training_sentence(rng)
        sentences.append(sentence)
    return " ".join(sentences)


def iter_documents(n_docs: int, seed: int) -> Iterator[str]:
    """Yield ``n_docs`` training documents (a short paragraph each) for ``seed``."""
    rng = random.Random(f"train:{seed}")
    for _ in range(n_docs):
        yield _document(rng)


def generate_documents(n_docs: int, seed: int) -> list[str]:
    """``n_docs`` training documents; the same (n_docs, seed) always gives the same list."""
    return list(iter_documents(n_docs, seed))


def _flip(sentence: str, slot: Slot) -> str:
    """Replace the last occurrence of the slot's good word by the bad one."""
    _, good, bad = slot
    words = sentence[:-1].split(" ")
    for i in range(len(words) - 1, -1, -1):
        if words[i].lower() == good:
            words[i] = bad if words[i] == good else _cap(bad)
            return " ".join(words) + sentence[-1]
    raise AssertionError(f"slot word {good!r} not in {sentence!r}")


def _pair_sentence(rng: random.Random, phenomenon: str) -> tuple[str, Slot]:
    templates = TEMPLATES[phenomenon]
    while True:
        sentence, slot = rng.choice(templates)(rng)
        if slot is not None and is_held_out(sentence):
            return sentence, slot


def minimal_pairs(phenomenon: str, n: int, seed: int) -> list[dict]:
    """``n`` BLiMP-style pairs that differ in exactly one word (the agreeing one).

    Keys: ``sentence_good``, ``sentence_bad``, ``phenomenon``, ``word_good``, ``word_bad``.
    Good sentences are held out from training (see the module docstring); pairs are distinct.
    """
    if phenomenon not in TEMPLATES:
        raise ValueError(f"phenomenon {phenomenon!r}: must be one of {', '.join(PHENOMENA)}")
    rng = random.Random(f"eval:{phenomenon}:{seed}")
    seen: set[str] = set()
    pairs: list[dict] = []
    attempts = 0
    while len(pairs) < n:
        attempts += 1
        if attempts > 200 * (n + 10):
            raise ValueError(f"{phenomenon}: the grammar has fewer than {n} held-out pairs")
        sentence, slot = _pair_sentence(rng, phenomenon)
        if sentence in seen:
            continue
        seen.add(sentence)
        pairs.append(
            {
                "sentence_good": sentence,
                "sentence_bad": _flip(sentence, slot),
                "phenomenon": phenomenon,
                "word_good": slot[1],
                "word_bad": slot[2],
            }
        )
    return pairs


def cloze_items(n: int, seed: int) -> list[dict]:
    """``n`` last-word prediction items: a held-out context ending in a fact sentence.

    Keys: ``context`` (the text before the last word, without a trailing space:
    ``"<held-out sentence> The farmer works at the"``), ``target`` (``" farm"``: the
    last word with its leading space, as lm-eval's loglikelihood expects; no full stop),
    ``kind`` (``place``, ``colour``, ``sound`` or ``city``).
    """
    rng = random.Random(f"eval:cloze:{seed}")
    items: list[dict] = []
    seen: set[str] = set()
    while len(items) < n:
        lead = ""
        while not lead:
            candidate, _ = rng.choices(_ALL_TEMPLATES, weights=_WEIGHTS)[0](rng)
            lead = candidate if is_held_out(candidate) else ""
        sentence = fact(rng)
        head, _, last = sentence[:-1].rpartition(" ")
        context = f"{lead} {head}"
        if context in seen:
            continue
        seen.add(context)
        kind = (
            "place" if " works at " in sentence
            else "colour" if sentence.startswith("The colour")
            else "sound" if sentence.startswith("Every")
            else "city"
        )  # fmt: skip
        items.append({"context": context, "target": f" {last}", "kind": kind})
    return items
