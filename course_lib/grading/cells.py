"""Reading nbgrader cells: which are tests, what they check, what went wrong, what is hidden.

A test cell (nbgrader: ``grade`` true, ``solution`` false) starts with a comment
``# Test: <what it checks>``; its visible asserts come first, then the hidden ones between
``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from nbformat import NotebookNode

__all__ = ["BEGIN_HIDDEN", "BEGIN_SOLUTION", "END_HIDDEN", "END_SOLUTION", "HIDDEN_PLACEHOLDER",
           "cell_label", "description", "error_message", "first_error", "grade_id",
           "hidden_lines", "is_graded", "is_test_cell", "remove_hidden_tests", "stderr_text",
           "test_cells", "total_points"]

# nbgrader's default delimiters (ClearSolutions / ClearHiddenTests): a line containing one of
# these opens or closes a region.
BEGIN_SOLUTION, END_SOLUTION = "BEGIN SOLUTION", "END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"
HIDDEN_PLACEHOLDER = "# (hidden tests: not shown)"

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_MESSAGE_CHARS = 400


def _meta(cell: NotebookNode) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def grade_id(cell: NotebookNode) -> str | None:
    """The cell's nbgrader ``grade_id``, or None for a cell nbgrader does not track."""
    return _meta(cell).get("grade_id")


def is_test_cell(cell: NotebookNode) -> bool:
    """True for an autograded test cell: code, ``grade`` true, not an answer cell."""
    meta = _meta(cell)
    return (cell.cell_type == "code" and bool(meta.get("grade"))
            and not meta.get("solution"))


def is_graded(cell: NotebookNode) -> bool:
    """True for a cell that carries points (a test, or a manually graded answer)."""
    return bool(_meta(cell).get("grade"))


def test_cells(notebook: NotebookNode) -> list[NotebookNode]:
    """The notebook's autograded test cells, in order."""
    return [cell for cell in notebook.cells if is_test_cell(cell)]


def total_points(notebook: NotebookNode) -> float:
    """Points of all graded cells (tests and manually graded answers)."""
    return sum(float(_meta(cell).get("points", 0)) for cell in notebook.cells
               if is_graded(cell))


def description(cell: NotebookNode) -> str:
    """What a test cell checks: its first line ``# Test: ...``, else its first comment."""
    for line in cell.source.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            text = stripped.lstrip("#").strip()
            return text[len("Test:"):].strip() if text.lower().startswith("test:") else text
        break
    return ""


def cell_label(cell: NotebookNode, index: int) -> str:
    """How to name a cell to a reader: its grade_id, else its position."""
    return grade_id(cell) or f"cell {index + 1}"


def _clip(text: str, limit: int = _MESSAGE_CHARS) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def error_message(output: NotebookNode) -> str:
    """``ExceptionType: message`` of an error output, without its traceback (clipped)."""
    name = _ANSI.sub("", output.get("ename", "Error"))
    value = _ANSI.sub("", output.get("evalue", "")).strip()
    return _clip(f"{name}: {value}" if value else name)


def first_error(cell: NotebookNode) -> str | None:
    """The message of the cell's first error output, or None if it raised nothing."""
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            return error_message(output)
    return None


def stderr_text(cell: NotebookNode) -> str:
    """Everything the cell wrote to stderr (warnings, progress bars), joined."""
    return "".join(output.get("text", "") for output in cell.get("outputs", [])
                   if output.get("output_type") == "stream" and output.get("name") == "stderr")


def remove_hidden_tests(source: str, placeholder: str | None = HIDDEN_PLACEHOLDER) -> str:
    """The source without its hidden-test regions (each replaced by ``placeholder``).

    Raises ValueError on an unclosed or nested region, as nbgrader's ClearHiddenTests does.
    """
    kept: list[str] = []
    inside = False
    for number, line in enumerate(source.split("\n"), start=1):
        if BEGIN_HIDDEN in line:
            if inside:
                raise ValueError(f"nested {BEGIN_HIDDEN!r} at line {number}; expected "
                                 f"{END_HIDDEN!r} first")
            inside = True
            if placeholder is not None:
                kept.append(line[: len(line) - len(line.lstrip())] + placeholder)
        elif END_HIDDEN in line:
            if not inside:
                raise ValueError(f"{END_HIDDEN!r} at line {number} without a "
                                 f"{BEGIN_HIDDEN!r} before it")
            inside = False
        elif not inside:
            kept.append(line)
    if inside:
        raise ValueError(f"{BEGIN_HIDDEN!r} without a matching {END_HIDDEN!r}")
    return "\n".join(kept)


def hidden_lines(cells: Iterable[NotebookNode]) -> set[str]:
    """The stripped, non-empty source lines inside hidden-test regions of these cells."""
    lines: set[str] = set()
    for cell in cells:
        inside = False
        for line in cell.source.split("\n"):
            if BEGIN_HIDDEN in line:
                inside = True
            elif END_HIDDEN in line:
                inside = False
            elif inside and line.strip():
                lines.add(line.strip())
    return lines
