"""Reading and rewriting lesson files with ast: stubs, solutions filled in, a solution's source for `minimech
solution`. Edits are made on the source text (line ranges from ast), so comments and cells stay as written."""

from __future__ import annotations

import ast
import json
import linecache
import re
import sys
import traceback
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
    """Names of the top-level functions in a file that are still stubs; in a notebook written as a script by
    notebook_to_script, those of its code cells (the last definition of a name counts, as when the cells run)."""
    _, tree = _parse(path)
    functions = _top_level_functions(tree)
    for cell in _notebook_cells(tree):
        functions.update(_top_level_functions(cell))
    return [name for name, node in functions.items() if is_stub(node)]


def _notebook_cells(tree: ast.Module) -> list[ast.Module]:
    """The parsed code cells of a script notebook_to_script wrote (its `_run_notebook_cell(globals(), N, source)`
    lines); a cell that does not parse is left out, as running it defines nothing."""
    cells = []
    for node in tree.body:
        call = node.value if isinstance(node, ast.Expr) else None
        if (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "_run_notebook_cell"
                and len(call.args) == 3 and isinstance(call.args[2], ast.Constant)
                and isinstance(call.args[2].value, str)):
            try:
                cells.append(ast.parse(call.args[2].value))
            except SyntaxError:
                pass
    return cells


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


# ---- notebooks -------------------------------------------------------------------------------------------------
#
# A notebook is graded as a script (checking.run_checks writes notebook_to_script's text to a lesson.py and imports
# that). Jupyter runs cells one at a time and a failing cell stops nothing, so the script runs each code cell on its
# own through run_notebook_cell: a learner's scratch cell that raises, or uses IPython syntax, costs only that cell.

# Cell magics whose body is Python (timed, profiled, its output captured): the body runs. Any other cell magic
# (%%bash, %%html, %%writefile, %%javascript, %%latex, %%script ...) has a body in another language: the cell is
# skipped.
PYTHON_CELL_MAGICS = ("time", "timeit", "capture", "prun")
# Line magics that run the statement after them (`%time y = f(x)` assigns y in IPython).
PYTHON_LINE_MAGICS = ("time", "timeit")
SHELL_ASSIGNMENT = re.compile(r"^(?P<lhs>[\w.]+(?:\s*,\s*[\w.]+)*)\s*=\s*(?P<kind>[!%])")


def _scan_line(line: str, quote: str | None, depth: int) -> tuple[str | None, int, bool, int]:
    """Python's lexical state after `line`: (the triple-quoted string still open, bracket depth, whether a
    backslash continues the line, where the line's comment starts). A rough tokenizer: enough to tell a line
    that starts a statement from one inside a docstring or a bracket, where IPython syntax is not recognised."""
    i, comment, continued = 0, len(line), False
    while i < len(line):
        char = line[i]
        if quote:
            if char == "\\":
                continued = i == len(line) - 1
                i += 2
                continue
            if line.startswith(quote, i):
                i, quote = i + len(quote), None
                continue
        elif char == "#":
            comment = i
            break
        elif char in "\"'":
            quote = line[i:i + 3] if line[i:i + 3] in ('"""', "'''") else char
            i += len(quote)
            continue
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth = max(0, depth - 1)
        elif char == "\\" and i == len(line) - 1:
            continued = True
        i += 1
    if quote in ('"', "'") and not continued:  # a one-quote string ends with its line (unterminated: a syntax error)
        quote = None
    return quote, depth, continued, comment


def _ipython_line(line: str, block_opened: bool) -> str:
    """Plain Python standing in for an IPython-only line, on one line with the same indentation: a comment, or
    `pass` where the line above opened a block that needs a statement (`if ...:` then an indented `!cmd`)."""
    indent, body = line[:len(line) - len(line.lstrip())], line.lstrip()
    assignment = SHELL_ASSIGNMENT.match(body)
    if assignment:  # `files = !ls` gives IPython's list of output lines, `x = %magic` the magic's value
        return f"{indent}{assignment['lhs']} = {'[]' if assignment['kind'] == '!' else 'None'}  # {body}"
    magic = re.match(r"%(\w+)\s+(?!-)(\S.*)", body)
    if magic and magic.group(1) in PYTHON_LINE_MAGICS:
        return f"{indent}{magic.group(2)}"
    # a comment fits any indentation (IPython runs an over-indented `!ls`); `pass` fills a block needing a statement
    return f"{indent}pass  # {body}" if block_opened else f"{indent}# {body}"


def ipython_to_python(source: str) -> str | None:
    """A code cell's source with IPython-only lines (%magic, !shell, `x = !cmd`, obj?) replaced by plain Python
    on the same lines, so line numbers stay the cell's; None for a cell whose body is not Python (%%bash ...)."""
    lines = source.splitlines()
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is not None and lines[first].startswith("%%"):
        magic = re.match(r"%%(\w*)", lines[first]).group(1)
        if magic not in PYTHON_CELL_MAGICS:
            return None
        lines[first] = f"# {lines[first]}"
    quote, depth, continued, block_opened = None, 0, False, False
    for number, line in enumerate(lines):
        starts_statement = quote is None and depth == 0 and not continued
        body = line.lstrip()
        if starts_statement and (body.startswith(("%", "!", "?")) or SHELL_ASSIGNMENT.match(body)):
            lines[number] = _ipython_line(line, block_opened)
            block_opened = False
            continue  # a shell line's quotes are the shell's: they open no Python string
        quote, depth, continued, comment = _scan_line(line, quote, depth)
        code = line[:comment].rstrip()
        if quote is None and depth == 0 and not continued and code:
            if starts_statement and code.endswith("?"):  # help: `obj?`, `obj??`
                lines[number] = _ipython_line(line, block_opened)
            block_opened = code.endswith(":")
    return "\n".join(lines) + "\n"


def notebook_display(*objects, **_options) -> None:
    """IPython's display() outside Jupyter: prints its objects."""
    print(*objects)


def _stand_in(name: str, why: str):
    """Stands in for a function a failed cell would have defined, so the grader says why it is missing."""
    def stand_in(*args, **kwargs):
        raise NameError(f"{name}() was never defined: {why}")

    stand_in.__name__ = stand_in.__qualname__ = name
    return stand_in


def run_notebook_cell(namespace: dict, number: int, source: str) -> None:
    """Run one code cell of a notebook in the module's namespace, as Jupyter would: an exception is reported on
    stderr as `cell N failed: ...` and the next cells still run. SystemExit and KeyboardInterrupt still end the
    import, as in a script.

    The cell's code is compiled as "<the script's path> cell N" (runner.is_learner_code counts it as the learner's),
    with its lines in linecache (mtime None: never checked against a file), so tracebacks and inspect.getsource show
    the cell's lines. A function the failed cell defines at its top level and that no earlier cell did is replaced
    by one raising NameError that names the cell, instead of the grader's "your file has no function ...".
    """
    filename = f"{namespace.get('__file__', 'notebook')} cell {number}"
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    try:
        # compiled with this module's `from __future__ import annotations`, as lessons.load_module compiles a .py
        # submission with lessons.py's: a notebook is graded like the same code handed in as a file
        exec(compile(source, filename, "exec"), namespace)
    except Exception as exc:
        if isinstance(exc, SyntaxError) and exc.filename == filename:
            line, text = exc.lineno, exc.msg
        else:
            lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if f.filename == filename]
            line, text = (lines[-1] if lines else None), " ".join(str(exc).split())[:300]
        where = f" (line {line})" if line else ""
        why = f"cell {number} failed{where}: {type(exc).__name__}: {text}"
        sys.stderr.write(why + "\n")
        for name in re.findall(r"^(?:async\s+)?def\s+(\w+)", source, flags=re.M):
            if name not in namespace:
                namespace[name] = _stand_in(name, f"your notebook's {why}")


def _cell_text(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def notebook_to_script(path) -> str:
    """A Jupyter notebook as a Python script to grade: markdown cells as comments (after a `# %% [markdown]` line,
    as jupytext writes them), each code cell as a call to run_notebook_cell with its source, IPython-only lines
    made plain Python (ipython_to_python), and display() defined when the notebook uses it. Cells are numbered as
    the notebook shows them, markdown cells counted."""
    path = Path(path)
    try:
        cells = [(cell.get("cell_type"), _cell_text(cell))
                 for cell in json.loads(path.read_text(encoding="utf-8-sig"))["cells"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise GradingError(f"{path} is not a readable Jupyter notebook ({type(e).__name__}: {e}); hand in the "
                           "lesson.py `minimech start` made, or save the notebook again") from None
    parts = [f"# {path.name}, written as a script for grading: each code cell runs on its own, as in Jupyter.\n"
             "from minimech.grading.source import run_notebook_cell as _run_notebook_cell"]
    if any(kind == "code" and re.search(r"\bdisplay\b", text) for kind, text in cells):
        parts.append("from minimech.grading.source import notebook_display as display  # a cell may redefine it")
    for number, (kind, text) in enumerate(cells, start=1):
        if kind == "code":
            python = ipython_to_python(text)
            if python is None:
                first = text.strip().splitlines()[0]
                parts.append(f"# %% cell {number}: skipped ({first.split()[0]} runs another language)\n"
                             + "\n".join(f"# {line}".rstrip() for line in text.splitlines()))
            else:
                parts.append(f"# %% cell {number}\n_run_notebook_cell(globals(), {number}, {python!r})")
        elif kind == "markdown":
            parts.append("# %% [markdown]\n" + "\n".join(f"# {line}".rstrip() for line in text.splitlines()))
    parts.append("del _run_notebook_cell")
    return "\n\n".join(parts) + "\n"
