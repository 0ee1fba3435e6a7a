"""The `minimech` command line: look at a model, run a prompt through it, download weights.

    minimech tour                                  the main job: a tour of the shipped models, PNGs in ./minimech-out
    minimech info [MODEL]                          config, parameter count, where the weights came from
    minimech run "The cat sat on the" -k 10        the prompt's tokens and the top next tokens
    minimech run "Once upon a time" --generate 20  ... and a greedy continuation
    minimech fetch gpt2 [--dest DIR]               download a model's weights
    minimech train attn-only-2l [--steps N]        train a shipped model from its recipe
    minimech lens "PROMPT" --out lens.png          logit lens (--tuned: the tuned lens) as a table and a PNG
    minimech attention "PROMPT" --head L1H2        one head's attention pattern (PNG)
    minimech heads | patch | tuned-lens            head detector scores, IOI activation patching, retrain a lens
    minimech sae train | eval | feature            sparse autoencoders: train, measure, a feature's dashboard
    minimech lessons | start 02 | check 02 | hint 02.3 | solution 02.3     the graded lessons (learners)
    minimech handout 02 | grade 02 DIR | autograder 02                     ... and for instructors

MODEL is a preset name (gpt2, ...) or a path; without one, the model shipped with minimech.

This is the only module that prints or exits. Every error minimech raises on purpose (MinimechError), a missing
file and Ctrl-C end the command with one line on stderr, `minimech: error: ...`, and exit status 1 (usage errors:
argparse's message and status 2). Set MINIMECH_DEBUG=1 to see the traceback instead. When the reader of the
output goes away early (`minimech run ... | head -3`), the command stops quietly with status 1, as Python's
documentation recommends (library/signal.html, "Note on SIGPIPE").

Adding a subcommand: write one function `cmd_NAME(args) -> int | None` and decorate it with
`@command("NAME", "one-line help", arg(...), ...)`, where each `arg(...)` takes ArgumentParser.add_argument's
arguments. main() builds the parser from the COMMANDS registry.
"""

from __future__ import annotations

import argparse
import os
import select
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from . import __version__
from .errors import MinimechError


@dataclass
class Command:
    name: str
    help: str
    run: Callable[[argparse.Namespace], "int | None"]
    arguments: list[tuple[tuple, dict]] = field(default_factory=list)
    description: str = ""  # --help's text, when longer than the one-line help


COMMANDS: dict[str, Command] = {}  # name -> Command, in the order they are registered (and shown in --help)


def arg(*flags, **kwargs) -> tuple[tuple, dict]:
    """One argument of a subcommand, as ArgumentParser.add_argument(*flags, **kwargs) takes it."""
    return flags, kwargs


def command(name: str, help: str, *arguments: tuple[tuple, dict], description: str = ""):
    """Register the decorated function as the subcommand `name`."""
    def register(fn):
        COMMANDS[name] = Command(name, help, fn, list(arguments), description)
        return fn
    return register


MODEL_HELP = "a preset name (e.g. gpt2) or a path to weights; default: the model shipped with minimech"


def load_model(name_or_path: str | None):
    """Load a model as every subcommand does (imported here, so the CLI starts even before loading.py exists)."""
    from .loading import load

    return load(name_or_path)


def folder_option(path: str, flag: str = "--out") -> Path:
    """`path` as a folder to write into; an existing file there is one clear error (mkdir says only "File exists")."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise MinimechError(f"{flag} must be a folder, {folder} is a file")
    return folder


def print_table(header: list[str], rows: list[list], align: str) -> None:
    """A plain text table; align has one letter per column, "<" (left) or ">" (right)."""
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for row in cells:
        line = "  ".join(f"{c:{a}{w}}" for c, a, w in zip(row, align, widths))
        print("  " + line.rstrip())


# ---- subcommands ----------------------------------------------------------------------------------------------

@command("tour", "the main job: a one-minute tour of the shipped models, with PNG plots",
         arg("--out", default="minimech-out", metavar="DIR", help="where to write the plots (default ./minimech-out)"))
def cmd_tour(args) -> int:
    from .tour import run_tour

    tour = run_tour(folder_option(args.out), progress=True)
    for section in tour.sections:
        print(f"\n== {section.title}")
        for line in section.lines:
            print(f"  {line}")
    print("\nplots:")
    for path in tour.files:
        print(f"  {path}")
    return 0


@command("info", "show a model's config, parameter count, weights' origin and tokenizer",
         arg("model", nargs="?", default=None, help=MODEL_HELP))
def cmd_info(args) -> int:
    model = load_model(args.model)
    cfg = model.cfg
    print(f"model: {cfg.model_name}")
    print(f"weights from: {model.source}")
    print("config:")
    fields = cfg.to_dict()
    width = max(map(len, fields))
    for name, value in fields.items():
        print(f"  {name:<{width}}  {value}")
    for line in parameter_lines(model):
        print(line)
    tok = model.tokenizer
    if tok is None:
        print("tokenizer: none (the model takes token ids only)")
    elif tok.vocab is None:
        print(f"tokenizer: GPT-2 BPE, full vocabulary of {tok.n_vocab:,} tokens (<|endoftext|> = {tok.eot_id})")
    else:
        unk = "no unknown token" if tok.unk_id is None else f"unknown token = {tok.unk_id}"
        print(f"tokenizer: GPT-2 BPE, compact vocabulary of {tok.n_vocab:,} of GPT-2's {50257:,} tokens "
              f"(<|endoftext|> = {tok.eot_id}, {unk})")
    if tok is not None and tok.n_vocab != cfg.d_vocab:
        print(f"  note: the tokenizer has {tok.n_vocab:,} tokens but the model's d_vocab is {cfg.d_vocab:,}")
    return 0


def parameter_lines(model) -> list[str]:
    """The parameter count as Hugging Face reports it (a W_U tied to W_E counted once; 124,439,808 for GPT-2 small),
    TransformerLens's cfg.n_params, and what minimech stores (W_U apart from W_E, and b_U)."""
    stored = sum(p.numel() for p in model.parameters())
    W_E, W_U, b_U = model.embed.W_E, model.unembed.W_U, model.unembed.b_U
    tied = W_U.shape == W_E.T.shape and bool(torch.equal(W_U, W_E.T))
    no_bias = not bool(b_U.any())
    unique = stored - tied * W_U.numel() - no_bias * b_U.numel()
    why = [what for what, yes in (("W_U is W_E transposed, counted once", tied), ("b_U is zero", no_bias)) if yes]
    return [f"parameters: {unique:,}" + (f" ({'; '.join(why)}, as Hugging Face counts GPT-2)" if why else ""),
            f"  TransformerLens's cfg.n_params: {model.cfg.n_params:,} (attention and MLP weight matrices only)",
            f"  stored by minimech: {stored:,} (W_U apart from W_E, so either can be edited alone, and b_U)"]


@command("run", "run a prompt: its tokens, the top-k next tokens, and optionally a greedy continuation",
         arg("prompt", help="the text to run"),
         arg("--model", "-m", default=None, help=MODEL_HELP),
         arg("-k", "--top-k", dest="k", type=int, default=10, help="how many next tokens to show (default 10)"),
         arg("--no-bos", action="store_true", help="do not prepend <|endoftext|> as BOS (see tokenizer.py)"),
         arg("--generate", type=int, default=0, metavar="N", help="also generate N tokens greedily"))
def cmd_run(args) -> int:
    if args.k < 1:
        raise MinimechError(f"-k must be at least 1, got {args.k}")
    if args.generate < 0:
        raise MinimechError(f"--generate must be at least 0, got {args.generate}")
    model = load_model(args.model)
    tokens = model.to_tokens(args.prompt, prepend_bos=not args.no_bos)  # [1, pos]
    bos = "" if args.no_bos else ", BOS prepended"
    print(f"prompt: {args.prompt!r} ({tokens.shape[1]} tokens{bos})")
    print_table(["pos", "id", "token"],
                [[i, t, repr(model.tokenizer.id_to_str(t))] for i, t in enumerate(tokens[0].tolist())], ">><")

    with torch.no_grad():
        logits = model(tokens)[0, -1].float()  # [d_vocab]: the prediction after the last token
    probs = logits.softmax(-1)
    k = min(args.k, probs.shape[0])
    top = probs.topk(k)
    print(f"\ntop {k} next tokens:")
    rows = [[rank, f"{p:.6f}", f"{logits[i]:.3f}", i, repr(model.tokenizer.id_to_str(i))]
            for rank, (p, i) in enumerate(zip(top.values.tolist(), top.indices.tolist()), start=1)]
    print_table(["rank", "prob", "logit", "id", "token"], rows, ">>>><")
    print(f"  (these {k} hold {top.values.sum():.4f} of the probability)")

    if args.generate:
        from .sampling import generate

        text = generate(model, args.prompt, args.generate, greedy=True, prepend_bos=not args.no_bos)
        print(f"\ngreedy continuation ({args.generate} tokens at most, stops at <|endoftext|>):")
        print(text)
    return 0


FETCH_HELP = """Download an official GPT-2 checkpoint's config.json and model.safetensors from the Hugging Face Hub
(needs the internet; nothing else in minimech ever downloads). NAME: gpt2 (GPT-2 small, 124M), gpt2-medium,
gpt2-large, gpt2-xl, distilgpt2, or their Hub names (openai-community/gpt2, ..., distilbert/distilgpt2). The files go
to $MINIMECH_WEIGHTS/NAME when that is set, else ~/.cache/minimech/NAME (--dest DIR to choose), where `--model NAME`
finds them. Each file is checked against the size and sha256 in minimech's weights/gpt2-manifest.json (a file it has
no checksum for is reported as unverified). Files download into DIR.partial and appear in DIR only when complete and
checked: a failed fetch leaves nothing behind, except a partial transfer, which the next fetch resumes. Offline? Run
it on a machine with internet and copy the folder, or put the Hub's files there by hand."""


@command("fetch", "download an official GPT-2 checkpoint (needs the internet): gpt2, gpt2-medium, ...",
         arg("name", metavar="NAME", help="gpt2, gpt2-medium, gpt2-large, gpt2-xl or distilgpt2 (or a Hub name)"),
         arg("--dest", default=None, metavar="DIR",
             help="where to put it (default $MINIMECH_WEIGHTS/NAME, else ~/.cache/minimech/NAME)"),
         description=FETCH_HELP)
def cmd_fetch(args) -> int:
    from .loading import fetch

    if args.dest is not None:
        folder_option(args.dest, "--dest")
    path = fetch(args.name, dest=args.dest, progress=True)
    print(path)
    return 0


@command("train", "train one of minimech's shipped models from scratch with its recipe",
         arg("recipe", help="the recipe, e.g. attn-only-2l (see minimech/training/recipes.py)"),
         arg("--steps", type=int, default=None, help="run the recipe's first N steps (its lr schedule unchanged)"),
         arg("--seed", type=int, default=0, help="seed for data and initialisation (default 0)"),
         arg("--out", default=None, metavar="DIR", help="where to save (default ./minimech-out/models/RECIPE)"),
         arg("--threads", type=int, default=None, help="torch threads (default: torch's choice)"))
def cmd_train(args) -> int:
    from .loading import save
    from .training.recipes import get, train_recipe

    get(args.recipe)  # an unknown recipe fails before any work
    if args.steps is not None and args.steps < 1:
        raise MinimechError(f"--steps must be at least 1, got {args.steps}")
    out = folder_option(args.out or f"minimech-out/models/{args.recipe}")  # checked before the training, not after
    model, card = train_recipe(args.recipe, steps=args.steps, seed=args.seed, threads=args.threads)
    out = save(model, out, card_extra=card)
    print(f"trained {args.recipe} (seed {args.seed}) for {card['training']['steps']} steps in "
          f"{card['training']['wall_time_s']:.0f} s; saved to {out}")
    print_table(["metric", "final"], [[k, f"{v:.4f}"] for k, v in card["metrics"].items()], "<>")
    return 0


# The analysis commands (lens, attention, heads, patch, tuned-lens) live in cli_analysis.py.
from .cli_analysis import register as register_analysis_commands  # noqa: E402

register_analysis_commands(command, arg, print_table, load_model, MODEL_HELP)

# `minimech sae ...` (sparse autoencoders) lives in cli_sae.py.
from .cli_sae import register as register_sae_commands  # noqa: E402

register_sae_commands(command, arg, print_table, load_model)

# The lesson commands (lessons, start, check, hint, solution, handout, grade, autograder) live with the grader.
from .grading.cli_commands import register as register_lesson_commands  # noqa: E402

register_lesson_commands(command, arg, print_table)


# ---- entry point ----------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minimech", description="A readable GPT-2 for mechanistic interpretability.")
    parser.add_argument("--version", action="version", version=f"minimech {__version__}")
    parser.add_argument("--no-verify", action="store_true",
                        help="load weights without checking their sha256 (minimech's cards, GPT-2's published "
                             "files); GPT-2 small is then not recognised, so its paper checks do not run")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.description or cmd.help)
        for flags, kwargs in cmd.arguments:
            p.add_argument(*flags, **kwargs)
        p.set_defaults(run=cmd.run)
    return parser


def error(message: str) -> int:
    print(f"minimech: error: {message}", file=sys.stderr)
    return 1


def stdout_is_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone, so that a BrokenPipeError was about our output and not, say,
    a worker process's pipe (whose error must still be reported)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by an object without a file (io.UnsupportedOperation)
        return False
    if not hasattr(select, "poll"):
        return True  # Windows cannot tell; a closed stdout is by far the likeliest cause
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(event & (select.POLLERR | select.POLLHUP) for _, event in poller.poll(0))


def stdout_gone() -> int:
    """Stop quietly: the reader of our output (`| head`) has what it wanted. The recipe of Python's "Note on SIGPIPE":
    point stdout at devnull, or the flush at exit raises BrokenPipeError again, and exit with status 1."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):
        pass
    return 1


def file_in_the_way(e: OSError) -> Path | None:
    """The existing file that made a mkdir fail (itself or a parent of the folder it was making), if that is why."""
    if not isinstance(e, (FileExistsError, NotADirectoryError)) or not e.filename:
        return None
    path = Path(os.fsdecode(e.filename))
    return next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (the console script passes it to sys.exit)."""
    status = run_command(argv)
    try:
        sys.stdout.flush()  # a reader that went away shows here, rather than as a traceback at exit
    except BrokenPipeError:
        return stdout_gone()
    return status


def run_command(argv: list[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # usage errors (status 2), --help and --version (status 0)
        return e.code if isinstance(e.code, int) else 1
    debug = os.environ.get("MINIMECH_DEBUG", "") not in ("", "0")
    if args.no_verify:
        os.environ["MINIMECH_NO_VERIFY"] = "1"  # read by load(), here and in the processes a check or grade starts
    try:
        return args.run(args) or 0
    except KeyboardInterrupt:
        if debug:
            raise
        return error("interrupted")
    except (MinimechError, OSError) as e:  # OSError: a missing or unreadable file, a failed download
        if isinstance(e, BrokenPipeError) and stdout_is_closed():
            return stdout_gone()
        if debug:
            raise
        if (file := file_in_the_way(e)) is not None:
            return error(f"{file} is a file, where a folder is needed ({e.strerror}: {os.fsdecode(e.filename)})")
        message = " ".join(str(e).split()) or type(e).__name__  # always one line
        return error(message)


if __name__ == "__main__":
    sys.exit(main())
