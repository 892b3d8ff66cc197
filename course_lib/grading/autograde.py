"""``course grade ASSIGNMENT``: every submission run in a sandbox, judged outside it, recorded
in nbgrader's gradebook, with a summary.

Submissions live where nbgrader expects them, ``submitted/<student>/<assignment>/<notebook>``;
results go to nbgrader's gradebook and ``autograded/``. nbgrader's Autograde does the
bookkeeping (students created as needed, locked cells and tests restored from the gradebook,
grades saved), with its ``Execute`` step replaced by ``execution.SandboxedExecute``: the
notebook runs in ``sandbox.run_notebook`` (fresh folder, no network, the gradebook, sources and
other students hidden, an unprivileged uid, limits) and each test cell earns its points only if
the grader, in this process, also finds every check true on the plain data the run recorded
(``verdicts.py``). Before any student, the solution notebook runs the same way: its records are
the sequence every student's run must repeat, and if it fails its own tests nothing is graded.

This module adds the parallel runs (``jobs`` sandboxes at once, each under its own uid; the
gradebook is written by this thread alone, one student at a time, and a student whose write
fails is rolled back to the gradebook as it was before), zero points for a submission without
the expected notebook, the integrity checks of ``course_lib.grading.integrity`` (a notebook
with a finding is scored zero and flagged for review, with the reasons as its comment), and a
per-student table. A student's broken code is that student's result, never a failure of the
command; only a set-up problem (no such assignment, a broken configuration, a solution that
fails its own tests) raises GradingError.
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import shutil
import sqlite3
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from traitlets.config import Config

from course_lib.grading import cells
from course_lib.grading.course import Course, GradingError
from course_lib.grading.execution import (
    GRADING_LIMITS,
    Execution,
    TestPlans,
    _Context,
    execute,
    grading_context,
    reference_run,
    restore_trusted_cells,
)
from course_lib.grading.integrity import Finding, Policy, check_submission, load_policy
from course_lib.grading.release import ensure_in_gradebook
from course_lib.grading.sandbox import NOBODY, Limits

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


def _sandboxed_config() -> Config:
    """nbgrader's autograde steps with Execute replaced by the sandboxed, judged run."""
    from nbconvert.preprocessors import ClearMetadataPreprocessor
    from nbgrader.preprocessors import (
        AssignLatePenalties,
        CheckCellMetadata,
        IgnorePattern,
        LimitOutput,
        SaveAutoGrades,
    )

    from course_lib.grading.execution import SandboxedExecute

    config = Config()
    config.Autograde.autograde_preprocessors = [
        SandboxedExecute, IgnorePattern, ClearMetadataPreprocessor, LimitOutput, SaveAutoGrades,
        AssignLatePenalties, CheckCellMetadata]
    return config


def _database(course: Course) -> Path | None:
    prefix = "sqlite:///"
    return Path(course.db_url[len(prefix):]) if course.db_url.startswith(prefix) else None


def _snapshot(course: Course) -> sqlite3.Connection | None:
    """An in-memory copy of the SQLite gradebook (None for another database)."""
    path = _database(course)
    if path is None or not path.is_file():
        return None
    copy = sqlite3.connect(":memory:")
    with contextlib.closing(sqlite3.connect(path)) as source:
        source.backup(copy)
    return copy


def _restore(course: Course, snapshot: sqlite3.Connection | None) -> None:
    """Put the gradebook back as it was when ``snapshot`` was taken (in one transaction)."""
    path = _database(course)
    if snapshot is None or path is None:
        return
    with contextlib.closing(sqlite3.connect(path)) as target:
        snapshot.backup(target)


def _grade_one(course: Course, assignment: str, student: str,
               notebooks: list[str], order: list[str], references: _References,
               context: _Context) -> StudentResult:
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
        snapshot = _snapshot(course)
        try:
            run = course.run(Autograde, config=_sandboxed_config(), assignment_id=assignment,
                             student_id=student, force=True, create_student=True)
        except BaseException:
            _restore(course, snapshot)
            raise
        if not run.success:  # nothing half-written stays: back to before, then a zero
            _restore(course, snapshot)
            grading_errors.append(f"nbgrader autograde failed: {run.summary()}")
            _record_missing(course, assignment, student)
        for name in present:
            grading_errors += context.problems.pop((student, name.removesuffix(".ipynb")), [])
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
    tests = {name.removesuffix(".ipynb"): TestPlans.from_source(name, references.source[name])
             for name in notebooks}
    context = _Context(tests=tests, hidden_paths=hidden_paths(course),
                       limits=grading_limits(course), prefetched={})
    uids: queue.SimpleQueue[int] = queue.SimpleQueue()
    for job in range(jobs):  # RLIMIT_NPROC counts per uid: one uid per parallel sandbox
        uids.put(NOBODY - job)

    def sandboxed(function, *args):
        uid = uids.get()
        try:
            return function(*args, limits=context.limits, hidden_paths=context.hidden_paths,
                            uid=uid)
        finally:
            uids.put(uid)

    results = []
    bar = tqdm(available, desc=f"grading {assignment}", unit="submission", disable=not progress,
               file=sys.stderr)
    with warnings.catch_warnings(), ThreadPoolExecutor(jobs) as pool:
        # nbgrader 0.9's gradebook code makes SQLAlchemy 2 warn about objects it adds to the
        # session later ("Object of type <SubmittedAssignment> not in session"): harmless.
        warnings.filterwarnings("ignore", message="Object of type <Submitted")
        source_folder = course.source_dir / assignment
        reference_runs = [pool.submit(sandboxed, reference_run, references.source[name],
                                      source_folder, tests[name.removesuffix(".ipynb")])
                          for name in notebooks]
        runs = {student: [pool.submit(_prefetch, course, assignment, student, name,
                                      references, tests, sandboxed) for name in notebooks]
                for student in available}
        try:
            for future in reference_runs:
                future.result()  # GradingError if the solution fails its own tests
            for student in bar:
                bar.set_postfix_str(student)
                for name, future in zip(notebooks, runs[student], strict=True):
                    execution = future.result()
                    if execution is not None:
                        context.prefetched[(student, name.removesuffix(".ipynb"))] = execution
                with grading_context(context):
                    results.append(_grade_one(course, assignment, student, notebooks, order,
                                              references, context))
        finally:
            for future in [*reference_runs, *(f for fs in runs.values() for f in fs)]:
                future.cancel()
    bar.close()
    return results


def grading_limits(course: Course) -> Limits:
    """GRADING_LIMITS with the course's settings: nbgrader's ``Execute.timeout`` is the time
    limit per cell, and ``c.Sandbox.<name>`` in nbgrader_config.py sets any field of Limits
    (``memory_bytes``, ``notebook_timeout``, ``max_output_bytes``, ...)."""
    settings = {}
    if "timeout" in course.config.Execute:
        settings["cell_timeout"] = float(course.config.Execute.timeout)
    known = {item.name for item in dataclasses.fields(Limits)}
    for name, value in course.config.Sandbox.items():
        if name not in known:
            raise GradingError(f"nbgrader_config.py sets c.Sandbox.{name}; expected one of "
                               f"{', '.join(sorted(known))}")
        settings[name] = value
    return dataclasses.replace(GRADING_LIMITS, **settings)


def hidden_paths(course: Course) -> list[Path]:
    """What a submission must not read: sources, every submission and result, the gradebook
    and the course's configuration (covered inside the sandbox)."""
    paths = [course.source_dir, course.submitted_dir, course.autograded_dir,
             course.feedback_dir, course.root / "nbgrader_config.py"]
    database = _database(course)
    if database is not None:
        paths.append(database)
    return [path for path in paths if path.exists()]


def _prefetch(course: Course, assignment: str, student: str, name: str,
              references: _References, tests: dict[str, TestPlans], sandboxed
              ) -> Execution | None:
    """Run one submitted notebook ahead of nbgrader (in a worker thread), from a folder laid
    out as nbgrader's autograded folder will be: the submission, then the source's data files
    over it. None if there is nothing to run (nbgrader then decides)."""
    folder = course.submitted_dir / student / assignment
    try:
        submitted = nbformat.read(folder / name, as_version=4)
    except Exception:  # missing or unreadable: nbgrader reports it
        return None
    staging = Path(tempfile.mkdtemp(prefix="course-grade-"))
    try:
        work = staging / "files"
        shutil.copytree(folder, work, symlinks=True)
        source = course.source_dir / assignment
        for path in source.rglob("*"):
            if path.is_file() and path.suffix != ".ipynb":
                target = work / path.relative_to(source)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.unlink(missing_ok=True)
                shutil.copy(path, target)
        node = restore_trusted_cells(submitted, references.source[name])
        return sandboxed(execute, node, work, tests[name.removesuffix(".ipynb")])
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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
