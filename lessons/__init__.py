"""minimech's lessons, installed as the package minimech.lessons (see pyproject.toml).

Each lesson is a folder NN_name (lesson.py, solutions.py, checks.py, hints.md, lesson.json, bugs.py, README.md).
The folders are not importable packages: minimech.grading loads their files by path.
"""
