"""Every real assignment in solutions/ through `course release` and `course grade` (slow).

Per assignment, in a temporary course folder (the repository's nbgrader_config.py and a copy of
solutions/<name>/): a fresh release, compared with the committed assignments/<name>/; then the
solution, the released blank and the partly right submission of
tests/data/partial/<name>.json graded as three students in one `course grade` run, twice.
Parametrised over the assignments present, so a new one is tested as soon as it lands.
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
ASSIGNMENTS = sorted(folder.name for folder in (REPO / "solutions").glob("*")
                     if (folder / f"{folder.name}.ipynb").is_file())
PARTIAL = REPO / "tests" / "data" / "partial"
STUDENTS = ("solution", "blank", "partial")

pytestmark = pytest.mark.slow


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def quiet_main(argv: list[str]) -> tuple[int, str]:
    """Run the `course` command, returning its exit code and what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    return code, out.getvalue()


def gradebook_scores(root: Path, name: str) -> dict[str, dict[str, float | None]]:
    """student -> grade_id -> score of assignment ``name``, from the course's gradebook."""
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{root}/gradebook.db") as gradebook:
        return {submission.student.id: {grade.name: grade.score
                                        for notebook in submission.notebooks
                                        for grade in notebook.grades}
                for submission in gradebook.find_assignment(name).submissions}


def without_region(source: str, begin: str, end: str, stub: list[str]) -> str:
    """``source`` with each begin/end region replaced by ``stub`` at the region's indent
    (how nbgrader's ClearSolutions and ClearHiddenTests rewrite a cell)."""
    kept, inside = [], False
    for line in source.split("\n"):
        if begin in line:
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            kept += [indent + stub_line for stub_line in stub]
        elif end in line:
            inside = False
        elif not inside:
            kept.append(line)
    return "\n".join(kept)


def expected_student_source(cell) -> str:
    """What the released version of a source cell must hold."""
    meta = cell.metadata.get("nbgrader", {})
    if meta.get("solution"):
        if cell.cell_type == "markdown":
            return without_region(cell.source, "BEGIN SOLUTION", "END SOLUTION",
                                  ["YOUR ANSWER HERE"]) if "BEGIN SOLUTION" in cell.source \
                else "YOUR ANSWER HERE"
        stub = ["# YOUR CODE HERE", "raise NotImplementedError()"]
        if "BEGIN SOLUTION" not in cell.source:
            return "\n".join(stub)
        return without_region(cell.source, "BEGIN SOLUTION", "END SOLUTION", stub)
    if meta.get("grade"):
        return without_region(cell.source, "BEGIN HIDDEN TESTS", "END HIDDEN TESTS", [])
    return cell.source


def partial_spec(name: str) -> dict | None:
    path = PARTIAL / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


@pytest.fixture(scope="module", params=ASSIGNMENTS or [
    pytest.param(None, marks=pytest.mark.skip(reason="no assignments in solutions/ yet"))])
def released(request, tmp_path_factory):
    """(name, course folder) after `course release <name>` in a fresh course folder."""
    name = request.param
    root = tmp_path_factory.mktemp(name)
    shutil.copytree(REPO / "solutions" / name, root / "solutions" / name)
    shutil.copy(REPO / "nbgrader_config.py", root)
    code, out = quiet_main(["--root", str(root), "release", name])
    assert code == 0, out
    return name, root


@pytest.fixture(scope="module")
def graded(released):
    """Solution, blank and partial graded by one `course grade` run, twice:
    [(exit code, scores, printed summary)] * 2."""
    name, root = released
    source = nbformat.read(root / "solutions" / name / f"{name}.ipynb", as_version=4)
    notebooks = {"solution": source,
                 "blank": nbformat.read(root / "assignments" / name / f"{name}.ipynb",
                                        as_version=4)}
    spec = partial_spec(name)
    if spec is not None:
        partial = nbformat.from_dict(json.loads(json.dumps(source)))
        matches = [cell for cell in partial.cells if cells.grade_id(cell) == spec["cell"]]
        assert len(matches) == 1, f"{name}.json: no single cell {spec['cell']!r}"
        matches[0].source = spec["source"]
        notebooks["partial"] = partial
    for student, notebook in notebooks.items():
        folder = root / "submitted" / student / name
        folder.mkdir(parents=True)
        nbformat.write(notebook, folder / f"{name}.ipynb")
    runs = []
    for _ in range(2):
        code, out = quiet_main(["--root", str(root), "grade", name, "--no-progress"])
        runs.append((code, gradebook_scores(root, name), out))
    return runs


def test_committed_release_equals_a_fresh_release(released):
    name, root = released
    committed = REPO / "assignments" / name
    if not committed.is_dir():
        pytest.fail(f"assignments/{name}/ is missing: run `course release {name}` and commit it")
    fresh = tree(root / "assignments" / name)
    assert sorted(tree(committed)) == sorted(fresh), "different files"
    for path, content in fresh.items():
        assert tree(committed)[path] == content, (
            f"assignments/{name}/{path} differs from a fresh `course release {name}`")


def test_release_has_no_solution_code_or_hidden_tests(released):
    name, root = released
    source = nbformat.read(root / "solutions" / name / f"{name}.ipynb", as_version=4)
    folders = [root / "assignments" / name, REPO / "assignments" / name]
    for folder in [f for f in folders if f.is_dir()]:
        for path, content in tree(folder).items():
            text = content.decode("utf-8", errors="replace")
            for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN", "END HIDDEN"):
                assert marker not in text, f"{folder.name}/{path} contains {marker!r}"
        student = nbformat.read(folder / f"{name}.ipynb", as_version=4)
        assert len(student.cells) == len(source.cells)
        for mine, theirs in zip(source.cells, student.cells, strict=True):
            assert theirs.source == expected_student_source(mine), (
                f"{folder.name}: cell {cells.grade_id(mine)} is not its solution-free version")


def test_points_total_100_and_every_test_says_what_it_checks(released):
    name, root = released
    source = nbformat.read(root / "solutions" / name / f"{name}.ipynb", as_version=4)
    assert cells.total_points(source) == 100, f"expected 100 points, got " \
                                              f"{cells.total_points(source)}"
    for cell in cells.test_cells(source):
        first = cell.source.lstrip().splitlines()[0]
        assert first.startswith("# Test:"), f"{cells.grade_id(cell)} starts with {first!r}"
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{root}/gradebook.db") as gradebook:
        assert gradebook.find_assignment(name).max_score == 100


def test_solution_scores_100(graded):
    code, scores, out = graded[0]
    assert code == 0, out
    got = scores["solution"]
    assert sum(score or 0 for score in got.values()) == 100, (got, out)


def test_released_blank_scores_0_without_crashing(graded):
    _, scores, out = graded[0]
    got = scores["blank"]
    assert all(score is not None for score in got.values()), f"ungraded cells: {got}"
    assert sum(got.values()) == 0, got
    blank_line = next(line for line in out.splitlines() if line.startswith("blank "))
    assert "autograde failed" not in blank_line, blank_line


def test_partial_submission_scores_exactly_its_expected_points(released, graded):
    name, root = released
    spec = partial_spec(name)
    if spec is None:
        pytest.fail(f"tests/data/partial/{name}.json is missing (the assignment's partly right "
                    "submission)")
    source = nbformat.read(root / "solutions" / name / f"{name}.ipynb", as_version=4)
    target = [cell for cell in source.cells if cells.grade_id(cell) == spec["cell"]]
    assert target and target[0].metadata["nbgrader"].get("solution"), (
        f"{name}.json: {spec['cell']!r} is not an answer cell")
    got = graded[0][1]["partial"]
    total = sum(score or 0 for score in got.values())
    assert total == pytest.approx(float(spec["expected_points"])), (
        f"expected {spec['expected_points']} points ({spec.get('why')}), got {total}: {got}")


def test_grading_twice_gives_identical_results(graded):
    (code1, scores1, _), (code2, scores2, _) = graded
    assert code1 == code2 == 0
    assert scores1 == scores2
