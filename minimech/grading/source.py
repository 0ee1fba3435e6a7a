"""Reading and rewriting lesson files with ast: stubs, solutions filled in, a solution's source for `minimech
solution`. Edits are made on the source text (line ranges from ast), so comments and cells stay as written."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from .api import GradingError
from .lessons import Lesson


def _parse(path: Path) -> tuple[str, ast.Module]:
    text = Path(path).read_text(encoding="utf-8")
    try:
        return text, ast.parse(text, filename=str(path))
    except SyntaxError as e:
        raise GradingError(f"{path} has a syntax error on line {e.lineno}: {e.msg}") from None


def _top_level_functions(tree: ast.Module) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def is_stub(node: ast.FunctionDef) -> bool:
    """A function whose body (after a docstring) is only `raise NotImplementedError(...)`."""
    body = node.body[1:] if node.body and isinstance(node.body[0], ast.Expr) and isinstance(
        getattr(node.body[0], "value", None), ast.Constant) else node.body
    if len(body) != 1 or not isinstance(body[0], ast.Raise) or body[0].exc is None:
        return False
    exc = body[0].exc.func if isinstance(body[0].exc, ast.Call) else body[0].exc
    return isinstance(exc, ast.Name) and exc.id == "NotImplementedError"


def stubs(path: Path) -> list[str]:
    """Names of the top-level functions in a file that are still stubs."""
    _, tree = _parse(path)
    return [name for name, node in _top_level_functions(tree).items() if is_stub(node)]


def _span(node: ast.AST) -> tuple[int, int]:
    """0-based [first, last) line range of a top-level definition, decorators included."""
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])]) - 1
    return first, node.end_lineno


def _defined_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def _solution_support(sol_text: str, sol_tree: ast.Module, lesson_names: set[str], exercise_names: set[str]) -> str:
    """solutions.py's imports and helpers (not exercises, not already in lesson.py), as source to insert."""
    lines = sol_text.splitlines()
    parts = []
    for node in sol_tree.body:
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            parts.append("\n".join(lines[slice(*_span(node))]))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign, ast.AnnAssign)):
            names = _defined_names(ast.Module(body=[node], type_ignores=[]))
            if names and not names & (lesson_names | exercise_names):
                parts.append("\n".join(lines[slice(*_span(node))]))
    return "\n\n".join(parts)


def fill_solutions(lesson: Lesson, lesson_file: Path | None = None) -> str:
    """lesson.py's source with each exercise stub replaced by solutions.py's function of the same name, and
    solutions.py's imports and helpers inserted before the first one. The rest of lesson.py is unchanged."""
    lesson_file = lesson_file or lesson.file("lesson.py")
    text, tree = _parse(lesson_file)
    sol_text, sol_tree = _parse(lesson.file("solutions.py"))
    solutions = _top_level_functions(sol_tree)
    lesson_functions = _top_level_functions(tree)
    targets = [n for name, n in lesson_functions.items() if is_stub(n) and name in solutions]
    if not targets:
        raise GradingError(f"{lesson_file} has no stub that solutions.py solves")
    sol_lines, lines = sol_text.splitlines(), text.splitlines()
    support = _solution_support(sol_text, sol_tree, _defined_names(tree), set(solutions) & set(lesson_functions))
    first_stub = min(targets, key=lambda n: n.lineno)
    for node in sorted(targets, key=lambda n: n.lineno, reverse=True):  # bottom up: earlier line numbers hold
        first, last = _span(node)
        replacement = sol_lines[slice(*_span(solutions[node.name]))]
        if node is first_stub and support:
            header = "# -- from solutions.py: its imports and helpers --"
            replacement = [header, *support.splitlines(), "", ""] + replacement
        lines[first:last] = replacement
    return "\n".join(lines) + "\n"


def solution_source(lesson: Lesson, function: str) -> str:
    """The solution of one exercise function, with the helpers from solutions.py it calls."""
    sol_text, sol_tree = _parse(lesson.file("solutions.py"))
    functions = _top_level_functions(sol_tree)
    if function not in functions:
        raise GradingError(f"{lesson.name}/solutions.py has no function {function}")
    _, lesson_tree = _parse(lesson.file("lesson.py"))
    in_lesson = _defined_names(lesson_tree)
    lines = sol_text.splitlines()
    wanted, queue = [], [function]
    while queue:
        name = queue.pop(0)
        if name in wanted:
            continue
        wanted.append(name)
        called = {n.id for n in ast.walk(functions[name]) if isinstance(n, ast.Name)}
        queue += [c for c in sorted(called) if c in functions and c not in in_lesson]
    return "\n\n\n".join("\n".join(lines[slice(*_span(functions[n]))]) for n in reversed(wanted)) + "\n"


def notebook_to_script(path) -> str:
    """A Jupyter notebook's cells as a jupytext percent-format script (what `jupytext --to py:percent` writes, near
    enough to grade): code cells as they are, markdown cells as comments. IPython-only lines (%magic, !shell) are
    commented out, since the grader runs the code as plain Python."""
    path = Path(path)
    try:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise GradingError(f"{path} is not a readable Jupyter notebook ({type(e).__name__}: {e}); hand in the "
                           "lesson.py `minimech start` made, or save the notebook again") from None
    parts = []
    for cell in cells:
        source = cell.get("source", "")
        text = "".join(source) if isinstance(source, list) else str(source)
        if cell.get("cell_type") == "code":
            lines = [f"# {line}" if line.lstrip().startswith(("%", "!")) else line for line in text.splitlines()]
            parts.append("# %%\n" + "\n".join(lines))
        elif cell.get("cell_type") == "markdown":
            parts.append("# %% [markdown]\n" + "\n".join(f"# {line}".rstrip() for line in text.splitlines()))
    return "\n\n".join(parts) + "\n"
