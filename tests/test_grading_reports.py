"""What grading reports beyond the exercises: predictions (recorded or not, never right or wrong), limits that grow
with a bigger model, a timeout that is the limit's fault, and a grader error graded once more before it is shown."""

import csv
import json
import shutil
from pathlib import Path

import pytest

from minimech.grading import fill_solutions, get_lesson, run_checks
from minimech.grading.checking import Oracle, _blame_tight_limits, scaled_limits
from minimech.grading.lessons import load_checks
from minimech.grading.report import lost_exercise

ROOT = Path(__file__).resolve().parent / "fixtures" / "lessons"


@pytest.fixture(scope="module")
def predicting(tmp_path_factory):
    """The fixture lesson, asking two predictions, one point for recording each."""
    root = tmp_path_factory.mktemp("lessons")
    shutil.copytree(ROOT / "99_fixture", root / "99_fixture")
    settings = json.loads((root / "99_fixture" / "lesson.json").read_text())
    settings["predictions"] = {"prediction_1": "How many heads attend to the previous token? (a whole number)",
                               "prediction_2": "Which layer writes the answer? (a layer number)"}
    settings["prediction_points"] = 1
    (root / "99_fixture" / "lesson.json").write_text(json.dumps(settings))
    return get_lesson("99", root)


def test_predictions_are_recorded_or_not_in_check_grade_and_gradescope(predicting, tmp_path, monkeypatch, capsys):
    from minimech.cli import main

    text = "prediction_1 = 3  # my guess\nprediction_2 = None\n" + fill_solutions(predicting)
    (tmp_path / "subs" / "ann").mkdir(parents=True)
    (tmp_path / "subs" / "ann" / "lesson.py").write_text(text)
    report = run_checks(predicting, tmp_path / "subs" / "ann" / "lesson.py", seed=2, isolate=False)
    got = {p.name: (p.recorded, p.value, p.score, p.max_score) for p in report.predictions}
    assert got == {"prediction_1": (True, "3", 1.0, 1.0), "prediction_2": (False, None, 0.0, 1.0)}
    assert report.score == 7 and report.max_score == 8  # 6 for the exercises, 1 of 2 for predictions
    monkeypatch.setenv("MINIMECH_LESSONS", str(predicting.path.parent))
    assert main(["grade", "99", str(tmp_path / "subs"), "--csv", str(tmp_path / "g.csv"), "--gradescope",
                 str(tmp_path / "r.json"), "--seed", "2"]) == 0
    row = next(csv.DictReader((tmp_path / "g.csv").open()))
    assert row["prediction_1"] == "1" and row["prediction_2"] == "0" and row["total"] == "7"
    tests = {t["number"]: t for t in json.loads((tmp_path / "r.json").read_text())["ann"]["tests"]}
    assert tests["prediction_1"]["status"] == "passed" and tests["prediction_1"]["output"] == "recorded: 3"
    assert tests["prediction_2"]["status"] == "failed" and "not recorded" in tests["prediction_2"]["output"]
    capsys.readouterr()
    main(["check", "99", "--file", str(tmp_path / "subs" / "ann" / "lesson.py"), "--seed", "2"])
    out = capsys.readouterr().out
    assert "prediction_1: recorded: 3" in out and "prediction_2: not recorded yet" in out


def test_a_lesson_without_predictions_reports_none(tmp_path):
    lesson = get_lesson("99", ROOT)
    (tmp_path / "lesson.py").write_text("prediction_1 = 5\n" + fill_solutions(lesson))
    report = run_checks(lesson, tmp_path / "lesson.py", seed=1, isolate=False)
    assert report.predictions == [] and report.score == report.max_score == 6


def test_limits_grow_with_a_bigger_model_and_given_ones_stand(tmp_path):
    root = tmp_path / "lessons"
    shutil.copytree(ROOT / "99_fixture", root / "99_fixture")
    settings = json.loads((root / "99_fixture" / "lesson.json").read_text())
    settings["default_model"] = "attn-only-2l"  # 215,522 parameters; mini-4l has 381,922
    (root / "99_fixture" / "lesson.json").write_text(json.dumps(settings))
    lesson = get_lesson("99", root)
    exercises = load_checks(lesson)
    assert scaled_limits(lesson, Oracle(exercises, 1, "attn-only-2l")) == (20.0, 1024)
    bigger = Oracle(exercises, 1, "mini-4l")
    time_s, memory_mb = scaled_limits(lesson, bigger)
    assert time_s == pytest.approx(20 * (381922 / 215522) ** 0.5) and memory_mb == 1024 + 4 * 381922 * 4 // 2**20
    assert scaled_limits(lesson, bigger, time_limit_s=7, memory_limit_mb=99) == (7.0, 99)


def test_a_timeout_the_reference_shares_is_the_limits_fault():
    class Slow:
        model_name = "gpt2"
        needs = lambda self, ids: ({"99.1": 12.0, "99.2": 0.1}[ids[0]], 0.0)  # noqa: E731

    results = [lost_exercise("99.1", "Softmax", "softmax", 2, "timeout", "took over 20 s (an endless loop?)"),
               lost_exercise("99.2", "Mask", "causal_mask", 1, "timeout", "took over 20 s (an endless loop?)")]
    _blame_tight_limits(results, Slow(), 20, 1024)
    assert "too tight for this model" in results[0].message and "raise --time-limit" in results[0].message
    assert "too tight" not in results[1].message


def test_a_grader_error_is_graded_once_more_before_it_is_reported(tmp_path, monkeypatch):
    from minimech.grading import isolation
    from minimech.grading.classroom import grade_submissions

    lesson = get_lesson("99", ROOT)
    for name in ("ann", "bob"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "lesson.py").write_text(fill_solutions(lesson))
    real, calls = isolation.run_isolated, []

    def flaky(lesson, source, *args, **kwargs):  # the grader fails: once for ann, every time for bob
        calls.append(source)
        if b"# bob" in source or len([c for c in calls if c == source]) == 1:
            raise RuntimeError("the grader's own failure")
        return real(lesson, source, *args, **kwargs)

    (tmp_path / "bob" / "lesson.py").write_text("# bob\n" + fill_solutions(lesson))
    monkeypatch.setattr(isolation, "run_isolated", flaky)
    grades = grade_submissions(lesson, tmp_path, jobs=1, seed=1)
    assert grades.reports["ann"].score == 6  # graded again, and right the second time
    assert all(e.status == "grader error" and "the grader's own failure" in e.message
               for e in grades.reports["bob"].exercises)
    assert len(calls) == 4  # twice each


# ---- limits from what the reference solution needs (a model bigger than the lesson's) -----------------------------

HUNGRY_CHECKS = """

def hungry_reference(megabytes):
    block = torch.ones(megabytes * 2**18)  # megabytes MB of float32, every page written
    return block.sum()


EXERCISES.append(Exercise("99.4", "hungry", "Memory", lambda ctx: [Case({"megabytes": 300})], hungry_reference))
"""


@pytest.fixture(scope="module")
def hungry(tmp_path_factory):
    """The fixture lesson with an exercise whose reference solution needs 300 MB, a 64 MB memory limit (a limit
    sized for a tiny model), and the smaller shipped model as its default (so mini-4l counts as bigger)."""
    root = tmp_path_factory.mktemp("lessons")
    folder = root / "99_fixture"
    shutil.copytree(ROOT / "99_fixture", folder)
    settings = json.loads((folder / "lesson.json").read_text())
    settings.update(default_model="attn-only-2l", memory_limit_mb=64, points={**settings["points"], "99.4": 1})
    (folder / "lesson.json").write_text(json.dumps(settings))
    (folder / "checks.py").write_text((folder / "checks.py").read_text() + HUNGRY_CHECKS)
    (folder / "solutions.py").write_text((folder / "solutions.py").read_text() + "\n\ndef hungry(megabytes):\n"
                                         "    return torch.ones(megabytes * 2**18).sum()\n")
    (folder / "lesson.py").write_text((folder / "lesson.py").read_text() + "\n\ndef hungry(megabytes):\n"
                                      "    # EXERCISE 99.4\n    raise NotImplementedError('EXERCISE 99.4')\n")
    lesson = get_lesson("99", root)
    (root / "solved.py").write_text(fill_solutions(lesson))
    return lesson, root / "solved.py"


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="the peak is measured through Linux's /proc")
def test_the_oracle_measures_each_references_peak_memory(hungry):
    lesson, _ = hungry
    oracle = Oracle(load_checks(lesson), 1, "attn-only-2l")
    oracle.wait()
    seconds, megabytes = oracle.needs(["99.4"])
    assert 250 < megabytes < 600, oracle.reference_peak_mb  # 300 MB of float32 (and what sum() adds)
    assert oracle.needs(["99.2"])[1] < 50 and seconds > 0


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="the peak is measured through Linux's /proc")
def test_a_bigger_models_memory_limit_covers_what_the_reference_needs(hungry):
    """With a model bigger than the lesson's, the learner's process gets at least twice what the reference solution
    added (plus 512 MB), not the lesson's 64 MB grown by four copies of the weights: the solutions pass."""
    lesson, solved = hungry
    oracle = Oracle(load_checks(lesson), 1, "mini-4l")
    told = []  # (exercise, cases done, cases): each case's reference as it is done, for a progress bar
    time_s, memory_mb = scaled_limits(lesson, oracle, progress=lambda *event: told.append(event))
    done = [ex_id for ex_id, k, n in told if k == n]
    assert memory_mb >= 2 * 290 + 512 and sorted(done) == sorted(lesson.points), (memory_mb, told)
    for ex_id in lesson.points:  # the counts only grow, and end at the exercise's number of cases
        counts = [k for e, k, _ in told if e == ex_id]
        assert counts == sorted(set(counts)) and counts[-1] == len(oracle.expected(ex_id)[0]) > 0, (ex_id, told)
    report = run_checks(lesson, solved, seed=1, model="mini-4l")
    assert [e.status for e in report.exercises] == ["pass"] * 4, [(e.id, e.message) for e in report.exercises]


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="the peak is measured through Linux's /proc")
def test_a_limit_the_reference_itself_exceeds_is_the_limits_fault(hungry):
    """A memory limit given below what the reference solution needs: the exercise runs out of memory, and the
    message says the limit is too tight for this model and how to raise it, not that the learner's code is wrong."""
    lesson, solved = hungry
    report = run_checks(lesson, solved, exercises=["4"], seed=1, model="mini-4l", memory_limit_mb=200)
    result, = report.exercises
    assert result.status == "memory", result.message
    assert "the reference solution itself needs" in result.message and "raise --memory-limit" in result.message
    assert "too tight for this model, not your code's fault" in result.message
    lower = run_checks(lesson, solved, exercises=["1"], seed=1, model="mini-4l", memory_limit_mb=200)
    assert lower.exercises[0].status == "pass"  # the other exercises are unaffected


def test_a_checks_models_build_no_autograd_graph():
    """ctx.model() and ctx.random_model() hand out models whose parameters need no gradient, so a reference or a
    learner's function that writes forward results into a tensor in place keeps no graph alive (04.6 on GPT-2 small
    held 10 GB that way); a gradient with respect to a tensor of the function's own still flows (06.7's delta)."""
    import torch

    from minimech.grading import CaseContext

    ctx = CaseContext(0, "mini-4l", models={})
    for model in (ctx.model(), ctx.random_model(n_layers=1, n_heads=2, d_model=8, n_ctx=12, d_vocab=11)):
        tokens = torch.randint(0, model.cfg.d_vocab, (2, 5))
        assert not any(p.requires_grad for p in model.parameters())
        out = torch.zeros(3)
        out[0] = model(tokens)[0, -1, 0]  # as a causal-trace grid fills itself
        assert not out.requires_grad and out.grad_fn is None
        delta = torch.zeros(model.cfg.d_model, requires_grad=True)
        with model.hooks([("blocks.0.hook_resid_pre", lambda act, hook: act + delta)]):
            loss = model(tokens)[0, -1].logsumexp(-1)
        (grad,) = torch.autograd.grad(loss, [delta])
        assert grad.abs().sum() > 0


def test_check_bar_ticks_while_one_exercise_runs_and_stops_after():
    """`check`'s bar is redrawn every few seconds once it shows, so a minute-long exercise does not look like a hang;
    before its delay nothing is drawn, and after the block no redraw is left running."""
    import time

    from minimech.grading.cli_commands import _Ticking

    class Bar:  # the parts of tqdm _Ticking reads
        def __init__(self, elapsed):
            self.delay, self.format_dict, self.refreshes = 10, {"elapsed": elapsed}, 0

        def refresh(self):
            self.refreshes += 1

    shown, hidden = Bar(elapsed=12), Bar(elapsed=3)
    with _Ticking(shown, every_s=0.01), _Ticking(hidden, every_s=0.01):
        time.sleep(0.2)
    assert shown.refreshes >= 3 and hidden.refreshes == 0
    after = shown.refreshes
    time.sleep(0.1)
    assert shown.refreshes == after
