"""``course check NOTEBOOK``: what a student runs before submitting.

Runs the notebook top to bottom in a fresh kernel, as nbgrader's autograder would (nbgrader's
own ``Execute`` preprocessor, the course's cell timeout, stderr ignored as when grading), and
scores each test cell it contains with nbgrader's own rule (``determine_grade``). The student's
copy holds only the visible tests, so the total is what those give; hidden tests run at grading
time. The notebook file is never written to.
"""

from __future__ import annotations

import copy
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from traitlets.config import Config

from course_lib.grading import cells
from course_lib.grading.course import CONFIG_FILE, default_config, load_config

__all__ = ["CheckReport", "TestOutcome", "check_notebook", "format_report"]


@dataclass(frozen=True)
class TestOutcome:
    """One test cell's result: its grade_id, what it checks, points, and what went wrong."""

    grade_id: str
    description: str
    points: float
    score: float
    message: str | None = None  # exception type and message, or why the points are partial

    @property
    def passed(self) -> bool:
        return self.score >= self.points


@dataclass
class CheckReport:
    """The result of checking one notebook."""

    notebook: Path
    tests: list[TestOutcome] = field(default_factory=list)
    cell_errors: list[str] = field(default_factory=list)  # errors outside the test cells
    warnings: list[str] = field(default_factory=list)  # stderr of test cells (not failures)
    seconds: float = 0.0

    @property
    def points(self) -> float:
        return sum(test.points for test in self.tests)

    @property
    def score(self) -> float:
        return sum(test.score for test in self.tests)

    @property
    def passed(self) -> bool:
        """True when there are test cells and every one of them passed."""
        return bool(self.tests) and all(test.passed for test in self.tests)


@contextmanager
def _environment(**values: str):
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _config_for(path: Path) -> Config:
    """The course configuration if the notebook sits inside a course folder, else defaults."""
    for folder in path.resolve().parents:
        if (folder / CONFIG_FILE).is_file():
            return load_config(folder)
    return default_config()


def _fmt(value: float) -> str:
    return f"{value:g}"


def check_notebook(path: Path, config: Config | None = None) -> CheckReport:
    """Execute a copy of the notebook at ``path`` and score its test cells.

    Raises FileNotFoundError for a missing file and ValueError for a file that is not a
    notebook with nbgrader test cells.
    """
    from nbgrader.preprocessors import Execute, IgnorePattern
    from nbgrader.utils import determine_grade

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no notebook at {path}")
    try:
        notebook = nbformat.read(path, as_version=4)
    except Exception as exc:  # nbformat raises several types for a file that is not JSON
        raise ValueError(f"{path} is not a readable notebook: {exc}") from exc
    if not cells.test_cells(notebook):
        raise ValueError(f"{path.name} has no autograded test cells; expected an assignment "
                         "notebook from assignments/")
    config = copy.deepcopy(config if config is not None else _config_for(path))
    notebook = copy.deepcopy(notebook)  # executed in memory only: the file stays as it was

    report = CheckReport(notebook=path)
    start = time.perf_counter()
    resources = {"metadata": {"path": str(path.resolve().parent)}}
    with _environment(NBGRADER_EXECUTION="validate"):  # what `nbgrader validate` sets
        Execute(config=config).preprocess(notebook, resources)
    report.seconds = time.perf_counter() - start

    ignore = IgnorePattern(config=config)
    if ignore.enabled:  # as when grading: stderr is no failure, but the student should see it
        for cell in cells.test_cells(notebook):
            stderr = cells.stderr_text(cell).strip()
            if stderr:
                report.warnings.append(f"{cells.grade_id(cell)}: {stderr.splitlines()[0]}")
        notebook, resources = ignore.preprocess(notebook, resources)

    for index, cell in enumerate(notebook.cells):
        if cells.is_test_cell(cell):
            score, points = determine_grade(cell)
            score = float(score or 0.0)
            message = cells.first_error(cell)
            if message is None and score < points:
                stderr = cells.stderr_text(cell).strip()
                message = (f"wrote to stderr, which nbgrader scores as a failure: "
                           f"{stderr.splitlines()[0]}" if stderr else
                           f"partial credit: {_fmt(score)} of {_fmt(points)} points")
            report.tests.append(TestOutcome(
                grade_id=cells.grade_id(cell) or cells.cell_label(cell, index),
                description=cells.description(cell), points=float(points), score=score,
                message=message))
        elif cell.cell_type == "code":
            error = cells.first_error(cell)
            if error is not None:
                report.cell_errors.append(f"{cells.cell_label(cell, index)}: {error}")
    return report


def format_report(report: CheckReport) -> str:
    """The readable summary ``course check`` prints."""
    width = max(len(test.grade_id) for test in report.tests) if report.tests else 10
    lines = [f"Checked {report.notebook.name}: {len(report.tests)} test cell(s) in "
             f"{report.seconds:.1f} s"]
    for test in report.tests:
        status = "PASS" if test.passed else "FAIL"
        points = f"{_fmt(test.score)}/{_fmt(test.points)}"
        lines.append(f"  {status}  {test.grade_id:<{width}}  {points:>7}  {test.description}")
        if test.message and not test.passed:
            for number, line in enumerate(test.message.splitlines()):
                lines.append(("        -> " if number == 0 else "           ") + line)
    if report.cell_errors:
        lines.append("Errors outside the test cells (tests after them may fail because of it):")
        lines += [f"  {error}" for error in report.cell_errors]
    if report.warnings:
        lines.append("Written to stderr (warnings; not counted as failures):")
        lines += [f"  {warning}" for warning in report.warnings]
    passed = sum(test.passed for test in report.tests)
    lines.append(f"Visible tests: {passed} of {len(report.tests)} passed, "
                 f"{_fmt(report.score)} of {_fmt(report.points)} points.")
    lines.append("Hidden tests also run when your notebook is graded, so the grade can be "
                 "lower." if report.passed else
                 "Fix the failing tests, then run course check again before submitting.")
    return "\n".join(lines)
