"""The story corpus of the default model: IOI events in many shapes inside stories, facts in several word orders,
made-up towns with multi-token names, and broad everyday English (lexicon.py), so that what a model learns from it
holds off-template.

* "ioi": two people are introduced in one of many shapes ("A and B went to the park." / "A met B at the park." /
  "At the park, A saw B." ...), 0-3 sentences without names follow, then one of them (S) acts on the other (IO) in
  one of many clause shapes ("S gave a cup to" / "S handed" / "S decided to give the cup to" / "S smiled at" ...).
  The position of the repeated name, the clause order and the material between vary, so "the name that is
  repeated" is the cue that pays, not a slot. A frame is an (intro, transfer) pair; a quarter of the pairs and
  `heldout_names` names never occur in an IOI event (held-out names occur in the everyday sentences).
  Variants: a third, new name acts (no name repeats: the answer is either of the two), a role acts on the only
  person named, or the clause ends "to the {role}.".
* "story": two characters whose names recur at arbitrary points; when one acts on someone, it is the other.
* "facts": countries' capital, main language and continent, and made-up towns' country and product, each fact
  stated in two of three word-order classes (subject first "France's capital is", relation first "The capital of
  France is", prefixed "In France, the capital is"); the third class is held out for that fact (and trained for
  others), so recall in it needs a look-up of the subject, not a memorised string. Facts also occur inside stories.
* "english": everyday sentences over the whole lexicon (every name, held-out ones included).

Deterministic: random.Random with string seeds.
"""

from __future__ import annotations

import random
import re

from . import lexicon as L
from .corpus import FactExample, IOIExample, _cap, _fix_articles

PRONOUNS = {"f": {"he": "she", "his": "her", "him": "her"}, "m": {"he": "he", "his": "his", "him": "him"}}

# ------------------------------------------------------------------------------------------------------ IOI shapes
# Each intro names A then B; ending "," continues the sentence, "." starts a new one.
INTROS = [
    "When {A} and {B} went to the {place},", "{A} and {B} went to the {place}.", "{A} met {B} at the {place}.",
    "{A} talked with {B} at the {place}.", "{A} was waiting for {B} at the {place}.",
    "After {A} and {B} arrived at the {place},", "At the {place}, {A} saw {B}.",
    "{A} and {B} were at the {place} all {time}.", "{A} called {B}, and they met at the {place}.",
    "One {time}, {A} visited {B} at the {place}.", "While {A} and {B} were working at the {place},",
    "{A} and {B} had lunch at the {place}.", "{A} ran into {B} near the {place}.",
    "{A} and {B} walked to the {place} together.", "Yesterday {A} and {B} spent the {time} at the {place}.",
    "{A} went to see {B} at the {place}.", "{A} sat next to {B} at the {place}.",
    "On {day}, {A} and {B} met at the {place}.", "{A} and {B} were friends.", "{A} and {B} worked together.",
]
# Each ends right before the indirect object; {S} is the repeated name.
TRANSFERS = [
    "{S} gave a {obj} to", "{S} handed the {obj} to", "{S} passed the {obj} to", "{S} threw the {obj} to",
    "{S} sent a letter to", "{S} brought a {obj} to", "{S} showed the {obj} to", "{S} offered a {obj} to",
    "{S} lent the {obj} to", "{S} sold the {obj} to", "{S} bought a {obj} for", "{S} made a {food} for",
    "{S} gave", "{S} handed", "{S} showed", "{S} decided to give the {obj} to", "{S} wanted to give a {obj} to",
    "{S} took the {obj} and gave it to", "{S} said goodbye to", "{S} waved to", "{S} smiled at",
    "{S} told a story to", "{S} read a book to", "{S} wrote a letter to", "{S}, who had a {adj} {obj}, gave it to",
    "{S} thanked", "{S} kept the {obj} for", "{S} asked",
]
DOUBLE_OBJECT = {"{S} gave", "{S} handed", "{S} showed"}  # the IO comes before the object: "... gave Mary a cup."
OPENERS = ["Today", "One day,", "Yesterday", "Last week", "In the morning", "On Monday,", "That evening", "Then"]
LEADS = ["", "", "", "then", "later,", "after a while,", "in the end,", "suddenly,", "soon"]
FILLERS = [
    "It was a {adj} {time}.", "The {place} was {padj}.", "They talked for a while.", "They looked at the {color} {obj}.",
    "Everyone was {adj}.", "The weather was {weather}.", "They sat down and had some {food}.",
    "A {animal} ran past them.", "They were both {adj}.", "There was a {color} {obj} on the table.",
    "They talked about the {thing} for a long time.", "It was {weather} outside.",
]
IOI_VARIANTS = {"standard": 0.75, "new_name": 0.05, "role": 0.1, "not_io": 0.1}

# ---------------------------------------------------------------------------------------------------- fact orders
# Three word-order classes per relation: subject first, relation first, prefixed. {X} is the subject.
FACT_ORDERS = {
    "capital": {"subject_first": ["{X}'s capital is", "{X}'s capital city is", "{X} has its capital in"],
                "relation_first": ["The capital of {X} is", "The capital city of {X} is"],
                "prefixed": ["In {X}, the capital is", "In {X}, the capital city is"]},
    "language": {"subject_first": ["{X}'s main language is", "{X}'s official language is"],
                 "relation_first": ["The main language of {X} is", "The official language of {X} is"],
                 "prefixed": ["In {X}, people speak", "In {X}, most people speak"]},
    "continent": {"subject_first": ["{X} is in", "{X} is a country in", "{X} is located in"],
                  "relation_first": ["The continent of {X} is", "The home continent of {X} is"],
                  "prefixed": ["On a map, you find {X} in", "If you visit {X}, you are in"]},
    "town_country": {"subject_first": ["{X} is a town in", "{X} lies in"],
                     "relation_first": ["The country of {X} is", "The home country of {X} is"],
                     "prefixed": ["If you visit {X}, you are in", "From {X}, you can drive across"]},
    "town_product": {"subject_first": ["{X} is known for its", "{X} is famous for its"],
                     "relation_first": ["The famous product of {X} is", "The best known product of {X} is"],
                     "prefixed": ["In {X}, people make", "In {X}, the shops sell"]},
}
ORDER_CLASSES = ["subject_first", "relation_first", "prefixed"]
COUNTRY_RELATIONS = {"capital": 1, "language": 2, "continent": 3}
# Facts inside stories ("Mary flew to Paris, the capital of France."): the answer comes before the subject, so they
# train the association without training a held-out order.
FACT_IN_STORY = {
    "capital": ["{N} flew to {Y}, the capital of {X}.", "{N} lived in {Y}, which is the capital of {X}."],
    "language": ["{N} learned {Y} before a trip to {X}.", "{N} spoke {Y} with friends from {X}."],
    "continent": ["{N} traveled across {Y} and visited {X}.", "{N} has friends all over {Y}, even in {X}."],
    "town_country": ["{N} drove through {Y} and stopped in {X} for lunch."],
    "town_product": ["{N} bought some {Y} in {X}."],
}

GENERAL = [
    "{N} {verbed} the {adj} {obj}.", "On {day}, {N} went to the {place} with {his} {relative}.",
    "The {animal} was {adj}, and the {thing} was {adj2}.", "In {month}, {N} {verbed} {adv}.",
    "{N} likes to {verb} in the {time}.", "There were {num} {plural} in the {place}.",
    "{N} is a {role}. {He} works at the {place}.", "It was {weather} in {city}, so {N} stayed home.",
    "{N} wanted some {food}, but the {place} was closed.", '"Where is my {obj}?" asked {N}.',
    '"I am {adj} today," said {N}.', "{N} and {his} {relative} {verbed} together.",
    "Every {time}, {N} has {food} for breakfast.", "{N} was {adj} because {he} {verbed} the {obj}.",
    "The {role} {verbed} the {obj} and {verbed2} {adv}.", "{N} put the {obj} on the {thing}.",
    "{N} saw a {color} {animal} near the {place}.", "{N} will {verb} the {obj} {adv}.",
    "My {relative} {verbed} a {adj} {obj} last {time}.", "We {verbed} the {plural} {adv}.",
    "{N} said that the {thing} was {adj}.", "{N} asked the {role} about the {obj}.",
    "In {year}, {N} moved to {city}.", "{N} is {age} years old.", "The {obj} cost {num2} dollars.",
    "{N} did not {verb} the {obj}, because it was {adj}.", "Can you {verb} the {obj}?",
    "{N} thinks the {plural} are {adj}.", "At {hour} o'clock, {N} {verbed} {adv}.",
    "I {verbed} the {obj} yesterday, and my {relative} {verbed2} it too.", "We {verb} {plural2} every {day}.",
    "You can {verb} a {noun} at the {place}.", "Please {verb} the {obj} before you {verb2} the {noun}.",
    "Our {relative} has a {adj} {noun}.", "They {verb} {adv} because they like {plural2}.",
    "{N} {verbs} {plural2} every {time}.", "{N} is {verbing} the {obj} in the {place}.",
    "There are many {plural2} in {city}.", "Most people like {plural2}, but {N} does not.",
    "This {noun} is too {adj} for me.", "Do you want some {food}? Yes, please.", "How many {plural2} do you have?",
    "{N} has {num} {plural2} and a {adj} {noun}.", "When will you {verb} the {noun}? I will do it {adv}.",
    "Where did {N} put the {noun}? {He} put it under the {noun2}.", "Why is the {noun} so {adj}?",
    "Everyone was {verbing} when the {noun} arrived.", "Nobody knew where the {noun} was.",
    "I have a {noun}, and you have two {plural2}.", "{N} and I are {verbing} together this {time}.",
    "Something {adj} happened at the {place} last {day}.", "If it is {weather} {adv2}, we will {verb} outside.",
    "{N} gets up at {hour} and goes to the {place} by {vehicle}.", "The {plural2} were {adj}, so we {verbed} them.",
]
STORY = [
    "{X} looked at {Y}.", "{Y} smiled.", "{X} and {Y} went to the {place}.", "{X} said that the {obj} was {adj}.",
    "{Y} was {adj}.", "{X} asked {Y} about the {thing}.", "{Y} {verbed} the {obj}.", "{X} found a {color} {obj}.",
    "{Y} laughed at the {animal}.", "{X} and {Y} had some {food}.", "{X} waited for {Y} at the {place}.",
    "{Y} told {X} about the {place}.", "{X} was {adj}, and {Y} was {adj2}.", "{Y} walked home with {X}.",
]
STORY_TRANSFERS = ["{S} gave the {obj} to", "{S} handed the {obj} to", "{S} showed the {obj} to",
                   "{S} brought a {food} to", "{S} said goodbye to", "{S} thanked", "{S} smiled at"]
DEFAULT_MIX = {"ioi": 0.35, "story": 0.15, "facts": 0.3, "english": 0.2}


def plural(noun: str) -> str:
    if noun in L.IRREGULAR_PLURALS:
        return L.IRREGULAR_PLURALS[noun]
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def verb_s(base: str) -> str:
    """third person singular: "walks", "watches", "tries"."""
    if base in ("have", "be", "do", "go"):
        return {"have": "has", "be": "is", "do": "does", "go": "goes"}[base]
    return plural(base) if base not in L.IRREGULAR_PLURALS else base + "s"


def verb_ing(base: str) -> str:
    if base.endswith("ie"):
        return base[:-2] + "ying"
    if base.endswith("e") and not base.endswith(("ee", "ye", "oe")) and base != "be":
        return base[:-1] + "ing"
    if (len(base) >= 3 and base[-1] not in "aeiouwxy" and base[-2] in "aeiou" and base[-3] not in "aeiou"
            and base in _DOUBLING):
        return base + base[-1] + "ing"
    return base + "ing"


_DOUBLING = {"run", "swim", "sit", "stop", "hug", "plan", "shop", "get", "put", "cut", "begin", "win", "drop"}


def _rng(*key) -> random.Random:
    return random.Random("minimech-stories/" + "/".join(map(str, key)))


def _unique(words):
    return list(dict.fromkeys(words))


def _single_tokens(words, encoding):
    return [w for w in words if len(encoding.encode(" " + w)) == 1]


def _join(*parts: str) -> str:
    """Join clause parts with spaces, capitalising a part that begins a sentence."""
    out = ""
    for part in filter(None, parts):
        if not out:
            out = _cap(part)
        else:
            out += " " + (_cap(part) if out.endswith((".", "!", "?", '"')) else part)
    return _fix_articles(out)


def _possessive(x: str) -> str:
    return x + ("'" if x.endswith("s") else "'s")


def fact_prompt(template: str, subject_phrase: str) -> str:
    text = template.replace("{X}'s", _possessive(subject_phrase)).replace("{X}", subject_phrase)
    return _cap(text)


class StoryCorpus:
    """The seeded split (held-out names, IOI frames, one held-out word-order class per fact) and the generators."""

    def __init__(self, seed: int = 0, heldout_names: int = 30, heldout_frame_fraction: float = 0.25):
        from ..tokenizer import load_encoding
        enc = load_encoding()
        self.seed = seed
        female = _single_tokens(_unique(L.FEMALE_NAMES), enc)
        male = [n for n in _single_tokens(_unique(L.MALE_NAMES), enc) if n not in female]
        self.gender = {**{n: "f" for n in female}, **{n: "m" for n in male}}
        rng = _rng(seed, "split")
        names = sorted(self.gender)
        shuffled = rng.sample(names, len(names))
        self.names_heldout = sorted(shuffled[:heldout_names])
        self.names_train = sorted(shuffled[heldout_names:])
        self.places = _single_tokens(_unique(L.PLACES), enc)
        self.objects = _single_tokens(_unique(L.OBJECTS), enc)
        self.roles = _single_tokens(_unique(L.ROLES), enc)

        combos = [(i, t) for i in range(len(INTROS)) for t in range(len(TRANSFERS))]
        held = set(rng.sample(combos, round(heldout_frame_fraction * len(combos))))
        self._frames = {f"intro{i}+transfer{t}": (i, t) for i, t in combos}
        self.frames_heldout = [f"intro{i}+transfer{t}" for i, t in combos if (i, t) in held]
        self.frames_train = [f"intro{i}+transfer{t}" for i, t in combos if (i, t) not in held]

        # Made-up towns: two or more GPT-2 tokens each, in a country whose phrase has no "the".
        town_names = sorted({s + e for s in L.TOWN_STARTS for e in L.TOWN_ENDS})
        town_names = [t for t in town_names if len(enc.encode(" " + t)) >= 2]
        town_countries = [c for c in L.COUNTRIES if not c[0].startswith("the ")]
        products = _single_tokens(L.TOWN_PRODUCTS, enc)
        self.towns = [(t, rng.choice(town_countries)[0], rng.choice(products))
                      for t in rng.sample(town_names, min(240, len(town_names)))]
        # One held-out order class per fact, balanced: fact k of a relation holds out class (k + offset) % 3.
        self.heldout_order = {}
        for relation in FACT_ORDERS:
            offset = rng.randrange(3)
            for k, subject in enumerate(self._subjects(relation)):
                self.heldout_order[(subject, relation)] = ORDER_CLASSES[(k + offset) % 3]

    # ---------------------------------------------------------------------------------------------- facts
    def _subjects(self, relation: str) -> list[str]:
        return [t[0] for t in self.towns] if relation.startswith("town") else [c[0] for c in L.COUNTRIES]

    def _answer(self, subject: str, relation: str) -> str:
        if relation.startswith("town"):
            row = next(t for t in self.towns if t[0] == subject)
            return row[1] if relation == "town_country" else row[2]
        row = next(c for c in L.COUNTRIES if c[0] == subject)
        return row[COUNTRY_RELATIONS[relation]]

    def _fact(self, subject: str, relation: str, order: str, k: int) -> FactExample:
        template = FACT_ORDERS[relation][order][k]
        return FactExample(fact_prompt(template, subject), " " + self._answer(subject, relation),
                           subject.removeprefix("the "), relation, f"{relation}/{order}/{k}")

    def fact_eval(self, paraphrases: str = "heldout", subjects: str = "countries") -> list[FactExample]:
        """Every fact in its held-out order class ("heldout"), its training classes ("train") or all ("all");
        subjects: "countries", "towns" or "all"."""
        relations = {"countries": list(COUNTRY_RELATIONS), "towns": ["town_country", "town_product"],
                     "all": list(FACT_ORDERS)}[subjects]
        out = []
        for relation in relations:
            for subject in self._subjects(relation):
                held = self.heldout_order[(subject, relation)]
                classes = {"heldout": [held], "train": [c for c in ORDER_CLASSES if c != held],
                           "all": ORDER_CLASSES}[paraphrases]
                for order in classes:
                    out += [self._fact(subject, relation, order, k) for k in range(len(FACT_ORDERS[relation][order]))]
        return out

    def _fact_document(self, rng: random.Random) -> tuple[str, list[str]]:
        towns = rng.random() < 0.4
        relations = ["town_country", "town_product"] if towns else list(COUNTRY_RELATIONS)
        if rng.random() < 0.5:  # several facts about one subject
            subject = rng.choice(self._subjects(relations[0]))
            pairs = [(subject, r) for r in rng.sample(relations, len(relations))]
        else:  # one relation over several subjects
            relation = rng.choice(relations)
            pairs = [(s, relation) for s in rng.sample(self._subjects(relation), rng.randint(2, 4))]
        sentences, ids = [], []
        for subject, relation in pairs:
            if rng.random() < 0.2:
                name = rng.choice(self.names_train + self.names_heldout)
                text = rng.choice(FACT_IN_STORY[relation]).format(N=name, X=subject,
                                                                 Y=self._answer(subject, relation))
                sentences.append(_cap(text))
                ids.append(f"{relation}/story")
                continue
            held = self.heldout_order[(subject, relation)]
            order = rng.choice([c for c in ORDER_CLASSES if c != held])
            f = self._fact(subject, relation, order, rng.randrange(len(FACT_ORDERS[relation][order])))
            sentences.append(f"{f.prompt} {self._answer(subject, relation)}.")
            ids.append(f.paraphrase)
        return " ".join(sentences), ids

    # ------------------------------------------------------------------------------------------------ IOI
    def _slots(self, rng: random.Random) -> dict:
        verb, verb2 = rng.sample(L.VERBS, 2)
        adj, adj2 = rng.sample(L.ADJECTIVES, 2)
        nouns = rng.sample(L.MORE_NOUNS, 3)
        return dict(place=rng.choice(self.places), obj=rng.choice(self.objects), food=rng.choice(L.FOODS),
                    adj=adj, adj2=adj2, padj=rng.choice(L.ADJECTIVES), time=rng.choice(L.TIMES),
                    day=rng.choice(L.DAYS), month=rng.choice(L.MONTHS), color=rng.choice(L.COLORS),
                    animal=rng.choice(L.ANIMALS), thing=rng.choice(L.THINGS), weather=rng.choice(L.WEATHER),
                    role=rng.choice(self.roles), relative=rng.choice(L.RELATIVES), verb=verb[0], verbed=verb[1],
                    verbed2=verb2[1], adv=rng.choice(L.ADVERBS), num=rng.choice(L.NUMBER_WORDS[1:]),
                    plural=rng.choice(L.PLURALS), city=rng.choice(L.COUNTRIES)[1], year=rng.randint(1950, 2024),
                    age=rng.randint(5, 90), num2=rng.randint(2, 100), hour=rng.randint(1, 12),
                    noun=nouns[0], noun2=nouns[1], plural2=plural(nouns[2]), verb2=verb2[0], verbs=verb_s(verb[0]),
                    verbing=verb_ing(verb[0]), adv2=rng.choice(["today", "tomorrow", "tonight", "later"]),
                    vehicle=rng.choice(["bus", "car", "train", "bike", "taxi", "boat"]))

    def _ioi_prompt(self, rng: random.Random, frame: str, a: str, b: str, s: str, fillers: int | None = None) -> str:
        i, t = self._frames[frame]
        slots = self._slots(rng)
        intro = INTROS[i].format(A=a, B=b, **slots)
        if INTROS[i].startswith("{A}"):  # a name opening a text has no leading space: another token (" Wendy" is
            intro = rng.choice(OPENERS) + " " + intro  # one GPT-2 token, "Wendy" three), so IOI names never open
        n_fill = rng.choice([0, 0, 1, 1, 2, 3]) if fillers is None else fillers
        fill = [f.format(**slots) for f in rng.sample(FILLERS, n_fill)] if intro.endswith(".") else []
        lead = rng.choice(LEADS)
        return _join(intro, *fill, lead, TRANSFERS[t].format(S=s, **slots))

    def _ioi_event(self, rng: random.Random) -> tuple[str, str, str]:
        """One training event: (text, frame id, variant). Only training names and frames."""
        variant = rng.choices(list(IOI_VARIANTS), weights=list(IOI_VARIANTS.values()))[0]
        frame = rng.choice(self.frames_train)
        io, s, c = rng.sample(self.names_train, 3)
        a, b = (io, s) if rng.random() < 0.5 else (s, io)
        double = TRANSFERS[self._frames[frame][1]] in DOUBLE_OBJECT
        tail = f" a {rng.choice(self.objects)}." if double else "."
        if variant == "standard":
            text = self._ioi_prompt(rng, frame, a, b, s) + f" {io}" + tail
        elif variant == "new_name":  # nobody repeats: either of the two may receive
            text = self._ioi_prompt(rng, frame, a, b, c) + f" {rng.choice([a, b])}" + tail
        elif variant == "role":  # the role acts on one of the two named
            text = self._ioi_prompt(rng, frame, a, b, f"the {rng.choice(self.roles)}") + f" {io}" + tail
        else:  # not an indirect object at all
            text = self._ioi_prompt(rng, frame, a, b, s) + (f" the {rng.choice(self.roles)}" + tail)
        return _fix_articles(text), frame, variant

    def ioi_eval(self, n: int, seed: int = 0, names: str = "heldout", frames: str = "heldout") -> list[IOIExample]:
        """n prompts ending right before the IO; alternately ABBA (IO named first) and BABA."""
        pool = {"heldout": self.names_heldout, "train": self.names_train}[names]
        frame_pool = {"heldout": self.frames_heldout, "train": self.frames_train}[frames]
        rng = _rng(self.seed, "ioi_eval", names, frames, seed)
        out = []
        for k in range(n):
            io, s = rng.sample(pool, 2)
            order = "ABBA" if k % 2 == 0 else "BABA"
            a, b = (io, s) if order == "ABBA" else (s, io)
            frame = rng.choice(frame_pool)
            out.append(IOIExample(self._ioi_prompt(rng, frame, a, b, s), " " + io, " " + s, frame, order))
        return out

    # ------------------------------------------------------------------------------------ stories, English
    def _story(self, rng: random.Random) -> tuple[str, bool]:
        """Two characters whose names recur anywhere; with training names only, some sentences are transfers."""
        with_transfers = rng.random() < 0.7
        x, y = rng.sample(self.names_train if with_transfers else self.names_train + self.names_heldout, 2)
        sentences = []
        for _ in range(rng.randint(4, 9)):
            slots = self._slots(rng)
            if with_transfers and rng.random() < 0.3:
                s, io = (x, y) if rng.random() < 0.5 else (y, x)
                sentences.append(rng.choice(STORY_TRANSFERS).format(S=s, **slots) + f" {io}.")
            else:
                a, b = (x, y) if rng.random() < 0.5 else (y, x)
                sentences.append(rng.choice(STORY).format(X=a, Y=b, **slots))
        return _join(*sentences), with_transfers

    def _english(self, rng: random.Random) -> str:
        sentences = []
        for _ in range(rng.randint(2, 6)):
            name = rng.choice(self.names_train + self.names_heldout)
            pronouns = PRONOUNS[self.gender[name]]
            slots = self._slots(rng)
            sentences.append(rng.choice(GENERAL).format(N=name, **slots, **pronouns,
                                                        **{_cap(k): _cap(v) for k, v in pronouns.items()}))
        return _join(*sentences)

    # ------------------------------------------------------------------------------------ training data
    def generate(self, n: int, seed: int, mix: dict[str, float] | None = None) -> list[tuple[str, dict]]:
        """(document, metadata) pairs; metadata records kinds, frames and fact orders, for the tests."""
        mix = mix or DEFAULT_MIX
        rng = _rng(self.seed, "train", seed)
        out = []
        for kind in rng.choices(list(mix), weights=list(mix.values()), k=n):
            if kind == "ioi":
                events = [self._ioi_event(rng) for _ in range(rng.randint(1, 2))]
                out.append((" ".join(t for t, _, _ in events),
                            {"kind": kind, "frames": [f for _, f, _ in events], "variants": [v for _, _, v in events]}))
            elif kind == "story":
                text, transfers = self._story(rng)
                out.append((text, {"kind": kind, "transfers": transfers}))
            elif kind == "facts":
                text, ids = self._fact_document(rng)
                out.append((text, {"kind": kind, "paraphrases": ids}))
            elif kind == "english":
                out.append((self._english(rng), {"kind": kind}))
            else:
                raise ValueError(f"unknown document kind {kind!r}; use ioi, story, facts, english")
        return out

    def training_documents(self, n: int, seed: int, mix: dict[str, float] | None = None) -> list[str]:
        return [doc for doc, _ in self.generate(n, seed, mix)]

    # ------------------------------------------------------------------------------------ documentation
    def describe(self) -> dict:
        return {
            "kind": "stories", "seed": self.seed,
            "names_train": len(self.names_train), "names_heldout": self.names_heldout,
            "names_heldout_occur_in": "everyday sentences and stories without any IOI event or transfer",
            "frames_train": len(self.frames_train),
            "frames_heldout": {f: " ... ".join([INTROS[self._frames[f][0]], TRANSFERS[self._frames[f][1]]])
                               for f in self.frames_heldout},
            "intros": len(INTROS), "transfers": len(TRANSFERS), "fillers": len(FILLERS),
            "ioi_variants": IOI_VARIANTS,
            "countries": len(L.COUNTRIES), "towns": len(self.towns),
            "relations": list(FACT_ORDERS), "order_classes": ORDER_CLASSES,
            "fact_orders": FACT_ORDERS,
            "heldout_order_rule": "each fact (subject, relation) has one held-out order class, never used for it in "
                                  "training; every class is trained for the other facts of its relation",
            "default_mix": DEFAULT_MIX,
            "sources": "Synthetic text from minimech/training/stories.py and lexicon.py (no external text); country "
                       "facts are real-world, town facts are made up.",
        }

    def vocab_texts(self) -> list[str]:
        """Texts covering every word the generators can emit, with and without a leading space, capitalised or not
        (GPT-2's tokens depend on both)."""
        words = (list(self.gender) + self.places + self.objects + self.roles + L.ANIMALS + L.FOODS + L.RELATIVES
                 + L.COLORS + L.ADJECTIVES + [w for v in L.VERBS for w in v] + L.ADVERBS + L.TIMES + L.DAYS
                 + L.MONTHS + L.NUMBER_WORDS + L.WEATHER + L.THINGS + L.PLURALS + L.TOWN_PRODUCTS
                 + [c for row in L.COUNTRIES for c in row] + [t[0] for t in self.towns]
                 + [w for p in PRONOUNS.values() for w in p.values()] + ["a", "an", "the", "and", "they", "it"]
                 + [str(i) for i in range(0, 101)] + [str(y) for y in range(1950, 2025)]
                 + L.FUNCTION_WORDS + L.MORE_NOUNS + [plural(n) for n in L.MORE_NOUNS + self.objects + L.ANIMALS + L.TIMES + L.THINGS + L.FOODS]
                 + [f(v[0]) for v in L.VERBS for f in (verb_s, verb_ing)])
        templates = (INTROS + TRANSFERS + FILLERS + GENERAL + STORY + STORY_TRANSFERS + LEADS + OPENERS
                     + [t for r in FACT_ORDERS.values() for ts in r.values() for t in ts]
                     + [t for ts in FACT_IN_STORY.values() for t in ts])
        texts = [re.sub(r"\{\w+\}", "Mary", t) for t in templates] + words
        texts += [w + p for w in words for p in (".", ",", "'s", "'", "?", '"', "!")]
        # A lower-case word without a leading space never occurs (sentences and documents start capitalised).
        return sorted({x for t in texts for x in (" " + t, _cap(t), " " + _cap(t), '"' + _cap(t))})
