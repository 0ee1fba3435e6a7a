"""Forward-pass speed of minimech against Hugging Face transformers, on GPT-2-small-sized random weights.

    python benchmarks/forward.py                 # 2 threads, 7 repetitions (+1 warm-up), about 1-2 minutes
    python benchmarks/forward.py --check         # first assert that both give the same logits (< 1e-4)
    python benchmarks/forward.py --threads 8 --reps 15 --shapes 1x128,4x512

Measured, for each input shape [batch x pos]:
  HF         GPT2LMHeadModel(tokens, use_cache=False) under torch.no_grad
  plain      minimech model(tokens) under torch.no_grad (hook points present, no hooks attached)
  bare       the same minimech model with every HookPoint replaced by a plain identity (no hook points at all):
             plain/bare is what the hook points cost when no hook is attached
  cache      minimech model.run_with_cache(tokens): every activation except hook_result
The repetitions are interleaved (round-robin: rep 1 of every measurement, then rep 2, ...), so a burst of load from
another process hits all of them alike; the table shows medians. The cache's memory is the sum of the bytes of every
cached tensor; "distinct" counts each new storage once (resid_post of block l *is* resid_pre of block l + 1) and
leaves out views of the weights (hook_pos_embed is an expanded view of W_pos, not a copy).

run_with_cache asks glibc's malloc to keep freed memory for reuse (minimech/memory.py), which turns on in the warm-up
and then holds for every runner in the process; `MINIMECH_KEEP_FREED_MEMORY=0 python benchmarks/forward.py` measures
with malloc's defaults (each cache then page-faults its memory in afresh).

This is a script, not a test: nothing here runs under pytest.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def parse_shapes(text: str) -> list[tuple[int, int]]:
    shapes = []
    for part in text.split(","):
        batch, pos = part.lower().split("x")
        shapes.append((int(batch), int(pos)))
    return shapes


def build_models(hf_attn: str | None):
    """A random GPT-2 small in transformers (seed 0) and the same weights in minimech."""
    import transformers

    from minimech import GPT, from_hf_config

    torch.manual_seed(0)
    hf_config = transformers.GPT2Config()
    if hf_attn is not None:
        hf_config._attn_implementation = hf_attn
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    cfg = from_hf_config(hf.config.to_dict(), model_name="gpt2-random")
    model = GPT(cfg, seed=None)
    try:
        from minimech.loading import hf_to_minimech
    except ImportError:  # an older loading.py: go through a saved directory instead
        import tempfile

        from minimech.loading import load

        with tempfile.TemporaryDirectory() as tmp:
            hf.save_pretrained(tmp)
            model = load(tmp)
    else:
        model.load_state_dict(hf_to_minimech(hf.state_dict(), cfg))
    return hf, model.eval()


class _Identity:
    """Stands in for a HookPoint in the `bare` model: returns its input, never hooked, not an nn.Module."""
    is_hooked = False

    def __call__(self, x):
        return x


def without_hook_points(model):
    """A deep copy of `model` (sharing nothing) whose every HookPoint attribute is a plain identity."""
    import copy

    from minimech.hooks import HookPoint

    bare = copy.deepcopy(model)
    for module in list(bare.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, HookPoint):
                delattr(module, name)  # drop it from nn.Module's registry, then set a plain attribute
                object.__setattr__(module, name, _Identity())
    return bare


def cache_bytes(cache, model) -> tuple[int, int]:
    """(sum of cached tensor bytes, bytes of the distinct new storages behind them: views of weights not counted)."""
    total = sum(t.numel() * t.element_size() for t in cache.store.values())
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in cache.store.values()}
    return total, sum(n for ptr, n in storages.items() if ptr not in weights)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--reps", type=int, default=7, help="timed repetitions per measurement (default 7)")
    parser.add_argument("--shapes", default="1x128,8x128,1x1024", help="batch x pos, comma separated")
    parser.add_argument("--check", action="store_true", help="assert logits parity (< 1e-4) before timing")
    parser.add_argument("--hf-attn", choices=["sdpa", "eager"], default=None,
                        help="force transformers' attention implementation (default: its own default)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    shapes = parse_shapes(args.shapes)

    import transformers

    t0 = time.perf_counter()
    hf, model = build_models(args.hf_attn)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}, "
          f"HF attention: {hf.config._attn_implementation}, load average {os.getloadavg()[0]:.2f}")
    print(f"GPT-2 small, random weights (torch.manual_seed(0)); built in {time.perf_counter() - t0:.1f} s")

    gen = torch.Generator().manual_seed(0)
    inputs = {s: torch.randint(0, model.cfg.d_vocab, s, generator=gen) for s in shapes}

    if args.check:
        with torch.no_grad():
            for shape, tokens in inputs.items():
                diff = (hf(tokens, use_cache=False).logits - model(tokens)).abs().max().item()
                cached = model.run_with_cache(tokens)[0]
                assert diff < 1e-4, f"logits differ by {diff:.2e} on {shape}"
                # the cache reads the pattern, so attention runs unfused there: equal up to float rounding,
                assert torch.allclose(cached, model(tokens), atol=1e-5), "run_with_cache changed the logits"
                print(f"check {shape[0]}x{shape[1]}: max |logits HF - minimech| = {diff:.1e}")

    memory = {}

    # Each returns what it computed, so that freeing it (and measuring the cache's size) happens outside the timing.
    def run_hf(tokens):
        with torch.no_grad():
            return hf(tokens, use_cache=False)

    def run_plain(tokens):
        with torch.no_grad():
            return model(tokens)

    bare = without_hook_points(model)

    def run_bare(tokens):
        with torch.no_grad():
            return bare(tokens)

    def run_cache(tokens):
        return model.run_with_cache(tokens)

    methods = {"HF": run_hf, "plain": run_plain, "bare": run_bare, "cache": run_cache}
    times = {(s, m): [] for s in shapes for m in methods}
    t0 = time.perf_counter()
    for rep in range(1 + args.reps):  # rep 0 is the warm-up
        for shape in shapes:
            for name, fn in methods.items():
                start = time.perf_counter()
                out = fn(inputs[shape])
                elapsed = time.perf_counter() - start
                if rep > 0:
                    times[shape, name].append(elapsed)
                if name == "cache":
                    memory[shape] = cache_bytes(out[1], model)
                del out
    print(f"timed {args.reps} reps (+1 warm-up), interleaved, in {time.perf_counter() - t0:.1f} s\n")

    header = ["shape", "HF ms", "plain ms", "plain/HF", "plain/bare", "cache ms", "cache/HF", "cache MiB",
              "distinct MiB"]
    rows = []
    for shape in shapes:
        med = {m: statistics.median(times[shape, m]) * 1e3 for m in methods}
        total, distinct = memory[shape]
        rows.append([f"{shape[0]}x{shape[1]}", f"{med['HF']:.1f}", f"{med['plain']:.1f}",
                     f"{med['plain'] / med['HF']:.2f}", f"{med['plain'] / med['bare']:.2f}", f"{med['cache']:.1f}",
                     f"{med['cache'] / med['HF']:.2f}",
                     f"{total / 2**20:.1f}", f"{distinct / 2**20:.1f}"])
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    for row in [header] + rows:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
    print("\nmedians over the reps; ratios > 1 mean slower than HF. cache MiB: sum of the cached tensors' bytes; "
          "distinct MiB: the memory the cache actually holds (shared storage once, views of weights not counted).")


if __name__ == "__main__":
    main()
