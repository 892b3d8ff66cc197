"""Run a submission in the sandbox and judge its tests outside it: what ``course grade`` runs
in place of nbgrader's ``Execute`` preprocessor.

For one notebook of an assignment, ``TestPlans`` holds the trusted test cells (from the source
notebook) rewritten by ``instrument.instrument``, and the checks recorded by a run of the solution
notebook: the sequence each student's run must repeat. ``execute`` runs a notebook under
``sandbox.run_notebook`` (fresh folder with only the submission's files, no network, grader's
files hidden, an unprivileged uid, rlimits, timeouts, capped output) and collects the records;
``judge_execution`` decides each test cell from those records in this process; ``apply_verdicts``
writes the outcome into the executed notebook the way nbgrader reads it: a test cell with an
error output scores 0, one without scores its points. ``SandboxedExecute`` is that, as an
nbgrader preprocessor, so nbgrader's own ``SaveAutoGrades`` fills the gradebook.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbgrader.preprocessors import NbGraderPreprocessor

from course_lib.grading import cells
from course_lib.grading.course import CELL_TIMEOUT, GradingError
from course_lib.grading.instrument import CellPlan, instrument, pure_helpers
from course_lib.grading.sandbox import NOBODY, Fault, Limits, run_notebook, uid_slot
from course_lib.grading.verdicts import RECORDER, RECORDS_FILE, CellVerdict, judge, parse_records

__all__ = ["GRADING_LIMITS", "Execution", "SandboxedExecute", "TestPlans", "accept_reference",
           "apply_verdicts",
           "execute", "grading_context", "judge_execution", "restore_trusted_cells"]

# Limits of one graded notebook. The Transformer homework trains for up to ~40 s in one cell
# on a laptop and imports torch and d2l (about 1 GiB of address space before any tensor).
GRADING_LIMITS = Limits(memory_bytes=6 * 2**30, cpu_seconds=900, cell_timeout=CELL_TIMEOUT,
                        notebook_timeout=900.0, max_processes=64,
                        max_output_bytes=8 * 2**20, max_file_bytes=256 * 2**20,
                        max_disk_bytes=1 * 2**30)

FAULT_NAMES = {"timeout": "TimeoutError", "memory": "MemoryError", "disk": "DiskLimitError",
               "killed": "GradingError", "output_limit": "OutputLimitError",
               "crashed": "KernelDied", "invalid_notebook": "InvalidNotebook"}


@dataclass
class TestPlans:
    """One notebook's instrumented test cells (by grade_id) and the solution run's records."""

    notebook: str
    plans: dict[str, CellPlan]
    originals: dict[str, str]  # grade_id -> the test cell's trusted source
    reference: list[dict] = field(default_factory=list)

    @classmethod
    def from_source(cls, name: str, source: nbformat.NotebookNode) -> TestPlans:
        plans, originals = {}, {}
        helpers = pure_helpers([
            cell.source for cell in source.cells if cell.cell_type == "code"
            and cell.metadata.get("nbgrader", {}).get("locked") and not cells.is_graded(cell)])
        for cell in cells.test_cells(source):
            grade_id = cells.grade_id(cell)
            try:
                plans[grade_id] = instrument(cell.source, grade_id, helpers)
            except ValueError as error:
                raise GradingError(f"{name}: {error}") from error
            originals[grade_id] = cell.source
        return cls(name, plans, originals)


@dataclass
class Execution:
    """A sandboxed run: the notebook with outputs, the fault that stopped it, the records."""

    notebook: nbformat.NotebookNode
    fault: Fault | None
    records: list[dict]
    seconds: float
    protections: dict[str, bool]
    code: list[str]  # the code cells' sources as run (before instrumenting)


def restore_trusted_cells(submitted: nbformat.NotebookNode,
                          source: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``submitted`` whose read-only and test cells hold the source's text (what
    nbgrader's OverwriteCells does from the gradebook), outputs cleared."""
    trusted = {cells.grade_id(cell): cell for cell in source.cells
               if cells.grade_id(cell) and not cell.metadata.get("nbgrader", {}).get("solution")
               and (cell.metadata.get("nbgrader", {}).get("locked") or cells.is_graded(cell))}
    node = nbformat.from_dict(copy.deepcopy(dict(submitted)))
    for cell in node.cells:
        original = trusted.get(cells.grade_id(cell))
        if original is not None and original.cell_type == cell.cell_type:
            cell.source = original.source
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return node


def _code(node: nbformat.NotebookNode) -> list[str]:
    return [cell.source for cell in node.cells if cell.cell_type == "code"]


def execute(node: nbformat.NotebookNode, folder: Path, tests: TestPlans, *,
            limits: Limits = GRADING_LIMITS, hidden_paths=(), uid: int | None = NOBODY
            ) -> Execution:
    """Run ``node`` (trusted cells already restored) in a sandbox holding a copy of ``folder``.

    Test cells run instrumented; the returned notebook holds the original sources with the
    outputs of the run."""
    node = nbformat.from_dict(copy.deepcopy(dict(node)))
    to_run = nbformat.from_dict(copy.deepcopy(dict(node)))
    for cell in to_run.cells:
        plan = tests.plans.get(cells.grade_id(cell)) if cells.is_test_cell(cell) else None
        if plan is not None:
            cell.source = plan.source
    to_run.cells.insert(0, nbformat.v4.new_code_cell(RECORDER))
    result = run_notebook(to_run, files=folder, limits=limits, hidden_paths=hidden_paths,
                          uid=uid, collect=[RECORDS_FILE])
    records = parse_records(result.files.get(RECORDS_FILE, b""))
    for cell, ran in zip(node.cells, result.notebook.cells[1:], strict=True):
        if cell.cell_type == "code":
            cell.outputs = ran.outputs
            count = ran.execution_count
            cell.execution_count = count - 1 if isinstance(count, int) and count > 1 else None
    fault = result.fault
    if fault is not None and fault.cell is not None:
        fault = Fault(fault.kind, fault.cell - 1 if fault.cell > 0 else None, fault.message)
    return Execution(node, fault, records, result.seconds,
                     {"network_isolated": result.network_isolated,
                      "paths_hidden": result.paths_hidden,
                      "privileges_dropped": result.privileges_dropped}, _code(node))


def reference_run(source: nbformat.NotebookNode, folder: Path, tests: TestPlans, **options
                  ) -> Execution:
    """Run the solution notebook and accept its records (``accept_reference``)."""
    return accept_reference(execute(source, folder, tests, **options), tests)


def accept_reference(execution: Execution, tests: TestPlans) -> Execution:
    """The solution's run: its records become ``tests.reference``. A GradingError if any test
    of the solution fails there: every student would be misgraded."""
    tests.reference = execution.records
    failed = [f"{grade_id}: {verdict.reason}" for grade_id, verdict in
              judge_execution(execution, tests).items() if not verdict.passed]
    failed += [f"{cells.grade_id(cell)}: {cells.first_error(cell)}"
               for cell in execution.notebook.cells
               if cells.is_test_cell(cell) and cells.first_error(cell) is not None]
    if execution.fault is not None or failed:
        problems = ([f"it stopped: {execution.fault.message}"] if execution.fault else []) + failed
        raise GradingError(f"the solution notebook {tests.notebook} does not pass its own "
                           f"tests in the sandbox, so no submission can be judged: "
                           + "; ".join(problems))
    return execution


def judge_execution(execution: Execution, tests: TestPlans) -> dict[str, CellVerdict]:
    """grade_id -> the grader's verdict, for each test cell of the notebook."""
    verdicts = {}
    for cell in execution.notebook.cells:
        grade_id = cells.grade_id(cell)
        if not cells.is_test_cell(cell):
            continue
        plan = tests.plans.get(grade_id)
        if plan is None or cell.source != tests.originals.get(grade_id):
            verdicts[grade_id] = CellVerdict(grade_id, False, "not a test cell of the source "
                                             "notebook, or not its text")
            continue
        verdicts[grade_id] = judge(plan, execution.records, tests.reference)
    return verdicts


def _error(ename: str, evalue: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_output("error", ename=ename, evalue=evalue,
                                  traceback=[f"{ename}: {evalue}"])


def apply_verdicts(execution: Execution, verdicts: dict[str, CellVerdict]) -> list[str]:
    """Write the fault and the verdicts into the executed notebook, where nbgrader reads them:
    every test cell the grader failed gets an error output (if the run gave it none). Returns
    one line per problem, for the summary."""
    node, fault, problems = execution.notebook, execution.fault, []
    if fault is not None:
        where = "before the first cell" if fault.cell is None else \
            cells.cell_label(node.cells[fault.cell], fault.cell)
        problems.append(f"the run stopped at {where}: {fault.message}")
        if fault.cell is not None:
            node.cells[fault.cell].outputs.append(_error(FAULT_NAMES[fault.kind], fault.message))
    for cell in node.cells:
        verdict = verdicts.get(cells.grade_id(cell)) if cells.is_test_cell(cell) else None
        if verdict is None or verdict.passed:
            continue
        if cells.first_error(cell) is None:
            reason = verdict.reason
            if fault is not None and verdict.reason in ("the test did not run",):
                reason = f"not run: {problems[0]}"
            cell.outputs.append(_error("AssertionError", f"the grader's check: {reason}"))
            if "grader evaluated" in verdict.reason or "could not be checked" in verdict.reason:
                problems.append(f"{verdict.cell}: passed in the notebook but not when the grader "
                                f"checked it ({verdict.reason})")
    return problems


# --- nbgrader's side -------------------------------------------------------------------------

@dataclass
class _Context:
    """What SandboxedExecute needs during one ``course grade`` run."""

    tests: dict[str, TestPlans]  # notebook name (no suffix) -> plans
    hidden_paths: list[Path]
    limits: Limits
    prefetched: dict[tuple[str, str], Execution]  # (student, notebook) -> a run made earlier
    problems: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    reruns: int = 0  # notebooks run again because nbgrader restored them differently


_ACTIVE = threading.local()


@contextlib.contextmanager
def grading_context(context: _Context):
    """Make ``context`` the one SandboxedExecute uses in this thread."""
    previous = getattr(_ACTIVE, "context", None)
    _ACTIVE.context = context
    try:
        yield context
    finally:
        _ACTIVE.context = previous


class SandboxedExecute(NbGraderPreprocessor):
    """nbgrader's Execute step, done in the sandbox and judged outside it (``course grade``)."""

    def preprocess(self, nb, resources):
        context = getattr(_ACTIVE, "context", None)
        if context is None:
            raise GradingError("SandboxedExecute runs inside `course grade` only")
        student = resources["nbgrader"]["student"]
        notebook = resources["nbgrader"]["notebook"]
        tests = context.tests[notebook]
        key = (student, notebook)
        execution = context.prefetched.pop(key, None)
        if execution is None or execution.code != _code(nb):  # nbgrader restored differently
            context.reruns += 1
            with uid_slot() as uid:
                execution = execute(nb, Path(resources["metadata"]["path"]), tests,
                                    limits=context.limits, hidden_paths=context.hidden_paths,
                                    uid=uid)
        # the run's outputs onto nbgrader's own cells (their metadata restored from the
        # gradebook), then the verdicts
        ran = [cell for cell in execution.notebook.cells if cell.cell_type == "code"]
        for cell, done in zip([c for c in nb.cells if c.cell_type == "code"], ran, strict=True):
            cell.outputs, cell.execution_count = done.outputs, done.execution_count
        execution.notebook = nb
        context.problems[key] = apply_verdicts(execution, judge_execution(execution, tests))
        return nb, resources
