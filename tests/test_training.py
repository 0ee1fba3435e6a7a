"""The training loop and recipes: deterministic, the loss falls, the card records what a reader needs, and the
saved model loads back. (The full recipes take minutes; weights/README.md gives their figures and wall times.)"""

import json
import math

import pytest
import torch

import minimech
from minimech.cli import main
from minimech.errors import MinimechError
from minimech.training.recipes import RECIPES, build_data, get, train_recipe
from minimech.training.train import TrainSettings


@pytest.fixture(scope="module")
def short_run():
    torch.set_num_threads(1)  # determinism across runs does not depend on it, but speed on a busy CI machine does
    return train_recipe("attn-only-2l", steps=120, seed=3, progress=False, eval_every=40)


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    s = TrainSettings(steps=1000, lr=1e-3, warmup=100, min_lr_ratio=0.1)
    assert s.lr_at(0) == pytest.approx(1e-5) and s.lr_at(99) == pytest.approx(1e-3)
    assert s.lr_at(550) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5))))
    assert s.lr_at(999) == pytest.approx(1e-4, rel=1e-3)
    assert all(s.lr_at(i) >= s.lr_at(i + 1) for i in range(100, 999))


def test_short_run_learns_and_card_records_it(short_run):
    model, card = short_run
    history = card["history"]
    assert history[-1]["loss"] < history[0]["loss"] - 0.3  # falls from ~ln(d_vocab)
    assert history[0]["loss"] < math.log(model.cfg.d_vocab) + 0.5
    for key in ("recipe", "corpus", "training", "history", "metrics", "mechanisms", "n_params"):
        assert key in card
    assert card["recipe"]["seed"] == 3 and card["training"]["steps"] == 120
    assert card["training"]["torch"] == torch.__version__
    assert set(card["metrics"]) >= {"induction_best", "prev_token_best_L0", "icl_loss_ratio"}
    assert card["mechanisms"]["induction"]["scores"]["induction"]  # a [layer][head] table


def test_same_seed_same_model(short_run):
    again, _ = train_recipe("attn-only-2l", steps=120, seed=3, progress=False, eval_every=40)
    model, _ = short_run
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_saved_card_loads_back(short_run, tmp_path):
    model, card = short_run
    minimech.save(model, tmp_path / "m", card_extra=card)
    loaded = minimech.load(tmp_path / "m")
    assert loaded.card["history"] == json.loads(json.dumps(card["history"]))
    tokens = loaded.to_tokens("When Mary and John went to the store, John gave a drink to")
    assert torch.allclose(loaded(tokens), model(tokens), atol=1e-6)


def test_build_data_rows_start_with_bos_and_use_the_compact_vocab():
    data, tokenizer, corpus = build_data(get("attn-only-2l"), seed=0)
    assert data.shape[1] == get("attn-only-2l").config["n_ctx"]
    assert (data[:, 0] == tokenizer.bos_id).all()
    assert int(data.max()) < tokenizer.n_vocab and not (data == tokenizer.unk_id).any()
    held = torch.tensor([tokenizer.to_single_token(" " + n.strip()) for n in corpus.names_heldout])
    # No IOI sentence uses a held-out name (tests/test_corpus.py); the stories and the chunks of random tokens do.
    assert torch.isin(data, held).any()


def test_unknown_recipe_and_bad_steps_are_one_line_errors(capsys):
    with pytest.raises(MinimechError, match="unknown recipe 'nope': choose one of"):
        get("nope")
    assert main(["train", "nope"]) == 1 and "unknown recipe" in capsys.readouterr().err
    assert main(["train", "attn-only-2l", "--steps", "0"]) == 1
    assert "--steps must be at least 1" in capsys.readouterr().err
    assert set(RECIPES) >= {"attn-only-2l", "mini-4l"}


def test_randomise_names_is_consistent_within_a_document_and_never_uses_held_out_names():
    import random as random_module

    from minimech.tokenizer import Tokenizer, load_encoding
    from minimech.training.corpus import Corpus, build_vocab
    from minimech.training.recipes import randomise_names

    corpus = Corpus(seed=0)
    tok = Tokenizer(build_vocab(corpus.vocab_texts(), load_encoding()))
    pairs = corpus.generate(400, seed=5, mix={"ioi": 0.5, "narrative": 0.5})
    docs = [tok.encode(d) for d, _ in pairs]
    kinds = [m["kind"] for _, m in pairs]
    out = randomise_names(docs, kinds, corpus, tok, fraction=1.0, seed=0)
    names = {tok.to_single_token(" " + n) for n in corpus.names_train}
    held = {tok.to_single_token(" " + n) for n in corpus.names_heldout}
    changed = 0
    for before, after, kind in zip(docs, out, kinds):
        assert len(before) == len(after) and not (set(after) - set(before)) & held
        if kind != "ioi":
            assert before == after
            continue
        mapping = {}
        for b, a in zip(before, after):
            if b in names:
                assert mapping.setdefault(b, a) == a  # one name, one replacement throughout the document
            else:
                assert a == b
        changed += any(b != a for b, a in zip(before, after))
    assert changed > 100
    assert randomise_names(docs, kinds, corpus, tok, fraction=0.0, seed=0) == docs


def test_tied_training_keeps_w_u_equal_to_w_e_transposed_and_leaves_a_plain_parameter():
    from minimech import GPT, GPTConfig
    from minimech.training.train import train

    model = GPT(GPTConfig(n_layers=1, d_model=16, n_heads=2, n_ctx=12, d_vocab=30), seed=0)
    keys = list(model.state_dict())
    data = torch.randint(0, 30, (64, 12), generator=torch.Generator().manual_seed(0))
    train(model, data, TrainSettings(steps=15, batch_size=8, eval_every=5, tie_embeddings=True), progress=False)
    assert sorted(model.state_dict()) == sorted(keys) and isinstance(model.unembed.W_U, torch.nn.Parameter)
    assert torch.equal(model.unembed.W_U, model.embed.W_E.T)
    assert not torch.equal(model.embed.W_E, GPT(model.cfg, seed=0).embed.W_E)  # it did train
