"""The GPT-2 route on a GPT-2-small-shaped checkpoint built here (random weights, saved with save_pretrained into a
temporary folder: nothing is downloaded), entered in a test manifest as if it were GPT-2 small's published file.

Always: GPT-2 small is recognised by its weights whichever way it is named (a path, the Hub name through the Hugging
Face cache, the alias), so lesson 03's paper cases are present; another GPT-2 checkpoint runs without them and says so.
With MINIMECH_GPT2_ROUTE=1 (README, "Tests and benchmarks"): every CLI command on the checkpoint, in a child process
whose address space is capped (a command that tried the 42.8 GB allocation of issue 14 fails there), each timed.
"""

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

transformers = pytest.importorskip("transformers")

import minimech  # noqa: E402
from minimech import loading  # noqa: E402
from minimech.grading import api as grading_api  # noqa: E402
from minimech.grading import load_checks  # noqa: E402
from minimech.grading.lessons import read_lesson  # noqa: E402
from minimech.grading.runner import build_cases  # noqa: E402
from minimech.grading import lessons_root  # noqa: E402

HEAVY = os.environ.get("MINIMECH_GPT2_ROUTE", "") not in ("", "0")
MEMORY_CAP_GIB = 8  # address space of the child that runs the CLI commands (GPT-2 small itself is 0.5 GB)


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory):
    """config.json + model.safetensors of a random GPT-2-small-shaped model, as save_pretrained writes them."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("gpt2-small-shaped") / "gpt2"
    transformers.GPT2LMHeadModel(transformers.GPT2Config()).save_pretrained(folder)
    return folder


@pytest.fixture
def gpt2_env(gpt2_dir, tmp_path, monkeypatch):
    """A test manifest that lists the checkpoint as GPT-2 small's published file (its size and sha256), and a
    Hugging Face cache that holds it under the Hub's name, as huggingface_hub lays it out (snapshots linking blobs)."""
    weights = gpt2_dir / "model.safetensors"
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    manifest = {"gpt2": {"repo": "openai-community/gpt2", "_note": "test", "files": {
        "config.json": {"size": None, "sha256": None},
        "model.safetensors": {"size": weights.stat().st_size, "sha256": loading.sha256_file(weights)}}}}
    (shipped / "gpt2-manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(loading, "weights_dir", lambda: shipped)
    hub = tmp_path / "hub"
    snapshot = hub / "models--openai-community--gpt2" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (hub / "models--openai-community--gpt2" / "refs").mkdir()
    (hub / "models--openai-community--gpt2" / "refs" / "main").write_text("abc123")
    for name in ("config.json", "model.safetensors"):
        (snapshot / name).symlink_to(gpt2_dir / name)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MINIMECH_WEIGHTS", raising=False)
    monkeypatch.delenv("MINIMECH_NO_VERIFY", raising=False)
    monkeypatch.setattr(grading_api, "_MODELS", {})  # ctx.model() loads afresh, here
    return gpt2_dir


def paper_labels(model_name: str, ids=("03.1", "03.2")) -> dict[str, list[str]]:
    """Lesson 03's case labels for exercises `ids` when checked with --model model_name."""
    lesson = read_lesson(lessons_root() / "03_indirect_object_identification")
    exercises = {ex.id: ex for ex in load_checks(lesson)}
    return {i: [case.describe() for case in build_cases(exercises[i], 1, model_name)] for i in ids}


def test_gpt2_small_is_known_by_its_weights_whatever_its_name(gpt2_env):
    """`--model path/to/gpt2` (which lost them before), `--model openai-community/gpt2` and `--model gpt2` (both found
    in the Hugging Face cache) load a model known as GPT-2 small; lesson 03 then has the IOI paper's cases."""
    for name in ("openai-community/gpt2", "gpt2"):
        model = minimech.load(name)
        assert loading.is_gpt2_small(model) and "abc123" in model.source, (name, loading.identify_gpt2(model).reason)
    labels = paper_labels(str(gpt2_env))
    assert any("paper's mean logit difference" in label for label in labels["03.1"]), labels
    assert any("paper's name movers" in label for label in labels["03.2"]), labels


def test_other_gpt2_checkpoints_run_without_the_paper_cases_and_say_so(gpt2_env, monkeypatch):
    """distilgpt2's shape (a GPT-2 checkpoint that is not GPT-2 small), and GPT-2 small's shape with weights the
    manifest does not list (a fine-tune): no paper case; the model's case label says why."""
    distil = minimech.GPT(minimech.PRESETS["distilgpt2"], tokenizer=minimech.tokenizer.Tokenizer()).eval()
    unlisted = minimech.load(gpt2_env, verify=False)
    for name, model, why in (("distilgpt2", distil, "distilgpt2, not GPT-2 small"),
                             ("my-finetune", unlisted, "not checked against the sha256")):
        monkeypatch.setitem(grading_api._MODELS, name, model)
        labels = paper_labels(name)
        assert not any("paper's mean logit difference" in label or "paper's name movers" in label
                       for label in labels["03.1"] + labels["03.2"]), labels
        assert sum(f"GPT-2-small figures are not checked: " in label and why in label
                   for label in labels["03.1"] + labels["03.2"]) == 2, labels


# ---- every CLI command on the GPT-2-small-shaped checkpoint (opt-in: about two minutes on 2 cores) --------------

CHILD = textwrap.dedent("""
    import json, resource, sys, time
    resource.setrlimit(resource.RLIMIT_AS, (CAP, CAP))  # an allocation beyond the cap fails, as it would on a small box
    from minimech.cli import main
    results = []
    for argv in json.loads(sys.argv[1]):
        start = time.perf_counter()
        status = main(argv)
        results.append({"argv": argv, "status": status, "seconds": round(time.perf_counter() - start, 1),
                        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024})
        print("RESULT " + json.dumps(results[-1]), file=sys.stderr, flush=True)
""")

# (argv, seconds allowed on a 2-core machine): generous, about 3x what was measured there on a quiet machine (the
# tuned lens: 2 x 2 KL figures over one row of 1,024 tokens, at 13 x 50,257 log-probs each, dominate its time)
COMMANDS = [
    (["info", "{model}"], 30),
    (["run", "When Mary and John went to the store, John gave a drink to", "--model", "{model}", "--generate", "5"],
     30),
    (["lens", "When Mary and John went to the store, John gave a drink to", "--model", "{model}", "--out",
      "{out}/lens.png"], 45),
    (["attention", "The cat sat on the mat. The cat", "--head", "L5H1", "--model", "{model}", "--out",
      "{out}/attention.png"], 30),
    (["heads", "--model", "{model}", "--out", "{out}/heads.png"], 60),
    (["patch", "--model", "{model}", "--out", "{out}/patch"], 120),
    (["tuned-lens", "{model}", "--steps", "1", "--docs", "2", "--threads", "2"], 600),
    (["lens", "The cat sat on the mat", "--model", "{model}", "--tuned", "--out", "{out}/tuned.png"], 45),
    (["lens", "The cat sat on the mat", "--model", "{model}", "--lens-file",
      "minimech-out/tuned-lens/gpt2.safetensors", "--out", "{out}/tuned2.png"], 45),
]


@pytest.mark.skipif(not HEAVY, reason="opt-in: MINIMECH_GPT2_ROUTE=1 (every CLI command on a GPT-2-small-sized model)")
def test_every_cli_command_on_a_gpt2_small_shaped_checkpoint(gpt2_dir, tmp_path):
    """Each command succeeds in a process capped at MEMORY_CAP_GIB of address space, within its time, and the
    tuned lens it trains for this non-shipped model is saved where `lens --tuned` finds it."""
    argvs = [[a.format(model=gpt2_dir, out=tmp_path) for a in argv] for argv, _ in COMMANDS]
    script = CHILD.replace("CAP", str(MEMORY_CAP_GIB * 2**30))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script, json.dumps(argvs)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=1200)
    results = [json.loads(line[7:]) for line in done.stderr.splitlines() if line.startswith("RESULT ")]
    for result in results:
        print(f"{result['seconds']:7.1f} s  max RSS {result['max_rss_mib']:6} MiB  minimech {' '.join(result['argv'])}")
    print(f"{time.perf_counter() - start:.0f} s in all")
    assert len(results) == len(COMMANDS), done.stderr[-3000:]
    for result, (_, limit) in zip(results, COMMANDS):
        assert result["status"] == 0, (result, done.stderr[-3000:])
        assert result["seconds"] < limit, result
    assert (tmp_path / "minimech-out/tuned-lens/gpt2.safetensors").is_file()
    for png in ("lens.png", "attention.png", "heads.png", "patch_resid.png", "patch_heads.png", "tuned.png"):
        assert (tmp_path / png).stat().st_size > 1000, png
