"""Activation-patching sweeps: minimech's fast path against TransformerLens, nnsight and one-forward-per-patch hooks.

    python benchmarks/patching.py                    # GPT-2 small random weights, 8 prompts x 16 tokens, 2 threads
    python benchmarks/patching.py --shape 4x32 --peers tl,naive --reps 3

The two sweeps of the IOI-style workflow, on the same random GPT-2-small weights (transformers' GPT2LMHeadModel,
torch.manual_seed(0)), clean and corrupted prompts of random tokens, metric = logit difference at the last position
between two random answer tokens per prompt:
  resid   every (layer, position) of blocks.{l}.hook_resid_pre, clean patched into the corrupted run
          (TransformerLens: patching.get_act_patch_resid_pre; 12 x 16 = 192 patched forwards + 1)
  heads   every (layer, head) of hook_z at all positions at once
          (TransformerLens: patching.get_act_patch_attn_head_out_all_pos; 144 patched forwards + 1)
Runners: minimech fast (the default method), minimech naive (method="naive": one hooked forward per patch, the same
work as raw PyTorch hooks), TransformerLens 2.18 (`pip install -e ".[peers]"`; HookedTransformer given the same
weights, no weight processing), nnsight (NNsight around the HF model, one trace per patch). Every runner's grid is
compared with minimech's fast grid (max |difference|). Peers that are not installed are skipped with a note.

Peers are optional and slow: TransformerLens needs ~40 s per sweep here. A script, not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from forward import build_models  # noqa: E402  (the same random GPT-2 small in HF and minimech)


def tl_model(hf):
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights

    c = hf.config
    cfg = HookedTransformerConfig(n_layers=c.n_layer, d_model=c.n_embd, n_ctx=c.n_positions, d_head=c.n_embd // c.n_head,
                                  n_heads=c.n_head, d_mlp=4 * c.n_embd, d_vocab=c.vocab_size, act_fn="gelu_new",
                                  normalization_type="LN", eps=c.layer_norm_epsilon)
    tl = HookedTransformer(cfg)
    tl.load_and_process_state_dict(convert_gpt2_weights(hf, cfg), fold_ln=False, center_writing_weights=False,
                                   center_unembed=False, fold_value_biases=False)
    return tl.eval()


def runners(hf, model, clean, corrupt, metric, wanted: set[str]):
    """{(sweep, runner): fn() -> grid}; peers that cannot be imported are reported and left out."""
    from minimech.analysis import patch_heads, patch_resid

    out = {}
    for method in ("fast", "naive"):
        if method == "fast" or "naive" in wanted:
            out["resid", f"minimech {method}"] = lambda m=method: patch_resid(model, clean, corrupt, metric, method=m)
            out["heads", f"minimech {method}"] = lambda m=method: patch_heads(model, clean, corrupt, metric, method=m)
    if "tl" in wanted:
        try:
            from transformer_lens import patching
            tl = tl_model(hf)
        except ImportError as e:
            print(f"TransformerLens skipped ({e}); install the peers extra")
        else:
            _, tl_cache = tl.run_with_cache(clean)
            out["resid", "TransformerLens"] = lambda: patching.get_act_patch_resid_pre(tl, corrupt, tl_cache, metric)
            out["heads", "TransformerLens"] = lambda: patching.get_act_patch_attn_head_out_all_pos(
                tl, corrupt, tl_cache, metric)
    if "nnsight" in wanted:
        try:
            import nnsight  # noqa: F401
        except ImportError as e:
            print(f"nnsight skipped ({e}); install the peers extra")
        else:
            out.update(nnsight_runners(hf, clean, corrupt, metric))
    return out


def nnsight_runners(hf, clean, corrupt, metric):
    """One nnsight trace per patch, as its tutorials do."""
    from nnsight import NNsight

    net = NNsight(hf)
    n_layers, n_heads = hf.config.n_layer, hf.config.n_head
    d_head = hf.config.n_embd // n_heads

    def clean_acts():
        with torch.no_grad(), net.trace(clean):
            resid = [net.transformer.h[l].input.save() for l in range(n_layers)]
            z = [net.transformer.h[l].attn.c_proj.input.save() for l in range(n_layers)]  # [batch, pos, head*d_head]
        return resid, z

    def resid_sweep():
        resid, _ = clean_acts()
        grid = torch.zeros(n_layers, clean.shape[1])
        for l in range(n_layers):
            for p in range(clean.shape[1]):
                with torch.no_grad(), net.trace(corrupt):
                    net.transformer.h[l].input[:, p] = resid[l][:, p]
                    logits = net.lm_head.output.save()
                grid[l, p] = metric(logits).item()
        return grid

    def heads_sweep():
        _, z = clean_acts()
        grid = torch.zeros(n_layers, n_heads)
        for l in range(n_layers):
            for h in range(n_heads):
                cols = slice(h * d_head, (h + 1) * d_head)
                with torch.no_grad(), net.trace(corrupt):
                    net.transformer.h[l].attn.c_proj.input[:, :, cols] = z[l][:, :, cols]
                    logits = net.lm_head.output.save()
                grid[l, h] = metric(logits).item()
        return grid

    return {("resid", "nnsight"): resid_sweep, ("heads", "nnsight"): heads_sweep}


def work_ratio(cfg, batch: int, pos: int) -> dict[str, float]:
    """Multiply-adds of one-forward-per-patch (TransformerLens) over those of minimech's fast path, per sweep: the
    speed-up an implementation would reach at equal FLOP/s. Counts the matmuls of the blocks and the unembedding
    (attention scores are < 2 % at 16 tokens); the fast path's two set-up forwards (source and target, cached) included."""
    d, L = cfg.d_model, cfg.n_layers
    block = 4 * d * d + (0 if cfg.attn_only else 2 * d * cfg.d_mlp)  # per token: q, k, v, o (+ MLP)
    kv, mlp = 2 * d * d, block - 4 * d * d
    forward = L * block + d * cfg.d_vocab  # per token
    last = lambda n: n * kv + (block - kv)  # the last block: keys/values at n positions, the rest at one
    resid = sum((L - 1 - l) * (pos - p) * block + last(pos - p) for l in range(L) for p in range(pos))
    heads = cfg.n_heads * sum(pos * mlp + max(L - 2 - l, 0) * pos * block + (last(pos) if l < L - 1 else 0)
                              for l in range(L))
    setup = 2 * pos * forward  # the source and target runs (with the caches the sweep reads)
    return {"resid": (L * pos + 1) * pos * forward / (resid + setup),
            "heads": (L * cfg.n_heads + 1) * pos * forward / (heads + setup)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions of each sweep (default 3)")
    parser.add_argument("--shape", default="8x16", help="prompts x tokens (default 8x16)")
    parser.add_argument("--peers", default="tl,nnsight,naive", help="which others to run: tl, nnsight, naive")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from minimech.analysis import logit_diff

    hf, model = build_models(None)
    batch, pos = (int(x) for x in args.shape.lower().split("x"))
    gen = torch.Generator().manual_seed(0)
    clean, corrupt = (torch.randint(0, model.cfg.d_vocab, (batch, pos), generator=gen) for _ in range(2))
    answers = torch.randint(0, model.cfg.d_vocab, (2, batch), generator=gen)
    metric = logit_diff(answers[0], answers[1])
    fns = runners(hf, model, clean, corrupt, metric, set(args.peers.split(",")))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}; "
          f"GPT-2 small random weights, {batch} prompts x {pos} tokens, metric {metric!r}"[:200])
    times = {k: [] for k in fns}
    grids = {}
    for rep in range(args.reps):  # interleaved, so load bursts hit every runner alike
        for key, fn in fns.items():
            start = time.perf_counter()
            grids[key] = fn()
            times[key].append(time.perf_counter() - start)
    bound = work_ratio(model.cfg, batch, pos)
    for sweep in ("resid", "heads"):
        base_key = (sweep, "minimech fast")
        base = statistics.median(times[base_key])
        print(f"\n{sweep} sweep  (grid {tuple(grids[base_key].shape)}; one-forward-per-patch does "
              f"{bound[sweep]:.1f} x the fast path's multiply-adds)")
        for key in [k for k in fns if k[0] == sweep]:
            med = statistics.median(times[key])
            diff = (torch.as_tensor(grids[key]).float() - grids[base_key]).abs().max().item()
            print(f"  {key[1]:<18} {med:8.2f} s   {med / base:6.1f} x minimech fast   max |grid - fast| {diff:.1e}")


if __name__ == "__main__":
    main()
