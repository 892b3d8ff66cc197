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
per-student table; what it reads and writes in the gradebook is in ``gradebook.py``. A
student's broken code is that student's result, never a failure of the command; only a set-up
problem (no such assignment, a broken configuration, a solution that fails its own tests)
raises GradingError.
"""

from __future__ import annotations

import dataclasses
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import nbformat
from traitlets.config import Config

from course_lib.grading import cells
from course_lib.grading.course import Course, GradingError
from course_lib.grading.engine import RETRIES, Engine, Task, is_lost_worker, read_files
from course_lib.grading.execution import (
    GRADING_LIMITS,
    TestPlans,
    _Context,
    accept_reference,
    grading_context,
    restore_trusted_cells,
)
from course_lib.grading.gradebook import (
    StudentResult,
    database_path,
    flag_for_review,
    read_outputs,
    read_result,
    record_missing,
    restore,
    setup_lock,
    snapshot,
)
from course_lib.grading.integrity import check_submission
from course_lib.grading.policy import Policy, load_policy
from course_lib.grading.release import ensure_in_gradebook
from course_lib.grading.sandbox import Limits

__all__ = ["StudentResult", "format_summary", "grade_assignment", "submitted_students"]


def submitted_students(course: Course, assignment: str) -> list[str]:
    """Students with a folder ``submitted/<student>/<assignment>/``, sorted."""
    if not course.submitted_dir.is_dir():
        return []
    return sorted(folder.name for folder in course.submitted_dir.iterdir()
                  if (folder / assignment).is_dir())

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
            flag_for_review(course, assignment, student, name, findings)
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

def _grade_one(course: Course, assignment: str, student: str,
               notebooks: list[str], order: list[str], references: _References,
               context: _Context, lost: str | None = None) -> StudentResult:
    from nbgrader.converters import Autograde

    start = time.perf_counter()
    folder = course.submitted_dir / student / assignment
    present = [name for name in notebooks if (folder / name).is_file()]
    grading_errors = []
    if not present:
        found = sorted(path.name for path in folder.glob("*.ipynb"))
        grading_errors.append(f"missing notebook {', '.join(notebooks)}"
                              + (f" (found {', '.join(found)})" if found else ""))
        record_missing(course, assignment, student)
    elif lost is not None:  # the run never came back: nothing of it is written
        grading_errors.append(lost)
        record_missing(course, assignment, student)
    else:
        before = snapshot(course, assignment, student)
        try:
            run = course.run(Autograde, config=_sandboxed_config(), assignment_id=assignment,
                             student_id=student, force=True, create_student=True)
        except BaseException:
            restore(course, assignment, student, before)
            raise
        if not run.success:  # nothing half-written stays: back to before, then a zero
            restore(course, assignment, student, before)
            grading_errors.append(f"nbgrader autograde failed: {run.summary()}")
            record_missing(course, assignment, student)
        for name in present:
            grading_errors += context.problems.pop((student, name.removesuffix(".ipynb")), [])
        missing = sorted(set(notebooks) - set(present))
        if missing:
            grading_errors.append(f"missing notebook {', '.join(missing)}")
    flags, integrity_errors = (_check_integrity(course, assignment, student, present,
                                                references) if present else ([], []))
    result = read_result(course, assignment, student, order)
    read_outputs(course, assignment, result)
    result.errors += grading_errors + integrity_errors
    result.flags = flags
    result.seconds = time.perf_counter() - start
    return result


def grade_assignment(course: Course, assignment: str, *, students: list[str] | None = None,
                     jobs: int = 1, cluster: str | None = None, progress: bool = True,
                     retries: int = RETRIES) -> list[StudentResult]:
    """Autograde the submissions of ``assignment`` (all, or those of ``students``): ``jobs``
    sandboxes at once on this machine, or on a Dask ``cluster`` ("local": ``jobs`` worker
    processes on 127.0.0.1; "tcp://HOST:PORT": a running scheduler's workers)."""
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
    with setup_lock(course):  # another grader may be starting on the same database
        if ensure_in_gradebook(course, assignment):
            print(f"course grade: recorded {assignment} in the gradebook from "
                  f"{course.source_dir / assignment}", file=sys.stderr)
    tests = {name.removesuffix(".ipynb"): TestPlans.from_source(name, references.source[name])
             for name in notebooks}
    context = _Context(tests=tests, hidden_paths=hidden_paths(course),
                       limits=grading_limits(course), prefetched={})
    results = []
    with warnings.catch_warnings(), Engine(jobs, cluster, retries) as engine:
        # nbgrader 0.9's gradebook code makes SQLAlchemy 2 warn about objects it adds to the
        # session later ("Object of type <SubmittedAssignment> not in session"): harmless.
        warnings.filterwarnings("ignore", message="Object of type <Submitted")
        for warning in engine.warnings():
            print(f"course grade: WARNING: {warning}", file=sys.stderr)
        source_files = read_files(course.source_dir / assignment)
        reference_runs = [engine.submit(_task(f"solution/{name}", references.source[name],
                                              source_files, name, tests, context))
                          for name in notebooks]
        runs = {student: [_submit(engine, course, assignment, student, name, references,
                                  tests, context, source_files) for name in notebooks]
                for student in available}
        bar = tqdm(available, desc=f"grading {assignment}", unit="submission",
                   disable=not progress, file=sys.stderr)
        try:
            for name, future in zip(notebooks, reference_runs, strict=True):
                accept_reference(future.result(), tests[name.removesuffix(".ipynb")])
            for student in bar:
                bar.set_postfix_str(student)
                lost = _collect(student, notebooks, runs[student], context)
                with grading_context(context):
                    results.append(_grade_one(course, assignment, student, notebooks, order,
                                              references, context, lost))
        finally:
            for future in [*reference_runs, *(f for fs in runs.values() for f in fs)]:
                if future is not None:
                    future.cancel()
            bar.close()
    return results


def _collect(student: str, notebooks: list[str], futures: list, context: _Context
             ) -> str | None:
    """Wait for one student's runs and hand them to SandboxedExecute; the reason, if a run
    was lost with the workers running it."""
    for name, future in zip(notebooks, futures, strict=True):
        if future is None:
            continue
        try:
            execution = future.result()
        except Exception as error:
            if not is_lost_worker(error):
                raise
            return (f"not graded: every worker that ran {name} died while running it "
                    f"(killed, out of memory or lost; Dask gave up after its allowed retries); "
                    f"rerun `course grade --student {student}`")
        context.prefetched[(student, name.removesuffix(".ipynb"))] = execution
    return None


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
    database = database_path(course)
    if database is not None:
        paths.append(database)
    return [path for path in paths if path.exists()]


def _task(key: str, node: nbformat.NotebookNode, files: dict[str, bytes], name: str,
          tests: dict[str, TestPlans], context: _Context) -> Task:
    return Task(key, node, files, tests[name.removesuffix(".ipynb")], context.limits,
                [str(path) for path in context.hidden_paths])


def _submit(engine: Engine, course: Course, assignment: str, student: str, name: str,
            references: _References, tests: dict[str, TestPlans], context: _Context,
            source_files: dict[str, bytes]):
    """Send one submitted notebook to a worker, ahead of nbgrader, with its folder laid out
    as nbgrader's autograded folder will be: the submission, then the source's data files
    over it. None if there is nothing to run (nbgrader then decides)."""
    folder = course.submitted_dir / student / assignment
    try:
        submitted = nbformat.read(folder / name, as_version=4)
    except Exception:  # missing or unreadable: nbgrader reports it
        return None
    files = read_files(folder)
    files.update({path: data for path, data in source_files.items()
                  if not path.endswith(".ipynb")})
    node = restore_trusted_cells(submitted, references.source[name])
    return engine.submit(_task(f"{student}/{name}", node, files, name, tests, context))


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
