"""The grader's manifest (minimech/grading/manifest.json): current for every lesson file, weight and grader module,
and `grade` refuses to start when a file it uses differs from it, naming the file."""

import shutil

import pytest

from minimech.grading import manifest
from minimech.grading.api import GradingError
from minimech.grading.lessons import read_lesson


def test_the_manifest_is_current():
    recorded, current = manifest.read(), manifest.compute()
    stale = sorted(k for k in current.keys() | recorded.keys() if recorded.get(k) != current.get(k))
    assert not stale, f"the grader's manifest is stale for {stale[:8]}: run `{manifest.UPDATE_COMMAND}`"


def test_a_changed_answer_key_or_weight_is_refused_by_name(tmp_path):
    lessons, weights = tmp_path / "lessons", tmp_path / "weights"
    installed = manifest.roots()
    lesson_dir = next(p for p in sorted(installed["lessons"].iterdir()) if (p / "checks.py").is_file())
    shutil.copytree(lesson_dir, lessons / lesson_dir.name)
    shutil.copytree(installed["weights"] / "mini-4l", weights / "mini-4l")
    where = {"lessons": lessons, "weights": weights, "grading": installed["grading"]}
    recorded = {f"{section}/{p.relative_to(where[section]).as_posix()}": manifest.sha256(p)
                for section in ("lessons", "weights") for p in where[section].rglob("*") if p.is_file()
                and p.suffix != ".md"}
    recorded.update({k: v for k, v in manifest.read().items() if k.startswith("grading/")})
    lesson = read_lesson(lessons / lesson_dir.name)
    manifest.verify(lesson, "mini-4l", recorded, where)  # as installed: no complaint
    checks = lessons / lesson_dir.name / "checks.py"
    checks.write_text(checks.read_text() + "\n# changed\n")
    with pytest.raises(GradingError, match=rf"{checks}.*differs from the grader's manifest.*--update"):
        manifest.verify(lesson, "mini-4l", recorded, where)
    checks.write_text(checks.read_text().removesuffix("\n# changed\n"))
    card = weights / "mini-4l" / "card.json"
    card.write_text(card.read_text().replace('"sha256"', '"sha256" ', 1))
    with pytest.raises(GradingError, match=rf"{card}.*differs"):
        manifest.verify(lesson, "mini-4l", recorded, where)
    card.unlink()
    (weights / "mini-4l" / "card.json").write_text("{}")
    (weights / "mini-4l" / "sitecustomize.py").write_text("x = 1\n")
    with pytest.raises(GradingError, match="sitecustomize.py is not in the grader's manifest|card.json differs"):
        manifest.verify(lesson, "mini-4l", recorded, where)
