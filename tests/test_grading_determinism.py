"""Grading is deterministic with --jobs > 1: no object is shared between the threads that judge students, or between
judging and computing a reference. A copy of the fixture lesson whose compare() re-runs the lesson's model for every
answer, and for a wrong answer first runs it with a slow hook attached (as lesson 03's diagnoses do), is graded
several times with honest and wrong students side by side: the honest ones get full marks every time."""

import json
import shutil
from pathlib import Path

import pytest

from minimech.grading import fill_solutions, get_lesson
from minimech.grading.classroom import grade_submissions

from conftest import swap

ROOT = Path(__file__).resolve().parent / "fixtures" / "lessons"

RACY_COMPARE = '''

import time as _time


def _slow_zero(x, hook):
    _time.sleep(0.05)  # widen the window in which the hook is attached
    return x * 0


def racy_compare(got, want, case):
    model, tokens = case.args["model"], case.args["tokens"]
    problem = logits_compare(got, want, case)
    if problem:  # diagnose a wrong answer by running the model with a hook attached
        with model.hooks([(f"blocks.{l}.hook_resid_pre", _slow_zero) for l in range(model.cfg.n_layers)]):
            for _ in range(5):
                model(tokens)
        return problem
    with torch.no_grad():  # check a right answer again, against a fresh forward pass of the same model
        again = model(tokens)[:, -1]
    return close(got, again, atol=1e-4, rtol=1e-4)
'''


@pytest.fixture(scope="module")
def racy_lesson(tmp_path_factory):
    root = tmp_path_factory.mktemp("lessons")
    shutil.copytree(ROOT / "99_fixture", root / "99_fixture")
    checks = root / "99_fixture" / "checks.py"
    text = checks.read_text().replace("EXERCISES = [", RACY_COMPARE + "\n\nEXERCISES = [")
    checks.write_text(text.replace("logits_cases, logits_reference, logits_compare)",
                                   "logits_cases, logits_reference, racy_compare)"))
    return get_lesson("99", root)


def test_honest_students_get_full_marks_every_time_beside_wrong_ones(racy_lesson, tmp_path):
    right = fill_solutions(racy_lesson)
    wrong = swap(right, "last_logits", "return model(tokens)[:, 0]")  # position 0, not the last
    for i in range(3):
        for name, text in ((f"honest{i}", right), (f"wrong{i}", wrong)):
            (tmp_path / name).mkdir()
            (tmp_path / name / "lesson.py").write_text(text)
    totals = []
    for seed in (1, 2, 3):
        grades = grade_submissions(racy_lesson, tmp_path, jobs=6, seed=seed)
        reports = grades.reports
        for name, report in reports.items():
            expected = 6.0 if name.startswith("honest") else 3.0
            assert report.score == expected, (seed, name, [(e.id, e.status, e.message) for e in report.exercises])
        totals.append(json.dumps({n: r.score for n, r in reports.items()}, sort_keys=True))
    assert len(set(totals)) == 1


def test_inputs_reach_the_learners_process_as_built_functions_from_checks_py_too():
    """Case arguments travel pickled; a metric checks.py defines (a lambda, a closure, with the checks.py helpers it
    calls) travels by value, since the learner's process never loads checks.py; an object of a class checks.py
    defines cannot travel, and says so."""
    import pickle

    import torch

    from minimech.grading.oracle import dumps, loads

    scope = {"__name__": "_minimech_checks_77", "torch": torch}
    exec("def helper(x):\n    return x\n"
         "def make(rows):\n    return lambda logits: logits[rows].log_softmax(-1).mean()\n"
         "def bad(logits):\n    return helper(logits)\n", scope)
    metric = scope["make"](torch.tensor([1, 0]))
    logits = torch.randn(2, 5)
    weight = torch.nn.Parameter(torch.randn(3))
    weight.grad = torch.ones(3)  # planted, to catch a step that forgets zero_grad
    args = {"metric": metric, "x": torch.arange(3), "nested": [{"k": (1.5, "s")}], "w": weight, "again": weight}
    back = loads(dumps(args))
    assert torch.equal(back["w"].grad, weight.grad) and back["again"] is back["w"]
    assert torch.equal(back["metric"](logits), metric(logits)) and back["metric"] is not metric
    assert torch.equal(back["x"], args["x"]) and back["nested"] == args["nested"]
    assert torch.equal(loads(dumps({"metric": scope["bad"]}))["metric"](logits), logits)  # helper() went along
    exec("class Point:\n    pass\n", scope)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        dumps({"point": scope["Point"]()})
