"""KL of lens points to the final distribution, and the tuned lens: each checked against a direct computation
(torch.nn.functional.kl_div, F.layer_norm, explicit sums), an identity, or the shipped files on held-out text."""

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from conftest import ODD, assert_unchanged, random_model, random_tokens, snapshot

import minimech
from minimech import GPTConfig
from minimech.analysis import lens as lens_module
from minimech.analysis.lens import lens_kl, logit_lens
from minimech.analysis.tuned_lens import (TunedLens, TunedLensError, model_sha256, train_tuned_lens, tuned_lens_for,
                                          tuned_lens_path)
from minimech.training.corpus import Corpus, pack_documents

@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: a second torch thread only adds synchronisation, which costs ~20 ms an op on a busy
    machine. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


ATTN_ONLY = GPTConfig(n_layers=2, n_heads=2, d_head=4, d_model=8, n_ctx=12, d_vocab=15, attn_only=True)


def hand_lens(model, tokens, A=None, b=None):
    """[n_points, batch, pos, d_vocab] lens log-probs built from the cached resid_pre / final stream with F.layer_norm;
    A [layer, d_model, d_model] and b [layer, d_model] translate every point but the final one."""
    _, cache = model.run_with_cache(tokens)
    n = model.cfg.n_layers
    points = [cache[f"blocks.{l}.hook_resid_pre"] for l in range(n)] + [cache[f"blocks.{n - 1}.hook_resid_post"]]
    if A is not None:
        points = [x @ A[l] + b[l] for l, x in enumerate(points[:-1])] + points[-1:]
    ln = model.ln_final
    return torch.stack([(F.layer_norm(x, (model.cfg.d_model,), ln.w, ln.b, eps=model.cfg.eps) @ model.W_U
                         + model.b_U).log_softmax(-1) for x in points]).detach()


# ---- KL to the final distribution ----------------------------------------------------------------------------------
@pytest.mark.parametrize("pos", [-1, None])
def test_kl_to_final_matches_torch_kl_div_and_is_zero_at_the_final_point(odd_model, pos):
    result = logit_lens(odd_model, random_tokens(ODD, 2, 7), pos=pos)
    kl = result.kl_to_final()  # [n_points, batch(, pos)]
    final = result.log_probs[-1].expand_as(result.log_probs)
    # F.kl_div(input=log q, target=log p, log_target=True) = p (log p - log q): KL(p || q), p = the final distribution
    expected = F.kl_div(result.log_probs, final, reduction="none", log_target=True).sum(-1)
    assert kl.shape == result.log_probs.shape[:-1]
    torch.testing.assert_close(kl, expected, atol=1e-6, rtol=1e-5)
    assert torch.equal(kl[-1], torch.zeros_like(kl[-1]))  # log p - log p is exactly 0
    assert (kl[:-1] > 0).all()  # random points are not the final distribution, and KL >= 0


def test_lens_kl_is_the_mean_of_explicit_sums_over_every_row_and_position(odd_model, monkeypatch):
    tokens = random_tokens(ODD, 5, 7, seed=2)
    before = snapshot(odd_model)
    lp = hand_lens(odd_model, tokens).double()  # [n_points, batch, pos, d_vocab]
    expected = torch.zeros(3, dtype=torch.float64)
    for point in range(3):
        for row in range(5):
            for pos in range(7):
                p, q = lp[-1, row, pos], lp[point, row, pos]
                expected[point] += sum(p[v].exp() * (p[v] - q[v]) for v in range(ODD.d_vocab)) / 35
    got = lens_kl(odd_model, tokens, batch_size=2)  # chunks of 2, 2, 1 rows
    assert got.shape == (ODD.n_layers + 1,)
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)
    assert got[-1] == 0
    assert_unchanged(odd_model, before)
    # memory bounds (GPT-2's 42.8 GB in one allocation, before): one row a forward, 3 positions' log-probs a chunk
    monkeypatch.setattr(lens_module, "FORWARD_TOKENS", 1)
    monkeypatch.setattr(lens_module, "LOGITS_BYTES", 3 * 3 * ODD.d_vocab * 4)
    torch.testing.assert_close(lens_kl(odd_model, tokens).double(), expected, atol=1e-5, rtol=1e-5)


# ---- the tuned lens ------------------------------------------------------------------------------------------------
def test_an_untrained_tuned_lens_is_the_logit_lens(odd_model):
    tokens = random_tokens(ODD, 2, 7)
    plain = logit_lens(odd_model, tokens, pos=None)
    tuned = TunedLens.for_model(odd_model).lens(odd_model, tokens, pos=None)  # identity translators
    assert tuned.labels == plain.labels
    torch.testing.assert_close(tuned.log_probs, plain.log_probs, atol=0, rtol=0)


@pytest.mark.parametrize("pos", [2, None])
def test_translators_are_x_A_plus_b_read_by_ln_final_and_the_unembedding(odd_model, pos):
    tokens = random_tokens(ODD, 2, 7)
    lens = TunedLens.for_model(odd_model)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        lens.W.copy_(0.3 * torch.randn(lens.W.shape, generator=gen))
        lens.b.copy_(torch.randn(lens.b.shape, generator=gen))
    expected = hand_lens(odd_model, tokens, lens.A.detach(), lens.b.detach())  # [n_points, batch, pos, d_vocab]
    expected = expected if pos is None else expected[:, :, pos]
    got = logit_lens(odd_model, tokens, pos=pos, lens=lens).log_probs
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[-1], odd_model(tokens).log_softmax(-1)[:, pos if pos is not None else slice(None)],
                               atol=1e-5, rtol=0)  # the final point is never translated


def test_training_lowers_held_out_kl_at_every_layer_leaves_the_model_alone_and_is_seeded():
    model = random_model(ATTN_ONLY, seed=4)
    train, heldout = random_tokens(ATTN_ONLY, 64, 12, seed=1), random_tokens(ATTN_ONLY, 32, 12, seed=2)
    before = snapshot(model)
    kwargs = dict(steps=60, batch_size=128, lr=3e-2, tokens=train, heldout=heldout, progress=False)
    lens = train_tuned_lens(model, seed=0, **kwargs)
    assert_unchanged(model, before)
    logit_kl, tuned_kl = lens_kl(model, heldout), lens_kl(model, heldout, lens=lens)  # measured here, not read back
    assert (tuned_kl[:-1] < 0.9 * logit_kl[:-1]).all(), (tuned_kl, logit_kl)
    assert tuned_kl[-1] == 0 and logit_kl[-1] == 0
    figures = lens.info["kl_nats"]
    assert figures["labels"] == ["L0_pre", "L1_pre", "final"]
    torch.testing.assert_close(torch.tensor(figures["tuned_lens"]["heldout"]), tuned_kl, atol=1e-4, rtol=0)
    again, other = train_tuned_lens(model, seed=0, **kwargs), train_tuned_lens(model, seed=1, **kwargs)
    assert torch.equal(again.W, lens.W) and torch.equal(again.b, lens.b)
    assert not torch.equal(other.W, lens.W)


def test_training_in_chunks_of_positions_is_the_same_training(monkeypatch, tmp_path):
    """Each step's gradient accumulated over chunks of positions (so that a GPT-2-sized step stays within a few GB)
    is the gradient of the whole batch: the same lens, and it is saved where save_to says."""
    model = random_model(ATTN_ONLY, seed=4)
    train, heldout = random_tokens(ATTN_ONLY, 16, 12, seed=1), random_tokens(ATTN_ONLY, 8, 12, seed=2)
    kwargs = dict(steps=5, batch_size=40, lr=3e-2, tokens=train, heldout=heldout, progress=False)
    whole = train_tuned_lens(model, seed=0, **kwargs)
    monkeypatch.setattr(lens_module, "LOGITS_BYTES", 7 * 3 * ATTN_ONLY.d_vocab * 4)  # 7 positions a chunk
    chunked = train_tuned_lens(model, seed=0, save_to=tmp_path / "lens.safetensors", **kwargs)
    torch.testing.assert_close(chunked.W, whole.W, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(chunked.b, whole.b, atol=1e-5, rtol=1e-4)
    back = TunedLens.load(tmp_path / "lens.safetensors", model)
    assert torch.equal(back.W, chunked.W) and back.info["kl_nats"] == chunked.info["kl_nats"]


def test_save_load_round_trip_and_refusals(tmp_path, odd_model):
    lens = TunedLens.for_model(odd_model)
    with torch.no_grad():
        lens.W.normal_(generator=torch.Generator().manual_seed(0))
    lens.info = {"kl_nats": {"note": "kept"}}
    path = lens.save(tmp_path / "lens")  # a folder: lens/tuned_lens.safetensors + .json
    back = TunedLens.load(path, odd_model)
    assert torch.equal(back.W, lens.W) and torch.equal(back.b, lens.b) and back.info == lens.info
    assert json.loads(path.with_suffix(".json").read_text())["model_sha256"] == model_sha256(odd_model)

    other_weights = random_model(ODD, seed=9)  # same shapes, other weights
    with pytest.raises(TunedLensError, match="trained for other weights"):
        TunedLens.load(path, other_weights)
    with pytest.raises(TunedLensError, match="2 layers and d_model 11.*train one"):
        TunedLens.load(path, random_model(ATTN_ONLY))
    with pytest.raises(TunedLensError, match="2 layers and d_model 11"):
        logit_lens(random_model(ATTN_ONLY), random_tokens(ATTN_ONLY, 1, 4), lens=lens)
    with pytest.raises(minimech.MinimechError, match="ln='recompute' and incl_mid=False"):
        logit_lens(odd_model, random_tokens(ODD, 1, 4), ln="cached", lens=lens)

    damaged = tmp_path / "damaged"
    shutil.copytree(tmp_path / "lens", damaged)
    data = bytearray((damaged / "tuned_lens.safetensors").read_bytes())
    data[-1] ^= 1
    (damaged / "tuned_lens.safetensors").write_bytes(bytes(data))
    with pytest.raises(TunedLensError, match="damaged or was changed"):
        TunedLens.load(damaged, odd_model)
    (damaged / "tuned_lens.json").unlink()
    with pytest.raises(TunedLensError, match="does not exist.*train_tuned_lens"):
        TunedLens.load(damaged, odd_model)


def test_tuned_lens_for_needs_a_saved_lens(odd_model, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TunedLensError, match="minimech-out/tuned-lens/odd.safetensors does not exist.*train_tuned"):
        tuned_lens_for(odd_model)  # no card: not a shipped model, so the lens lives in ./minimech-out/tuned-lens
    lens = TunedLens.for_model(odd_model)
    lens.save(tuned_lens_path(odd_model))  # where `minimech tuned-lens` saves it
    assert torch.equal(tuned_lens_for(odd_model).W, lens.W)
    odd_model.card = {"name": "not-shipped"}
    monkeypatch.setattr("minimech.loading.weights_dir", lambda: tmp_path)
    with pytest.raises(TunedLensError, match="no tuned lens saved for 'not-shipped'.*minimech tuned-lens"):
        tuned_lens_for(odd_model)


# ---- the shipped translators ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mini-4l", "attn-only-2l"])
def test_shipped_tuned_lens_beats_the_logit_lens_on_held_out_text(name):
    model = minimech.load(name)
    lens = tuned_lens_for(model)
    assert tuned_lens_path(model).parent.name == name and lens.info["model_name"] == name
    # Text the lens never saw: another corpus seed, minus any of its training documents (corpus seed 1000)
    corpus, mix = Corpus(seed=0), model.card["recipe"]["mix"]
    seen = set(corpus.training_documents(800, seed=1_000, mix=mix))
    docs = [d for d in corpus.training_documents(120, seed=77, mix=mix) if d not in seen]
    tokens = pack_documents([model.tokenizer.encode(d) for d in docs], model.cfg.n_ctx, model.tokenizer.eot_id)
    logit_kl, tuned_kl = lens_kl(model, tokens), lens_kl(model, tokens, lens=lens)  # [n_layers + 1]
    assert (tuned_kl[:-1] < logit_kl[:-1]).all(), (tuned_kl, logit_kl)
    assert tuned_kl[-1] == 0 and logit_kl[-1] == 0
    # The figures in the JSON are of the same kind: held-out text of the same distribution gives similar values
    recorded = torch.tensor(lens.info["kl_nats"]["tuned_lens"]["heldout"])
    torch.testing.assert_close(tuned_kl, recorded, atol=0.05, rtol=0.15)
