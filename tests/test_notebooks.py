"""The lessons: numbered, stored without outputs, built on course_lib, and they all run.

Execution uses ``COURSE_QUICK=1`` (the lessons' own switch that shrinks data and epochs without
changing the code path), as CI does; the full-size timings are measured by
``benchmarks/bench_lessons.py``.
"""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
LESSONS = sorted((ROOT / "notebooks").glob("*.ipynb"))
NAME = re.compile(r"^(\d\d)_[a-z0-9_]+\.ipynb$")
HOMEWORK = re.compile(r"assignments/(hw\d_[a-z0-9_]+)")


def lesson_id(path: Path) -> str:
    return path.stem


def code_of(notebook) -> str:
    """All code cells joined, with IPython magics and shell escapes commented out."""
    lines = []
    for cell in notebook.cells:
        if cell.cell_type == "code":
            lines += [("# " + line) if line.lstrip().startswith(("%", "!")) else line
                      for line in cell.source.splitlines()]
            lines.append("")
    return "\n".join(lines)


def body_fingerprints(tree: ast.AST) -> dict[str, str]:
    """name → dump of the function body (docstring dropped), for functions of 3+ statements."""
    prints = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            body = list(node.body)
            if body and isinstance(body[0], ast.Expr) and isinstance(
                    getattr(body[0], "value", None), ast.Constant):
                body = body[1:]
            if len(body) >= 3:
                prints[ast.dump(ast.Module(body=body, type_ignores=[]))] = node.name
    return prints


@pytest.fixture(scope="module")
def library_bodies() -> dict[str, str]:
    prints = {}
    for path in sorted((ROOT / "course_lib").rglob("*.py")):
        for dump, name in body_fingerprints(ast.parse(path.read_text())).items():
            prints[dump] = f"{path.relative_to(ROOT)}:{name}"
    return prints


def test_the_course_has_its_lessons_in_order():
    names = [path.name for path in LESSONS]
    assert len(names) >= 12, f"expected about a dozen lessons in notebooks/, found {names}"
    bad = [name for name in names if not NAME.match(name)]
    assert not bad, f"lesson files must be named NN_snake_case.ipynb: {bad}"
    numbers = [int(NAME.match(name).group(1)) for name in names]
    assert numbers == list(range(1, len(names) + 1)), f"lessons must be numbered 01..N: {names}"


@pytest.mark.parametrize("path", LESSONS, ids=lesson_id)
def test_lesson_is_stored_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    dirty = [i for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"
             and (cell.outputs or cell.execution_count is not None)]
    assert not dirty, f"{path.name}: code cells {dirty} carry outputs or execution counts"
    assert notebook.metadata.get("kernelspec", {}).get("name") == "python3"


@pytest.mark.parametrize("path", LESSONS, ids=lesson_id)
def test_lesson_builds_on_course_lib(path, library_bodies):
    notebook = nbformat.read(path, as_version=4)
    source = code_of(notebook)
    assert re.search(r"^\s*from course_lib[.\w]* import ", source, re.M), (
        f"{path.name} never imports from course_lib")
    assert "import *" not in source, f"{path.name} uses `import *`; import names explicitly"
    first_code = next(cell.source for cell in notebook.cells if cell.cell_type == "code")
    assert "setup_lesson(" in first_code, (
        f"{path.name}: the first code cell must call course_lib.lesson.setup_lesson")
    pasted = [f"{name} (same body as {library_bodies[dump]})"
              for dump, name in body_fingerprints(ast.parse(source)).items()
              if dump in library_bodies]
    assert not pasted, (f"{path.name} pastes course_lib code instead of importing it: {pasted}")


@pytest.mark.parametrize("path", LESSONS, ids=lesson_id)
def test_lesson_ends_with_exercises_and_its_homework(path):
    notebook = nbformat.read(path, as_version=4)
    markdown = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "markdown")
    title = notebook.cells[0].source.splitlines()[0] if notebook.cells else ""
    assert notebook.cells[0].cell_type == "markdown" and title.startswith(
        f"# {path.name[:2]} "), f"{path.name} must open with a '# {path.name[:2]} · Title' cell"
    assert re.search(r"^## Exercises", markdown, re.M), f"{path.name} has no '## Exercises'"
    assert re.search(r"^## Graded homework", markdown, re.M), (
        f"{path.name} has no '## Graded homework' section")
    homework = HOMEWORK.findall(markdown.split("## Graded homework", 1)[1])
    assert homework, f"{path.name}: the homework section names no assignments/hwN_... folder"
    for name in homework:
        assert (ROOT / "solutions" / name).is_dir(), (
            f"{path.name} points to {name}, which is not an assignment in solutions/")


def test_code_of_comments_out_magics():
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "%matplotlib inline\n!ls\nx = 1")])
    assert ast.parse(code_of(notebook))  # would raise on the magic lines
    pasted = textwrap.dedent("""
        def f(a):
            "doc"
            b = a + 1
            c = b * 2
            return c
    """)
    renamed = pasted.replace("def f", "def g").replace('"doc"', '"other doc"')
    assert body_fingerprints(ast.parse(pasted)).keys() == body_fingerprints(
        ast.parse(renamed)).keys()


@pytest.mark.slow
@pytest.mark.parametrize("path", LESSONS, ids=lesson_id)
def test_lesson_runs_top_to_bottom(path, tmp_path, monkeypatch):
    from course_lib.cli import execute_notebook

    monkeypatch.setenv("COURSE_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    seconds, error = execute_notebook(path, tmp_path, timeout=300, html=False)
    assert error is None, f"{path.name} failed after {seconds:.0f} s: {error}"
    executed = nbformat.read(tmp_path / path.name, as_version=4)
    outputs = sum(len(cell.outputs) for cell in executed.cells if cell.cell_type == "code")
    assert outputs > 0, f"{path.name} ran but printed and showed nothing"
