"""``course grade ASSIGNMENT``: nbgrader autograde of every submission, with a summary.

Submissions live where nbgrader expects them, ``submitted/<student>/<assignment>/<notebook>``;
results go to nbgrader's gradebook and ``autograded/``. nbgrader does the grading (students
created as needed, locked cells and tests restored from the gradebook, hidden tests run); this
module adds a progress bar, zero points (recorded in the gradebook) for a submission without
the expected notebook, the integrity checks of ``course_lib.grading.integrity`` (a notebook
with a finding is scored zero and flagged for review, with the reasons as its comment), and a
per-student table. A student's broken code is that student's
result, never a failure of the command; only a set-up problem (no such assignment, a broken
configuration) raises GradingError.

``jobs`` is accepted for the command line's sake but submissions are graded one at a time: the
SQLite gradebook takes one writer, and parallel grading needs sandboxing first.
"""

from __future__ import annotations

import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field

import nbformat

from course_lib.grading import cells
from course_lib.grading.course import Course, GradingError
from course_lib.grading.integrity import Finding, Policy, check_submission, load_policy
from course_lib.grading.release import ensure_in_gradebook

__all__ = ["StudentResult", "format_summary", "grade_assignment", "submitted_students"]


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


def submitted_students(course: Course, assignment: str) -> list[str]:
    """Students with a folder ``submitted/<student>/<assignment>/``, sorted."""
    if not course.submitted_dir.is_dir():
        return []
    return sorted(folder.name for folder in course.submitted_dir.iterdir()
                  if (folder / assignment).is_dir())


def _record_missing(course: Course, assignment: str, student: str) -> None:
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


def _read_result(course: Course, assignment: str, student: str,
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


def _read_outputs(course: Course, assignment: str, result: StudentResult) -> None:
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


def _flag_for_review(course: Course, assignment: str, student: str, notebook: str,
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


@dataclass
class _References:
    """What submissions are checked against: the assignment's policy and, per notebook name,
    the released and source notebooks, each read once per ``course grade`` run."""

    policy: Policy
    released: dict[str, nbformat.NotebookNode]
    source: dict[str, nbformat.NotebookNode]

    @classmethod
    def load(cls, course: Course, assignment: str, notebooks: list[str]) -> _References:
        try:
            policy = load_policy(course.root, assignment)
        except ValueError as error:
            raise GradingError(str(error)) from error

        def read(folder):
            return {name: nbformat.read(folder / name, as_version=4) for name in notebooks
                    if (folder / name).is_file()}

        return cls(policy, read(course.release_dir / assignment),
                   read(course.source_dir / assignment))


def _check_integrity(course: Course, assignment: str, student: str, present: list[str],
                     references: _References) -> tuple[list[str], list[str]]:
    """Run the integrity checks on each submitted notebook and flag those with findings;
    returns (flags, errors)."""
    flags, errors = [], []
    folder = course.submitted_dir / student / assignment
    for name in present:
        if name not in references.released:
            errors.append(f"{name}: not checked for integrity: no released notebook at "
                          f"{course.release_dir / assignment / name} (run `course release "
                          f"{assignment}`)")
            continue
        findings = check_submission(folder / name, references.released[name], references.policy,
                                    references.source.get(name))
        if findings:
            _flag_for_review(course, assignment, student, name, findings)
            flags += [f"{name}: {finding}" if len(present) > 1 else str(finding)
                      for finding in findings]
    return flags, errors


def _grade_one(course: Course, assignment: str, student: str,
               notebooks: list[str], order: list[str], references: _References
               ) -> StudentResult:
    from nbgrader.converters import Autograde

    start = time.perf_counter()
    folder = course.submitted_dir / student / assignment
    present = [name for name in notebooks if (folder / name).is_file()]
    grading_errors = []
    if not present:
        found = sorted(path.name for path in folder.glob("*.ipynb"))
        grading_errors.append(f"missing notebook {', '.join(notebooks)}"
                              + (f" (found {', '.join(found)})" if found else ""))
        _record_missing(course, assignment, student)
    else:
        run = course.run(Autograde, assignment_id=assignment, student_id=student,
                         force=True, create_student=True)
        if not run.success:
            grading_errors.append(f"nbgrader autograde failed: {run.summary()}")
        missing = sorted(set(notebooks) - set(present))
        if missing:
            grading_errors.append(f"missing notebook {', '.join(missing)}")
    flags, integrity_errors = (_check_integrity(course, assignment, student, present,
                                                references) if present else ([], []))
    result = _read_result(course, assignment, student, order)
    _read_outputs(course, assignment, result)
    result.errors += grading_errors + integrity_errors
    result.flags = flags
    result.seconds = time.perf_counter() - start
    return result


def grade_assignment(course: Course, assignment: str, *, students: list[str] | None = None,
                     jobs: int = 1, progress: bool = True) -> list[StudentResult]:
    """Autograde the submissions of ``assignment`` (all, or those of ``students``)."""
    from tqdm.auto import tqdm

    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    sources = course.source_notebooks(assignment)  # GradingError for an unknown assignment
    notebooks = [path.name for path in sources]
    references = _References.load(course, assignment, notebooks)
    order = [cells.grade_id(cell) for name in notebooks
             for cell in references.source[name].cells if cells.is_graded(cell)]
    available = submitted_students(course, assignment)
    if students:
        unknown = sorted(set(students) - set(available))
        if unknown:
            raise GradingError(f"no submission of {assignment} for {', '.join(unknown)} in "
                               f"{course.submitted_dir}; found {', '.join(available) or 'none'}")
        available = [student for student in available if student in students]
    if not available:
        return []
    if ensure_in_gradebook(course, assignment):
        print(f"course grade: recorded {assignment} in the gradebook from "
              f"{course.source_dir / assignment}", file=sys.stderr)
    results = []
    bar = tqdm(available, desc=f"grading {assignment}", unit="submission", disable=not progress,
               file=sys.stderr)
    with warnings.catch_warnings():
        # nbgrader 0.9's gradebook code makes SQLAlchemy 2 warn about objects it adds to the
        # session later ("Object of type <SubmittedAssignment> not in session"): harmless.
        warnings.filterwarnings("ignore", message="Object of type <Submitted")
        for student in bar:
            bar.set_postfix_str(student)
            results.append(_grade_one(course, assignment, student, notebooks, order,
                                      references))
    bar.close()
    return results


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def format_summary(assignment: str, results: list[StudentResult]) -> str:
    """The per-student table ``course grade`` prints."""
    if not results:
        return f"No submissions of {assignment} to grade."
    rows = [("student", "score", "failed tests", "errors")]
    for result in results:
        problems = [f"FLAGGED FOR REVIEW: {flag}" for flag in result.flags] + result.errors
        rows.append((result.student, f"{result.score:g} / {result.max_score:g}",
                     ", ".join(result.failed) or "-",
                     _clip("; ".join(problems), 70) or "-"))
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    lines = [f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}"
             .rstrip() for row in rows]
    lines.insert(1, "-" * max(len(line) for line in lines))
    mean = sum(result.score for result in results) / len(results)
    lines.append(f"{len(results)} submission(s) of {assignment} graded; mean score {mean:.1f} "
                 f"of {results[0].max_score:g}.")
    flagged = [result for result in results if result.flags]
    for result in flagged:
        lines.append(f"{result.student} is flagged for review (scored 0; restore points in "
                     f"formgrader if the flag is wrong):")
        lines += [f"  - {flag}" for flag in result.flags]
    return "\n".join(lines)
