"""Seeded generators of plain-English training text for minimech's small models, and their held-out evaluations.

Three document kinds teach three phenomena; a fourth data source (random-token rows) teaches induction:

* "ioi" - indirect object identification from a compositional template grammar. A frame is an (opening, ending)
  pair, e.g. open0+end0 = "When {A} and {B} went to the {place}," + "{S} gave a {obj} to"; an optional filler
  ("after a while,") sits between them. A fraction of the frames, and `heldout_names` of the names, never occur in
  an IOI sentence, so the evaluation measures the algorithm ("the name that is not repeated"), not memorised
  strings. The held-out names do occur in the narrative stories, as every name in GPT-2's IOI set occurred in its
  pre-training text: a model can only know that " Ava" is a name if it has read " Ava" used as one. Besides
  the standard sentence, training mixes in one-name and three-name variants (the answer is still the non-repeated
  name, but by position it is not "the other of two names") and ~10% same-shape sentences ending "to the {role}."
  so the model must read the context rather than always emit a name after " to".
* "facts" - real capitals, main languages and continents, always subject first ("France's capital is Paris."),
  phrased by several paraphrases per relation, two of which are held out for evaluation only.
* "narrative" - short stories with names (held-out IOI names included), pronouns, places and objects, so the model
  is a language model at all.

Every name, place, object and role is one GPT-2 token with its leading space (checked in Corpus.__init__). Openings
never start with a name, so IOI names are always the " Name" token, as they are in the scored answer.
Everything is deterministic: random.Random with string seeds (hashed with SHA-512 by Python, so stable across runs).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import numpy as np
import torch

from . import wordlists as W

OPENINGS = [
    "When {A} and {B} went to the {place},",
    "After {A} and {B} arrived at the {place},",
    "While {A} and {B} were working at the {place},",
    "Today {A} and {B} spent the afternoon at the {place}.",
    "Then, {A} and {B} had a long talk at the {place}.",
    "Yesterday {A} and {B} were at the {place}.",
    "Once {A} and {B} got to the {place},",
    "As {A} and {B} walked into the {place},",
    "Last week {A} and {B} visited the {place}.",
    "On Sunday, {A} and {B} had lunch at the {place}.",
    "Before {A} and {B} left the {place},",
    "Later that day, {A} and {B} went to the {place}.",
]
# Between opening and ending; lower-case, capitalised when the opening ends a sentence. Never contain a name.
FILLERS = ["", "it was a {adj} day, and", "after a while,", "the {place} was {padj}, so", "later,",
           "the two of them talked for a while, and then", "since it was {adj},"]
ENDINGS = [
    "{S} gave a {obj} to",
    "{S} handed the {obj} to",
    "{S} passed the {obj} to",
    "{S} threw the {obj} to",
    "{S} sent a letter to",
    "{S} brought a {obj} to",
    "{S} showed the {obj} to",
    "{S} offered a {obj} to",
    "{S} lent the {obj} to",
    "{S} gave the {obj} back to",
]
# IOI document sentence kinds and their shares; "not_io" (ends "to the {role}.") stays below ~15%.
IOI_VARIANTS = {"standard": 0.7, "one_name": 0.1, "three_name": 0.1, "not_io": 0.1}

# Subject first, relation after. {X}'s becomes X' for subjects ending in s ("the United States' capital").
PARAPHRASES = {
    "capital": ["{X}'s capital is", "{X} has its capital city in", "{X}'s seat of government is",
                "{X}'s government sits in", "In {X}, the capital is", "{X} is governed from",
                "{X}'s capital city is", "In {X}, the seat of government is"],
    "language": ["{X}'s main language is", "People in {X} speak", "{X}'s most widely spoken language is",
                 "In {X}, most people speak", "{X}'s citizens speak", "In {X}, people speak",
                 "{X}'s most spoken language is"],
    "continent": ["{X} is located in", "{X} is a country in", "{X} can be found in", "{X} is situated in",
                  "{X} is a country situated in", "{X} is a country located in"],
}
RELATION_COLUMN = {"capital": 1, "language": 2, "continent": 3}
# The last two paraphrases of each relation are held out. They are new combinations of words the training
# paraphrases use ("capital city" + "'s ... is"), never new words: a model cannot know what an unseen word means,
# so only recombination is a fair test of recall that goes through the subject rather than the template.
HELDOUT_PARAPHRASES_PER_RELATION = 2
# Words of earlier corpus versions that the shipped models' vocabularies hold: kept so that their recipes still build
# the same vocabulary. "lies" was in the held-out paraphrase "{X} lies in", replaced because the training
# paraphrases never use "lies" (a new word, not a recombination).
RETIRED_TOKENS = [" lies"]

# Narrative blocks; {he}/{his}/{him} follow the main character's gender, {Y} is a second character.
STORY_INTROS = [
    "{X} went to the {place}.", "One {time}, {X} walked to the {place}.",
    "{X} woke up early and went to the {place}.", "It was a {adj} {time}, and {X} was at the {place}.",
    "{X} and {his} {relative} went to the {place}.", "{X} liked to spend the {time} at the {place}.",
    "Every {time}, {X} visited the {place}.", "{X} had a {color} {obj} and took it to the {place}.",
]
STORY_MIDDLES = [
    "{He} found a {color} {obj}. Later {he} gave it to {his} {relative}.", "{He} saw a {animal} near the {place2}.",
    "{He} bought a {food} and ate it slowly.", "There {he} met {Y}, who was talking to the {role}.",
    "{He} looked for {his} {obj}, but {he} could not find it.", "The {place} was {padj}, so {he} stayed for a while.",
    "{He} talked to the {role} about the {obj}.", "{Y} asked {him} about the {animal}.",
    "{He} sat down and read a book.", "{He} was happy because the {time} was {adj}.",
    "{He} played with a {color} ball.", "{Y} gave {him} a {food}, and {he} said thank you.",
    "{He} wanted a {food}, but the {place} had none.", "A {animal} ran past {him}, and {he} laughed.",
    "{He} helped the {role} carry a {color} box.", "{He} showed {Y} {his} new {obj}.",
]
STORY_ENDINGS = [
    "Then {he} went home.", "At the end of the day, {he} was tired but happy.",
    "{He} said goodbye to {Y} and walked home.", "{His} {relative} was glad to see {him}.",
    "That night, {he} slept well.", "{He} could not wait to come back to the {place}.",
]
PRONOUNS = {"f": {"he": "she", "his": "her", "him": "her"}, "m": {"he": "he", "his": "his", "him": "him"}}
DEFAULT_MIX = {"ioi": 0.5, "facts": 0.3, "narrative": 0.2}


@dataclass(frozen=True)
class IOIExample:
    prompt: str  # ends right before the indirect object
    io: str  # " Mary" (single GPT-2 token, leading space)
    s: str  # " John"
    frame: str  # "open3+end5"
    order: str  # "ABBA" (IO named first) or "BABA" (subject named first)


@dataclass(frozen=True)
class FactExample:
    prompt: str  # "France's capital is"
    answer: str  # " Paris"
    subject: str  # "France"
    relation: str  # "capital"
    paraphrase: str  # "capital/2"


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _fix_articles(text: str) -> str:
    """"a apple" -> "an apple" (slots are filled blindly, so the article is fixed afterwards)."""
    return re.sub(r"\b([Aa]) (?=[aeiou])", r"\1n ", text)


def _join(*parts: str) -> str:
    """Join clause parts with spaces, capitalising a part that follows a full stop."""
    out = ""
    for part in filter(None, parts):
        out = part if not out else out + " " + (_cap(part) if out.endswith(".") else part)
    return _fix_articles(out)


def _subject_phrase(country: str) -> tuple[str, str]:
    """("the United States", "United States"): the phrase used in text and the bare subject name."""
    return country, country.removeprefix("the ")


def _fact_prompt(template: str, country: str) -> str:
    possessive = country + ("'" if country.endswith("s") else "'s")
    return _cap(template.replace("{X}'s", possessive).replace("{X}", country))


def _rng(*key) -> random.Random:
    return random.Random("minimech-corpus/" + "/".join(map(str, key)))


def _check_single_tokens(words: list[str], what: str) -> None:
    from ..tokenizer import load_encoding
    enc = load_encoding()
    bad = [w for w in words if len(enc.encode(" " + w)) != 1]
    if bad:
        raise ValueError(f"{what} must be single GPT-2 tokens with a leading space: {bad}")


class Corpus:
    """The seeded train / held-out split and the generators. See the module docstring."""

    def __init__(self, seed: int = 0, heldout_names: int = 20, heldout_frame_fraction: float = 0.25):
        self.seed = seed
        names = W.FEMALE_NAMES + W.MALE_NAMES
        for words, what in [(names, "names"), (W.PLACES, "places"), (W.OBJECTS, "objects"), (W.ROLES, "roles")]:
            _check_single_tokens(words, what)
        self.gender = {**{n: "f" for n in W.FEMALE_NAMES}, **{n: "m" for n in W.MALE_NAMES}}
        rng = _rng(seed, "split")
        shuffled = rng.sample(names, len(names))
        self.names_heldout = sorted(shuffled[:heldout_names])
        self.names_train = sorted(shuffled[heldout_names:])

        # Hold out (opening, ending) pairs, but keep every opening and every ending in some training frame.
        combos = [(o, e) for o in range(len(OPENINGS)) for e in range(len(ENDINGS))]
        left_o = {o: len(ENDINGS) for o in range(len(OPENINGS))}
        left_e = {e: len(OPENINGS) for e in range(len(ENDINGS))}
        held = set()
        for o, e in rng.sample(combos, len(combos)):
            if len(held) >= round(heldout_frame_fraction * len(combos)):
                break
            if left_o[o] > 1 and left_e[e] > 1:
                held.add((o, e))
                left_o[o] -= 1
                left_e[e] -= 1
        self._frames = {f"open{o}+end{e}": (o, e) for o, e in combos}
        self.frames_heldout = [f"open{o}+end{e}" for o, e in combos if (o, e) in held]
        self.frames_train = [f"open{o}+end{e}" for o, e in combos if (o, e) not in held]

        self._paraphrases = {f"{r}/{i}": t for r, ts in PARAPHRASES.items() for i, t in enumerate(ts)}
        self.paraphrases_heldout, self.paraphrases_train = {}, {}
        for r, ts in PARAPHRASES.items():
            out = set(range(len(ts) - HELDOUT_PARAPHRASES_PER_RELATION, len(ts)))
            self.paraphrases_heldout[r] = [f"{r}/{i}" for i in range(len(ts)) if i in out]
            self.paraphrases_train[r] = [f"{r}/{i}" for i in range(len(ts)) if i not in out]

    # ---------------------------------------------------------------------------------------------- IOI
    def _ioi_prompt(self, rng: random.Random, frame: str, a: str, b: str, s: str) -> str:
        o, e = self._frames[frame]
        slots = dict(A=a, B=b, S=s, place=rng.choice(W.PLACES), obj=rng.choice(W.OBJECTS),
                     adj=rng.choice(W.DAY_ADJECTIVES), padj=rng.choice(W.PLACE_ADJECTIVES))
        filler = rng.choice(FILLERS)
        return _join(OPENINGS[o].format(**slots), filler.format(**slots), ENDINGS[e].format(**slots))

    def _ioi_sentence(self, rng: random.Random) -> tuple[str, str, str]:
        """One training sentence: (text, frame id, variant). Only training names and training frames."""
        variant = rng.choices(list(IOI_VARIANTS), weights=list(IOI_VARIANTS.values()))[0]
        frame = rng.choice(self.frames_train)
        io, s, c = rng.sample(self.names_train, 3)
        a, b = (io, s) if rng.random() < 0.5 else (s, io)
        if variant == "standard":
            text = self._ioi_prompt(rng, frame, a, b, s) + f" {io}."
            if rng.random() < 0.2:
                text += f" {io} thanked {s}."
        elif variant == "not_io":
            text = self._ioi_prompt(rng, frame, a, b, s) + f" the {rng.choice(W.ROLES)}."
        else:
            o, e = self._frames[frame]
            if variant == "one_name":  # "When Mary went to the store, the nurse gave a drink to Mary."
                opening = OPENINGS[o].replace("{A} and {B}", "{A}").replace(" were ", " was ")
                subject = f"the {rng.choice(W.ROLES)}"
            else:  # three names: the two repeated ones act, the non-repeated one receives
                opening = OPENINGS[o].replace("{A} and {B}", "{A}, {B} and {C}")
                a, b, c = rng.sample([io, s, c], 3)
                subject = " and ".join(n for n in (a, b, c) if n != io)
            slots = dict(A=a, B=b, C=c, S="{S}", place=rng.choice(W.PLACES), obj=rng.choice(W.OBJECTS),
                         adj=rng.choice(W.DAY_ADJECTIVES), padj=rng.choice(W.PLACE_ADJECTIVES))
            if variant == "one_name":
                slots["A"] = io
            ending = ENDINGS[e].format(**slots).replace("{S}", subject)
            opening = opening.format(**slots)
            # "the two of them" fits neither one nor three people
            filler = rng.choice([f for f in FILLERS if "two" not in f])
            text = _join(opening, filler.format(**slots), ending) + f" {io}."
        return text, frame, variant

    def ioi_eval(self, n: int, seed: int = 0, names: str = "heldout", frames: str = "heldout") -> list[IOIExample]:
        """n prompts ending right before the IO; alternately ABBA and BABA (balanced)."""
        pool = {"heldout": self.names_heldout, "train": self.names_train}[names]
        frame_pool = {"heldout": self.frames_heldout, "train": self.frames_train}[frames]
        rng = _rng(self.seed, "ioi_eval", names, frames, seed)
        out = []
        for i in range(n):
            io, s = rng.sample(pool, 2)
            order = "ABBA" if i % 2 == 0 else "BABA"
            a, b = (io, s) if order == "ABBA" else (s, io)
            frame = rng.choice(frame_pool)
            out.append(IOIExample(self._ioi_prompt(rng, frame, a, b, s), " " + io, " " + s, frame, order))
        return out

    # -------------------------------------------------------------------------------------------- facts
    def _fact(self, country_row: tuple, relation: str, pid: str) -> FactExample:
        phrase, subject = _subject_phrase(country_row[0])
        return FactExample(_fact_prompt(self._paraphrases[pid], phrase), " " + country_row[RELATION_COLUMN[relation]],
                           subject, relation, pid)

    def _fact_document(self, rng: random.Random) -> tuple[str, list[str]]:
        """Either several facts about one country or one relation over several countries."""
        if rng.random() < 0.5:
            row = rng.choice(W.COUNTRIES)
            pairs = [(row, r) for r in rng.sample(list(PARAPHRASES), 3)][: rng.randint(2, 3)]
        else:
            relation = rng.choice(list(PARAPHRASES))
            pairs = [(row, relation) for row in rng.sample(W.COUNTRIES, rng.randint(2, 4))]
        facts = [self._fact(row, r, rng.choice(self.paraphrases_train[r])) for row, r in pairs]
        return " ".join(f"{f.prompt}{f.answer}." for f in facts), [f.paraphrase for f in facts]

    def fact_eval(self, paraphrases: str = "heldout") -> list[FactExample]:
        """Every (subject, relation, paraphrase) for the chosen paraphrase split ("heldout", "train" or "all")."""
        ids = {"heldout": self.paraphrases_heldout, "train": self.paraphrases_train,
               "all": {r: self.paraphrases_train[r] + self.paraphrases_heldout[r] for r in PARAPHRASES}}[paraphrases]
        return [self._fact(row, r, pid) for row in W.COUNTRIES for r in PARAPHRASES for pid in sorted(ids[r])]

    # ---------------------------------------------------------------------------------------- narrative
    def _story(self, rng: random.Random) -> str:
        x, y = rng.sample(self.names_train + self.names_heldout, 2)  # every name: see the module docstring
        p = PRONOUNS[self.gender[x]]
        places = rng.sample(W.PLACES, 2)
        slots = dict(X=x, Y=y, place=places[0], place2=places[1], obj=rng.choice(W.OBJECTS),
                     color=rng.choice(W.COLORS), animal=rng.choice(W.ANIMALS), food=rng.choice(W.FOODS),
                     relative=rng.choice(W.RELATIVES), role=rng.choice(W.ROLES), time=rng.choice(W.TIMES),
                     adj=rng.choice(W.DAY_ADJECTIVES), padj=rng.choice(W.PLACE_ADJECTIVES),
                     **p, **{_cap(k): _cap(v) for k, v in p.items()})
        blocks = [rng.choice(STORY_INTROS), *rng.sample(STORY_MIDDLES, rng.randint(1, 4)), rng.choice(STORY_ENDINGS)]
        return _fix_articles(" ".join(b.format(**slots) for b in blocks))

    # ------------------------------------------------------------------------------------ training data
    def generate(self, n: int, seed: int, mix: dict[str, float] | None = None) -> list[tuple[str, dict]]:
        """(document, metadata) pairs; metadata records the frames and paraphrases used, for the tests."""
        mix = mix or DEFAULT_MIX
        rng = _rng(self.seed, "train", seed)
        kinds = rng.choices(list(mix), weights=list(mix.values()), k=n)
        out = []
        for kind in kinds:
            if kind == "ioi":
                sents = [self._ioi_sentence(rng) for _ in range(rng.randint(1, 3))]
                out.append((" ".join(t for t, _, _ in sents),
                            {"kind": kind, "frames": [f for _, f, _ in sents], "variants": [v for _, _, v in sents]}))
            elif kind == "facts":
                doc, pids = self._fact_document(rng)
                out.append((doc, {"kind": kind, "paraphrases": pids}))
            elif kind == "narrative":
                out.append((self._story(rng), {"kind": kind}))
            else:
                raise ValueError(f"unknown document kind {kind!r}; use ioi, facts, narrative")
        return out

    def training_documents(self, n: int, seed: int, mix: dict[str, float] | None = None) -> list[str]:
        """n documents of a few sentences each, kinds drawn by `mix` weights: IOI sentences use training names and
        frames only, facts training paraphrases only; stories use every name."""
        return [doc for doc, _ in self.generate(n, seed, mix)]

    # ------------------------------------------------------------------------------------ documentation
    def describe(self) -> dict:
        return {
            "seed": self.seed,
            "names_train": len(self.names_train), "names_heldout": self.names_heldout,
            "names_heldout_occur_in": "narrative stories only (never in an IOI sentence)",
            "frames_train": len(self.frames_train),
            "frames_heldout": {f: " ... ".join([OPENINGS[self._frames[f][0]], ENDINGS[self._frames[f][1]]])
                               for f in self.frames_heldout},
            "openings": len(OPENINGS), "fillers": len(FILLERS), "endings": len(ENDINGS),
            "ioi_variants": IOI_VARIANTS,
            "subjects": len(W.COUNTRIES), "relations": list(PARAPHRASES),
            "paraphrases_train": {r: len(v) for r, v in self.paraphrases_train.items()},
            "paraphrases_heldout": {pid: self._paraphrases[pid] for v in self.paraphrases_heldout.values()
                                    for pid in v},
            "default_mix": DEFAULT_MIX,
            "sources": "Synthetic text from the template grammar in minimech/training/corpus.py and the word lists in "
                       "minimech/training/wordlists.py; facts are real-world capitals, main languages and continents.",
        }

    def vocab_texts(self) -> list[str]:
        """Texts covering every word chunk the generators and evals can emit (train and held-out), each with and
        without a leading space and capitalised or not, since GPT-2 tokens depend on those."""
        slot_values = (W.FEMALE_NAMES + W.MALE_NAMES + W.PLACES + W.OBJECTS + W.ROLES + W.DAY_ADJECTIVES
                       + W.PLACE_ADJECTIVES + W.COLORS + W.ANIMALS + W.FOODS + W.RELATIVES + W.TIMES
                       + ["an", "the", "a", "and"]
                       + [c for row in W.COUNTRIES for c in row]
                       + [w for p in PRONOUNS.values() for w in p.values()])
        templates = OPENINGS + FILLERS + ENDINGS + STORY_INTROS + STORY_MIDDLES + STORY_ENDINGS + [
            "{A} thanked {S}.", "{A}, {B} and {C}", " the {role}.", " {A}."]
        templates += [_fact_prompt(t, c) for ts in PARAPHRASES.values() for t in ts
                      for c in ("France", "the United States")]
        texts = [re.sub(r"\{\w+\}", "Mary", t) for t in templates] + slot_values
        texts += [v + p for v in slot_values for p in (".", ",", "'s", "'")]
        return sorted({x for t in texts for x in (t, " " + t, _cap(t), " " + _cap(t))} | set(RETIRED_TOKENS))


# ------------------------------------------------------------------------------------------- token-level data
def induction_rows(n_rows: int, n_ctx: int, token_pool: torch.Tensor, seed: int, bos_id: int,
                   chunk_len=(4, 12), n_chunks=(1, 3), gap=(0, 20), return_spans: bool = False,
                   filler: torch.Tensor | None = None):
    """Rows [n_rows, n_ctx] of random tokens from `token_pool` (model ids) after a BOS, in which n_chunks chunks of
    chunk_len tokens are each copied once, gap tokens later. Chunk+copy segments are laid out one after another
    (random padding between), so no chunk overlaps another's copy. Ranges are inclusive.
    filler: rows [n_rows, n_ctx] (e.g. packed English) to write the chunks of random tokens and their copies into,
    instead of random filler; column 0 still becomes the BOS.
    With return_spans=True, also returns per row a list of (start, length, copy_start)."""
    gen = torch.Generator().manual_seed(seed)
    pool = torch.as_tensor(token_pool, dtype=torch.long).numpy()

    def rint(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (), generator=gen))

    # The row surgery runs on numpy arrays (torch's per-slice overhead made this ~5x slower); the random draws are
    # torch's, in the same order as always, so a seed gives the same rows as before.
    rows = np.empty((n_rows, n_ctx), dtype=np.int64)
    fill = None if filler is None else torch.as_tensor(filler).numpy()
    spans = []
    for r in range(n_rows):
        drawn = pool[torch.randint(len(pool), (n_ctx - 1,), generator=gen).numpy()]
        rows[r, 0] = bos_id
        rows[r, 1:] = drawn if fill is None else fill[r, 1:]  # with filler the draws still happen, for the chunks
        space, segs = n_ctx - 1, []
        for _ in range(rint(*n_chunks)):
            length, g = rint(*chunk_len), rint(*gap)
            if sum(2 * s + h for s, h in segs) + 2 * length + g <= space:
                segs.append((length, g))
        slack = space - sum(2 * s + h for s, h in segs)
        cuts = sorted(rint(0, slack) for _ in segs)  # padding before each segment
        pads = [b - a for a, b in zip([0] + cuts, cuts)]
        cursor, row_spans = 1, []
        for (length, g), pad in zip(segs, pads):
            start = cursor + pad
            copy = start + length + g
            if fill is not None:
                rows[r, start: start + length] = drawn[start - 1: start - 1 + length]
            rows[r, copy: copy + length] = rows[r, start: start + length]
            row_spans.append((start, length, copy))
            cursor = copy + length
        spans.append(row_spans)
    rows = torch.from_numpy(rows)
    return (rows, spans) if return_spans else rows


def pack_documents(docs: list[list[int]], n_ctx: int, eot_id: int, open_rows: int = 8) -> torch.Tensor:
    """First-fit packing: each row is [eot, doc, eot, doc, ..., eot padding]. The leading eot is the BOS; a document
    never spans two rows (one longer than n_ctx - 1 tokens is truncated). A document goes into the first of up to
    `open_rows` partly filled rows where it fits, so short documents fill the tails that long ones leave (padding
    falls from ~17 % of the tokens with one open row to ~2 %); the order of documents is kept within a row."""
    done, rows = [], []  # rows: the open ones, oldest first
    for doc in docs:
        doc = list(doc)[: n_ctx - 1]
        if not doc:
            continue
        row = next((r for r in rows if len(r) + 1 + len(doc) <= n_ctx), None)
        if row is None:
            if len(rows) == open_rows:
                done.append(rows.pop(0))
            rows.append(row := [eot_id])
        row += ([eot_id] if len(row) > 1 else []) + doc
    done += rows
    padded = [r + [eot_id] * (n_ctx - len(r)) for r in done]
    return torch.tensor(padded, dtype=torch.long).reshape(len(padded), n_ctx)


def build_vocab(texts: list[str], encoding) -> list[int]:
    """Sorted distinct GPT-2 ids of the texts, then 50256 (<|endoftext|>) and -1 (the unknown-token slot)."""
    ids = {i for t in texts for i in encoding.encode_ordinary(t)}
    ids.discard(50256)
    return sorted(ids) + [50256, -1]
