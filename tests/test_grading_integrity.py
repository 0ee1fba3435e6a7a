"""What a submission may not do to score, and what must not cost a correct one its marks: the answer key is gone
from the learner's process, the library's own version of an exercise cannot be called, a forbidden module already
imported cannot be reached as an attribute; torch.set_default_dtype at the top of a file, renamed parameters and a
model changed in one exercise do not cost the others."""

import json
import shutil
from pathlib import Path

import pytest

from minimech.grading import fill_solutions, get_lesson, run_checks

from conftest import swap

ROOT = Path(__file__).resolve().parent / "fixtures" / "lessons"


@pytest.fixture(scope="module")
def lesson():
    return get_lesson("99", ROOT)


def grade(lesson, tmp_path, text: str, name: str = "lesson.py"):
    path = tmp_path / name
    path.write_text(text)
    report = run_checks(lesson, path, seed=5)  # isolated, as classes are graded
    return {e.id: e for e in report.exercises}


def test_the_answer_key_is_not_in_the_learners_process(lesson, tmp_path):
    # digs for the checks module without naming it (a literal name is refused outright, see the next test)
    dig = ("import sys\n"
           "found = [m for m in list(sys.modules.values()) if isinstance(getattr(m, 'EXERCISES', None), list)]\n"
           "return found[0].EXERCISES[0].reference(x, dim)")
    results = grade(lesson, tmp_path, swap(fill_solutions(lesson), "softmax", dig))
    assert results["99.1"].status == "error" and "index out of range" in results["99.1"].message
    assert results["99.2"].status == results["99.3"].status == "pass"


def test_gc_walks_are_refused_by_the_syntax_tree_not_by_comments(lesson, tmp_path):
    mentions = '# we never call gc.get_objects here\n"""docs: gc.get_referrers is not used"""\n' + fill_solutions(lesson)
    assert all(e.status == "pass" for e in grade(lesson, tmp_path, mentions).values())
    uses = "import gc as g\nfind = getattr(g, 'get_objects')\n" + fill_solutions(lesson)
    results = grade(lesson, tmp_path, uses)
    assert all(e.status == "forbidden import" and "gc.get_objects" in e.message for e in results.values())
    starred = 'MARK = "*"  # a plain string, as in a plot label\n' + fill_solutions(lesson)
    assert all(e.status == "pass" for e in grade(lesson, tmp_path, starred).values())
    star_import = "from gc import *\n" + fill_solutions(lesson)
    assert all(e.status == "forbidden import" for e in grade(lesson, tmp_path, star_import).values())


@pytest.mark.parametrize("body", ["return torch.nn.functional.softmax(x, dim)",
                                  "return torch.softmax(x, dim)",
                                  "from torch.nn.functional import softmax as theirs\nreturn theirs(x, dim)"])
def test_calling_the_librarys_own_version_fails_that_exercise_only(lesson, tmp_path, body):
    results = grade(lesson, tmp_path, swap(fill_solutions(lesson), "softmax", body))
    assert results["99.1"].status == "forbidden import" and "write it yourself" in results["99.1"].message
    assert results["99.2"].status == results["99.3"].status == "pass"  # 99.3's model still uses softmax inside


def test_a_forbidden_module_already_imported_cannot_be_reached_as_an_attribute(tmp_path):
    root = tmp_path / "lessons"
    shutil.copytree(ROOT / "99_fixture", root / "99_fixture")
    settings = json.loads((root / "99_fixture" / "lesson.json").read_text())
    settings["forbidden_imports"] += ["minimech.loading"]
    (root / "99_fixture" / "lesson.json").write_text(json.dumps(settings))
    lesson = get_lesson("99", root)
    body = "import minimech\nminimech.loading.sha256_file\nreturn torch.ones(n, n).tril().bool()"
    results = grade(lesson, tmp_path, swap(fill_solutions(lesson), "causal_mask", body))
    assert results["99.2"].status == "forbidden import" and "minimech.loading" in results["99.2"].message
    assert results["99.1"].status == results["99.3"].status == "pass"  # minimech.load still works for the grader


def test_a_global_default_dtype_does_not_cost_a_correct_file(lesson, tmp_path):
    text = "import torch\ntorch.set_default_dtype(torch.float64)\n" + fill_solutions(lesson)
    results = grade(lesson, tmp_path, text)
    assert all(e.status == "pass" for e in results.values()), {k: e.message for k, e in results.items()}


def test_renamed_parameters_in_the_lessons_order_still_pass(lesson, tmp_path):
    text = fill_solutions(lesson).replace("def softmax(x: torch.Tensor, dim: int = -1)",
                                          "def softmax(scores, axis=-1)")
    text = swap(text, "softmax", "e = (scores - scores.amax(axis, keepdim=True)).exp()\n"
                                 "return e / e.sum(axis, keepdim=True)")
    assert "def softmax(scores, axis=-1)" in text
    assert grade(lesson, tmp_path, text)["99.1"].status == "pass"


def test_grading_options_that_cannot_work_stop_before_any_student(lesson, tmp_path):
    from minimech.grading.api import GradingError
    from minimech.grading.classroom import grade_submissions

    (tmp_path / "subs" / "ann").mkdir(parents=True)
    (tmp_path / "subs" / "ann" / "lesson.py").write_text(fill_solutions(lesson))
    for kwargs, fragment in (({"model": "no-such-model"}, "cannot use model 'no-such-model'"),
                             ({"seed": 10**20}, "seed"), ({"time_limit_s": 0}, "time limit must be positive")):
        with pytest.raises(GradingError, match=fragment):
            grade_submissions(lesson, tmp_path / "subs", **kwargs)
        with pytest.raises(GradingError, match=fragment):
            run_checks(lesson, tmp_path / "subs" / "ann" / "lesson.py", **kwargs)


def test_grade_refuses_output_paths_it_could_not_write_before_grading(lesson, tmp_path, monkeypatch, capsys):
    from minimech.cli import main

    monkeypatch.setenv("MINIMECH_LESSONS", str(ROOT))
    (tmp_path / "subs" / "ann").mkdir(parents=True)
    (tmp_path / "afile").write_text("x")
    assert main(["grade", "99", str(tmp_path / "subs"), "--csv", str(tmp_path / "afile" / "g.csv")]) == 1
    assert "is a file, where a folder is needed" in capsys.readouterr().err


def test_an_untouched_lesson_py_beside_the_worked_notebook_is_not_the_file_graded(lesson, tmp_path):
    from minimech.grading.classroom import find_submission_file

    folder = tmp_path / "carol"
    folder.mkdir()
    (folder / "lesson.py").write_text(lesson.file("lesson.py").read_text())  # the handout, untouched
    cells = [{"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
              "source": fill_solutions(lesson).splitlines(keepends=True)}]
    (folder / "lesson.ipynb").write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4,
                                                     "nbformat_minor": 5}))
    assert find_submission_file(folder).name == "lesson.ipynb"
    (folder / "lesson.py").write_text(fill_solutions(lesson))  # both done: the .py, as before
    assert find_submission_file(folder).name == "lesson.py"


def test_an_error_in_a_notebook_cell_names_the_cell_and_line(lesson, tmp_path):
    right = fill_solutions(lesson)
    broken = swap(right, "causal_mask", "return 1 / 0")
    cells = [{"cell_type": "markdown", "metadata": {}, "source": "# my notebook"},
             {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
              "source": broken.splitlines(keepends=True)}]
    nb = {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    results = grade(lesson, tmp_path, json.dumps(nb), name="lesson.ipynb")
    assert results["99.2"].status == "error"
    assert "ZeroDivisionError" in results["99.2"].message and "your cell 2, line" in results["99.2"].message
    assert results["99.1"].status == results["99.3"].status == "pass"


def test_after_a_call_changes_the_model_the_next_exercise_gets_a_fresh_one(tmp_path):
    # a copy of the fixture with a second exercise on the same function and model (99.4 after 99.3)
    root = tmp_path / "lessons"
    shutil.copytree(ROOT / "99_fixture", root / "99_fixture")
    checks = root / "99_fixture" / "checks.py"
    checks.write_text(checks.read_text().replace(
        "\n]", '\n    Exercise("99.4", "last_logits", "Again", logits_cases, logits_reference, logits_compare),\n]'))
    settings = json.loads((root / "99_fixture" / "lesson.json").read_text())
    settings["points"]["99.4"] = 1
    (root / "99_fixture" / "lesson.json").write_text(json.dumps(settings))
    lesson = get_lesson("99", root)
    # the first call zeroes the embedding, later calls are right (a marker file in the grader's working folder
    # outlives the child process): only 99.3 may lose its marks
    # The shared model (the lesson's, not the per-case random one) is the one changed: 99.4's inputs hold it too.
    body = ("import os\nif model.cfg.d_vocab > 11 and not os.path.exists('mutated'):\n"
            "    open('mutated', 'w').close()\n    model.embed.W_E.data.mul_(0)\nreturn model(tokens)[:, -1]")
    results = grade(lesson, tmp_path, swap(fill_solutions(lesson), "last_logits", body))
    assert results["99.3"].status == "model mutated"
    assert results["99.4"].status == "pass", results["99.4"].message  # a fresh child, a freshly loaded model


def test_ctrl_c_during_grade_keeps_the_students_already_graded(lesson, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    right = fill_solutions(lesson)
    for name, text in (("ann", right), ("bob", swap(right, "causal_mask", "while True:\n    pass"))):
        (tmp_path / "subs" / name).mkdir(parents=True)
        (tmp_path / "subs" / name / "lesson.py").write_text(text)
    env = {**os.environ, "MINIMECH_LESSONS": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "minimech.cli", "grade", "99", str(tmp_path / "subs"), "--jobs", "2",
               "--csv", str(tmp_path / "g.csv"), "--time-limit", "120"]  # bob cannot finish before the Ctrl-C
    proc = subprocess.Popen(command, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)  # so that a failed test can kill the grader and its children
    seen = ""
    while "ann:" not in seen:  # ann is graded in seconds; bob loops until his 120 s time limit
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        seen += line
    proc.send_signal(signal.SIGINT)
    start = time.monotonic()
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert time.monotonic() - start < 10 and proc.returncode == 130, err
    assert "interrupted" in err
    rows = (tmp_path / "g.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("ann,")  # the header and ann: bob was not graded


def test_multiprocessing_in_a_submission_gets_a_sentence(lesson, tmp_path):
    body = ("import multiprocessing\np = multiprocessing.Process(target=print)\np.start()\n"
            "return torch.ones(n, n).tril().bool()")
    results = grade(lesson, tmp_path, swap(fill_solutions(lesson), "causal_mask", body))
    # a child forked from the forkserver may not start processes (a sentence says so); one started in its own
    # sandbox may, and the process ends with it
    assert results["99.2"].status == "pass" or (results["99.2"].status == "error"
                                                 and "starts processes" in results["99.2"].message)
