"""Every lesson's `check`, the solutions filled in, on a GPT-2-small-shaped checkpoint (random weights, built here
with transformers: nothing is downloaded), isolated as a learner's file is, under the limits the grader sets for a
model that size. Opt-in: MINIMECH_GPT2_ROUTE=1 (tens of minutes on 2 cores; README, "Tests and benchmarks").

- Not GPT-2 small (the checkpoint is not a published file): full marks, and no GPT-2-small paper case at all.
- As GPT-2 small (the checkpoint entered among the published files in the checking process, so that loading it goes
  through the real identification): every case passes except the paper cases, which fail on random weights as they
  must, with a message that names the paper's figure; nothing times out, runs out of memory or is a grader error,
  so nothing is blamed on the learner's code.

Runs through benchmarks/gpt2_lessons.py (run_check), which also prints the figures of each run.
"""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from minimech.grading import find_lessons  # noqa: E402

HEAVY = os.environ.get("MINIMECH_GPT2_ROUTE", "") not in ("", "0")
pytestmark = pytest.mark.skipif(not HEAVY, reason="opt-in: MINIMECH_GPT2_ROUTE=1 (every lesson's check on a "
                                                  "GPT-2-small-sized model)")
BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "gpt2_lessons.py"
LESSONS = find_lessons()
PAPER = "the paper's"  # in the label of every GPT-2-small paper case (lesson 03's checks)
LEARNER_BLAMED = ("timeout", "memory", "error", "grader error", "exited")


def _bench():
    spec = importlib.util.spec_from_file_location("gpt2_lessons_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (its dataclass looks its module up there)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _bench()


@pytest.fixture(scope="module")
def checkpoint(bench, tmp_path_factory):
    return bench.build_checkpoint(tmp_path_factory.mktemp("gpt2-small-shaped") / "gpt2")


def _cases(report: dict) -> list[tuple[str, dict]]:
    return [(e["id"], c) for e in report["exercises"] for c in e["cases"]]


def _summary(run) -> str:
    return (f"{run.wall_s} s wall, {run.cpu_s} s CPU, max RSS {run.max_rss_mib:.0f} MiB, tree "
            f"{run.tree_peak_mib:.0f} MiB, longest silence {run.silent_s} s")


@pytest.mark.parametrize("lesson", LESSONS, ids=[lesson.id for lesson in LESSONS])
def test_check_gives_full_marks_on_a_gpt2_small_shaped_model(lesson, bench, checkpoint):
    run = bench.run_check(lesson, checkpoint)
    print(f"lesson {lesson.id} check: {_summary(run)}")
    assert run.report is not None, run.stderr[-3000:]
    assert bench.failures(run.report) == [], _summary(run)
    assert run.report["score"] == run.report["max_score"] > 0
    assert not any(PAPER in case["label"] for _, case in _cases(run.report))  # not GPT-2 small: no paper case


def _has_paper_cases(lesson) -> bool:
    text = (lesson.path / "checks.py").read_text()
    return "is_gpt2_small" in text or "identify_gpt2" in text


PAPER_LESSONS = [lesson for lesson in LESSONS if _has_paper_cases(lesson)]


@pytest.mark.parametrize("lesson", PAPER_LESSONS, ids=[lesson.id for lesson in PAPER_LESSONS])
def test_as_gpt2_small_only_the_paper_cases_fail_and_they_say_why(lesson, bench, checkpoint):
    run = bench.run_check(lesson, checkpoint, bench.published_entry(checkpoint))
    print(f"lesson {lesson.id} check as GPT-2 small: {_summary(run)}")
    assert run.report is not None, run.stderr[-3000:]
    cases = _cases(run.report)
    paper = [(ex_id, case) for ex_id, case in cases if PAPER in case["label"]]
    assert paper, "no paper case ran: the checkpoint was not recognised as GPT-2 small"
    for ex_id, case in cases:
        if PAPER in case["label"]:  # random weights: the paper's figures cannot hold
            assert case["status"] == "fail", (ex_id, case)
            assert "GPT-2 small" in case["message"] or "paper" in case["message"], (ex_id, case)
        else:
            assert case["status"] == "pass", (ex_id, case)
    assert not [e for e in run.report["exercises"] if e["status"] in LEARNER_BLAMED], bench.failures(run.report)
