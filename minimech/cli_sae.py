"""The `minimech sae` subcommand (registered by cli.py, which owns printing and exit codes):

    minimech sae train [--model M] [--hook blocks.2.mlp.hook_post] --out DIR    train an SAE, measure it, save it
    minimech sae train --ship                  retrain the SAE shipped beside the default model (weights/NAME/sae-HOOK)
    minimech sae eval DIR [--density PNG]      its metrics (SAELens's definitions) on held-out corpus text
    minimech sae feature DIR 123 --out f.png   one feature: its dashboard PNG, top contexts and logit effects

DIR may also be `shipped` (the SAE shipped beside the model). The model defaults to the one the SAE was trained on.
"""

from __future__ import annotations

from pathlib import Path

from .errors import MinimechError

ACTIONS = ("train", "eval", "feature")


def register(command, arg, print_table, load_model) -> None:
    @command("sae", "sparse autoencoders: train one on a hook, measure it, draw a feature's dashboard",
             arg("action", choices=ACTIONS, help="train | eval DIR | feature DIR INDEX"),
             arg("dir", nargs="?", default=None, help="the SAE's folder (or 'shipped'); for train see --out"),
             arg("index", nargs="?", type=int, default=None, help="feature: the feature's index"),
             arg("--model", default=None, help="the model (default: the SAE's own; for train, the default model)"),
             arg("--hook", default=None, help="train: the hook (default: the middle MLP's hook_post)"),
             arg("--out", default=None, metavar="PATH", help="train: the folder to save into; feature: the PNG"),
             arg("--ship", action="store_true", help="train: the shipped recipe, saved beside the shipped model"),
             arg("--kind", choices=("relu", "topk"), default=None, help="train: ReLU + L1 (default) or TopK"),
             arg("-k", type=int, default=None, help="train, TopK: features kept per token"),
             arg("--l1", type=float, default=None, help="train, ReLU: the L1 coefficient"),
             arg("--expansion", type=int, default=None, help="train: d_sae = expansion x d_in (default 4)"),
             arg("--tokens", type=int, default=None, help="train: training tokens (default 2,000,000)"),
             arg("--seed", type=int, default=None, help="train: seed (default 0)"),
             arg("--threads", type=int, default=None, help="torch threads (default: torch's choice)"),
             arg("--density", default=None, metavar="PNG", help="eval: also draw the feature density histogram"),
             description=__doc__.split("\n\n")[0])
    def cmd_sae(args) -> int:
        import torch

        if args.threads is not None:
            if args.threads < 1:
                raise MinimechError(f"--threads must be at least 1, got {args.threads}")
            torch.set_num_threads(args.threads)
        if args.action == "train":
            return _train(args, load_model, print_table)
        if args.dir is None:
            raise MinimechError(f"`minimech sae {args.action}` needs the SAE's folder: minimech sae {args.action} DIR"
                                + (" INDEX" if args.action == "feature" else ""))
        model, sae = _load(args, load_model)
        if args.action == "eval":
            from .sae import evaluate_sae

            metrics = evaluate_sae(model, sae, progress=True)
            _print_metrics(metrics, print_table)
            if args.density:
                from .sae.dashboard import draw_density

                print(f"wrote {draw_density(args.density, metrics.log10_density(), f'{sae.hook}: feature density')}")
            return 0
        return _feature(args, model, sae)


def _train(args, load_model, print_table) -> int:
    from dataclasses import replace

    from .sae.shipped import SHIPPED_SETTINGS, train_shipped

    if args.dir is not None or args.index is not None:
        raise MinimechError("`minimech sae train` takes no folder argument: use --out DIR (or --ship)")
    if args.ship == (args.out is not None):
        raise MinimechError("say where the SAE goes: --out DIR, or --ship to write it beside the shipped model")
    changes = {"activation": args.kind, "k": args.k, "l1_coefficient": args.l1, "expansion": args.expansion,
               "training_tokens": args.tokens, "seed": args.seed}
    changes = {name: value for name, value in changes.items() if value is not None}
    if changes.get("activation") == "topk" and "k" not in changes:
        raise MinimechError("--kind topk needs -k (features kept per token), e.g. -k 16")
    if "k" in changes and changes.get("activation") != "topk":
        raise MinimechError("-k is for --kind topk; a ReLU SAE's sparsity is set by --l1")
    if args.ship and changes:
        raise MinimechError(f"--ship trains the shipped recipe as it is; drop {', '.join('--' + c for c in changes)} "
                            "or save with --out DIR")
    settings = replace(SHIPPED_SETTINGS, **changes)  # validates (one clear error for a bad value)
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise MinimechError(f"--out must be a folder, {args.out} is a file")
    model = load_model(args.model)
    sae, metrics, folder = train_shipped(model, args.hook, settings, out=args.out)
    print(f"trained {sae} in {sae.cfg.training['wall_time_s']:.0f} s ({sae.cfg.training['tokens']:,} tokens); "
          f"saved to {folder}")
    _print_metrics(metrics, print_table)
    return 0


def _load(args, load_model):
    from .sae import SparseAutoencoder
    from .sae.shipped import sae_for

    if args.dir == "shipped":
        model = load_model(args.model)
        return model, sae_for(model, args.hook)
    if args.hook is not None:
        raise MinimechError("--hook picks a shipped SAE (DIR = shipped); a folder holds one SAE already")
    sae = SparseAutoencoder.load(args.dir)
    model = load_model(args.model or sae.cfg.model_name)
    sae.check_model(model)
    return model, sae.bind(model)


def _print_metrics(metrics, print_table) -> None:
    rows = [[name, f"{value:.4f}" if isinstance(value, float) else f"{value:,}"]
            for name, value in metrics.scalars().items()]
    print_table(["metric (SAELens's definitions)", "value"], rows, "<>")


def _feature(args, model, sae) -> int:
    if args.index is None:
        raise MinimechError("`minimech sae feature DIR INDEX`: give the feature's index")
    feature = sae.features[args.index] if -sae.cfg.d_sae <= args.index < sae.cfg.d_sae else None
    if feature is None:
        raise MinimechError(f"feature {args.index} does not exist: this SAE has {sae.cfg.d_sae} (0 .. "
                            f"{sae.cfg.d_sae - 1})")
    print(feature)
    print("top contexts (held-out corpus text, token in [[ ]]):")
    for context in feature.top_contexts(8):
        print(f"  {context.activation:7.3f}  {context.marked()!r}")
    for label, bottom in (("promotes", False), ("suppresses", True)):
        print(f"{label}: " + ", ".join(f"{t!r} {v:+.2f}" for t, v in feature.top_tokens(8, bottom)))
    out = args.out or f"minimech-out/sae_feature_{args.index}.png"
    print(f"wrote {feature.dashboard(out)}")
    return 0
