"""The analysis subcommands of `minimech` (registered by cli.py, which owns printing and exit codes):

    minimech lens "PROMPT" [--tuned] --out lens.png         logit (or tuned) lens over layers and positions
    minimech attention "PROMPT" --head L1H2 --out a.png     one head's attention pattern
    minimech heads --out heads.png                           previous-token, duplicate-token, induction scores
    minimech patch [--clean P --corrupt P --correct T --wrong T] --out patch.png    activation patching, IOI pair
    minimech tuned-lens [MODEL] [--steps N]                  retrain a model's tuned lens
"""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import MinimechError

MODEL_FLAG = ("--model",)


def progress_bar(total: int, desc: str):
    """A tqdm bar on stderr for work that may take more than a few seconds (GPT-2-sized models)."""
    from .notebook import tqdm  # a widget in Jupyter, text elsewhere

    return tqdm(total=total, desc=desc, unit="step", leave=False)


def register(command, arg, print_table, load_model, model_help: str) -> None:
    model_arg = arg("--model", default=None, help=model_help)

    @command("lens", "the logit lens (or the tuned lens) of a prompt: top token per layer and position, as a PNG",
             arg("prompt"), model_arg,
             arg("--tuned", action="store_true", help="use the model's tuned lens (shipped beside a shipped model; "
                                                      "for another, where `minimech tuned-lens MODEL` saved it)"),
             arg("--lens-file", default=None, metavar="FILE",
                 help="a tuned lens file to use (implies --tuned), e.g. one `minimech tuned-lens MODEL --out FILE` "
                      "wrote; it must have been trained for this model's weights"),
             arg("-k", type=int, default=3, help="top tokens to print at the last position (default 3)"),
             arg("--out", default="minimech-out/lens.png", metavar="PNG"))
    def cmd_lens(args) -> int:
        from . import plot
        from .analysis import TunedLens, logit_lens, tuned_lens_for

        if args.k < 1:  # before loading the model; the upper bound needs it
            raise MinimechError(f"-k must be at least 1, got {args.k}")
        model = load_model(args.model)
        if args.k > model.cfg.d_vocab:
            raise MinimechError(f"-k must be between 1 and the model's vocabulary size {model.cfg.d_vocab}, "
                                f"got {args.k}")
        args.tuned = args.tuned or args.lens_file is not None
        lens = None if not args.tuned else tuned_lens_for(model) if args.lens_file is None else \
            TunedLens.load(args.lens_file, model)
        result = logit_lens(model, args.prompt, pos=None, k=args.k, lens=lens)
        probs, cells = result.grid()
        str_tokens = model.to_str_tokens(args.prompt)
        name = "tuned lens" if args.tuned else "logit lens"
        path = plot.lens(probs, result.labels, str_tokens, args.out, cell_text=cells, title=f"{name}: {args.prompt}")
        last = logit_lens(model, args.prompt, pos=-1, k=args.k, lens=lens)
        print(f"{name} at the last position ({str_tokens[-1]!r}):")
        print_table(["point"] + [f"top {i + 1}" for i in range(args.k)],
                    [[label] + [f"{s!r} {p:.2f}" for s, p in row] for label, row in zip(last.labels, last.top_k(args.k))],
                    "<" * (args.k + 1))
        print(f"wrote {path}")
        return 0

    @command("attention", "one head's attention pattern on a prompt, as a PNG",
             arg("prompt"), model_arg, arg("--head", required=True, help="the head, e.g. L1H2"),
             arg("--out", default="minimech-out/attention.png", metavar="PNG"))
    def cmd_attention(args) -> int:
        from . import plot
        from .analysis import resolve_head

        model = load_model(args.model)
        found = resolve_head(model, args.head)
        layer, head = found.layer, found.index
        tokens = model.to_tokens(args.prompt)
        _, cache = model.run_with_cache(tokens, names=[f"blocks.{layer}.attn.hook_pattern"])
        pattern = cache["pattern", layer][0, head]  # [q_pos, k_pos]
        str_tokens = model.to_str_tokens(args.prompt)
        path = plot.attention(pattern, str_tokens, args.out, title=f"L{layer}H{head}: {args.prompt}")
        strongest = pattern[-1].argmax().item()
        print(f"L{layer}H{head}: the last token {str_tokens[-1]!r} attends most to {str_tokens[strongest]!r} "
              f"(position {strongest}, {pattern[-1, strongest]:.2f})")
        print(f"wrote {path}")
        return 0

    @command("heads", "previous-token, duplicate-token and induction scores of every head, as a PNG",
             model_arg, arg("--seq-len", type=int, default=None, help="repeated random tokens per half"),
             arg("--out", default="minimech-out/heads.png", metavar="PNG"))
    def cmd_heads(args) -> int:
        from . import plot
        from .analysis import detector_scores, repeated_random_tokens

        if args.seq_len is not None and args.seq_len < 1:  # before loading the model; the upper bound needs it
            raise MinimechError(f"--seq-len must be at least 1, got {args.seq_len}")
        model = load_model(args.model)
        longest = (model.cfg.n_ctx - 1) // 2  # BOS and the sequence twice must fit the context
        seq_len = min(20, longest) if args.seq_len is None else args.seq_len
        if not 1 <= seq_len <= longest:
            raise MinimechError(f"--seq-len must be between 1 and {longest}: BOS + 2 * seq_len tokens must fit the "
                                f"model's context of {model.cfg.n_ctx} tokens; got {seq_len}")
        scores = detector_scores(model, repeated_random_tokens(model, seq_len=seq_len))
        grid = torch.cat([s for s in scores.values()], dim=1)  # [n_layers, 3 * n_heads]
        columns = [f"{kind.split('_')[0][:4]} H{h}" for kind in scores for h in range(model.cfg.n_heads)]
        path = plot.heatmap(grid, [f"L{l}" for l in range(model.cfg.n_layers)], columns, args.out,
                            title="head detector scores (repeated random tokens)", cmap="Blues", center=None,
                            xlabel="detector (prev: previous-token, dupl: duplicate-token, indu: induction) and head",
                            ylabel="layer", cbar_label="score: mean attention to the detector's key (0 to 1)")
        rows = []
        for kind, s in scores.items():
            best = s.flatten().topk(min(3, s.numel()))
            rows.append([kind] + [f"L{i // s.shape[1]}H{i % s.shape[1]} {v:.2f}"
                                  for v, i in zip(best.values.tolist(), best.indices.tolist())])
        print_table(["detector", "best", "2nd", "3rd"], rows, "<<<<")
        print(f"wrote {path}")
        return 0

    @command("patch", "activation patching on an IOI prompt pair: layer x position and layer x head grids, as PNGs",
             model_arg, arg("--clean", default=None, help="clean prompt (default: the model's IOI dataset)"),
             arg("--corrupt", default=None, help="corrupted prompt, the same number of tokens"),
             arg("--correct", default=None, help="the clean answer, e.g. ' Mary'"),
             arg("--wrong", default=None, help="the wrong answer, e.g. ' John'"),
             arg("--out", default="minimech-out/patch", metavar="PREFIX",
                 help="writes PREFIX_resid.png and PREFIX_heads.png"))
    def cmd_patch(args) -> int:
        from . import plot
        from .analysis import ioi_dataset, logit_diff, patch_heads, patch_resid

        model = load_model(args.model)
        given = [args.clean, args.corrupt, args.correct, args.wrong]
        if any(given) and not all(given):
            raise MinimechError("give all of --clean, --corrupt, --correct and --wrong, or none (then an IOI pair "
                                "from the model's dataset is used)")
        if all(given):
            clean, corrupt = model.to_tokens(args.clean), model.to_tokens(args.corrupt)
            metric = logit_diff(model.to_single_token(args.correct), model.to_single_token(args.wrong))
        else:
            ds = ioi_dataset(model, n=1, seed=0)
            clean, corrupt, metric = ds.tokens, ds.abc().tokens, ds.logit_diff()
        with progress_bar(2, "patching (resid_pre by position, then heads)") as bar:
            resid = patch_resid(model, clean, corrupt, metric, normalise=True)  # [n_layers, pos]
            bar.update()
            heads = patch_heads(model, clean, corrupt, metric, normalise=True)  # [n_layers, n_heads]
            bar.update()
        str_tokens = model.to_str_tokens(clean[0])
        print(f"clean:   {model.to_string(clean[0])!r}\ncorrupt: {model.to_string(corrupt[0])!r}")
        prefix = Path(args.out)
        layers = [f"L{l}" for l in range(model.cfg.n_layers)]
        effect = "patched logit difference, normalised (0 = corrupted run, 1 = clean run)"
        p1 = plot.heatmap(resid, layers, [repr(s) for s in str_tokens], f"{prefix}_resid.png",
                          title="resid_pre patched clean -> corrupt (1 = clean behaviour)",
                          xlabel="position patched (clean token)", ylabel="layer (resid_pre of the block)",
                          cbar_label=effect)
        p2 = plot.heatmap(heads, layers, [f"H{h}" for h in range(model.cfg.n_heads)], f"{prefix}_heads.png",
                          title="head outputs patched clean -> corrupt (all positions)", xlabel="head",
                          ylabel="layer", cbar_label=effect)
        top = heads.flatten().abs().topk(min(5, heads.numel())).indices.tolist()
        print_table(["head", "patched effect"], [[f"L{i // heads.shape[1]}H{i % heads.shape[1]}",
                                                  f"{heads.flatten()[i]:+.2f}"] for i in top], "<>")
        print(f"wrote {p1}\nwrote {p2}")
        return 0

    @command("tuned-lens", "train a model's tuned lens (an affine translator per layer) and save it",
             arg("model", nargs="?", default=None, help=model_help),
             arg("--steps", type=int, default=300, help="AdamW steps (default 300)"),
             arg("--seed", type=int, default=0, help="seed for the corpus text and the batches (default 0)"),
             arg("--docs", type=int, default=None, metavar="N",
                 help="corpus documents to train on (default 800; N // 2 more are held out for the figures)"),
             arg("--out", default=None, metavar="FILE",
                 help="where to save (default: weights/NAME/tuned_lens.safetensors for a shipped model, else "
                      "./minimech-out/tuned-lens/NAME.safetensors, where `lens --tuned` looks)"),
             arg("--threads", type=int, default=None, help="torch threads (default: torch's choice)"))
    def cmd_tuned_lens(args) -> int:
        from .analysis.tuned_lens import train_tuned_lens, tuned_lens_path

        if args.steps < 1:
            raise MinimechError(f"--steps must be at least 1, got {args.steps}")
        if args.docs is not None and args.docs < 2:
            raise MinimechError(f"--docs must be at least 2, got {args.docs}")
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        model = load_model(args.model)
        out = Path(args.out) if args.out else tuned_lens_path(model)
        print(f"training the tuned lens of {model.cfg.model_name} ({model.cfg.n_layers} layers); it is saved to "
              f"{out} (+ .json) as soon as it is trained, then again with its held-out figures", flush=True)
        lens = train_tuned_lens(model, steps=args.steps, seed=args.seed, save_to=out, docs=args.docs)
        kl = lens.info["kl_nats"]
        print(f"trained the tuned lens in {lens.info['training']['wall_time_s']:.0f} s; saved to {out} (+ .json)")
        print("held-out KL(final || lens) in nats:")
        print_table(["point", "logit lens", "tuned lens"],
                    [[label, f"{a:.3f}", f"{b:.3f}"] for label, a, b in
                     zip(kl["labels"], kl["logit_lens"]["heldout"], kl["tuned_lens"]["heldout"])], "<>>")
        return 0
