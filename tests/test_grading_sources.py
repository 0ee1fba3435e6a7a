"""What a learner hands in besides a clean UTF-8 lesson.py: a Jupyter notebook with scratch cells (a cell that
raises, IPython syntax, display()), and .py files saved with a BOM or in latin-1. The exercises in them are graded
on the fixture lesson (tests/fixtures/lessons/99_fixture) as if the rest were clean."""

import inspect
import json
import sys
import traceback
from pathlib import Path

import pytest

from minimech.grading import get_lesson, run_checks
from minimech.grading.lessons import load_module
from minimech.grading.runner import is_learner_code
from minimech.grading.source import ipython_to_python, notebook_to_script, stubs

ROOT = Path(__file__).resolve().parent / "fixtures" / "lessons"

IMPORTS = "import torch\n"
SOFTMAX = ("def softmax(x, dim=-1):\n"
           "    e = (x - x.amax(dim, keepdim=True)).exp()\n"
           "    return e / e.sum(dim, keepdim=True)\n")
CAUSAL_MASK = "def causal_mask(n):\n    return torch.ones(n, n).tril().bool()\n"

# the scratch cells the grader used to choke on (the whole notebook scored 0), each followed by the next cell
BAD_CELLS = {
    "raises": "x = undefined_name + 1\n",
    "display": "display(torch.ones(2))\n",
    "bash": "%%bash\nls -la\necho 'hi there\n",
    "help": "torch.ones?\n",
    "help_before": "??torch.ones\n",
    "shell_assignment": "files = !ls\nprint(len(files))\n",
    "indented_shell": "if True:\n    !nvidia-smi\n",
    "magics": "%matplotlib inline\n%load_ext autoreload\nnow = %time\n",
    "writefile": "%%writefile notes.txt\nnot python at all (\n",
    "syntax_error": "def helper(:\n    pass\n",
}


@pytest.fixture(scope="module")
def lesson():
    return get_lesson("99", ROOT)


def write_notebook(path: Path, cells: list[str], markdown_first: bool = True) -> Path:
    """cells as a notebook's code cells (nbformat 4 JSON), after a markdown cell."""
    code = [{"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
             "source": text.splitlines(keepends=True)} for text in cells]
    markdown = [{"cell_type": "markdown", "metadata": {}, "source": ["# My notebook\n", "Notes?"]}]
    notebook = {"cells": (markdown if markdown_first else []) + code, "metadata": {}, "nbformat": 4,
                "nbformat_minor": 5}
    path.write_text(json.dumps(notebook), encoding="utf-8")
    return path


def statuses(report) -> dict[str, str]:
    return {e.id: e.status for e in report.exercises}


# ---- notebooks: a bad cell costs only itself --------------------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(BAD_CELLS))
def test_a_bad_scratch_cell_leaves_the_exercise_cells_graded(lesson, tmp_path, kind):
    path = write_notebook(tmp_path / "lesson.ipynb", [IMPORTS, BAD_CELLS[kind], SOFTMAX, BAD_CELLS[kind],
                                                      CAUSAL_MASK])
    report = run_checks(lesson, path, exercises=["1", "2"], seed=5, isolate=False)
    assert statuses(report) == {"99.1": "pass", "99.2": "pass"}, report.exercises
    assert report.learner_file == str(path)


def test_a_notebook_of_every_bad_cell_grades_in_the_isolated_child(lesson, tmp_path):
    path = write_notebook(tmp_path / "lesson.ipynb", [IMPORTS, *BAD_CELLS.values(), SOFTMAX, CAUSAL_MASK])
    report = run_checks(lesson, path, exercises=["1", "2"], seed=5)
    assert statuses(report) == {"99.1": "pass", "99.2": "pass"}, report.exercises


def test_cells_run_from_the_notebooks_own_cells_so_library_traps_and_inspect_see_them(lesson, tmp_path):
    cheat = "def softmax(x, dim=-1):\n    return torch.softmax(x, dim)\n"
    path = write_notebook(tmp_path / "lesson.ipynb", [IMPORTS, cheat, CAUSAL_MASK])
    report = run_checks(lesson, path, exercises=["1", "2"], seed=5, isolate=False)
    assert statuses(report) == {"99.1": "forbidden import", "99.2": "pass"}, report.exercises

    script = tmp_path / "script.py"
    script.write_text(notebook_to_script(path), encoding="utf-8")
    module = load_module(script, "_test_notebook_cells", register=False)
    filename = module.softmax.__code__.co_filename
    assert filename == f"{script.resolve()} cell 3" and is_learner_code(filename, str(script.resolve()))
    assert inspect.getsource(module.causal_mask) == CAUSAL_MASK
    assert not hasattr(module, "_run_notebook_cell")  # the driver leaves only the learner's names behind


def test_a_failing_cell_is_reported_by_number_and_line_and_the_next_cells_run(tmp_path, capsys):
    cells = [IMPORTS,
             "def early():\n    return 1\nboom = 1 / 0\n",  # defined before the error: kept, as in Jupyter
             "def causal_mask(n:\n    pass\n",  # never defined: a stand-in says why
             "def broken():\n    return undefined_name\n",
             "after = early() + 1\n"]
    path = write_notebook(tmp_path / "lesson.ipynb", cells)
    script = tmp_path / "script.py"
    script.write_text(notebook_to_script(path), encoding="utf-8")
    module = load_module(script, "_test_notebook_failures", register=False)
    err = capsys.readouterr().err
    assert "cell 3 failed (line 3): ZeroDivisionError: division by zero" in err
    assert "cell 4 failed (line 1): SyntaxError" in err
    assert module.early() == 1 and module.after == 2
    with pytest.raises(NameError, match=r"causal_mask\(\) was never defined: your notebook's cell 4 failed"):
        module.causal_mask(3)
    with pytest.raises(NameError) as caught:  # the learner's own bug: the traceback shows the cell's line
        module.broken()
    frame = traceback.extract_tb(caught.value.__traceback__)[-1]
    assert (frame.filename, frame.lineno, frame.line) == (f"{script.resolve()} cell 5", 2, "return undefined_name")


def test_sys_exit_in_a_cell_still_ends_the_import(tmp_path):
    path = write_notebook(tmp_path / "lesson.ipynb", ["import sys\nsys.exit(4)\n", "reached = True\n"])
    script = tmp_path / "script.py"
    script.write_text(notebook_to_script(path), encoding="utf-8")
    with pytest.raises(SystemExit):
        load_module(script, "_test_notebook_exit", register=False)


def test_ipython_lines_become_python_on_the_same_lines_and_strings_are_left_alone():
    assert ipython_to_python("files = !ls -la\nx, y = %who_ls\n") == (
        "files = []  # files = !ls -la\nx, y = None  # x, y = %who_ls\n")
    # `pass` where a block needs a statement, else a comment (valid at any indentation, as IPython is)
    assert ipython_to_python("if True:\n    !pip install einops\n    ?torch\nx = 1\n  !ls\n") == (
        "if True:\n    pass  # !pip install einops\n    # ?torch\nx = 1\n  # !ls\n")
    assert ipython_to_python("torch.ones??  # help\n%time y = f(x)\n%timeit -n 3 f(x)\n") == (
        "# torch.ones??  # help\ny = f(x)\n# %timeit -n 3 f(x)\n")
    assert ipython_to_python("%%time\ny = 2\n") == "# %%time\ny = 2\n"
    for other_language in ("%%bash\nls\n", "%%html\n<b>hi</b>\n", "%%writefile a.py\nx = 1\n", "\n%%sh\nls\n"):
        assert ipython_to_python(other_language) is None
    python = ('def f(x):\n    """Is this right?\n    %d percent\n    !important\n    """\n    return x % 2  # ok?\n'
              's = ("why?",\n     "%s" % 1)\ncall(a,\n  b) if x != 1 else None\nt = "a" \\\n    "?"\n')
    assert ipython_to_python(python) == python


def test_notebook_script_keeps_markdown_numbers_cells_and_defines_display_only_when_used(tmp_path):
    path = write_notebook(tmp_path / "lesson.ipynb", ["x = 1\n", "%%bash\necho hi\n"])
    script = notebook_to_script(path)
    assert "# %% [markdown]\n# # My notebook\n# Notes?" in script
    assert "# %% cell 2\n_run_notebook_cell(globals(), 2, 'x = 1\\n')" in script
    assert "# %% cell 3: skipped (%%bash runs another language)\n# %%bash\n# echo hi" in script
    assert "display" not in script
    namespace = {}
    exec(compile(notebook_to_script(write_notebook(path, ["display(3)\n", "y = 4\n"])), str(path), "exec"),
         namespace)
    assert namespace["y"] == 4


def test_stubs_counts_a_notebooks_cells_so_the_worked_file_of_two_is_graded(lesson, tmp_path):
    from minimech.grading.classroom import find_submission_file

    handout = lesson.file("lesson.py").read_text()
    write_notebook(tmp_path / "lesson.ipynb", [handout, SOFTMAX, "def broken(:\n"])  # softmax redefined, solved
    script = tmp_path / "script.py"
    script.write_text(notebook_to_script(tmp_path / "lesson.ipynb"), encoding="utf-8")
    assert stubs(script) == ["causal_mask", "last_logits"]
    (tmp_path / "lesson.py").write_text(IMPORTS + SOFTMAX + CAUSAL_MASK + "def last_logits(model, tokens):\n"
                                        "    return model(tokens)[:, -1]\n")
    assert find_submission_file(tmp_path).name == "lesson.py"  # worked .py beside a half-done notebook


def test_a_notebook_saved_with_a_bom_reads(lesson, tmp_path):
    path = write_notebook(tmp_path / "lesson.ipynb", [IMPORTS, SOFTMAX])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert statuses(run_checks(lesson, path, exercises="1", seed=5, isolate=False)) == {"99.1": "pass"}


# ---- .py files in other encodings -------------------------------------------------------------------------------

CAFE = "# café, by René\nimport torch\n\nNAME = 'René'\n\n" + SOFTMAX


@pytest.mark.parametrize("kind", ["bom", "latin1_cookie", "latin1_undeclared_comment"])
def test_a_py_file_python_would_read_imports_and_grades(lesson, tmp_path, kind, capsys):
    data = {"bom": b"\xef\xbb\xbf" + CAFE.encode("utf-8"),
            "latin1_cookie": ("# -*- coding: latin-1 -*-\n" + CAFE).encode("latin-1"),
            "latin1_undeclared_comment": CAFE.replace("NAME = 'René'", "NAME = 'Rene'").encode("latin-1")}[kind]
    path = tmp_path / "lesson.py"
    path.write_bytes(data)
    module = load_module(path, f"_test_encoding_{kind}", register=False)
    assert module.NAME in ("René", "Rene") and module.__file__ == str(path.resolve())
    assert statuses(run_checks(lesson, path, exercises="1", seed=5, isolate=False)) == {"99.1": "pass"}


def test_undeclared_latin1_in_code_is_replaced_with_a_warning_and_real_errors_stand(tmp_path, capsys):
    path = tmp_path / "lesson.py"
    path.write_bytes(CAFE.encode("latin-1"))  # NAME = 'René' in latin-1, no coding line: not UTF-8
    module = load_module(path, "_test_encoding_replaced", register=False)
    assert module.NAME == "Ren\ufffd" and callable(module.softmax)
    assert "lesson.py line 1 is not utf-8 (byte 0xe9)" in capsys.readouterr().err
    assert "_test_encoding_replaced" not in sys.modules

    path.write_bytes("def f(:\n    return 'René'\n".encode("latin-1"))
    with pytest.raises(SyntaxError):
        load_module(path, "_test_encoding_syntax", register=False)
    path.write_bytes(b"# coding: no-such-codec\nx = 1\n")
    with pytest.raises(SyntaxError, match="unknown encoding"):
        load_module(path, "_test_encoding_unknown", register=False)
