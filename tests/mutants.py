"""Grading a homework's typical mistakes through the real `course grade` (issue 21).

A *mutant* is the homework's solution with one small edit of an answer cell, a mistake students
make (a wrong softmax axis, a missing dropout, a brevity penalty inverted). A *rewrite* is other,
honest code for the same answer (einsum, a hand-written softmax). A test module subclasses
`MutantSuite` (or binds `mutant_suite(...)` to a name `Test...`), names the homework and lists
both; the suite then grades the
solution, every mutant and every rewrite as students of ONE `course grade --jobs 2` run (sandbox,
integrity checks, verdicts judged outside the notebook) and requires that

- the solution scores full marks,
- every mutant loses points, and scores 0 in the test meant to catch it (`CAUGHT_BY`),
- every rewrite keeps every point the solution gets.

`FIRST_CUT` (optional) cuts the notebook before that cell, to leave out slow parts that no
mutant reaches (hw5's training).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import nbformat
import pytest

from course_lib.cli import main
from course_lib.grading import cells

REPO = Path(__file__).resolve().parents[1]

# A mutant: (answer cell's grade_id, [(old, new), ...]); each old text occurs once in the cell.
Edits = tuple[str, list[tuple[str, str]]]


def copy_of(notebook):
    return nbformat.from_dict(json.loads(json.dumps(notebook)))


def cut_before(notebook, first_cut: str | None):
    """The notebook's cells before the cell ``first_cut`` (all of them for None)."""
    cut = copy_of(notebook)
    if first_cut is not None:
        ids = [cells.grade_id(cell) for cell in cut.cells]
        cut.cells = cut.cells[:ids.index(first_cut)]
    return cut


def mutated(solution, name: str, edits: Edits):
    """The solution with the mutant's edits made in its answer cell."""
    cell_id, replacements = edits
    notebook = copy_of(solution)
    (cell,) = [c for c in notebook.cells if cells.grade_id(c) == cell_id]
    for old, new in replacements:
        assert cell.source.count(old) == 1, f"{name}: {old!r} is not once in {cell_id}"
        cell.source = cell.source.replace(old, new)
    return notebook


def rewritten(solution, name: str, sources: dict[str, str]):
    """The solution with whole answer cells replaced by other code."""
    notebook = copy_of(solution)
    ids = {cells.grade_id(cell) for cell in notebook.cells}
    assert set(sources) <= ids, f"{name}: no cells {set(sources) - ids}"
    for cell in notebook.cells:
        new = sources.get(cells.grade_id(cell))
        if new is not None:
            cell.source = new
    return notebook


def grade_class(root: Path, name: str, solution, students: dict) -> dict[str, dict[str, float]]:
    """student -> grade_id -> score: ``solution`` released as assignment ``name`` in the course
    folder ``root``, then ``students`` (student id -> notebook) graded by one `course grade`."""
    (root / "solutions" / name).mkdir(parents=True)
    nbformat.write(solution, root / "solutions" / name / f"{name}.ipynb")
    shutil.copy(REPO / "nbgrader_config.py", root)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["--root", str(root), "release", name]) == 0, out.getvalue()
    for student, notebook in students.items():
        folder = root / "submitted" / student / name
        folder.mkdir(parents=True)
        nbformat.write(notebook, folder / f"{name}.ipynb")
    with contextlib.redirect_stdout(out):
        code = main(["--root", str(root), "grade", name, "--jobs", "2", "--no-progress"])
    assert code == 0, out.getvalue()
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{root}/gradebook.db") as gradebook:
        return {submission.student.id: {grade.name: grade.score or 0
                                        for notebook in submission.notebooks
                                        for grade in notebook.grades}
                for submission in gradebook.find_assignment(name).submissions}


class MutantSuite:
    """Subclass as ``Test<Homework>Mutants`` and set the class attributes below."""

    NAME: str  # the homework, solutions/<NAME>/<NAME>.ipynb
    MUTANTS: dict[str, Edits]
    REWRITES: dict[str, dict[str, str]]  # name -> {answer cell: its whole new source}
    CAUGHT_BY: dict[str, str]  # mutant -> the test cell that must score 0 for it
    FIRST_CUT: str | None = None

    def pytest_generate_tests(self, metafunc):
        if "mutant" in metafunc.fixturenames:
            metafunc.parametrize("mutant", list(self.MUTANTS))
        if "rewrite" in metafunc.fixturenames:
            metafunc.parametrize("rewrite", list(self.REWRITES))

    @pytest.fixture(scope="class")
    @classmethod
    def solution(cls):
        source = nbformat.read(REPO / "solutions" / cls.NAME / f"{cls.NAME}.ipynb",
                               as_version=4)
        return cut_before(source, cls.FIRST_CUT)

    @pytest.fixture(scope="class")
    @classmethod
    def graded(cls, solution, tmp_path_factory):
        """student -> grade_id -> score, from one `course grade` run of the solution, every
        mutant and every rewrite."""
        students = {"solution": solution}
        students |= {f"mutant-{n}": mutated(solution, n, e) for n, e in cls.MUTANTS.items()}
        students |= {f"rewrite-{n}": rewritten(solution, n, s) for n, s in cls.REWRITES.items()}
        return grade_class(tmp_path_factory.mktemp(f"{cls.NAME}_mutants"), cls.NAME,
                           solution, students)

    def test_every_mutant_says_which_test_catches_it(self, solution):
        assert set(self.CAUGHT_BY) == set(self.MUTANTS)
        test_ids = {cells.grade_id(cell) for cell in cells.test_cells(solution)}
        assert set(self.CAUGHT_BY.values()) <= test_ids, set(self.CAUGHT_BY.values()) - test_ids

    def test_the_solution_scores_full_marks(self, solution, graded):
        assert sum(graded["solution"].values()) == cells.total_points(solution), graded["solution"]

    def test_every_mutant_loses_points(self, solution, graded, mutant):
        scores = graded[f"mutant-{mutant}"]
        assert sum(scores.values()) < cells.total_points(solution), (
            f"{mutant} scores full marks: {scores}")
        assert scores[self.CAUGHT_BY[mutant]] == 0, (
            f"{mutant} passes {self.CAUGHT_BY[mutant]}, the test meant to catch it: {scores}")

    def test_every_honest_rewrite_keeps_full_marks(self, graded, rewrite):
        scores = graded[f"rewrite-{rewrite}"]
        lost = {test: score for test, score in scores.items()
                if score < graded["solution"][test]}
        assert not lost, f"{rewrite} lost points in {lost}"


def mutant_suite(name: str, mutants: dict[str, Edits], rewrites: dict[str, dict[str, str]],
                 caught_by: dict[str, str], first_cut: str | None = None) -> type[MutantSuite]:
    """The MutantSuite of homework ``name``; bind it to a module-level name ``Test...``."""
    return type("TestMutants", (MutantSuite,), {
        "NAME": name, "MUTANTS": mutants, "REWRITES": rewrites, "CAUGHT_BY": caught_by,
        "FIRST_CUT": first_cut})
