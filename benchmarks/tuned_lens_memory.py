"""Peak memory and time of training a tuned lens on a GPT-2-small-shaped model (random weights, nothing downloaded).

    python benchmarks/tuned_lens_memory.py [--steps 2] [--docs 20] [--threads 2] [--no-figures]

Each measurement runs in a fresh child process and reports its peak resident memory (ru_maxrss) and wall time:
  model        building the model alone (the baseline every other line includes)
  chunked      train_tuned_lens as `minimech tuned-lens` runs it: residual streams collected FORWARD_TOKENS tokens a
               forward without logits, each step's log-probs LOGITS_BYTES at a time (gradient accumulated), the KL
               figures likewise
  one-shot     the same code with its chunking switched off (LOGITS_BYTES and FORWARD_TOKENS made huge), as the code
               was before (which also cached every residual hook and the logits of 32 rows of 1,024 tokens at once);
               its KL figures are skipped: lens_kl on 16 rows of 1,024 tokens asked for 16 x 1024 x 13 x 50,257 x 4
               bytes = 42.8 GB at once and cannot run here
--no-figures skips the KL figures in every mode (for --docs 800, the default training text, whose figures take long)
A script, not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""
    import json, resource, sys, time
    import torch
    args = json.loads(sys.argv[1])
    torch.set_num_threads(args["threads"])
    import minimech
    from minimech.analysis import lens as lens_module
    from minimech.analysis import tuned_lens
    from minimech.tokenizer import Tokenizer
    start = time.perf_counter()
    model = minimech.GPT(minimech.PRESETS["gpt2"], tokenizer=Tokenizer()).eval()
    figures = {}
    if args["mode"] != "model":
        if args["mode"] == "one-shot":
            lens_module.LOGITS_BYTES = lens_module.FORWARD_TOKENS = 2**62
        if args["mode"] == "one-shot" or not args["figures"]:
            tuned_lens._kl_figures = lambda *a, **k: {}
        else:
            kl_figures = tuned_lens._kl_figures

            def timed(*a, **k):
                t = time.perf_counter()
                out = kl_figures(*a, **k)
                figures["kl_figures_s"] = round(time.perf_counter() - t, 1)
                return out
            tuned_lens._kl_figures = timed
        train, heldout = tuned_lens.lens_data(model, 0, args["docs"], max(1, args["docs"] // 2))
        figures["train_tokens"] = train.numel()
        t = time.perf_counter()
        tuned_lens.train_tuned_lens(model, steps=args["steps"], tokens=train, heldout=heldout, progress=False)
        figures["train_s"] = round(time.perf_counter() - t, 1)
    figures["wall_s"] = round(time.perf_counter() - start, 1)
    figures["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(json.dumps(figures))
""")


def measure(mode: str, args) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps({"mode": mode, "steps": args.steps, "docs": args.docs,
                                                                    "threads": args.threads,
                                                                    "figures": args.figures})],
                          capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--docs", type=int, default=20, help="corpus documents to train on (N // 2 held out)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-figures", dest="figures", action="store_false", help="skip the KL figures")
    args = parser.parse_args(argv)
    print(f"GPT-2-small-shaped random model, tuned lens: {args.steps} steps of 256 positions, {args.docs} training "
          f"documents, {args.threads} threads" + ("" if args.figures else ", no KL figures"))
    for mode in ("model", "chunked", "one-shot"):
        print(f"  {mode:<9} {json.dumps(measure(mode, args))}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
