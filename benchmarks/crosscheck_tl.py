"""Cross-check minimech against TransformerLens 2.18 on the same random GPT-2 weights (needs the `peers` extra).

    pip install -e ".[peers]"        # with torch==2.13.0 installed first; see ../shared/PEERS.md
    python benchmarks/crosscheck_tl.py [--layers 4 --d-model 128 --heads 4 --vocab 2000 --pos 24]

One random transformers.GPT2LMHeadModel is handed to both libraries (TransformerLens without weight processing, so
raw activations are comparable name by name). Printed, as max |difference|:
  logits and log-probs; every activation both caches hold under the same hook name; the logit lens (accumulated
  residual stream through ln_final and W_U, as log-probs); per-head results; direct logit attribution per head
  (TL: cache.stack_head_results + apply_ln_to_stack); previous-token and induction scores (ARENA's diagonal formulas
  on TL's patterns of repeated random tokens; TL's head_detector needs a tokenizer), our detector_scores; the two patching sweeps (TL's patching module
  against minimech's fast path). Each line says whether it is within 1e-4. A script, not a test.
"""

from __future__ import annotations

import argparse

import torch


def build(args):
    import transformers
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights

    from minimech import GPT, from_hf_config
    from minimech.loading import hf_to_minimech

    torch.manual_seed(args.seed)
    hf_cfg = transformers.GPT2Config(n_layer=args.layers, n_embd=args.d_model, n_head=args.heads,
                                     vocab_size=args.vocab, n_positions=128)
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    cfg = from_hf_config(hf.config.to_dict(), model_name="random")
    ours = GPT(cfg, seed=None)
    ours.load_state_dict(hf_to_minimech(hf.state_dict(), cfg))
    tl_cfg = HookedTransformerConfig(n_layers=args.layers, d_model=args.d_model, n_ctx=128, n_heads=args.heads,
                                     d_head=args.d_model // args.heads, d_mlp=4 * args.d_model, d_vocab=args.vocab,
                                     act_fn="gelu_new", normalization_type="LN", eps=hf_cfg.layer_norm_epsilon)
    tl = HookedTransformer(tl_cfg)
    tl.load_and_process_state_dict(convert_gpt2_weights(hf, tl_cfg), fold_ln=False, center_writing_weights=False,
                                   center_unembed=False, fold_value_biases=False)
    tl.set_use_attn_result(True)
    return ours.eval(), tl.eval()


def report(name: str, diff: float, tol: float = 1e-4) -> bool:
    ok = diff <= tol
    print(f"  {'ok ' if ok else 'BAD'}  {name:<48} max |diff| {diff:.2e}")
    return ok


@torch.no_grad()
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=2000)
    parser.add_argument("--pos", type=int, default=24)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from transformer_lens import patching

    from minimech.analysis import detector_scores, logit_diff, logit_lens, patch_heads, patch_resid

    ours, tl = build(args)
    L, H = args.layers, args.heads
    gen = torch.Generator().manual_seed(args.seed)
    tokens = torch.randint(0, args.vocab, (args.batch, args.pos), generator=gen)
    results = []
    print(f"random GPT-2 config: {L} layers, {H} heads, d_model {args.d_model}, vocab {args.vocab}; "
          f"tokens {args.batch} x {args.pos}")

    logits, cache = ours.run_with_cache(tokens, names=lambda n: "hook_result" not in n)
    tl_logits, tl_cache = tl.run_with_cache(tokens)
    results.append(report("logits", (logits - tl_logits).abs().max().item()))
    results.append(report("log-probs", (logits.log_softmax(-1) - tl_logits.log_softmax(-1)).abs().max().item()))
    shared = [n for n in cache.keys() if n in tl_cache.cache_dict]
    worst = max(shared, key=lambda n: (cache[n] - tl_cache[n]).abs().max().item())
    results.append(report(f"{len(shared)} cached activations (worst: {worst})",
                          (cache[worst] - tl_cache[worst]).abs().max().item()))

    lens = logit_lens(ours, tokens, pos=None)  # log_probs [n_points, batch, pos, d_vocab]
    acc, labels = tl_cache.accumulated_resid(apply_ln=True, return_labels=True)  # [n_points, batch, pos, d_model]
    tl_lens = (acc @ tl.W_U + tl.b_U).log_softmax(-1)
    results.append(report(f"logit lens ({len(labels)} points, log-probs)", (lens.log_probs - tl_lens).abs().max().item()))

    from minimech.analysis import attribution_hooks, direct_logit_attribution
    _, cache_r = ours.run_with_cache(tokens, names=attribution_hooks(ours) + [f"blocks.{l}.attn.hook_result"
                                                                           for l in range(L)])
    ours_heads = torch.stack([cache_r[f"blocks.{l}.attn.hook_result"] for l in range(L)])  # [L, batch, pos, H, d]
    tl_heads = torch.stack([tl_cache[f"blocks.{l}.attn.hook_result"] for l in range(L)])
    results.append(report("per-head results (hook_result)", (ours_heads - tl_heads).abs().max().item()))

    correct, wrong = tokens[:, -1], tokens[:, 0]
    attr = direct_logit_attribution(ours, cache_r, correct, wrong).by_head()  # [L, H]
    stack, _ = tl_cache.stack_head_results(layer=-1, pos_slice=-1, return_labels=True)  # [L*H, batch, d_model]
    stack = tl_cache.apply_ln_to_stack(stack, layer=-1, pos_slice=-1)
    direction = (tl.W_U[:, correct] - tl.W_U[:, wrong]).T  # [batch, d_model]
    tl_attr = (stack * direction).sum(-1).mean(-1).view(L, H)
    results.append(report("direct logit attribution per head", (attr - tl_attr).abs().max().item()))

    half = (args.pos - 1) // 2
    rep = torch.randint(0, args.vocab, (1, half), generator=gen)
    rep_tokens = torch.cat([torch.zeros(1, 1, dtype=torch.long), rep, rep], dim=1)
    ours_scores = detector_scores(ours, rep_tokens)
    # TL's head_detector needs a tokenizer; use ARENA's diagonal formulas on TL's own patterns instead
    _, tl_rep = tl.run_with_cache(rep_tokens)
    tl_pattern = torch.stack([tl_rep[f"blocks.{l}.attn.hook_pattern"][0] for l in range(L)])  # [L, H, q, k]
    tl_prev = tl_pattern.diagonal(-1, dim1=-2, dim2=-1)[..., 1:].mean(-1)  # [L, H]; BOS is never a target
    tl_induction = tl_pattern.diagonal(-(half - 1), dim1=-2, dim2=-1)[..., -half:].mean(-1)
    for kind, tl_scores in (("previous_token", tl_prev), ("induction", tl_induction)):
        diff = (ours_scores[kind] - tl_scores).abs().max().item()
        results.append(report(f"{kind} scores vs ARENA's formula on TL's patterns", diff))
    clean, corrupt = tokens, tokens.clone()
    corrupt[:, args.pos // 3] = (corrupt[:, args.pos // 3] + 1) % args.vocab
    metric = logit_diff(correct, wrong)
    _, tl_clean_cache = tl.run_with_cache(clean)
    tl_grid = patching.get_act_patch_resid_pre(tl, corrupt, tl_clean_cache, metric)
    results.append(report("patch_resid (resid_pre) grid", (patch_resid(ours, clean, corrupt, metric) - tl_grid)
                          .abs().max().item()))
    tl_grid = patching.get_act_patch_attn_head_out_all_pos(tl, corrupt, tl_clean_cache, metric)
    results.append(report("patch_heads (all positions) grid", (patch_heads(ours, clean, corrupt, metric) - tl_grid)
                          .abs().max().item()))
    print(f"{sum(results)} of {len(results)} within tolerance")
    return 0 if all(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
