"""The grader on a fixture lesson (tests/fixtures/lessons/99_fixture) and a class of fake submissions: one right,
one partly right, and one each that crashes, hangs, exits, eats memory, imports the solutions, changes the model,
is untouched, is missing, or does not parse. The CSV and Gradescope results are checked field by field."""

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from minimech.cli import main
from minimech.grading import close, expect_shape, fill_solutions, get_lesson, run_checks
from minimech.grading.classroom import csv_text, grade_submissions, write_outputs
from minimech.grading.lessons import load_checks
from minimech.grading.runner import build_cases
from minimech.grading.wire import decode, encode, tensors_from_bytes, tensors_to_bytes

from conftest import swap

ROOT = Path(__file__).resolve().parent / "fixtures" / "lessons"
POINTS = {"99.1": 2.0, "99.2": 1.0, "99.3": 3.0}
PARTIAL_SOFTMAX = 2.0 * 4 / 6  # passes the dim=-1 cases (weights 1, 1, 2) of 6, fails dim=0 and dim=1


@pytest.fixture(scope="module")
def lesson():
    return get_lesson("99", ROOT)


LOAD_BY_PATH = """import importlib.util, sys
spec = importlib.util.spec_from_file_location("sol", "{path}")
sys.modules["sol"] = module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
return module.causal_mask(n)"""


def fake_class(lesson, folder: Path) -> dict[str, str]:
    """Write one folder per fake student; returns {student: what it does}."""
    right = fill_solutions(lesson)
    stub = lesson.file("lesson.py").read_text()
    students = {
        "correct": right,
        "partial": swap(swap(right, "softmax", "e = (x - x.amax(-1, keepdim=True)).exp()\n"
                                               "return e / e.sum(-1, keepdim=True)"),
                        "last_logits", 'raise NotImplementedError("EXERCISE 99.3: ...")'),
        "crashing": swap(right, "softmax", "import ctypes\nreturn ctypes.string_at(0)"),
        "hanging": swap(right, "causal_mask", "while True:\n    pass"),
        "exiting": swap(swap(right, "softmax", "import sys\nsys.exit(3)"), "causal_mask", "import os\nos._exit(0)"),
        # a MemoryError from Python, then a RuntimeError from torch's allocator (untouched pages: fast)
        "memory_bomb": swap(swap(right, "softmax", "return bytearray(1 << 40)"),
                            "causal_mask", "hoard = []\nwhile True:\n    hoard.append(torch.empty(10**8))"),
        "imports_solutions": swap(swap(right, "softmax", "from solutions import softmax as theirs\nreturn theirs(x, dim)"),
                                  "causal_mask", LOAD_BY_PATH.format(path=lesson.path / "solutions.py")),
        "mutates_model": swap(right, "last_logits", "model.embed.W_E.data.mul_(0)\nreturn model(tokens)[:, -1]"),
        "untouched": stub,
        "syntax_error": right.replace("def causal_mask(n: int)", "def causal_mask(n: int"),
    }
    for name, text in students.items():
        (folder / name).mkdir(parents=True)
        (folder / name / "lesson.py").write_text(text)
    # the partly right file, handed in as the Jupyter notebook a learner made from it (with an IPython magic)
    (folder / "notebook").mkdir()
    (folder / "notebook" / "lesson.ipynb").write_text(as_notebook("%matplotlib inline\n" + students["partial"]))
    (folder / "missing").mkdir()
    (folder / "missing" / "notes.txt").write_text("forgot the file")
    (folder / "missing" / "a.py").write_text("x = 1\n")
    (folder / "missing" / "b.py").write_text("y = 2\n")
    # a real lessons-folder solutions.py on the path, as a cheater would arrange
    shutil.copy(lesson.path / "solutions.py", folder / "imports_solutions" / "solutions.py")
    return students


def as_notebook(text: str) -> str:
    """A percent-format script as .ipynb JSON: a code cell per `# %%` block (what jupytext would make)."""
    blocks = [b for b in re.split(r"^# %%.*$", text, flags=re.M) if b.strip()]
    cells = [{"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
              "source": b.strip("\n").splitlines(keepends=True)} for b in blocks]
    return json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# statuses and scores each fake student must get: {student: {exercise: (status, score)}}
EXPECTED = {
    "correct": {"99.1": ("pass", 2), "99.2": ("pass", 1), "99.3": ("pass", 3)},
    "partial": {"99.1": ("fail", PARTIAL_SOFTMAX), "99.2": ("pass", 1), "99.3": ("not attempted", 0)},
    "notebook": {"99.1": ("fail", PARTIAL_SOFTMAX), "99.2": ("pass", 1), "99.3": ("not attempted", 0)},
    "crashing": {"99.1": ("error", 0), "99.2": ("pass", 1), "99.3": ("pass", 3)},
    "hanging": {"99.1": ("pass", 2), "99.2": ("timeout", 0), "99.3": ("pass", 3)},
    "exiting": {"99.1": ("exited", 0), "99.2": ("exited", 0), "99.3": ("pass", 3)},
    "memory_bomb": {"99.1": ("memory", 0), "99.2": ("memory", 0), "99.3": ("pass", 3)},
    "imports_solutions": {"99.1": ("forbidden import", 0), "99.2": ("forbidden import", 0), "99.3": ("pass", 3)},
    "mutates_model": {"99.1": ("pass", 2), "99.2": ("pass", 1), "99.3": ("model mutated", 0)},
    "untouched": {e: ("not attempted", 0) for e in POINTS},
    "syntax_error": {e: ("error", 0) for e in POINTS},
    "missing": {e: ("error", 0) for e in POINTS},
}
MESSAGES = {  # a fragment of each lost exercise's message
    ("crashing", "99.1"): "SIGSEGV", ("hanging", "99.2"): "took over", ("exiting", "99.1"): "sys.exit(3)",
    ("exiting", "99.2"): "exited with status 0", ("memory_bomb", "99.2"): "memory",
    ("imports_solutions", "99.1"): "'solutions'", ("imports_solutions", "99.2"): "solutions.py",
    ("mutates_model", "99.3"): "parameter embed.W_E",
    ("syntax_error", "99.1"): "SyntaxError", ("missing", "99.1"): "no lesson.py",
    ("partial", "99.1"): "wrong axis", ("notebook", "99.1"): "wrong axis",
}


@pytest.fixture(scope="module")
def graded(lesson, tmp_path_factory):
    folder = tmp_path_factory.mktemp("submissions")
    fake_class(lesson, folder)
    before = tree_digest(folder), tree_digest(lesson.path)
    grades = grade_submissions(lesson, folder, jobs=2, seed=1234, time_limit_s=4)
    out = tmp_path_factory.mktemp("out")
    write_outputs(grades, out / "grades.csv", out / "results.json")
    return grades, out, before, (tree_digest(folder), tree_digest(lesson.path))


@pytest.mark.parametrize("student", sorted(EXPECTED))
def test_each_student_gets_each_status_and_score(graded, student):
    grades, *_ = graded
    report = grades.reports[student]
    got = {e.id: (e.status, e.score) for e in report.exercises}
    for ex_id, (status, score) in EXPECTED[student].items():
        assert got[ex_id][0] == status, (student, ex_id, report.result(ex_id).message)
        assert got[ex_id][1] == pytest.approx(score, abs=1e-3), (student, ex_id)
        message = report.result(ex_id).message
        if (student, ex_id) in MESSAGES:
            assert MESSAGES[student, ex_id].lower() in message.lower(), message


def test_grading_changes_no_file_of_the_lesson_or_the_submissions(graded):
    _, _, before, after = graded
    assert before == after


def test_csv_has_one_row_per_student_and_a_column_per_exercise(graded):
    grades, out, *_ = graded
    rows = list(csv.DictReader((out / "grades.csv").open()))
    assert list(rows[0]) == ["student", *POINTS, "total", "notes"]
    assert [r["student"] for r in rows] == sorted(EXPECTED)
    for row in rows:
        expected = EXPECTED[row["student"]]
        for ex_id in POINTS:
            assert float(row[ex_id]) == pytest.approx(expected[ex_id][1], abs=1e-3)
        assert float(row["total"]) == pytest.approx(sum(s for _, s in expected.values()), abs=1e-3)
        for ex_id, (status, _) in expected.items():
            assert (f"{ex_id} {status}" in row["notes"]) == (status != "pass")
    assert (out / "grades.csv").read_text() == csv_text(grades)


def test_gradescope_results_follow_the_schema(graded, lesson):
    grades, out, *_ = graded
    results = json.loads((out / "results.json").read_text())
    assert sorted(results) == sorted(EXPECTED)
    for student, result in results.items():
        assert set(result) >= {"score", "tests", "output", "execution_time"}
        tests = result["tests"]
        assert [t["number"] for t in tests] == list(POINTS)
        assert sum(t["max_score"] for t in tests) == sum(POINTS.values()) == lesson.total_points
        for test in tests:
            status, score = EXPECTED[student][test["number"]]
            assert set(test) >= {"name", "score", "max_score", "status", "output"}
            assert test["max_score"] == POINTS[test["number"]]
            assert test["score"] == pytest.approx(score, abs=1e-3)
            assert test["status"] == ("passed" if status == "pass" else "failed")
            assert test["output"].startswith(status) and isinstance(test["name"], str)
        assert result["score"] == pytest.approx(sum(t["score"] for t in tests))
    assert "seed 1234" in results["correct"]["output"]


def test_failure_messages_show_the_learners_value_never_the_reference(lesson, tmp_path):
    """A softmax in reverse order (each row still sums to 1): the message names the first wrong index and the
    learner's value there, and not the right value."""
    reversed_softmax = swap(fill_solutions(lesson), "softmax", "e = (x - x.amax(dim, keepdim=True)).exp()\n"
                                                               "return (e / e.sum(dim, keepdim=True)).flip(dim)")
    (tmp_path / "lesson.py").write_text(reversed_softmax)
    report = run_checks(lesson, tmp_path / "lesson.py", exercises="1", seed=7, isolate=False)
    message = report.exercises[0].message
    assert report.exercises[0].status == "fail" and message.startswith("case 1 ("), message
    x = build_cases(load_checks(lesson)[0], 7, "mini-4l")[0].args["x"]  # [5], the first case's input
    right, theirs = torch.softmax(x, -1), torch.softmax(x, -1).flip(-1)
    first = int((~torch.isclose(theirs, right, rtol=1e-5, atol=1e-6)).nonzero()[0])
    assert f"index ({first},)" in message and f"{theirs[first].item():.6g}" in message
    assert f"{right[first].item():.4g}" not in message


# ---- pieces ----------------------------------------------------------------------------------------------------

def test_close_names_the_first_broken_property():
    want = torch.arange(6.0).reshape(2, 3)
    assert close(want.clone(), want) is None
    assert "shape [3, 2]" in close(want.T.clone(), want)
    assert "is a list" in close([1.0], want)
    assert "NaN (first at index (0, 1))" in close(torch.tensor([[0.0, float("nan"), 2], [3, 4, 5]]), want)
    odd = 1.1 * want + 0.3  # [[0.3, 1.4, 2.5], [3.6, 4.7, 5.8]]
    wrong = odd.clone()
    wrong[1, 2] = 7.25
    message = close(wrong, odd)
    assert "1 of 6 entries" in message and "index (1, 2)" in message and "7.25" in message and "5.8" not in message
    assert "bool" in close(torch.ones(2, 2), torch.ones(2, 2, dtype=torch.bool))
    assert close((1, "a", {"k": 2.0}), (1, "a", {"k": 2.0})) is None
    assert "[2]['k']" in close((1, "a", {"k": 2.5}), (1, "a", {"k": 2.0}))
    assert expect_shape(torch.zeros(2, 5), (2, None)) is None and "expected shape [3, 'any']" in expect_shape(
        torch.zeros(2, 5), (3, None))


def test_wire_round_trip_without_pickle():
    value = {"a": torch.randn(2, 3), "b": (1, 2.5, float("nan"), None, True, "s", [torch.tensor([True, False])]),
             "c": torch.arange(3, dtype=torch.int64), "big": 2**70}
    tensors: dict = {}
    structure = json.loads(json.dumps(encode(value, tensors, "c0")))
    back = decode(structure, tensors_from_bytes(tensors_to_bytes(tensors)))
    assert torch.equal(back["a"], value["a"]) and torch.equal(back["c"], value["c"]) and back["big"] == 2**70
    assert back["b"][:2] == (1, 2.5) and back["b"][2] != back["b"][2] and back["b"][3:6] == (None, True, "s")
    assert torch.equal(back["b"][6][0], value["b"][6][0]) and isinstance(back["b"], tuple)


def test_a_hook_left_attached_counts_as_changing_the_model(lesson, tmp_path):
    body = "model.blocks[0].attn.hook_z.fns.append(lambda x, hook: None)\nreturn model(tokens)[:, -1]"
    (tmp_path / "lesson.py").write_text(swap(fill_solutions(lesson), "last_logits", body))
    report = run_checks(lesson, tmp_path / "lesson.py", exercises=["99.3"], seed=3, isolate=False)
    assert report.exercises[0].status == "model mutated" and "hook attached" in report.exercises[0].message


def test_a_later_exercise_calling_an_unwritten_one_says_so(lesson, tmp_path):
    body = "return softmax(model(tokens)[:, -1]).log()"  # 99.1 is still a stub
    (tmp_path / "lesson.py").write_text(swap(lesson.file("lesson.py").read_text(), "last_logits", body))
    report = run_checks(lesson, tmp_path / "lesson.py", exercises=["3"], seed=3, isolate=False)
    result = report.exercises[0]
    assert result.status == "error" and "exercise 99.1, which is not written yet" in result.message


# ---- commands ---------------------------------------------------------------------------------------------------

def test_learner_commands_start_check_hint_solution_lessons(lesson, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINIMECH_LESSONS", str(ROOT))
    monkeypatch.chdir(tmp_path)
    workspace = tmp_path / "ws"
    assert main(["start", "99", "--dir", str(workspace)]) == 0
    mine = workspace / "99_fixture" / "lesson.py"
    assert mine.read_text() == lesson.file("lesson.py").read_text()
    assert not (workspace / "99_fixture" / "solutions.py").exists()
    mine.write_text(swap(mine.read_text(), "causal_mask", "return torch.ones(n, n).tril().bool()"))
    assert main(["start", "99", "--dir", str(workspace)]) == 1  # never overwrites the learner's work
    capsys.readouterr()
    assert main(["check", "99", "--dir", str(workspace), "--seed", "5"]) == 1  # not every exercise passes yet
    out = capsys.readouterr().out
    assert "99.2      Causal mask           pass" in out and "not attempted" in out and "total 1/6" in out
    assert main(["hint", "99.1", "--dir", str(workspace)]) == 0 and main(["hint", "99.1", "--dir", str(workspace)]) == 0
    out = capsys.readouterr().out
    assert "hint 1 of 2" in out and "hint 2 of 2" in out and "last hint" in out
    assert main(["solution", "99.2", "--yes", "--dir", str(workspace)]) == 0
    assert "tril" in capsys.readouterr().out
    assert main(["lessons", "--dir", str(workspace)]) == 0
    assert "1/3 passed" in capsys.readouterr().out
    progress = json.loads((workspace / "minimech-progress.json").read_text())["lessons"]["99"]
    assert progress["hints"] == {"99.1": 2} and progress["solutions_seen"] == ["99.2"]
    assert progress["exercises"]["99.2"]["status"] == "pass"


def test_handout_has_no_solutions_and_refuses_a_solved_lesson(lesson, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINIMECH_LESSONS", str(ROOT))
    assert main(["handout", "99", "--out", str(tmp_path / "h")]) == 0
    assert sorted(p.name for p in (tmp_path / "h" / "99_fixture").iterdir()) == ["README.md", "hints.md", "lesson.py"]
    solved = tmp_path / "solved" / "99_fixture"
    shutil.copytree(lesson.path, solved)
    (solved / "lesson.py").write_text(fill_solutions(lesson))
    capsys.readouterr()
    assert main(["handout", str(solved), "--out", str(tmp_path / "h2")]) == 1
    assert "would carry its solution" in capsys.readouterr().err


def test_grade_command_writes_outputs_even_when_checks_py_is_broken(lesson, tmp_path, monkeypatch, capsys):
    broken = tmp_path / "lessons" / "99_fixture"
    shutil.copytree(lesson.path, broken)
    (broken / "checks.py").write_text("raise RuntimeError('checks.py is broken')\n")
    monkeypatch.setenv("MINIMECH_LESSONS", str(broken.parent))
    subs = tmp_path / "subs"
    (subs / "ann").mkdir(parents=True)
    (subs / "ann" / "lesson.py").write_text(fill_solutions(lesson))
    assert main(["grade", "99", str(subs), "--csv", str(tmp_path / "g.csv"),
                 "--gradescope", str(tmp_path / "r.json")]) == 1  # written, but the command says it failed
    result = json.loads((tmp_path / "r.json").read_text())["ann"]
    assert result["score"] == 0 and sum(t["max_score"] for t in result["tests"]) == 6
    assert all("checks.py is broken" in t["output"] for t in result["tests"])
    assert next(csv.DictReader((tmp_path / "g.csv").open()))["total"] == "0"


def test_grade_help_names_the_sandboxes(capsys):
    assert main(["grade", "--help"]) == 0
    assert "MINIMECH_SANDBOX=user|bwrap|none" in " ".join(capsys.readouterr().out.split())


def test_autograder_zip_runs_on_a_gradescope_layout(lesson, tmp_path, monkeypatch):
    monkeypatch.setenv("MINIMECH_LESSONS", str(ROOT))
    assert main(["autograder", "99", "--out", str(tmp_path / "autograder.zip")]) == 0
    root = tmp_path / "autograder"
    with zipfile.ZipFile(tmp_path / "autograder.zip") as archive:
        names = archive.namelist()
        archive.extractall(root / "source")
    needed = {"setup.sh", "run_autograder", "minimech/lessons/99_fixture/checks.py", "minimech/weights/DEFAULT"}
    assert needed <= set(names)
    assert not any(n.endswith(("solutions.py", "bugs.py")) for n in names)
    shutil.copy(root / "source" / "run_autograder", root / "run_autograder")  # as Gradescope does
    (root / "submission" / "99_fixture").mkdir(parents=True)
    partial = swap(fill_solutions(lesson), "last_logits", 'raise NotImplementedError("EXERCISE 99.3")')
    (root / "submission" / "99_fixture" / "lesson.py").write_text(partial)
    env = {k: v for k, v in os.environ.items() if k not in ("MINIMECH_LESSONS", "PYTHONPATH")}
    env.update(MINIMECH_AUTOGRADER_ROOT=str(root), MINIMECH_PYTHON=sys.executable)
    run = subprocess.run(["bash", str(root / "run_autograder")], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads((root / "results" / "results.json").read_text())
    assert [(t["number"], t["status"], t["score"], t["max_score"]) for t in result["tests"]] == [
        ("99.1", "passed", 2.0, 2.0), ("99.2", "passed", 1.0, 1.0), ("99.3", "failed", 0.0, 3.0)]
    assert result["score"] == 3.0
    # the grader itself cannot start: run_autograder still leaves a valid results.json, every test at zero
    env["MINIMECH_PYTHON"] = "false"
    subprocess.run(["bash", str(root / "run_autograder")], env=env, check=True, timeout=60)
    fallback = json.loads((root / "results" / "results.json").read_text())
    assert fallback["score"] == 0 and sum(t["max_score"] for t in fallback["tests"]) == 6


def test_notebook_to_script_keeps_code_comments_markdown_and_magics_and_refuses_a_broken_file(tmp_path):
    from minimech.grading.api import GradingError
    from minimech.grading.source import notebook_to_script

    nb = {"cells": [{"cell_type": "markdown", "source": "# Title\n\nSome text"},
                    {"cell_type": "code", "source": ["%matplotlib inline\n", "x = 1\n", "  !ls\n", "y = x % 2"]},
                    {"cell_type": "raw", "source": "ignored"}], "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "lesson.ipynb"
    path.write_text(json.dumps(nb))
    script = notebook_to_script(path)
    assert "# %% [markdown]\n# # Title\n#\n# Some text" in script  # markdown kept as comments
    # the code cell runs on its own (a failing cell does not stop the next), its magics and shell lines as comments
    assert "_run_notebook_cell(globals(), 2, '# %matplotlib inline\\nx = 1\\n  # !ls\\ny = x % 2\\n')" in script
    namespace = {}
    exec(compile(script, str(path), "exec"), namespace)
    assert namespace["y"] == 1
    path.write_text("{not json")
    with pytest.raises(GradingError, match="not a readable Jupyter notebook"):
        notebook_to_script(path)
