"""Finding lessons and reading their files.

Lessons live in the top-level lessons/ folder, installed as the package `minimech.lessons` (pyproject.toml maps it,
as it maps weights/ to minimech.weights). A lesson folder is named NN_name (e.g. 02_induction_heads): not an
importable package, so its files are loaded by path. Every function here takes an explicit `root` so tests can use
a fixture folder of lessons.
"""

from __future__ import annotations

import json
import os
import re
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

from .api import EXERCISE_ID, Bug, Exercise, GradingError

LESSON_DIR = re.compile(r"^(\d\d)_[A-Za-z0-9_]+$")
REQUIRED_KEYS = ("title", "minutes", "difficulty", "default_model", "time_limit_s", "memory_limit_mb",
                 "forbidden_imports", "points")
ALWAYS_FORBIDDEN = ("solutions", "minimech.lessons")  # whatever lesson.json adds


def lessons_root() -> Path:
    """The installed lessons: the package minimech.lessons; in a source checkout whose editable install predates
    that mapping, the repository's lessons/ folder. $MINIMECH_LESSONS names another folder of lessons (for a
    lesson author trying a new lesson, and for tests)."""
    if os.environ.get("MINIMECH_LESSONS"):
        return Path(os.environ["MINIMECH_LESSONS"]).resolve()
    try:
        import minimech.lessons as installed

        return Path(installed.__file__).resolve().parent
    except ImportError:
        import minimech

        return Path(minimech.__file__).resolve().parent.parent / "lessons"


@dataclass
class Lesson:
    id: str  # "02"
    name: str  # "02_induction_heads", the folder's name
    path: Path
    settings: dict = field(repr=False)

    @property
    def title(self) -> str:
        return self.settings["title"]

    @property
    def points(self) -> dict[str, float]:
        return dict(self.settings["points"])

    @property
    def total_points(self) -> float:
        return float(sum(self.points.values()))

    @property
    def forbidden_imports(self) -> list[str]:
        return sorted(set(self.settings.get("forbidden_imports", [])) | set(ALWAYS_FORBIDDEN))

    @property
    def predictions(self) -> dict[str, str]:
        """{"prediction_1": "the question, with the form of the answer", ...} from lesson.json (may be empty)."""
        return dict(self.settings.get("predictions") or {})

    def prediction_points(self, name: str) -> float:
        """Points for recording a prediction (never for its being right): lesson.json's "prediction_points", a
        number for each or {name: points}; 0 when absent."""
        points = self.settings.get("prediction_points") or 0
        return float(points.get(name, 0) if isinstance(points, dict) else points)

    def file(self, name: str) -> Path:
        path = self.path / name
        if not path.is_file():
            raise GradingError(f"lesson {self.name} has no {name} (looked for {path})")
        return path

    def exercise_id(self, text: str) -> str:
        """'3', '02.3' or '2.3' -> '02.3', checked against lesson.json's points."""
        text = str(text).strip()
        ex_id = f"{self.id}.{int(text)}" if text.isdigit() else text
        if re.match(r"^\d\.\d+$", ex_id):
            ex_id = "0" + ex_id
        if ex_id not in self.points:
            raise GradingError(f"lesson {self.id} has no exercise {text!r}; its exercises are {', '.join(self.points)}")
        return ex_id


def read_lesson(path: Path) -> Lesson:
    path = Path(path).resolve()
    match = LESSON_DIR.match(path.name)
    if not match:
        raise GradingError(f"{path} is not a lesson folder: its name must look like NN_name (e.g. 02_induction_heads)")
    settings_file = path / "lesson.json"
    try:
        settings = json.loads(settings_file.read_text())
    except (OSError, ValueError) as e:
        raise GradingError(f"cannot read {settings_file}: {e}") from None
    missing = [k for k in REQUIRED_KEYS if k not in settings]
    if missing:
        raise GradingError(f"{settings_file} lacks {', '.join(missing)}")
    predictions = settings.get("predictions") or {}
    if not isinstance(predictions, dict) or not all(re.match(r"^prediction_\d+$", str(k)) for k in predictions):
        raise GradingError(f"{settings_file}: predictions must map names prediction_1, prediction_2, ... to questions")
    bad = [k for k in settings["points"] if not EXERCISE_ID.match(k) or not k.startswith(match.group(1) + ".")]
    if bad:
        raise GradingError(f"{settings_file}: points has ids {bad} that are not exercises of lesson {match.group(1)}")
    return Lesson(match.group(1), path.name, path, settings)


def find_lessons(root: Path | None = None) -> list[Lesson]:
    """Every lesson folder under root (default: the installed lessons) whose lesson.json reads, in order of id.
    (A folder with a broken lesson.json is left out here; tests/test_lessons.py reports it.)"""
    root = Path(root) if root is not None else lessons_root()
    if not root.is_dir():
        return []
    lessons = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and LESSON_DIR.match(p.name)):
        try:
            lessons.append(read_lesson(folder))
        except GradingError:
            continue
    return lessons


def get_lesson(ref, root: Path | None = None) -> Lesson:
    """A lesson by id ("02" or "2"), folder name, or path to its folder."""
    if isinstance(ref, Lesson):
        return ref
    text = str(ref)
    if Path(text).is_dir() and (Path(text) / "lesson.json").is_file():
        return read_lesson(Path(text))
    lessons = find_lessons(root)
    key = text.zfill(2) if text.isdigit() else text
    for lesson in lessons:
        if key in (lesson.id, lesson.name):
            return lesson
    known = ", ".join(f"{l.id} ({l.name})" for l in lessons) or "none"
    raise GradingError(f"no lesson {text!r}; the lessons are: {known}")


def load_module(path: Path, name: str, register: bool = True) -> types.ModuleType:
    """Run a Python file as a module named `name`, without writing a .pyc next to it (lesson folders and
    submissions stay untouched). Registered in sys.modules under `name` while it runs (dataclasses need that)."""
    path = Path(path).resolve()
    module = types.ModuleType(name)
    module.__file__ = str(path)
    data = path.read_bytes()
    try:  # from bytes, as `python file.py` reads it: a BOM (Windows Notepad) and a `coding:` line are honoured
        code = compile(data, str(path), "exec")
    except SyntaxError:
        # bytes the file's encoding cannot decode (latin-1 saved without a `coding:` line): read them as U+FFFD,
        # with a warning, rather than fail; they are nearly always in a comment or a string. Other errors stand.
        import io
        import tokenize

        try:
            encoding = tokenize.detect_encoding(io.BytesIO(data).readline)[0]
        except SyntaxError:  # undecodable bytes on the first two lines, where a `coding:` line would be
            encoding = "utf-8"
        try:
            data.decode(encoding)
        except UnicodeDecodeError as bad:
            line = data[:bad.start].count(b"\n") + 1
            print(f"warning: {path.name} line {line} is not {encoding} (byte {data[bad.start]:#04x}); read with "
                  "replacement characters: save the file as UTF-8", file=sys.stderr)
            code = compile(data.decode(encoding, errors="replace"), str(path), "exec")
        else:
            raise
    previous = sys.modules.get(name)
    sys.modules[name] = module
    try:
        exec(code, module.__dict__)
    finally:
        if not register:
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous
    return module


def load_checks(lesson: Lesson) -> list[Exercise]:
    """checks.EXERCISES, in order, each checked to be an Exercise of this lesson."""
    module = load_module(lesson.file("checks.py"), f"_minimech_checks_{lesson.id}")
    exercises = getattr(module, "EXERCISES", None)
    if not isinstance(exercises, (list, tuple)) or not all(isinstance(e, Exercise) for e in exercises):
        raise GradingError(f"{lesson.name}/checks.py must define EXERCISES = [Exercise(...), ...]")
    ids = [e.id for e in exercises]
    if len(set(ids)) != len(ids) or any(not i.startswith(lesson.id + ".") for i in ids):
        raise GradingError(f"{lesson.name}/checks.py: exercise ids {ids} repeat or belong to another lesson")
    return list(exercises)


def load_bugs(lesson: Lesson) -> list[Bug]:
    module = load_module(lesson.file("bugs.py"), f"_minimech_bugs_{lesson.id}", register=False)
    bugs = getattr(module, "BUGS", None)
    if not isinstance(bugs, (list, tuple)) or not all(isinstance(b, Bug) for b in bugs):
        raise GradingError(f"{lesson.name}/bugs.py must define BUGS = [Bug(...), ...]")
    return list(bugs)


def read_hints(lesson: Lesson) -> dict[str, list[str]]:
    """hints.md as {exercise id: [hint 1, hint 2, ...]}: a `## 02.3` section per exercise, numbered items."""
    hints: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lesson.file("hints.md").read_text(encoding="utf-8").splitlines():
        section = re.match(r"^##\s+(\d\d\.\d+)\b", line)
        if section:
            current = hints.setdefault(section.group(1), [])
            continue
        if line.startswith("#"):
            current = None
        elif current is not None:
            item = re.match(r"^\d+\.\s+(.*)", line)
            if item:
                current.append(item.group(1))
            elif current and line.strip():
                current[-1] += "\n" + line.rstrip()
    return hints
