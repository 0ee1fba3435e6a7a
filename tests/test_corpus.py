"""The synthetic training corpus: determinism, the held-out splits never leaking into training, tokenisation."""

import re
from collections import Counter

import pytest
import torch

from minimech.tokenizer import load_encoding
from minimech.training import corpus as C
from minimech.training import wordlists as W


@pytest.fixture(scope="module")
def enc():
    return load_encoding()


@pytest.fixture(scope="module")
def corpus():
    return C.Corpus(seed=0)


@pytest.fixture(scope="module")
def generated(corpus):
    return corpus.generate(5000, seed=1)


@pytest.fixture(scope="module")
def text(generated):
    return "\n".join(doc for doc, _ in generated)


def test_determinism(corpus):
    assert corpus.training_documents(300, seed=1) == C.Corpus(seed=0).training_documents(300, seed=1)
    assert corpus.training_documents(300, seed=1) != corpus.training_documents(300, seed=2)
    assert corpus.training_documents(300, seed=1) != C.Corpus(seed=1).training_documents(300, seed=1)
    assert corpus.ioi_eval(50, seed=3) == C.Corpus(seed=0).ioi_eval(50, seed=3)
    assert corpus.ioi_eval(50, seed=3) != corpus.ioi_eval(50, seed=4)
    other = C.Corpus(seed=1)
    assert other.names_heldout != corpus.names_heldout and other.frames_heldout != corpus.frames_heldout


def test_splits(corpus):
    assert len(corpus.names_heldout) == 20 and len(corpus.names_train) >= 60
    assert not set(corpus.names_heldout) & set(corpus.names_train)
    assert not set(corpus.frames_heldout) & set(corpus.frames_train)
    n_frames = len(C.OPENINGS) * len(C.ENDINGS)
    assert len(C.OPENINGS) >= 10 and len(C.ENDINGS) >= 8
    assert len(corpus.frames_heldout) == round(0.25 * n_frames) and len(corpus.frames_train) + len(
        corpus.frames_heldout) == n_frames
    # every opening and every ending still occurs in some training frame
    parts = [f.split("+") for f in corpus.frames_train]
    assert {o for o, _ in parts} == {f"open{i}" for i in range(len(C.OPENINGS))}
    assert {e for _, e in parts} == {f"end{i}" for i in range(len(C.ENDINGS))}
    for r in C.PARAPHRASES:
        assert len(corpus.paraphrases_heldout[r]) >= 2 and len(corpus.paraphrases_train[r]) >= 4
        assert not set(corpus.paraphrases_heldout[r]) & set(corpus.paraphrases_train[r])
    assert len(C.Corpus(heldout_names=5, heldout_frame_fraction=0.5).names_heldout) == 5


def test_words_are_single_tokens(enc):
    for word in W.FEMALE_NAMES + W.MALE_NAMES + W.PLACES + W.OBJECTS + W.ROLES:
        assert len(enc.encode(" " + word)) == 1, word
    assert len(set(W.FEMALE_NAMES + W.MALE_NAMES)) == len(W.FEMALE_NAMES + W.MALE_NAMES)


def test_heldout_names_never_in_an_ioi_sentence(corpus, generated, enc):
    """Held-out names occur in stories (so the model learns they are names) but never in an IOI document."""
    held = set(corpus.names_heldout)
    ids = {enc.encode(" " + n)[0] for n in held} | {i for n in held for i in enc.encode(n) if len(enc.encode(n)) == 1}
    ioi_docs = [doc for doc, meta in generated if meta["kind"] == "ioi"]
    other_docs = [doc for doc, meta in generated if meta["kind"] != "ioi"]
    assert ioi_docs and other_docs
    for doc in ioi_docs:
        assert not ids & set(enc.encode(doc)), doc
    ioi_text = " ".join(ioi_docs)
    assert not re.search(r"\b(" + "|".join(held) + r")\b", ioi_text)
    assert re.search(r"\b(" + "|".join(corpus.names_train) + r")\b", ioi_text)  # the check can see names at all
    stories = " ".join(doc for doc, meta in generated if meta["kind"] == "narrative")
    assert {n for n in held if re.search(rf"\b{n}\b", stories)} == held  # every held-out name is read in a story


def test_heldout_frames_never_in_training(corpus, generated, text):
    used = Counter(f for _, meta in generated if meta["kind"] == "ioi" for f in meta["frames"])
    assert not set(used) & set(corpus.frames_heldout) and set(used) == set(corpus.frames_train)
    # Structurally too: no sentence of a held-out frame's opening followed by its ending (any filler between).
    def pattern(template):
        out = re.escape(template)
        for slot in ("A", "B", "S", "place", "obj"):
            out = out.replace(re.escape("{" + slot + "}"), r"\w+")
        return out.replace(r"\ a\ ", r"\ an?\ ")
    for f in corpus.frames_heldout:
        o, e = (int(x) for x in re.findall(r"\d+", f))
        rx = pattern(C.OPENINGS[o]) + r" (?:[^.]*? )?" + pattern(C.ENDINGS[e])
        assert not re.search(rx, text), f
    for f in corpus.frames_train[:3]:  # and the same check does find training frames
        o, e = (int(x) for x in re.findall(r"\d+", f))
        assert re.search(pattern(C.OPENINGS[o]) + r" (?:[^.]*? )?" + pattern(C.ENDINGS[e]), text)


def test_heldout_paraphrases_never_in_training(corpus, generated, text):
    used = {p for _, meta in generated if meta["kind"] == "facts" for p in meta["paraphrases"]}
    held = {p for v in corpus.paraphrases_heldout.values() for p in v}
    assert used and not used & held
    for ex in corpus.fact_eval("heldout"):
        assert ex.prompt not in text, ex.prompt
    train_templates = [C.PARAPHRASES[r][int(p.split("/")[1])] for r, ps in corpus.paraphrases_train.items()
                       for p in ps]
    for p in held:
        r, i = p.split("/")
        suffix = C.PARAPHRASES[r][int(i)].split("{X}")[1]
        if not any(suffix in t for t in train_templates):  # a distinctive fixed text must never appear
            assert suffix not in text and suffix.replace("'s", "'") not in text, suffix
    seen = [ex.prompt + ex.answer + "." in text for ex in corpus.fact_eval("train")]  # the check can see facts
    assert sum(seen) / len(seen) > 0.9


def test_ioi_mix(generated):
    variants = Counter(v for _, meta in generated if meta["kind"] == "ioi" for v in meta["variants"])
    total = sum(variants.values())
    assert variants["standard"] / total > 0.6 and variants["not_io"] / total < 0.15
    assert variants["one_name"] and variants["three_name"]
    kinds = Counter(meta["kind"] for _, meta in generated)
    assert kinds["ioi"] > kinds["facts"] > kinds["narrative"] > 0
    assert all(m["kind"] == "narrative" for _, m in C.Corpus().generate(50, 0, {"narrative": 1.0}))


def test_round_trip_and_plain_text(corpus, generated, enc):
    texts = [d for d, _ in generated[:2000]] + [e.prompt + e.io for e in corpus.ioi_eval(200)]
    texts += [e.prompt + e.answer for e in corpus.fact_eval("all")]
    for t in texts:
        assert enc.decode(enc.encode(t)) == t
        assert "<|endoftext|>" not in t and "\n" not in t and "{" not in t and "  " not in t
        assert " a a" not in t and not re.search(r"\ba [aeiou]", t)


@pytest.mark.parametrize("names,frames", [("heldout", "heldout"), ("train", "heldout"), ("heldout", "train")])
def test_ioi_eval(corpus, enc, names, frames):
    examples = corpus.ioi_eval(200, seed=0, names=names, frames=frames)
    assert len(examples) == 200 and Counter(e.order for e in examples) == {"ABBA": 100, "BABA": 100}
    name_pool = set(corpus.names_heldout if names == "heldout" else corpus.names_train)
    frame_pool = set(corpus.frames_heldout if frames == "heldout" else corpus.frames_train)
    for e in examples:
        io, s = e.io.strip(), e.s.strip()
        assert io != s and {io, s} <= name_pool and e.frame in frame_pool
        assert len(enc.encode(e.io)) == 1 and len(enc.encode(e.s)) == 1 and e.io == " " + io
        assert e.prompt.endswith(" to")
        assert len(re.findall(rf"\b{s}\b", e.prompt)) == 2 and len(re.findall(rf"\b{io}\b", e.prompt)) == 1
        first = min(e.prompt.index(io), e.prompt.index(s))
        assert (e.prompt[first:].startswith(io)) == (e.order == "ABBA")
        assert f" {io}" in e.prompt and f" {s}" in e.prompt  # names are the leading-space tokens being scored


def test_fact_eval(corpus, enc):
    held = corpus.fact_eval("heldout")
    n_held = sum(len(v) for v in corpus.paraphrases_heldout.values())
    assert len(held) == len(W.COUNTRIES) * n_held
    assert len(W.COUNTRIES) >= 40 and any(" " in c.removeprefix("the ") for c, *_ in W.COUNTRIES)
    for ex in held + corpus.fact_eval("train"):
        relation_words = C.PARAPHRASES[ex.relation][int(ex.paraphrase.split("/")[1])].split("{X}")[1]
        relation_words = relation_words.removeprefix("'s").strip()
        assert ex.prompt.endswith(relation_words) and ex.subject in ex.prompt
        assert ex.prompt.index(ex.subject) + len(ex.subject) <= len(ex.prompt) - len(relation_words)
        assert " of " + ex.subject not in ex.prompt  # never "The capital of France"
        assert ex.answer.startswith(" ") and not ex.prompt.endswith(" ")
    for r in C.PARAPHRASES:  # different answers of a relation have different first tokens
        firsts = {}
        for ex in held:
            if ex.relation == r:
                firsts.setdefault(enc.encode(ex.answer)[0], set()).add(ex.answer)
        assert all(len(v) == 1 for v in firsts.values())


def test_vocab_covers_everything(corpus, generated, enc):
    vocab = set(C.build_vocab(corpus.vocab_texts(), enc))
    texts = [d for d, _ in generated] + [d for d in C.Corpus(seed=3).training_documents(2000, seed=5)]
    for names in ("heldout", "train"):
        texts += [e.prompt + e.io + e.s for e in corpus.ioi_eval(300, names=names, frames="train")]
    texts += [e.prompt + e.answer for e in corpus.fact_eval("all")]
    for t in texts:
        assert set(enc.encode(t)) <= vocab, [enc.decode([i]) for i in set(enc.encode(t)) - vocab]
    assert len(vocab) < 3000


def test_build_vocab(enc):
    texts = ["Hello world.", " Mary gave a drink to John", "Hello"]
    vocab = C.build_vocab(texts, enc)
    assert vocab[-2:] == [50256, -1] and vocab[:-2] == sorted(set(vocab[:-2]))
    assert set(i for t in texts for i in enc.encode(t)) == set(vocab[:-2])


def test_describe_is_jsonable(corpus):
    import json
    d = json.loads(json.dumps(corpus.describe()))
    assert d["seed"] == 0 and d["names_heldout"] == corpus.names_heldout
    assert set(d["frames_heldout"]) == set(corpus.frames_heldout) and d["subjects"] == len(W.COUNTRIES)


def test_induction_rows():
    pool = torch.arange(100, 300)
    rows, spans = C.induction_rows(64, 48, pool, seed=0, bos_id=7, return_spans=True)
    assert rows.shape == (64, 48) and rows.dtype == torch.long
    assert (rows[:, 0] == 7).all() and torch.isin(rows[:, 1:], pool).all()
    n_chunks = Counter(len(s) for s in spans)
    assert set(n_chunks) <= {1, 2, 3} and len(n_chunks) > 1
    for row, row_spans in zip(rows, spans):
        covered = set()
        for start, length, copy in row_spans:
            assert 4 <= length <= 12 and 0 <= copy - start - length <= 20 and start >= 1 and copy + length <= 48
            assert torch.equal(row[start:start + length], row[copy:copy + length])
            cells = set(range(start, start + length)) | set(range(copy, copy + length))
            assert not cells & covered  # no chunk overlaps another chunk or copy
            covered |= cells
    assert torch.equal(rows, C.induction_rows(64, 48, pool, seed=0, bos_id=7))
    assert not torch.equal(rows, C.induction_rows(64, 48, pool, seed=1, bos_id=7))
    short = C.induction_rows(8, 12, pool, seed=0, bos_id=7)  # too short for most chunks: still valid rows
    assert short.shape == (8, 12) and (short[:, 0] == 7).all()


def _unpack(rows, eot):
    docs = []
    for row in rows.tolist():
        cur = []
        for t in row[1:] + [eot]:
            if t == eot:
                if cur:
                    docs.append(cur)
                cur = []
            else:
                cur.append(t)
    return docs


def test_pack_documents():
    eot = 99
    docs = [[1, 2, 3], [4, 5], list(range(10, 30)), [6], [7, 8, 9, 10, 11, 12, 13]]
    rows = C.pack_documents(docs, n_ctx=10, eot_id=eot, open_rows=1)
    assert rows.shape[1] == 10 and (rows[:, 0] == eot).all()
    # one open row: order kept, nothing split, the long doc truncated to n_ctx - 1
    assert _unpack(rows, eot) == [d[:9] for d in docs]
    assert rows.tolist()[0] == [eot, 1, 2, 3, eot, 4, 5, eot, eot, eot]
    assert C.pack_documents([], 10, eot).shape == (0, 10)


def test_pack_documents_first_fit_fills_tails():
    import random
    rng = random.Random(0)
    eot, n_ctx = 999, 32
    docs = [[rng.randrange(500) for _ in range(rng.randint(3, 25))] for _ in range(400)]
    tight = C.pack_documents(docs, n_ctx, eot)
    loose = C.pack_documents(docs, n_ctx, eot, open_rows=1)
    assert (tight[:, 0] == eot).all()
    assert sorted(map(tuple, _unpack(tight, eot))) == sorted(map(tuple, docs))  # every doc once, none split
    assert len(tight) < 0.9 * len(loose)  # fewer rows: the tails are filled
