"""``course release``: the student versions in ``assignments/``, regenerated from ``solutions/``.

nbgrader's ``generate_assignment`` does the work (solutions replaced by
``raise NotImplementedError()``, hidden tests removed, cells locked, checksums, and the
assignment's cells recorded in the gradebook, which autograding needs). On top of it:

- the output is byte-for-byte reproducible: nbformat gives a v4.5 cell without an ``id`` a
  random one on every run, so such cells get a stable id (their grade_id, else their position);
- it is verified: a released file that still holds a solution or hidden-test delimiter is an
  error, and ``assignments/<name>`` is only replaced once the new version passed.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import nbformat

from course_lib.grading.cells import BEGIN_HIDDEN, BEGIN_SOLUTION, END_HIDDEN, END_SOLUTION
from course_lib.grading.course import Course, GradingError

__all__ = ["ensure_in_gradebook", "release_assignment", "stable_cell_ids", "verify_release"]

_ID_CHARS = re.compile(r"[^A-Za-z0-9_-]")


def stable_cell_ids(released: nbformat.NotebookNode, source: nbformat.NotebookNode) -> int:
    """Give the released notebook the source's cell ids, or stable ones where it has none.

    Returns how many ids were replaced. Cells correspond one to one (nbgrader neither adds nor
    removes cells unless a header or footer is configured; then positions are used).
    """
    if released.nbformat_minor < 5:
        return 0
    source_ids = [cell.get("id") for cell in source.cells]
    if len(source_ids) != len(released.cells):
        source_ids = [None] * len(released.cells)
    replaced, taken = 0, set()
    for index, (cell, source_id) in enumerate(zip(released.cells, source_ids, strict=True)):
        wanted = source_id
        if not wanted:
            grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id", "")
            wanted = _ID_CHARS.sub("-", grade_id)[:64] or f"cell-{index + 1}"
        if wanted in taken:
            wanted = f"cell-{index + 1}"
        taken.add(wanted)
        if cell.get("id") != wanted:
            cell["id"] = wanted
            replaced += 1
    return replaced


def _delimiters(course: Course) -> list[str]:
    clear_solutions = course.config.ClearSolutions
    clear_hidden = course.config.ClearHiddenTests
    return [clear_solutions.get("begin_solution_delimeter", BEGIN_SOLUTION),
            clear_solutions.get("end_solution_delimeter", END_SOLUTION),
            clear_hidden.get("begin_test_delimeter", BEGIN_HIDDEN),
            clear_hidden.get("end_test_delimeter", END_HIDDEN)]


def verify_release(folder: Path, delimiters: list[str] | None = None) -> None:
    """Raise GradingError if a released text file still holds a solution or hidden test."""
    delimiters = delimiters or [BEGIN_SOLUTION, END_SOLUTION, BEGIN_HIDDEN, END_HIDDEN]
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary data files cannot hold a delimiter line
        for delimiter in delimiters:
            if delimiter in text:
                raise GradingError(f"{path.relative_to(folder)} would be released with "
                                   f"{delimiter!r} in it: a solution or hidden test would leak "
                                   "(is the region in a cell without nbgrader metadata, or in "
                                   "a non-notebook file?)")


def _generate(course: Course, name: str, release_root: Path) -> Path:
    """nbgrader generate_assignment of ``name`` into ``release_root``, recorded in the
    gradebook; returns the generated folder."""
    from nbgrader.converters import GenerateAssignment

    result = course.run(GenerateAssignment, release_directory=str(release_root),
                        assignment_id=name, force=True, create_assignment=True)
    if not result.success:
        raise GradingError(f"nbgrader generate_assignment {name} failed: {result.summary()}")
    return release_root / name


def release_assignment(course: Course, name: str) -> Path:
    """Regenerate ``assignments/<name>/`` from ``solutions/<name>/``; returns that folder."""
    source = course.require_assignment(name)
    with tempfile.TemporaryDirectory(prefix="course-release-") as tmp:
        generated = _generate(course, name, Path(tmp))
        for released_path in sorted(generated.rglob("*.ipynb")):
            source_path = source / released_path.relative_to(generated)
            released = nbformat.read(released_path, as_version=4)
            stable_cell_ids(released, nbformat.read(source_path, as_version=4))
            nbformat.write(released, released_path)
        verify_release(generated, _delimiters(course))
        target = course.release_dir / name
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(generated, target)
    return target


def ensure_in_gradebook(course: Course, name: str) -> bool:
    """Record assignment ``name`` in the gradebook if it is not there (nbgrader autograde
    needs its cells), without touching ``assignments/``. Returns True if it had to."""
    from nbgrader.api import MissingEntry

    expected = {path.stem for path in course.source_notebooks(name)}
    with course.gradebook() as gradebook:
        try:
            recorded = {notebook.name for notebook in gradebook.find_assignment(name).notebooks}
        except MissingEntry:
            recorded = set()
    if expected <= recorded:
        return False
    with tempfile.TemporaryDirectory(prefix="course-release-") as tmp:
        _generate(course, name, Path(tmp))
    return True
