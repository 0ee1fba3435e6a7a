"""Graded lessons: what a lesson's checks.py is written with, and the machinery that checks and grades.

For lesson authors (checks.py, bugs.py): Exercise, Case, CaseContext, close, expect_shape, Bug.
For the commands (minimech lessons/start/check/hint/solution/handout/grade/autograder) and the test suite:
find_lessons, get_lesson, run_checks, fill_solutions, grade_submissions.

Grading runs each learner's file in a sandboxed child process (sandbox.py) with time and memory limits; the grading
process builds the inputs, computes the right answers and decides every mark (oracle.py, verdicts.py).
"""

from .api import Bug, Case, CaseContext, Exercise, GradingError
from .compare import close, expect_shape
from .lessons import Lesson, find_lessons, get_lesson, lessons_root, load_bugs, load_checks, read_hints
from .report import STATUSES, CaseResult, ExerciseResult, Report
from .checking import run_checks  # noqa: E402 - after the names checks.py files import
from .source import fill_solutions
from .classroom import grade_submissions

__all__ = ["Bug", "Case", "CaseContext", "Exercise", "GradingError", "close", "expect_shape", "Lesson",
           "find_lessons", "get_lesson", "lessons_root", "load_bugs", "load_checks", "read_hints", "STATUSES",
           "CaseResult", "ExerciseResult", "Report", "run_checks", "fill_solutions", "grade_submissions"]
