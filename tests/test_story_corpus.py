"""The story corpus of the default model (minimech/training/stories.py): its held-out names, IOI frames and fact word
orders never leak into training text (checked on the text itself, not on the generator's own metadata), the
hand-written probes (tests/data/probes) are outside what the generator writes and inside the vocabulary, and the
repeated spans cover every distance."""

import json
import math
import re
from pathlib import Path

import pytest
import torch

from minimech.tokenizer import Tokenizer, load_encoding
from minimech.training import stories as S
from minimech.training.corpus import build_vocab
from minimech.training.spans import copy_spans

PROBES = Path(__file__).parent / "data" / "probes"


@pytest.fixture(scope="module")
def corpus():
    return S.StoryCorpus(seed=0)


@pytest.fixture(scope="module")
def generated(corpus):
    return corpus.generate(6000, seed=1)


@pytest.fixture(scope="module")
def tokenizer(corpus):
    return Tokenizer(build_vocab(corpus.vocab_texts(), load_encoding()))


def _names_in(text: str, names) -> set:
    return set(re.findall(r"\b[A-Z][a-z]+\b", text)) & set(names)


def test_determinism_and_a_fixed_split(corpus):
    again = S.StoryCorpus(seed=0)
    assert corpus.training_documents(200, seed=1) == again.training_documents(200, seed=1)
    assert corpus.training_documents(200, seed=1) != corpus.training_documents(200, seed=2)
    assert corpus.ioi_eval(30, seed=3) == again.ioi_eval(30, seed=3)
    assert not set(corpus.names_heldout) & set(corpus.names_train) and len(corpus.names_heldout) == 30
    assert not set(corpus.frames_heldout) & set(corpus.frames_train)


def test_heldout_names_never_in_an_ioi_event_or_a_transfer(corpus, generated):
    """A held-out name may occur only in everyday sentences and stories without anyone giving anything to anyone."""
    transfer_words = re.compile(r"\b(gave|handed|passed|threw|sent|brought|showed|offered|lent|sold|bought|made|"
                                r"thanked|smiled at|waved to|said goodbye to|asked)\b")
    seen_heldout = set()
    for doc, meta in generated:
        found = _names_in(doc, corpus.names_heldout)
        seen_heldout |= found
        if found and meta["kind"] in ("ioi", "story"):
            # a story with a held-out name must hold no transfer sentence between two names
            assert meta["kind"] == "story", doc
            assert not re.search(r"\b[A-Z][a-z]+ " + transfer_words.pattern + r" (the |a |an )?\w*\s?(to |for )?"
                                 r"[A-Z][a-z]+\.", doc), doc
    assert len(seen_heldout) >= 25  # they do occur, so the model knows them as names


def _template_regex(template: str) -> str:
    """A template as a regular expression: name slots match a capitalised word, other slots a few words."""
    out = re.sub(r"\\\{[ABS]\\\}", "[A-Z][a-z]+", re.escape(template))
    return re.sub(r"\\\{\w+\\\}", r"[\\w' ]+?", out)


def test_heldout_frames_never_in_training_text(corpus, generated):
    """No one-event IOI document of the training text starts with a held-out frame's intro and holds its transfer
    followed by a name (regular expressions built from the templates, run on the text). A transfer's text can sit
    inside another's ("S gave" in "S gave a cup to"): such a document must match a training frame too."""
    one_event = [doc for doc, meta in generated if meta["kind"] == "ioi" and len(meta["frames"]) == 1]
    assert len(one_event) > 500
    intros = [re.compile(r"^(\w+,? )*" + _template_regex(t)) for t in S.INTROS]  # after an opener ("Today")
    transfers = [re.compile(_template_regex(t) + r" [A-Z][a-z]+\b") for t in S.TRANSFERS]
    train = set(corpus.frames_train)
    for frame in corpus.frames_heldout:
        i, t = (int(x) for x in re.findall(r"\d+", frame))
        for doc in one_event:
            if intros[i].match(doc) and transfers[t].search(doc):
                assert any(f"intro{i}+transfer{u}" in train and transfers[u].search(doc)
                           for u in range(len(S.TRANSFERS)) if u != t), f"held-out frame {frame} in: {doc}"


def test_heldout_fact_orders_never_in_training_text(corpus, generated):
    """No fact appears in training text in its held-out order class (any of its templates), and every order class is
    trained for some facts, so the held-out class is a known phrasing applied to a new fact."""
    text = "\n".join(doc for doc, meta in generated if meta["kind"] == "facts")
    for f in corpus.fact_eval("heldout", subjects="all"):
        assert f"{f.prompt}{f.answer}" not in text and f"{f.prompt[:1].lower()}{f.prompt[1:]}{f.answer}" not in text
    trained = corpus.fact_eval("train", subjects="all")
    hits = sum(f"{f.prompt}{f.answer}" in text for f in trained)
    assert hits > 0.3 * len(trained)
    used = {tuple(f.paraphrase.split("/")[:2]) for f in trained if f"{f.prompt}{f.answer}" in text}
    assert {(r, c) for r in S.FACT_ORDERS for c in S.ORDER_CLASSES} <= used


def test_made_up_towns_have_multi_token_names(corpus, tokenizer):
    assert len(corpus.towns) >= 200
    assert all(len(tokenizer.encode(" " + t)) >= 2 for t, _, _ in corpus.towns)


def test_no_unknown_tokens_in_generated_text_or_probes(corpus, generated, tokenizer):
    ids = [i for doc, _ in generated[:1500] for i in tokenizer.encode(doc)]
    assert tokenizer.unk_id not in ids
    frames = json.loads((PROBES / "ioi_frames.json").read_text())
    facts = json.loads((PROBES / "facts.json").read_text())
    texts = [f.format(A="Mary", B="John", S="John") for f in frames["frames"]]
    texts += [S.fact_prompt(p, c[0]) for r in facts["phrasings"].values() for ps in r.values() for p in ps
              for c in S.L.COUNTRIES]
    for t in texts:
        assert tokenizer.unk_id not in tokenizer.encode(t), t
    assert 5000 <= tokenizer.n_vocab <= 8000


def test_probe_names_are_held_out_and_probe_frames_are_not_generated(corpus, generated):
    frames = json.loads((PROBES / "ioi_frames.json").read_text())
    assert set(frames["names"]) <= set(corpus.names_heldout)
    text = "\n".join(doc for doc, _ in generated)
    for frame in frames["frames"]:  # the whole frame, with any names, never occurs in training text
        assert not re.search(_template_regex(frame), text), frame


def test_unknown_share_on_english_the_generator_did_not_write(tokenizer):
    """everyday_english_3.txt was written after the last change to the word lists (its first line says so)."""
    lines = (PROBES / "everyday_english_3.txt").read_text().splitlines()[1:]
    ids = tokenizer.encode(" ".join(lines))
    share = ids.count(tokenizer.unk_id) / len(ids)
    assert share <= 0.05, share


def test_copy_spans_cover_every_distance():
    rows = torch.arange(4000 * 128).reshape(4000, 128) % 1000 + 2000  # distinct from the pool below
    rows[:, 0] = 0
    out, spans = copy_spans(rows, torch.arange(10, 1000), seed=0, fraction=0.5, chunk_len=(4, 10))
    chosen = [s for row in spans for s in row]
    assert 0.45 < len(chosen) / 4000 < 0.55
    distances = []
    for r, row in enumerate(spans):
        if not row:
            assert torch.equal(out[r], rows[r])
        for start, length, copy in row:
            assert torch.equal(out[r, start: start + length], out[r, copy: copy + length])
            assert out[r, start: start + length].lt(1000).all() and copy + length <= 128 and start >= 1
            distances.append(copy - start)
    logs = torch.tensor(distances, dtype=torch.float).log()
    assert min(distances) >= 5 and max(distances) >= 110
    assert sum(d >= 96 for d in distances) > 0.05 * len(distances)
    # log-uniform: the median distance sits near the geometric middle of the range, far below the arithmetic one
    assert abs(logs.median().item() - math.log(math.sqrt(7 * 115))) < 0.35
