"""What ``course grade`` writes to and reads from nbgrader's gradebook (SQLite or PostgreSQL,
through nbgrader's SQLAlchemy models): zeros for a submission without its notebook, the flag
for an instructor's review, each student's result, and a snapshot of one student's rows to roll
back to when nbgrader fails half-way."""

from __future__ import annotations

import contextlib
import fcntl
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from course_lib.grading import cells
from course_lib.grading.course import Course
from course_lib.grading.integrity import Finding

__all__ = ["Snapshot", "StudentResult", "database_path", "flag_for_review", "read_outputs",
           "read_result", "record_missing", "restore", "setup_lock", "snapshot"]


@dataclass
class StudentResult:
    """One student's autograding result, as recorded in the gradebook."""

    student: str
    score: float
    max_score: float
    failed: list[str] = field(default_factory=list)  # grade_ids of tests not fully passed
    messages: dict[str, str] = field(default_factory=dict)  # grade_id -> why it failed
    errors: list[str] = field(default_factory=list)  # outside the tests: cells, grading
    flags: list[str] = field(default_factory=list)  # integrity findings: scored 0, for review
    seconds: float = 0.0


def record_missing(course: Course, assignment: str, student: str) -> None:
    """Zero for every graded cell of a submission without its notebook (what nbgrader does
    for a missing notebook in an otherwise present submission); an earlier autograded copy
    is removed so that feedback is not made from it."""
    shutil.rmtree(course.autograded_dir / student / assignment, ignore_errors=True)
    with course.gradebook() as gradebook:
        gradebook.update_or_create_student(student)
        submission = gradebook.update_or_create_submission(assignment, student)
        for notebook in submission.notebooks:
            for grade in notebook.grades:
                grade.auto_score = 0
                grade.needs_manual_grade = False
        gradebook.db.commit()


def read_result(course: Course, assignment: str, student: str,
                 order: list[str]) -> StudentResult:
    """Score, maximum and failed tests of one submission, from the gradebook."""
    from nbgrader.api import MissingEntry

    with course.gradebook() as gradebook:
        try:
            submission = gradebook.find_submission(assignment, student)
        except MissingEntry:  # nbgrader stopped before recording the submission
            record = gradebook.find_assignment(assignment)
            return StudentResult(student=student, score=0.0,
                                 max_score=float(record.max_score), failed=list(order))
        result = StudentResult(student=student, score=float(submission.score),
                               max_score=float(submission.max_score))
        scores = {grade.name: (grade.score, grade.max_score)
                  for notebook in submission.notebooks for grade in notebook.grades}
    rank = {grade_id: index for index, grade_id in enumerate(order)}
    result.failed = sorted((name for name, (score, max_score) in scores.items()
                            if (score or 0.0) < max_score),
                           key=lambda name: (rank.get(name, len(rank)), name))
    return result


def read_outputs(course: Course, assignment: str, result: StudentResult) -> None:
    """Failure messages of the tests, and errors of other cells, from autograded notebooks."""
    folder = course.autograded_dir / result.student / assignment
    for path in sorted(folder.glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        for index, cell in enumerate(notebook.cells):
            error = cells.first_error(cell) if cell.cell_type == "code" else None
            if error is None:
                continue
            if cells.is_test_cell(cell):
                result.messages[cells.grade_id(cell)] = error
            else:
                result.errors.append(f"{cells.cell_label(cell, index)}: {error}")


def flag_for_review(course: Course, assignment: str, student: str, notebook: str,
                     findings: list[Finding]) -> None:
    """Score the notebook's every grade zero (a manual score: the automatic one stays visible
    beside it), mark it as needing manual grading, and write the reasons into its comment
    cells, where formgrader and the feedback show them. An instructor who finds the flag wrong
    restores the points in formgrader."""
    reasons = "\n".join(f"- {finding}" for finding in findings)
    note = ("Flagged for review by the course's integrity checks; scored 0 until an "
            f"instructor has looked at it:\n{reasons}")
    from nbgrader.api import MissingEntry

    with course.gradebook() as gradebook:
        try:
            submitted = gradebook.find_submission_notebook(notebook.removesuffix(".ipynb"),
                                                            assignment, student)
        except MissingEntry:  # nbgrader recorded nothing (e.g. an unreadable file): 0 anyway
            return
        for grade in submitted.grades:
            grade.manual_score = 0.0
            grade.needs_manual_grade = True
        for comment in submitted.comments:
            comment.manual_comment = note
        submitted.flagged = True
        gradebook.db.commit()


SETUP_LOCK = 0x6772616465  # the PostgreSQL advisory lock of set-up ("grade")


@contextlib.contextmanager
def setup_lock(course: Course) -> Iterator[None]:
    """Hold the gradebook's set-up lock: one grader at a time creates nbgrader's tables and
    records an assignment (two graders starting on an empty database would both try).
    PostgreSQL: an advisory lock on its own connection; SQLite: a lock file beside the
    database; other databases: none."""
    path = database_path(course)
    if course.db_url.startswith("postgresql"):
        from sqlalchemy import create_engine, text

        engine = create_engine(course.db_url)
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": SETUP_LOCK})
                try:
                    yield
                finally:
                    connection.execute(text("SELECT pg_advisory_unlock(:key)"),
                                       {"key": SETUP_LOCK})
        finally:
            engine.dispose()
    elif path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{path}.setup-lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield
    else:
        yield


def database_path(course: Course) -> Path | None:
    prefix = "sqlite:///"
    return Path(course.db_url[len(prefix):]) if course.db_url.startswith(prefix) else None


GRADE_COLUMNS = ("auto_score", "manual_score", "extra_credit", "needs_manual_grade")
COMMENT_COLUMNS = ("auto_comment", "manual_comment")


@dataclass
class Snapshot:
    """One student's submission of one assignment as it was: None if there was none, else
    the values of each notebook's grades, comments and flag."""

    notebooks: dict[str, dict] | None


def snapshot(course: Course, assignment: str, student: str) -> Snapshot:
    """What grading ``student`` may change, read before it starts (any database: only that
    student's rows, so graders writing other students at the same time are left alone)."""
    from nbgrader.api import MissingEntry

    with course.gradebook() as gradebook:
        try:
            submission = gradebook.find_submission(assignment, student)
        except MissingEntry:
            return Snapshot(None)
        return Snapshot({notebook.name: {
            "flagged": notebook.flagged,
            "grades": {grade.name: {column: getattr(grade, column) for column in GRADE_COLUMNS}
                       for grade in notebook.grades},
            "comments": {comment.name: {column: getattr(comment, column)
                                        for column in COMMENT_COLUMNS}
                         for comment in notebook.comments}}
            for notebook in submission.notebooks})


def restore(course: Course, assignment: str, student: str, before: Snapshot) -> None:
    """Put ``student``'s submission back as ``before`` found it, in one commit."""
    from nbgrader.api import MissingEntry

    with course.gradebook() as gradebook:
        if before.notebooks is None:
            with contextlib.suppress(MissingEntry):
                gradebook.remove_submission(assignment, student)
            return
        submission = gradebook.update_or_create_submission(assignment, student)
        for notebook in submission.notebooks:
            saved = before.notebooks.get(notebook.name)
            if saved is None:
                continue
            notebook.flagged = saved["flagged"]
            for kind, rows in (("grades", notebook.grades), ("comments", notebook.comments)):
                for row in rows:
                    for column, value in saved[kind].get(row.name, {}).items():
                        setattr(row, column, value)
        gradebook.db.commit()
