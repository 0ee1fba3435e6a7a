"""Sparse autoencoders (minimech.sae), each checked against ground truth computed another way: a per-feature loop,
the formulas written out in float64, a hand-written hook, or an algebraic identity (the error term added back).
The cross-check against SAELens itself is tests/test_sae_peers.py."""

import json
import math
import re

import pytest
import torch

import minimech
from conftest import ODD, assert_unchanged, random_model, random_tokens, snapshot
from minimech.sae import (ActivationStream, SAEConfig, SAEError, SAETrainSettings, SparseAutoencoder,
                          collect_activations, evaluate_sae, train_sae)
from minimech.sae.features import context_diversity, context_kind
from minimech.sae.interventions import splice, steer_feature
from minimech.sae.training import aux_k_loss, fold_input_scale, resample_dead, train_forward

HOOK = "blocks.1.mlp.hook_post"  # ODD: d_mlp 13


def random_sae(d_in: int, d_sae: int, hook: str = HOOK, activation: str = "relu", k=None, seed: int = 0):
    """An SAE whose biases are random too (a trained SAE's are not zero), decoder rows unit norm."""
    sae = SparseAutoencoder(SAEConfig(d_in, d_sae, hook, activation, k), seed=seed)
    gen = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=gen) / d_in ** 0.5)
        sae.b_enc.copy_(0.3 * torch.randn(d_sae, generator=gen))
        sae.b_dec.copy_(0.2 * torch.randn(d_in, generator=gen))
    return sae.eval()


@pytest.fixture(scope="module")
def mini():
    """The default shipped model (its middle MLP is where the shipped SAE and lesson 07 read)."""
    return minimech.load()


def middle(model) -> tuple[str, int, int]:
    """(the middle MLP's hook_post, its layer, d_mlp)."""
    from minimech.sae.shipped import default_hook

    hook = default_hook(model)
    return hook, int(hook.split(".")[1]), model.cfg.d_mlp


# ---- the autoencoder's maths ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("activation,k", [("relu", None), ("topk", 3)])
def test_encode_decode_match_a_per_feature_loop(activation, k):
    sae = random_sae(13, 40, activation=activation, k=k)
    x = torch.randn(2, 3, 13, generator=torch.Generator().manual_seed(1))
    f, x_hat = sae.encode(x), sae(x)
    X = x.double().reshape(-1, 13)
    W_enc, b_enc, b_dec = (p.detach().double() for p in (sae.W_enc, sae.b_enc, sae.b_dec))
    for row in range(len(X)):
        pre = [float((X[row] - b_dec) @ W_enc[:, i] + b_enc[i]) for i in range(40)]
        if activation == "topk":  # keep the k largest pre-activations, then ReLU
            kept = sorted(range(40), key=lambda i: pre[i], reverse=True)[:k]
            want = [max(pre[i], 0.0) if i in kept else 0.0 for i in range(40)]
        else:
            want = [max(p, 0.0) for p in pre]
        torch.testing.assert_close(f.reshape(-1, 40)[row].double(), torch.tensor(want, dtype=torch.float64),
                                   atol=1e-5, rtol=0)
        recon = b_dec + sum(want[i] * sae.W_dec[i].detach().double() for i in range(40))
        torch.testing.assert_close(x_hat.reshape(-1, 13)[row].double(), recon, atol=1e-5, rtol=0)
    if activation == "topk":
        assert int((f != 0).sum(-1).max()) <= k
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(40), atol=1e-6)  # unit-norm dictionary at init


@pytest.mark.parametrize("activation,k,shift", [("relu", None, 0.0), ("relu", None, -2.5), ("topk", 4, 0.0)])
def test_training_forward_is_the_same_maths(activation, k, shift):
    """train_forward (an embedding-bag decoder when few features fire) equals decode(encode(x)), and so do its
    gradients; shift -2 makes the ReLU SAE sparse enough for the embedding bag."""
    sae = random_sae(13, 32, activation=activation, k=k)
    with torch.no_grad():
        sae.b_enc.add_(shift)
    x = torch.randn(64, 13, generator=torch.Generator().manual_seed(2))
    out = train_forward(sae, x)
    torch.testing.assert_close(out.x_hat, sae(x), atol=1e-5, rtol=0)
    assert torch.equal(out.active, sae.encode(x) > 0)
    params = [sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec]
    got = torch.autograd.grad((out.x_hat - x).pow(2).sum() + 0.3 * out.l1, params)
    f = sae.encode(x)
    want = torch.autograd.grad((sae.decode(f) - x).pow(2).sum() + 0.3 * f.sum(-1).mean(), params)
    for name, g, ref in zip(("W_enc", "W_dec", "b_enc", "b_dec"), got, want):
        torch.testing.assert_close(g, ref, atol=1e-4, rtol=1e-4, msg=name)


def test_aux_k_loss_is_saelens_formula_written_densely():
    """AuxK (Gao et al.): the top d_in / 2 pre-activations of dead features reconstruct the residual; SAELens's
    calculate_topk_aux_loss written out with dense tensors, value and gradients."""
    sae = random_sae(12, 40, activation="topk", k=3)
    x = torch.randn(32, 12, generator=torch.Generator().manual_seed(9))
    dead = torch.zeros(40, dtype=torch.bool)
    dead[::3] = True  # 14 dead features, more than d_in / 2 = 6
    out = train_forward(sae, x)
    params = [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec]
    got = aux_k_loss(sae, x, out, dead)
    got_grads = torch.autograd.grad(got, params, allow_unused=True)
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    x_hat = sae(x).detach()
    top = torch.where(dead, pre, -torch.inf).topk(6, dim=-1)
    acts = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
    want = min(14 / 6, 1.0) * ((acts @ sae.W_dec) - (x - x_hat)).pow(2).sum(-1).mean()
    want_grads = torch.autograd.grad(want, params, allow_unused=True)
    assert abs(got.item() - want.item()) < 1e-4 * max(1.0, want.item())
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)


def test_loss_is_squared_error_plus_l1():
    sae = random_sae(13, 20)
    x = torch.randn(16, 13, generator=torch.Generator().manual_seed(3))
    loss, parts = sae.loss(x, l1_coefficient=0.7)
    f, x_hat = sae.encode(x).double(), sae(x).double()
    mse = ((x_hat - x.double()) ** 2).sum(1).mean()
    assert abs(parts["mse"].item() - mse.item()) < 1e-4
    assert abs(parts["l1"].item() - 0.7 * f.abs().sum(1).mean().item()) < 1e-4
    assert abs(loss.item() - parts["mse"].item() - parts["l1"].item()) < 1e-5


def test_decoder_constraint_keeps_unit_norm_and_removes_the_radial_gradient():
    sae = random_sae(13, 20)
    sae.W_dec.grad = torch.randn(20, 13, generator=torch.Generator().manual_seed(4))
    sae.remove_parallel_gradient()
    assert (sae.W_dec.grad * sae.W_dec).sum(-1).abs().max() < 1e-5  # only the tangent part is left
    with torch.no_grad():
        sae.W_dec.mul_(3.0)
    sae.normalize_decoder()
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(20), atol=1e-6)


def test_folding_the_training_scale_gives_the_same_features_on_raw_inputs():
    sae = random_sae(13, 24)
    x = torch.randn(32, 13, generator=torch.Generator().manual_seed(5))
    scale = 3.7
    f_scaled, x_hat_scaled = sae.encode(x * scale), sae(x * scale)
    fold_input_scale(sae, scale)
    torch.testing.assert_close(sae.encode(x), f_scaled / scale, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae(x), x_hat_scaled / scale, atol=1e-5, rtol=1e-5)


def test_resampling_points_dead_features_at_badly_reconstructed_inputs():
    sae = random_sae(13, 10)
    optimizer = torch.optim.Adam(sae.parameters())
    x = torch.randn(50, 13, generator=torch.Generator().manual_seed(6))
    x[7] *= 100  # by far the worst reconstructed input: the one resampling draws
    sae.loss(x)[0].backward()
    optimizer.step()
    dead = torch.zeros(10, dtype=torch.bool)
    dead[[2, 5]] = True
    x_hat = sae(x).detach()
    n = resample_dead(sae, optimizer, x, x_hat, dead, torch.Generator().manual_seed(0))
    assert n == 2
    direction = (x[7] - sae.b_dec) / (x[7] - sae.b_dec).norm()
    for i in (2, 5):
        torch.testing.assert_close(sae.W_dec[i], direction.detach(), atol=1e-4, rtol=0)
        assert sae.b_enc[i] == 0
        assert optimizer.state[sae.W_dec]["exp_avg"][i].abs().max() == 0
        assert optimizer.state[sae.W_enc]["exp_avg_sq"][:, i].abs().max() == 0
    assert optimizer.state[sae.W_dec]["exp_avg"][0].abs().max() > 0  # live features keep their moments


# ---- training --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("activation,k", [("relu", None), ("topk", 3)])
def test_training_reconstructs_and_never_changes_the_model(activation, k):
    model = random_model(ODD, seed=1)
    before = snapshot(model)
    tokens = random_tokens(ODD, 64, 19, seed=2)
    sae = train_sae(model, HOOK, tokens=tokens, training_tokens=120 * 256, batch_size=256, buffer_size=1024,
                    expansion=3, activation=activation, k=k, l1_coefficient=0.5, lr=3e-3, progress=False)
    assert_unchanged(model, before)
    assert sae.model is model and sae.cfg.d_in == 13 and sae.cfg.d_sae == 39
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(39), atol=1e-5)
    metrics = evaluate_sae(model, sae, tokens[:16])
    assert metrics.explained_variance > 0.5, metrics
    history = sae.cfg.training["history"]
    assert history[-1]["mse"] < history[0]["mse"] / 2
    if activation == "topk":
        assert metrics.l0 <= k


def test_sae_text_is_the_models_own_corpus(mini):
    """An SAE reads the text its model was trained on: story-4l's stories (every word in its vocabulary, and the
    kinds of document only that corpus writes), mini-4l's templates."""
    from minimech.sae.activations import corpus_documents, corpus_kind
    from minimech.training.lexicon import TOWN_ENDS, TOWN_STARTS

    story, templates = minimech.load("story-4l"), minimech.load("mini-4l")
    assert (corpus_kind(story), corpus_kind(templates)) == ("stories", "templates")
    documents = corpus_documents(story, 200, seed=11)
    assert story.tokenizer.unk_id is not None
    assert sum(story.tokenizer.encode(d).count(story.tokenizer.unk_id) for d in documents) == 0
    town = re.compile(rf"\b({'|'.join(TOWN_STARTS)})({'|'.join(TOWN_ENDS)})\b")  # made-up towns: stories only
    assert sum(bool(town.search(d)) for d in documents) > 5
    assert not any(town.search(d) for d in corpus_documents(templates, 200, seed=11))


def test_activation_stream_is_bounded_shuffled_and_skips_special_tokens(mini):
    resid = f"blocks.{middle(mini)[1]}.hook_resid_pre"
    stream = ActivationStream(mini, resid, batch_size=512, buffer_size=4096, seed=0)
    batches = [next(stream) for _ in range(12)]
    assert all(b.shape == (512, mini.cfg.d_model) for b in batches)
    assert len(stream.buffer) <= 4096 + stream.chunk_documents * mini.cfg.n_ctx  # memory: a buffer + one chunk
    assert stream.chunk >= 2  # refilled from fresh documents
    rows = torch.tensor([[mini.tokenizer.bos_id] + mini.tokenizer.encode(" Mary went to the park")])
    acts = collect_activations(mini, resid, rows)
    _, cache = mini.run_with_cache(rows, names=[resid])
    torch.testing.assert_close(acts, cache[resid][0, 1:])  # the BOS left out


# ---- metrics ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("where,batch_size,budget_positions", [
    ("mlp", None, None), ("mlp", 1, None), ("mlp", 64, None),  # auto-sized (one batch here), 1 row, more than all
    ("mlp", None, 3), ("mlp", 2, 3),  # a logits budget of 3 positions of one row: the unembedding in chunks
    ("ln_final", None, 3)])  # an SAE after the blocks: its edit applied a chunk of positions at a time
def test_metrics_match_the_formulas_written_out(mini, monkeypatch, where, batch_size, budget_positions):
    """L0, variance explained, CE losses and density from plain tensors, <|endoftext|> positions excluded as SAELens
    excludes special tokens (the prediction made at one, and the activation there is not replaced); the same
    however the rows are batched and the logits chunked, and no logits tensor larger than the budget is made."""
    from minimech.sae import metrics as sae_metrics

    hook, _, d_mlp = middle(mini)
    if where == "ln_final":
        hook, d_mlp = "ln_final.hook_normalized", mini.cfg.d_model
    sae = random_sae(d_mlp, 300, hook=hook, seed=3)
    with torch.no_grad():
        sae.b_enc.sub_(1.0)  # sparse-ish
    eot = mini.tokenizer.eot_id
    docs = [" Mary gave a book to John.", " France's capital is Paris.", " The dog ran to the park and sat."]
    rows = [[eot] + mini.tokenizer.encode(d) for d in docs]
    width = max(map(len, rows)) + 2
    tokens = torch.tensor([r + [eot] * (width - len(r)) for r in rows])  # padded with <|endoftext|>
    if budget_positions:
        monkeypatch.setattr(sae_metrics, "LOGITS_BUDGET", budget_positions * mini.cfg.d_vocab * 4)
    budget, sizes = sae_metrics.LOGITS_BUDGET, []
    handle = mini.unembed.register_forward_hook(lambda module, args, out: sizes.append(out.numel() * 4))
    try:
        got = evaluate_sae(mini, sae, tokens, batch_size=batch_size)
    finally:
        handle.remove()
    assert max(sizes) <= budget, (max(sizes), budget)
    assert len(sizes) >= 3 * (len(tokens) if batch_size == 1 or budget_positions else 1)  # 3 runs per batch/chunk

    logits, cache = mini.run_with_cache(tokens, names=[hook])
    keep = tokens != eot
    x = cache[hook][keep].double()
    f = sae.encode(x.float()).double()
    x_hat = sae(x.float()).double()
    variance = (x - x.mean(0)).pow(2).sum(1).mean()
    assert abs(got.l0 - (f > 0).sum(1).double().mean().item()) < 1e-6
    assert abs(got.explained_variance - (1 - (x - x_hat).pow(2).sum(1).mean() / variance).item()) < 1e-5
    torch.testing.assert_close(got.feature_density.double(), (f > 0).double().mean(0), atol=1e-6, rtol=0)

    def nll(out):  # mean next-token loss over predictions made at non-special positions
        lp = out[:, :-1].log_softmax(-1).gather(-1, tokens[:, 1:, None])[..., 0]
        return -lp[keep[:, :-1]].double().mean().item()

    def replace(act, hook_point):
        new = sae(act)
        return torch.where(keep[..., None], new, act)

    with mini.hooks([(hook, replace)]):
        with_sae = nll(mini(tokens))
    with mini.hooks([(hook, lambda act, hp: torch.zeros_like(act))]):
        ablated = nll(mini(tokens))
    clean = nll(logits)
    for name, want in (("ce_loss_without_sae", clean), ("ce_loss_with_sae", with_sae),
                       ("ce_loss_with_ablation", ablated)):
        assert abs(getattr(got, name) - want) < 1e-5, name
    assert abs(got.ce_loss_score - (ablated - with_sae) / (ablated - clean)) < 1e-5
    assert math.isclose(got.dead_fraction, (f.sum(0) == 0).double().mean().item(), abs_tol=1e-6)
    assert got.tokens == int(keep.sum())


# ---- interventions: the error term -------------------------------------------------------------------------------

@pytest.mark.parametrize("hook", [HOOK, "blocks.0.hook_resid_pre", "blocks.1.attn.hook_z"])
def test_spliced_forward_with_the_error_term_equals_the_clean_forward(hook):
    model = random_model(ODD, seed=4)
    width = {"blocks.1.attn.hook_z": 15, "blocks.0.hook_resid_pre": 11}.get(hook, 13)
    sae = random_sae(width, 30, hook=hook, seed=5)
    tokens = random_tokens(ODD, 2, 7, seed=6)
    clean = model(tokens)
    with splice(model, sae):
        spliced = model(tokens)
    torch.testing.assert_close(spliced, clean, atol=1e-5, rtol=0)
    # the same identity written out: decode(f) + (x - decode(f)) in float64, as a plain hook
    def error_term(act, hook_point):
        x = act.flatten(2).double()
        W_enc, b_enc, W_dec, b_dec = (p.double() for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec))
        f = torch.relu((x - b_dec) @ W_enc + b_enc)
        return ((f @ W_dec + b_dec) + (x - (f @ W_dec + b_dec))).float().reshape(act.shape)
    with model.hooks([(hook, error_term)]):
        torch.testing.assert_close(model(tokens), clean, atol=1e-5, rtol=0)


def test_a_feature_ablation_acts_only_through_its_decoder_direction():
    model = random_model(ODD, seed=4)
    sae = random_sae(13, 30, seed=5)
    tokens = random_tokens(ODD, 2, 7, seed=6)
    _, cache = model.run_with_cache(tokens, names=[HOOK])
    f = sae.encode(cache[HOOK])  # [batch, pos, d_sae]
    feature = int((f > 0).sum((0, 1)).argmax())  # one that fires somewhere
    seen = {}
    with model.hooks([(HOOK, lambda act, hp: seen.__setitem__("before", act.clone()))]):
        with splice(model, sae, ablate=[feature]):
            with model.hooks([(HOOK, lambda act, hp: seen.__setitem__("after", act.clone()))]):
                ablated = model(tokens)
    change = seen["after"] - seen["before"]  # [batch, pos, d_in]
    torch.testing.assert_close(change, -f[..., feature, None] * sae.W_dec[feature].detach(), atol=1e-5, rtol=0)
    # ... and the whole forward equals one in which that change is written by hand
    direction = sae.W_dec[feature].detach()
    with model.hooks([(HOOK, lambda act, hp: act - sae.encode(act)[..., feature, None] * direction)]):
        torch.testing.assert_close(ablated, model(tokens), atol=1e-5, rtol=0)


def test_clamp_scale_positions_and_steering():
    model = random_model(ODD, seed=4)
    sae = random_sae(13, 30, seed=5)
    tokens = random_tokens(ODD, 2, 7, seed=6)
    _, cache = model.run_with_cache(tokens, names=[HOOK])
    x = cache[HOOK]
    f = sae.encode(x)
    W = sae.W_dec.detach()
    seen = {}
    record = [(HOOK, lambda act, hp: seen.__setitem__("x", act.clone()))]
    with splice(model, sae, clamp={3: 2.5}, scale={4: 0.0}, positions=[-1]):
        with model.hooks(record):
            model(tokens)
    want = x.clone()
    want[:, -1] += (2.5 - f[:, -1, 3, None]) * W[3] - f[:, -1, 4, None] * W[4]
    torch.testing.assert_close(seen["x"], want, atol=1e-5, rtol=0)
    with steer_feature(model, sae, 3, 4.0, positions=slice(2, 4)):
        with model.hooks(record):
            model(tokens)
    want = x.clone()
    want[:, 2:4] += 4.0 * W[3]
    torch.testing.assert_close(seen["x"], want, atol=1e-6, rtol=0)


# ---- features ----------------------------------------------------------------------------------------------------

def test_feature_views_read_the_weights_and_the_unembedding(mini):
    hook, layer, d_mlp = middle(mini)
    sae = random_sae(d_mlp, 64, hook=hook, seed=8).bind(mini)
    feature = sae.features[5]
    assert torch.equal(feature.encoder, sae.W_enc[:, 5]) and torch.equal(feature.decoder, sae.W_dec[5])
    want = (sae.W_dec[5] @ mini.blocks[layer].mlp.W_out) @ mini.W_U  # through W_out, then the unembedding
    torch.testing.assert_close(feature.logits(), want.detach(), atol=1e-5, rtol=0)
    top = feature.top_tokens(3)
    assert [v for _, v in top] == sorted(want.topk(3).values.tolist(), reverse=True)
    tokens = mini.to_tokens("France's capital is Paris")
    _, cache = mini.run_with_cache(tokens, names=[hook])
    torch.testing.assert_close(feature.activation(cache), sae.encode(cache[hook])[..., 5])
    assert len(sae.features) == 64 and sae.features[-1].index == 63
    assert [f.index for f in sae.features[2:5]] == [2, 3, 4]
    with pytest.raises(IndexError, match="has 64 features"):
        sae.features[64]
    with pytest.raises(SAEError, match="the cache has no"):
        feature.activation(mini.run_with_cache(tokens, names=["blocks.0.hook_resid_pre"])[1])


def test_top_contexts_are_the_largest_activations_of_plain_forwards(mini):
    hook, _, d_mlp = middle(mini)
    sae = random_sae(d_mlp, 64, hook=hook, seed=8).bind(mini)
    feature = sae.features[11]
    contexts = feature.top_contexts(3, n_documents=40)
    from minimech.sae.features import document_tokens

    tokens, real = document_tokens(mini, 40)
    best = []
    for row in range(len(tokens)):  # each document on its own, as text
        n = int(real[row].sum())
        _, cache = mini.run_with_cache(tokens[row:row + 1, :n], names=[hook])
        acts = sae.encode(cache[hook])[0, 1:, 11]  # the BOS left out
        best += [(float(a), row, p + 1) for p, a in enumerate(acts.tolist())]
    best.sort(reverse=True)
    assert [(c.document, c.position) for c in contexts] == [(r, p) for _, r, p in best[:3]]
    assert abs(contexts[0].activation - best[0][0]) < 1e-5
    assert f"[[{contexts[0].token}]]" in contexts[0].marked()


def test_context_kinds_and_diversity(mini):
    assert context_kind(" Mary") == "name" and context_kind(" Paris") == "capital"
    assert context_kind(" France") == "country" and context_kind(" to") == "' to'"
    # the story corpus's word lists (story-4l): words the templates never used get their class there only
    assert context_kind(" Tuesday") == "' Tuesday'" and context_kind(" Tuesday", "stories") == "time"
    assert context_kind(" Lisbon", "stories") == "capital" and context_kind(" violin", "stories") == "object"
    with pytest.raises(SAEError, match="corpus must be"):
        context_kind(" Mary", "wikipedia")
    neuron = context_diversity(mini.blocks[middle(mini)[1]].mlp.memories[7], top=10, n_documents=40)
    n = sum(neuron.kinds.values())
    assert 1 <= n <= 10  # the top 10 positions where it fires (a GELU neuron may fire positively on fewer)
    shares = [c / n for c in neuron.kinds.values()]
    assert math.isclose(neuron.effective, math.exp(-sum(p * math.log(p) for p in shares)))
    assert 1 <= neuron.effective <= neuron.distinct


# ---- files and errors ------------------------------------------------------------------------------------------------

def test_save_load_round_trip_and_damaged_or_foreign_files(tmp_path, mini):
    hook, _, d_mlp = middle(mini)
    sae = random_sae(d_mlp, 64, hook=hook, activation="topk", k=5, seed=9)
    from minimech.analysis.tuned_lens import model_sha256

    sae.cfg.model_sha256, sae.cfg.metrics = model_sha256(mini), {"l0": 5.0}
    sae.feature_density.copy_(torch.linspace(0, 1, 64))
    sae.save(tmp_path / "s")
    back = SparseAutoencoder.load(tmp_path / "s", mini)
    for name, p in sae.named_parameters():
        assert torch.equal(p, getattr(back, name)), name
    assert back.cfg == sae.cfg and torch.equal(back.feature_density, sae.feature_density)
    assert back.model is mini
    x = torch.randn(4, d_mlp)
    assert torch.equal(back.encode(x), sae.encode(x))

    other = random_model(ODD)
    with pytest.raises(SAEError, match="trained on other weights"):
        SparseAutoencoder.load(tmp_path / "s", minimech.load("attn-only-2l"))
    with pytest.raises(Exception, match="no hook point named"):
        SparseAutoencoder.load(tmp_path / "s").bind(other)
    meta = json.loads((tmp_path / "s" / "sae.json").read_text())
    weights = (tmp_path / "s" / "sae.safetensors").read_bytes()
    (tmp_path / "s" / "sae.safetensors").write_bytes(weights[:-4] + b"\0\0\0\0")
    with pytest.raises(SAEError, match="damaged or was changed"):
        SparseAutoencoder.load(tmp_path / "s")
    with pytest.raises(SAEError, match="does not exist"):
        SparseAutoencoder.load(tmp_path / "nothing")
    (tmp_path / "s" / "sae.json").write_text(json.dumps({**meta, "format": "other"}))
    with pytest.raises(SAEError, match="not an SAE config"):
        SparseAutoencoder.load(tmp_path / "s")


def test_bad_inputs_get_one_clear_error(mini):
    sae = random_sae(13, 20)
    with pytest.raises(SAEError, match="d_in=13"):
        sae.encode(torch.randn(3, 12))
    with pytest.raises(SAEError, match="d_sae=20"):
        sae.decode(torch.randn(3, 19))
    with pytest.raises(SAEError, match="needs k between 1 and d_sae"):
        SAEConfig(13, 20, HOOK, "topk")
    with pytest.raises(SAEError, match="choose 'relu'"):
        SAEConfig(13, 20, HOOK, "gelu")
    with pytest.raises(SAEError, match="needs k"):
        train_sae(mini, middle(mini)[0], activation="topk")
    with pytest.raises(SAEError, match="attention patterns"):
        train_sae(mini, "blocks.1.attn.hook_pattern")
    with pytest.raises(Exception, match="did you mean"):
        train_sae(mini, middle(mini)[0].replace("post", "psot"))
    with pytest.raises(SAEError, match="less than one batch"):
        SAETrainSettings(training_tokens=100, batch_size=4096)
    model = random_model(ODD)
    sae = random_sae(13, 20)
    with pytest.raises(SAEError, match="not a feature index"):
        with splice(model, sae, ablate=[20]):
            pass
    with pytest.raises(SAEError, match="outside the prompt"):
        with splice(model, sae, ablate=[1], positions=[9]):
            model(random_tokens(ODD, 1, 5))
    with pytest.raises(SAEError, match="bound to no model"):
        sae.features[0].top_tokens()
    with pytest.raises(SAEError, match="no linear path"):
        random_sae(13, 20, hook="blocks.1.mlp.hook_pre").bind(model).features[0].logits()


# ---- the shipped SAEs and the command line -------------------------------------------------------------------------

SHIPPED = sorted((minimech.loading.weights_dir()).glob("*/sae-*/sae.json"))


@pytest.mark.parametrize("card", SHIPPED, ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}")
def test_shipped_sae_card_figures_are_what_evaluate_sae_measures(card):
    """Every SAE shipped beside a shipped model: it loads with its model (sha256 checked) and its card's metrics
    are what evaluate_sae measures now on the held-out eval documents."""
    from minimech.sae.shipped import sae_for

    model = minimech.load(card.parent.parent.name)
    sae = sae_for(model, json.loads(card.read_text())["hook"])
    metrics = evaluate_sae(model, sae).scalars()
    for name, value in sae.cfg.metrics.items():
        if name in metrics:
            assert math.isclose(metrics[name], value, rel_tol=1e-4, abs_tol=1e-5), (name, metrics[name], value)
    assert not torch.isnan(sae.feature_density).any()


def test_cli_sae_feature_eval_and_errors(tmp_path, capsys):
    from minimech.cli import main

    from minimech.analysis.tuned_lens import model_sha256

    model = minimech.load("attn-only-2l")
    sae = random_sae(model.cfg.d_model, 128, hook="blocks.1.hook_resid_pre", seed=3)
    sae.cfg.model_name, sae.cfg.model_sha256 = "attn-only-2l", model_sha256(model)
    sae.save(tmp_path / "s")
    assert main(["sae", "feature", str(tmp_path / "s"), "7", "--out", str(tmp_path / "f.png")]) == 0
    out = capsys.readouterr().out
    assert "Feature F7" in out and "[[" in out and (tmp_path / "f.png").stat().st_size > 10_000
    assert main(["sae", "feature", str(tmp_path / "s"), "128"]) == 1
    assert "this SAE has 128" in capsys.readouterr().err
    assert main(["sae", "train", "--kind", "topk", "--out", str(tmp_path / "t")]) == 1
    assert "needs -k" in capsys.readouterr().err
    assert main(["sae", "train"]) == 1
    assert "--out DIR, or --ship" in capsys.readouterr().err
    assert main(["sae", "eval"]) == 1
    assert "needs the SAE's folder" in capsys.readouterr().err
