"""The notebook route of the lessons: `minimech start ID --notebook` writes a notebook that `minimech check` grades,
and every lesson's notebook, executed in a real Jupyter kernel (nbclient), shows its figures inline.

Ground truth: nbformat's validator for the file, the grader's statuses for the checks, the kernel's own outputs
(image/png display data) for the figures, and the PNG files the same cells write.
"""

import json
import re
from pathlib import Path

import matplotlib
import pytest

from minimech.grading import fill_solutions, run_checks
from minimech.grading import workspace as ws
from minimech.grading.lessons import read_lesson
from minimech.grading.source import notebook_to_script, stubs
from minimech.notebook import show

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LESSONS = Path(__file__).resolve().parent.parent / "lessons"
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "lessons" / "99_fixture"
NOTEBOOK_LESSONS = sorted(p for p in LESSONS.iterdir() if p.is_dir() and p.name[:2].isdigit())


def test_start_notebook_writes_a_valid_notebook_that_check_grades(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("jupytext")
    lesson = read_lesson(FIXTURE)
    path = ws.start(lesson, tmp_path / "work", notebook=True)
    assert path.name == "lesson.ipynb" and not (path.parent / "lesson.py").exists()
    nbformat.validate(nbformat.read(path, as_version=4))
    assert ws.learner_file(lesson, tmp_path / "work") == path
    untouched = run_checks(lesson, path, seed=0, isolate=False)
    assert {e.status for e in untouched.exercises} == {"not attempted"}
    with pytest.raises(Exception, match="exists"):
        ws.start(lesson, tmp_path / "work", notebook=True)  # the learner's work is kept

    filled_py = tmp_path / "filled.py"
    filled_py.write_text(fill_solutions(lesson))
    path.write_text(ws.to_notebook(filled_py))
    solved = run_checks(lesson, path, seed=0, isolate=False)
    assert {e.status for e in solved.exercises} == {"pass"}, [(e.id, e.message) for e in solved.exercises]


@pytest.mark.parametrize("folder", NOTEBOOK_LESSONS, ids=lambda p: p.name[:2])
def test_start_notebook_of_every_lesson_keeps_its_exercises_and_predictions(folder, tmp_path):
    """`minimech start NN --notebook` for each lesson: a valid notebook beside README.md and hints.md, which the
    grader reads back (notebook_to_script, as `check` does) with the same exercise stubs as lesson.py, and with
    lesson.json's prediction cells. (Grading a notebook end to end is the fixture lesson's test above.)"""
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("jupytext")
    lesson = read_lesson(folder)
    path = ws.start(lesson, tmp_path / "work", notebook=True)
    nbformat.validate(nbformat.read(path, as_version=4))
    assert (path.parent / "README.md").is_file() and (path.parent / "hints.md").is_file()
    script = tmp_path / "read_back.py"
    script.write_text(notebook_to_script(path))
    assert stubs(script) == stubs(lesson.file("lesson.py"))
    cells = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    asked = [line.split("=")[0].strip() for c in cells if c.startswith("prediction_") for line in c.splitlines()
             if line.startswith("prediction_") and "= None" in line]
    assert asked == list(lesson.predictions)  # in code cells of their own, in order


def test_show_saves_in_a_script_and_also_displays_in_a_notebook(tmp_path, monkeypatch):
    shown = []
    monkeypatch.setattr("minimech.notebook._display_png", shown.append)
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = show(fig, tmp_path / "out" / "a.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shown == []  # a script: a file, nothing displayed
    assert not plt.get_fignums()  # closed: the inline backend will not draw it a second time

    monkeypatch.setattr("minimech.notebook.in_notebook", lambda: True)
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    path = show(fig, tmp_path / "b.png")
    assert shown == [path.read_bytes()]  # displayed once, the very PNG that was saved
    show(path)  # a PNG already written (what minimech.plot returns) is displayed too
    assert len(shown) == 2
    with pytest.raises(FileNotFoundError, match="no such PNG"):
        show(tmp_path / "missing.png")


@pytest.mark.parametrize("folder", NOTEBOOK_LESSONS, ids=lambda p: p.name[:2])
def test_lesson_notebook_runs_in_a_kernel_with_its_figures_inline(folder, tmp_path, monkeypatch):
    """Each lesson with the solutions filled in, as a notebook, executed by nbclient (MINIMECH_QUICK: the training
    demos shortened, as in the script smoke runs): no cell fails, no demo cell is skipped for an unwritten exercise,
    every figure the cells save is displayed once as image/png, and a progress bar prints no 'IProgress not found'
    warning (tqdm.auto's, in a kernel without ipywidgets)."""
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nbformat = pytest.importorskip("nbformat")
    monkeypatch.setenv("MINIMECH_QUICK", "1")  # the kernel inherits this process's environment
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    notebook = jupytext.reads(fill_solutions(read_lesson(folder)), fmt="py:percent")
    notebook.cells.append(nbformat.v4.new_code_cell(
        "import minimech.training.train\nfrom minimech.notebook import tqdm\n"
        "for _ in tqdm(range(3), desc='bar'):\n    pass"))
    client = nbclient.NotebookClient(notebook, timeout=240, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [out for cell in notebook.cells for out in cell.get("outputs", [])]
    images = [out for out in outputs if out["output_type"] == "display_data" and "image/png" in out["data"]]
    saved = sorted((tmp_path / "minimech-out").glob("*.png"))
    assert saved and len(images) == len(saved), (len(images), [p.name for p in saved])
    assert not [out for out in outputs if out["output_type"] == "error"]
    text = json.dumps([out for out in outputs if out["output_type"] != "display_data"])
    assert "IProgress" not in text and "bar" in json.dumps(outputs)
    assert "skipped: EXERCISE" not in text and "an earlier cell was skipped" not in text, text[:3000]


THROUGH_NOTEBOOK = re.compile(r"from (minimech\.|\.+)notebook import ([\w, ]*\b)?tqdm\b")  # alone or with others


def test_progress_bars_come_from_minimech_notebook():
    """tqdm.auto (and tqdm.notebook without ipywidgets) print "IProgress not found" in a kernel; every progress bar
    a lesson can show goes through minimech.notebook.tqdm, which falls back to text. The grader's terminal-only
    command-line bars (tqdm's text bar) are the one other use."""
    offenders = []
    for path in sorted([*(LESSONS.parent / "minimech").rglob("*.py"), *LESSONS.rglob("*.py")]):
        if path.name == "notebook.py" and path.parent.name == "minimech":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if "tqdm" in code and ("import" in code or "tqdm." in code) and not THROUGH_NOTEBOOK.search(code):
                if path.name == "cli_commands.py" and code.strip() == "from tqdm import tqdm":
                    continue  # `minimech check`'s bar on stderr: a command (a terminal, or a notebook's ! line)
                offenders.append(f"{path.relative_to(LESSONS.parent)}:{number}: {line.strip()}")
    assert not offenders, "use `from minimech.notebook import tqdm`:\n" + "\n".join(offenders)


def test_forward_progress_counts_forward_passes_and_changes_nothing():
    """A lesson's bar for a learner's loop of runs (04.6's causal trace on GPT-2: minutes): one step per forward
    pass in the block, the outputs exactly as without it, and no hook left behind."""
    import torch

    import minimech
    from minimech.notebook import forward_progress

    model = minimech.load("attn-only-2l")
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 5), generator=torch.Generator().manual_seed(0))
    plain = model(tokens)
    with forward_progress(model, total=4) as bar:
        inside = [model(tokens) for _ in range(3)]
        model.run_with_cache(tokens)
    assert bar.n == 4 and all(torch.equal(out, plain) for out in inside)
    assert not any(point.fns for point in model.hook_dict.values())
    # a run that starts after the embeddings (causal_trace's restored runs) counts once, where it reaches ln_final;
    # one that stops before ln_final counts where it starts
    resid = model(tokens, stop_at_layer=1)  # [2, 5, d_model]
    with forward_progress(model) as bar:
        model(resid, start_at_layer=1)
        model(tokens, stop_at_layer=1)
        model(tokens)
    assert bar.n == 3
    assert not any(point.fns for point in model.hook_dict.values())
