"""The lessons' exercises cannot be passed by calling minimech's (or torch's) own version of what they ask for.

Each exercise's `library` names the functions that already compute its answer. For one exercise per lesson, the
filled-in solutions with that exercise's body replaced by a call to its library version are graded as the grader
grades a class (isolated): the exercise gets "forbidden import". The same body, run as code that is not the
learner's, passes: so it is the trap that fails it, not a wrong answer. And every name listed by any lesson resolves
to a function (the trap skips names that do not, so a typo would silently disable it).
"""

import ast
import importlib
import importlib.util
import sys
from pathlib import Path

import pytest

from minimech.grading import fill_solutions, get_lesson, lessons_root, load_checks, run_checks
from minimech.grading.lessons import LESSON_DIR, read_lesson
from minimech.grading.runner import _resolve

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "lessons" / "99_fixture"
FOLDERS = sorted(p for p in lessons_root().iterdir() if p.is_dir() and LESSON_DIR.match(p.name)) + [FIXTURE]

# lesson id -> (exercise, a body that returns the right answer by calling the exercise's library version).
# Lesson 05 (toy models of superposition) has nothing in minimech or torch that does its exercises, so no entry.
SHORTCUTS = {
    "00": ("00.1", "return torch.nn.functional.layer_norm(x, x.shape[-1:], w, b, eps)"),
    # lesson 01 forbids importing minimech.analysis; the module is loaded all the same (the checks use it)
    "01": ("01.3", "import sys\n"
                   "lens = sys.modules['minimech.analysis.lens']\n"
                   "return lens.logit_lens(model, tokens, pos).log_probs"),
    "02": ("02.5", "from minimech.analysis import composition_scores\n"
                   "return composition_scores(model, 'K')[sender_layer, :, receiver_layer]"),
    # lesson.py itself imports the toolkit's logit_diff as toolkit_logit_diff
    "03": ("03.1", "metrics = [toolkit_logit_diff(i, s, pos=int(p)) for i, s, p in zip(io_tokens, s_tokens, end_pos)]\n"
                   "return torch.stack([m(logits[i:i + 1]) for i, m in enumerate(metrics)])"),
    "04": ("04.1", "return memory_logits((layer, index), model).logits"),
    "06": ("06.8", "return toolkit_rank_one_update(key, value - key @ W, cov)"),
}


def with_body(source: str, function: str, body: str) -> str:
    """The source with the body of top-level `function` (docstring included) replaced by `body`."""
    node = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == function)
    lines = source.splitlines()
    first, last = node.body[0].lineno - 1, node.end_lineno
    return "\n".join(lines[:first] + ["    " + line for line in body.splitlines()] + lines[last:]) + "\n"


def load_module(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("lesson_id", sorted(SHORTCUTS))
def test_calling_the_library_version_is_forbidden(lesson_id, tmp_path):
    lesson = get_lesson(lesson_id)
    exercise_id, body = SHORTCUTS[lesson_id]
    exercise = next(e for e in load_checks(lesson) if e.id == exercise_id)
    assert exercise.library, f"{exercise_id} lists no library functions"
    text = with_body(fill_solutions(lesson), exercise.function, body)
    (tmp_path / "filled").mkdir()
    (tmp_path / "filled" / "lesson.py").write_text(fill_solutions(lesson))
    (tmp_path / "shortcut").mkdir()
    shortcut = tmp_path / "shortcut" / "lesson.py"
    shortcut.write_text(text)

    # as the learner's own code, graded as a class is (in a child process): forbidden
    result = run_checks(lesson, shortcut, exercises=[exercise_id], seed=1).exercises[0]
    assert result.status == "forbidden import", (result.status, result.message)
    assert "write it yourself" in result.message

    # the same function, called from outside the learner's file, gets every case right
    sys.modules.pop(f"shortcut_{lesson_id}", None)
    module = load_module(shortcut, f"shortcut_{lesson_id}")
    report = run_checks(lesson, tmp_path / "filled" / "lesson.py", exercises=[exercise_id], seed=1, isolate=False,
                        overrides={exercise.function: getattr(module, exercise.function)})
    assert report.exercises[0].status == "pass", report.exercises[0].message


def _import_prefix(dotted: str) -> None:
    """Import the longest importable module prefix of a dotted name."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            importlib.import_module(".".join(parts[:split]))
            return
        except ImportError:
            continue


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_every_library_name_is_a_function(folder):
    import minimech.analysis  # noqa: F401  (the lessons' checks import it too)

    for exercise in load_checks(read_lesson(folder)):
        assert isinstance(exercise.library, tuple), exercise.id
        for name in exercise.library:
            _import_prefix(name)
            obj = _resolve(name)
            assert callable(obj) and not isinstance(obj, type), f"{exercise.id}: {name} resolves to {obj!r}"
