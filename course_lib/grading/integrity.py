"""Integrity checks of a submitted notebook: tampering and forbidden shortcuts, found statically.

nbgrader restores the source of locked and test cells from its gradebook before running a
submission, but it runs whatever else the student wrote in the same interpreter as the tests.
Code in an answer cell can therefore neuter the tests that follow (IPython input or AST
transformers, a patched ``torch.testing.assert_close``, an object whose ``__eq__`` is always
True) or call the library's implementation of the very function the assignment asks for. These
checks read the submission without running it and report each such thing as a ``Finding``
with a reason; ``course grade`` then scores the notebook as wrong (zero) and flags it for an
instructor's review (``needs_manual_grade`` in nbgrader's formgrader), who can restore points.

What is checked:
- *Structure*, against the released notebook: every graded or locked cell is still there
  (by ``grade_id``), with its nbgrader metadata and cell type unchanged; test and locked cells
  keep their source; no graded cell was added; the kernel is the released one.
- *Student code* (answer cells and cells the student added; after IPython's own transforms, so
  ``%magics`` parse), by its syntax tree with names resolved through every cell's imports:
  - IPython hooks: ``input_transformers_*``, ``ast_transformers``, ``events``, custom exception
    handlers, ``run_cell``, ...;
  - interpreter hooks: ``sys.settrace``/``setprofile``/``excepthook``/``displayhook``,
    ``sys.modules``, ``sys.meta_path``, ``builtins``;
  - patching a module's attribute (``torch.testing.assert_close = ...``, ``setattr(np, ...)``,
    ``unittest.mock``) or rebinding a name that the notebook's read-only cells imported or
    defined (``np = ...``);
  - classes that define comparison, truth or conversion methods (``__eq__``, ``__bool__``,
    ``__float__``, ``__array__``, ``__torch_function__``, ...) or subclass a tensor, an array or
    a number, and dunder methods assigned onto objects;
  - dynamic code that would hide any of the above: ``eval``, ``exec``, ``compile``,
    ``__import__``, ``importlib``, ``getattr``/``setattr`` with a computed name;
  - the assignment's forbidden APIs (``grading_policy.toml``): a dotted path matches itself and
    everything under it, whatever alias it was imported by.

What is not: static analysis cannot see every way of doing these things (data that decodes to
code, C extensions, ``ctypes``). The stronger defence is that such code gains nothing where
verdicts are computed outside the student's process; these checks are the tripwire that tells
an instructor someone tried, and they catch the honest mistake of calling the library's
answer.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbformat import NotebookNode

from course_lib.grading import cells
from course_lib.grading.code_checks import CodeChecker, Scope, parse_cell
from course_lib.grading.policy import Policy

__all__ = ["Finding", "check_notebook", "check_submission"]

_NBGRADER_KEYS = ("grade", "solution", "locked", "points", "task", "grade_id")


@dataclass(frozen=True)
class Finding:
    """One integrity problem: what kind, where (a cell label), and a sentence saying what."""

    kind: str   # structure, ipython-hook, interpreter-hook, patch, lying-object, dynamic-code,
    #             forbidden-api, invalid-notebook
    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


def check_submission(submitted: Path, released: Path | NotebookNode,
                     policy: Policy | None = None,
                     source: Path | NotebookNode | None = None) -> list[Finding]:
    """Findings for the notebook file ``submitted`` against the released notebook (and the
    instructors' ``source`` notebook, whose test cells, hidden tests included, are accepted
    too: instructors try the grader on it). The references are files or parsed notebooks
    (parse them once when checking a whole class)."""
    try:
        notebook = nbformat.read(submitted, as_version=4)
    except Exception as error:  # noqa: BLE001 - any unreadable file is the same finding
        return [Finding("invalid-notebook", submitted.name,
                        f"not a readable notebook ({type(error).__name__}: {error})")]
    return check_notebook(notebook, _parsed(released), policy,
                          None if source is None else _parsed(source))


def _parsed(notebook: Path | NotebookNode) -> NotebookNode:
    return notebook if isinstance(notebook, dict) else nbformat.read(notebook, as_version=4)


def check_notebook(notebook: NotebookNode, released: NotebookNode,
                   policy: Policy | None = None,
                   source: NotebookNode | None = None) -> list[Finding]:
    """Findings for a submitted notebook against the released one (both parsed); a read-only
    cell may also equal its version in the instructors' ``source`` notebook. ``policy``: the
    assignment's forbidden APIs (none if None)."""
    policy = policy or Policy()
    findings = _structure(notebook, released, source)
    read_only_sources, student_sources = [], []
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        meta = cell.get("metadata", {}).get("nbgrader", {})
        is_student = bool(meta.get("solution")) or not meta.get("grade_id")
        (student_sources if is_student else read_only_sources).append(
            (cells.cell_label(cell, index), cell.source))
    scope = Scope()
    for _, text in read_only_sources:  # the aliases and names the tests rely on
        tree = parse_cell(text)
        if tree is not None:
            scope.learn(tree, read_only=True)
    for cell in source.cells if source is not None else []:  # and the hidden tests' variables
        meta = cell.get("metadata", {}).get("nbgrader", {})
        tree = parse_cell(cell.source) if cell.cell_type == "code" and meta.get("grade_id") \
            and not meta.get("solution") else None
        if tree is not None:
            scope.test_variables |= {node.id for node in ast.walk(tree)
                                     if isinstance(node, ast.Name)
                                     and isinstance(node.ctx, ast.Store)}
    for label, source in student_sources:
        tree = parse_cell(source)
        if tree is None:
            continue  # a syntax error fails the student's own cell; nothing to hide here
        scope.learn(tree, read_only=False)
        findings += [Finding(kind, label, reason)
                     for kind, reason in CodeChecker(scope, policy).run(tree)]
    return _unique(findings)


def _unique(findings: list[Finding]) -> list[Finding]:
    return list(dict.fromkeys(findings))


def _structure(notebook: NotebookNode, released: NotebookNode,
               source: NotebookNode | None) -> list[Finding]:
    findings = []
    original = {cells.grade_id(cell): _normalise(cell.source)
                for cell in (source.cells if source is not None else []) if cells.grade_id(cell)}
    by_id: dict[str, list[NotebookNode]] = {}
    for cell in notebook.cells:
        if cells.grade_id(cell):
            by_id.setdefault(cells.grade_id(cell), []).append(cell)
    released_ids = set()
    for cell in released.cells:
        grade_id = cells.grade_id(cell)
        if not grade_id:
            continue
        released_ids.add(grade_id)
        copies = by_id.get(grade_id, [])
        if not copies:
            findings.append(Finding("structure", grade_id, "this graded or read-only cell was "
                                    "deleted (or its nbgrader metadata removed)"))
            continue
        if len(copies) > 1:
            findings.append(Finding("structure", grade_id,
                                    f"this cell appears {len(copies)} times"))
        mine = copies[0]
        theirs_meta = cell.metadata.get("nbgrader", {})
        mine_meta = mine.get("metadata", {}).get("nbgrader", {})
        changed = [key for key in _NBGRADER_KEYS if mine_meta.get(key) != theirs_meta.get(key)]
        if mine.cell_type != cell.cell_type:
            changed.append("cell type")
        if changed:
            findings.append(Finding("structure", grade_id,
                                    f"its nbgrader metadata was edited ({', '.join(changed)})"))
        read_only = cells.is_test_cell(cell) or (theirs_meta.get("locked")
                                                 and not theirs_meta.get("solution"))
        if read_only and _normalise(mine.source) not in (_normalise(cell.source),
                                                         original.get(grade_id)):
            what = "test" if cells.is_test_cell(cell) else "read-only"
            findings.append(Finding("structure", grade_id, f"this {what} cell was edited"))
    for grade_id in sorted(set(by_id) - released_ids):
        findings.append(Finding("structure", grade_id,
                                "a cell with nbgrader metadata that the release does not have"))
    kernel = notebook.metadata.get("kernelspec", {}).get("name")
    expected = released.metadata.get("kernelspec", {}).get("name")
    if kernel != expected:
        findings.append(Finding("structure", "notebook",
                                f"the kernel was changed from {expected!r} to {kernel!r}"))
    return findings


def _normalise(source: str) -> str:
    return "\n".join(line.rstrip() for line in source.strip().splitlines())
