"""Cross-check against SAELens (the `peers` extra: pip install -e ".[peers]", torch==2.13.0 installed first).

The same SAE weights loaded into sae_lens's StandardSAE / TopKSAE encode and decode alike, and sae_lens's own
evaluation functions (evals.get_sparsity_and_variance_metrics, get_downstream_reconstruction_metrics), run on a
TransformerLens HookedTransformer holding the shipped model's weights, give the figures evaluate_sae gives, with
special tokens excluded on both sides. Skipped without the extra."""

import pytest
import torch

sae_lens = pytest.importorskip("sae_lens")
pytest.importorskip("transformer_lens")

import minimech  # noqa: E402
from minimech.sae import SAEConfig, SparseAutoencoder, evaluate_sae  # noqa: E402

TOL = 1e-5


@pytest.fixture(scope="module")
def models():
    """The default shipped model, and a HookedTransformer holding its weights (minimech's parameter names are
    TransformerLens's)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    ours = minimech.load()
    c = ours.cfg
    tl = HookedTransformer(HookedTransformerConfig(
        n_layers=c.n_layers, d_model=c.d_model, n_ctx=c.n_ctx, n_heads=c.n_heads, d_head=c.d_head, d_mlp=c.d_mlp,
        d_vocab=c.d_vocab, act_fn=c.act_fn, normalization_type="LN", eps=c.eps))
    missing, unexpected = tl.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected and all(k.endswith(("IGNORE", "mask")) for k in missing), (missing, unexpected)
    return ours, tl.eval()


def tokens_of(model, n_docs: int = 24) -> torch.Tensor:
    from minimech.sae.activations import corpus_rows

    return corpus_rows(model, n_docs, seed=123)  # [rows, n_ctx], <|endoftext|> between and after documents


def make(d_in: int, d_sae: int, hook: str, activation: str, k=None):
    ours = SparseAutoencoder(SAEConfig(d_in, d_sae, hook, activation, k), seed=1)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        ours.W_enc.copy_(torch.randn(d_in, d_sae, generator=gen) / d_in ** 0.5)
        ours.b_enc.copy_(0.2 * torch.randn(d_sae, generator=gen) - 0.3)
        ours.b_dec.copy_(0.1 * torch.randn(d_in, generator=gen))
    from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    meta = SAEMetadata(hook_name=hook)
    theirs = (StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=meta)) if activation == "relu" else
              TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, metadata=meta)))
    theirs.load_state_dict({name: p.detach().clone() for name, p in ours.named_parameters()})
    return ours.eval(), theirs.eval()


CASES = [("middle MLP", "relu", None), ("middle MLP", "topk", 12), ("blocks.1.hook_resid_pre", "relu", None)]


def resolve(model, hook: str) -> str:
    from minimech.sae.shipped import default_hook

    return default_hook(model) if hook == "middle MLP" else hook


@pytest.mark.parametrize("hook,activation,k", CASES)
def test_saelens_encodes_and_decodes_alike(models, hook, activation, k):
    model, _ = models
    hook = resolve(model, hook)
    _, cache = model.run_with_cache(tokens_of(model, 8), names=[hook])
    x = cache[hook]
    ours, theirs = make(x.shape[-1], 4 * x.shape[-1], hook, activation, k)
    f = ours.encode(x)
    assert (f > 0).float().mean() > 0.005  # the comparison is not between two zero tensors
    torch.testing.assert_close(f, theirs.encode(x), atol=TOL, rtol=0)
    torch.testing.assert_close(ours.decode(f), theirs.decode(f), atol=TOL, rtol=0)
    torch.testing.assert_close(ours(x), theirs(x), atol=TOL, rtol=0)


@pytest.mark.parametrize("hook,activation,k", CASES[:2] + [("shipped", "relu", None)])
def test_saelens_evals_give_our_metrics(models, hook, activation, k):
    """Random SAEs, and the SAE shipped beside the model (a trained one: CE loss recovered near 1)."""
    from sae_lens.evals import get_downstream_reconstruction_metrics, get_sparsity_and_variance_metrics
    from sae_lens.training.activation_scaler import ActivationScaler

    model, tl = models
    tokens = tokens_of(model)
    if hook == "shipped":
        from minimech.sae.shipped import sae_for

        try:
            ours = sae_for(model)
        except Exception as e:
            pytest.skip(f"no SAE shipped for the default model: {e}")
        _, theirs = make(ours.cfg.d_in, ours.cfg.d_sae, ours.hook, "relu")
        theirs.load_state_dict({name: p.detach().clone() for name, p in ours.named_parameters()})
    else:
        hook = resolve(model, hook)
        width = model.run_with_cache(tokens[:1], names=[hook])[1][hook].shape[-1]
        ours, theirs = make(width, 4 * width, hook, activation, k)

    class Store:  # what sae_lens's eval functions ask of an ActivationsStore
        def get_batch_tokens(self, n):
            return tokens

    special = [model.tokenizer.eot_id]
    got = evaluate_sae(model, ours, tokens, batch_size=len(tokens))
    scalars, per_feature = get_sparsity_and_variance_metrics(
        theirs, tl, Store(), ActivationScaler(), n_batches=1, compute_l2_norms=False, compute_sparsity_metrics=True,
        compute_variance_metrics=True, compute_featurewise_density_statistics=True,
        eval_batch_size_prompts=len(tokens), model_kwargs={}, ignore_tokens=special)
    ce = get_downstream_reconstruction_metrics(theirs, tl, Store(), ActivationScaler(), compute_kl=False,
                                               compute_ce_loss=True, n_batches=1,
                                               eval_batch_size_prompts=len(tokens), ignore_tokens=special)
    assert abs(got.l0 - scalars["l0"]) < TOL
    assert abs(got.explained_variance - scalars["explained_variance"]) < TOL
    assert abs(got.mse - scalars["mse"]) < TOL * max(1.0, scalars["mse"])
    torch.testing.assert_close(got.feature_density, torch.tensor(per_feature["feature_density"]), atol=TOL, rtol=0)
    for name in ("ce_loss_without_sae", "ce_loss_with_sae", "ce_loss_with_ablation", "ce_loss_score"):
        assert abs(getattr(got, name) - ce[name]) < TOL, (name, getattr(got, name), ce[name])
    assert got.l0 > 1 and abs(got.ce_loss_with_ablation - got.ce_loss_without_sae) > 0.1  # not a degenerate case
    if hook == "shipped":
        assert got.ce_loss_score > 0.5
