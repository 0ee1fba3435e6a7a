"""The notebook route of the lessons: `minimech start ID --notebook` writes a notebook that `minimech check` grades,
and a lesson's notebook, executed in a real Jupyter kernel (nbclient), shows its figures inline.

Ground truth: nbformat's validator for the file, the grader's statuses for the checks, the kernel's own outputs
(image/png display data) for the figures, and the PNG files the same cells write.
"""

import json
from pathlib import Path

import matplotlib
import pytest

from minimech.grading import fill_solutions, run_checks
from minimech.grading import workspace as ws
from minimech.grading.lessons import read_lesson
from minimech.notebook import show

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LESSONS = Path(__file__).resolve().parent.parent / "lessons"
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "lessons" / "99_fixture"


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


def test_lesson_notebook_runs_in_a_kernel_with_its_figures_inline(tmp_path):
    """Lesson 00 with the solutions filled in, as a notebook, executed by nbclient: every figure the cells save is
    displayed once as image/png, no cell fails, and a progress bar prints no 'IProgress not found' warning."""
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nbformat = pytest.importorskip("nbformat")
    notebook = jupytext.reads(fill_solutions(read_lesson(LESSONS / "00_gpt2_from_scratch")), fmt="py:percent")
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
