"""Every lesson folder (lessons/NN_name, plus the grader's fixture lesson) keeps the lesson contract:

(a) lesson.py with solutions.py's functions filled in passes every check;
(b) the untouched lesson.py gives "not attempted" for every exercise;
(c) every planted bug in bugs.py fails its exercise with its message fragment, and every exercise has one;
(d) lesson.py with the solutions filled in runs top to bottom as a script;
(e) lesson.json's points cover exactly checks.EXERCISES; each exercise is a stub in lesson.py with hints.
(a)-(c) run in this process for speed; (a) also runs once isolated, as `minimech check` runs it.
"""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from minimech.grading import fill_solutions, lessons_root, load_bugs, load_checks, read_hints, run_checks
from minimech.grading.checking import Oracle
from minimech.grading.lessons import LESSON_DIR, get_lesson, read_lesson
from minimech.grading.source import stubs

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "lessons" / "99_fixture"
FOLDERS = sorted(p for p in lessons_root().iterdir() if p.is_dir() and LESSON_DIR.match(p.name)) + [FIXTURE]
SCRIPT_LIMIT_S = 240
# One torch thread (small models: threads only add hand-offs on a shared machine); MINIMECH_QUICK: lessons shorten
# their training demos, since these runs check that the script runs, not what the training shows.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MINIMECH_QUICK": "1"}
# Lessons whose untouched file is run as a script (about 5-10 s each): every lesson.
STUB_RUNS = [p.name[:2] for p in FOLDERS if p != FIXTURE]


@pytest.fixture(scope="module", params=FOLDERS, ids=lambda p: p.name)
def lesson(request):
    return read_lesson(request.param)


@pytest.fixture(scope="module")
def filled(lesson, tmp_path_factory):
    """lesson.py with the solutions filled in, as a file in a folder of its own."""
    path = tmp_path_factory.mktemp(f"filled_{lesson.id}") / "lesson.py"
    path.write_text(fill_solutions(lesson))
    return path


def statuses(report) -> dict[str, str]:
    return {e.id: e.status for e in report.exercises}


def explain(report) -> str:
    return "\n".join(f"{e.id} {e.status}: {e.message}" for e in report.exercises if e.status != "pass")


def test_points_cover_exactly_the_exercises_and_each_is_a_stub_with_hints(lesson):
    exercises = load_checks(lesson)
    assert list(lesson.points) == [e.id for e in exercises], "lesson.json's points must list checks.EXERCISES in order"
    assert all(p > 0 for p in lesson.points.values())
    assert [e.number for e in exercises] == list(range(1, len(exercises) + 1))
    lesson_py = lesson.file("lesson.py")
    assert set(stubs(lesson_py)) >= {e.function for e in exercises}
    text = lesson_py.read_text()
    assert "MAIN = __name__ == \"__main__\"" in text
    for e in exercises:
        assert f"# EXERCISE {e.id}" in text and f'NotImplementedError("EXERCISE {e.id}' in text, e.id
    hints = read_hints(lesson)
    assert all(hints.get(e.id) for e in exercises), f"hints.md lacks {[e.id for e in exercises if not hints.get(e.id)]}"
    checks_tree = ast.parse(lesson.file("checks.py").read_text())
    imported = {a.name for n in ast.walk(checks_tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(checks_tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {m for m in imported if m.split(".")[0] == "solutions"}, "checks.py must not import solutions"
    assert not [n.name for n in ast.walk(checks_tree) if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]
    assert lesson.file("README.md").read_text().strip()


def test_readme_exercise_table_matches_the_points(lesson):
    """A README's table of exercises (| 02.3 | what you write | points |), where it has one, lists exactly the
    exercises of lesson.json, in order, with their points: the figures a learner plans by stay true."""
    rows = re.findall(r"^\| (\d\d\.\d+) \|.*\| (\d+) \|$", lesson.file("README.md").read_text(), re.M)
    if rows:
        assert [(ex_id, int(points)) for ex_id, points in rows] == list(lesson.points.items())


def test_predictions_are_declared_numbered_and_asked_in_their_own_cells(lesson):
    """lesson.json's "predictions" (optional) name prediction_1, prediction_2, ... in order; lesson.py assigns each
    `prediction_k = None` at module level, in that order, in a code cell right after a markdown cell (the question)."""
    declared = list(lesson.settings.get("predictions", {}))
    assert declared == [f"prediction_{k}" for k in range(1, len(declared) + 1)], declared
    assert all(isinstance(q, str) and q.strip() for q in lesson.settings.get("predictions", {}).values())
    text = lesson.file("lesson.py").read_text()
    tree = ast.parse(text)
    assigned = [(t.id, n.lineno) for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
                if isinstance(t, ast.Name) and t.id.startswith("prediction_")]
    assert [name for name, _ in assigned] == declared, "lesson.py's prediction_k = None cells and lesson.json differ"
    lines = text.splitlines()
    for name, line in assigned:
        assert lines[line - 1].split("#")[0].replace(" ", "") == f"{name}=None", lines[line - 1]
        cells = [i for i in range(line - 1) if lines[i].startswith("# %%")]
        assert cells and lines[cells[-1]].strip() == "# %%", f"{name} must open a code cell of its own"
        assert len(cells) > 1 and lines[cells[-2]].startswith("# %% [markdown]"), f"{name}: ask the question first"


def test_uses_name_earlier_exercises_of_the_lesson(lesson):
    exercises = load_checks(lesson)
    order = {e.id: i for i, e in enumerate(exercises)}
    for e in exercises:
        for up in getattr(e, "uses", ()):
            assert up in order and order[up] < order[e.id], f"{e.id} uses {up}, which is not an earlier exercise"
            assert f"{[u for u in exercises if u.id == up][0].function}(" in _source_of(lesson, e.function), (
                f"{e.id} declares uses={up!r} but solutions.py's {e.function} does not call it")


def _source_of(lesson, function: str) -> str:
    tree = ast.parse(lesson.file("solutions.py").read_text())
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function)
    return ast.unparse(node)


def test_solutions_pass_every_check(lesson, filled):
    report = run_checks(lesson, filled, seed=0, isolate=False)
    assert set(statuses(report).values()) == {"pass"}, explain(report)
    assert report.score == report.max_score == lesson.total_points


def test_untouched_lesson_is_not_attempted(lesson):
    report = run_checks(lesson, lesson.file("lesson.py"), seed=0, isolate=False)
    assert set(statuses(report).values()) == {"not attempted"}, explain(report)
    assert report.score == 0


def test_every_planted_bug_fails_with_its_message(lesson, filled):
    exercises = {e.id: e for e in load_checks(lesson)}
    bugs = load_bugs(lesson)
    assert {b.exercise for b in bugs} >= set(exercises), "bugs.py needs at least one bug per exercise"
    oracle = Oracle(list(exercises.values()), 0, lesson.settings["default_model"])  # one set of answers for all
    for bug in bugs:
        report = run_checks(lesson, filled, exercises=[bug.exercise], isolate=False, oracle=oracle,
                            overrides={exercises[bug.exercise].function: bug.function})
        result = report.exercises[0]
        messages = [result.message] + [c.message for c in result.cases]
        assert result.status != "pass", f"{bug.function.__name__} passes {bug.exercise}"
        assert any(bug.fragment.lower() in m.lower() for m in messages), (
            f"{bug.function.__name__}: no message contains {bug.fragment!r}; got {result.message!r}")


def test_solutions_pass_when_isolated(lesson, filled):
    """Once per lesson as `minimech check` runs it (a child process, limits, import guard), with another seed.
    (The untouched file in a child process is covered by tests/test_grading.py.)"""
    solved = run_checks(lesson, filled, seed=1)
    assert set(statuses(solved).values()) == {"pass"}, explain(solved)


def test_filled_lesson_runs_as_a_script(lesson, filled):
    command = [sys.executable, str(filled), "--model", lesson.settings["default_model"]]
    run = subprocess.run(command, cwd=filled.parent, capture_output=True, text=True, timeout=SCRIPT_LIMIT_S, env=ENV)
    assert run.returncode == 0, run.stderr[-3000:]


@pytest.mark.parametrize("lesson_id", STUB_RUNS)
def test_untouched_lesson_runs_as_a_script_skipping_the_stubs(lesson_id, tmp_path):
    """A learner runs the file before writing anything: every demo that needs an unwritten exercise is skipped
    with a note, and the script still ends with exit status 0."""
    lesson = get_lesson(lesson_id)
    script = tmp_path / "lesson.py"
    script.write_text(lesson.file("lesson.py").read_text())
    command = [sys.executable, str(script), "--model", lesson.settings["default_model"]]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=SCRIPT_LIMIT_S, env=ENV)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "NotImplementedError" not in run.stderr, run.stderr[-3000:]
