"""The `course` grading commands on real nbgrader, with the fixture assignment hw0_demo.

One temporary course folder per module (the repository's nbgrader_config.py, the fixture in
solutions/), a class of six students graded twice, then feedback and export. The repository's
own gradebook and submission folders are never touched.
"""

from __future__ import annotations

import contextlib
import csv
import html
import io
import json
import re
import shutil
from pathlib import Path

import nbformat
import pytest

from course_lib.cli import main
from course_lib.grading import cells

NAME = "hw0_demo"
FIXTURE = Path(__file__).parent / "data" / "grading" / NAME
POINTS = {"test_squares": 20, "test_masked_mean": 30, "test_masked_mean_edges": 30,
          "test_safe_ratio": 20}
# student -> (expected score, tests expected to fail)
EXPECTED = {
    "alice": (100, []),  # the solution; its safe_ratio warns on stderr during the tests
    "blank": (0, list(POINTS)),  # the released notebook, untouched
    "partial": (70, ["test_masked_mean_edges"]),  # forgets valid_len < 1: ZeroDivisionError
    "raiser": (40, ["test_masked_mean", "test_masked_mean_edges"]),  # answer cell raises first
    "loud": (100, []),  # also writes to fd 2 like torch's C++ warnings
    "missing": (0, list(POINTS)),  # notebook submitted under another name
    "crasher": (0, list(POINTS)),  # kills its process before any test: the batch goes on
}
NOT_AUTOGRADED = {"missing"}  # no autograded notebook, so no feedback page


def replace_in_cell(notebook, grade_id: str, old: str, new: str):
    """A copy of the notebook with ``old`` replaced by ``new`` in the cell ``grade_id``."""
    notebook = nbformat.from_dict(json.loads(json.dumps(notebook)))
    for cell in notebook.cells:
        if cells.grade_id(cell) == grade_id:
            assert old in cell.source, f"{old!r} not in cell {grade_id}"
            cell.source = cell.source.replace(old, new)
            return notebook
    raise AssertionError(f"no cell {grade_id}")


def make_course(folder: Path, repo_root: Path, extra_config: str = "") -> Path:
    """A course folder with the repository's nbgrader config and the fixture as source."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(FIXTURE, folder / "solutions" / NAME)
    config = (repo_root / "nbgrader_config.py").read_text()
    (folder / "nbgrader_config.py").write_text(config + extra_config)
    return folder


def submit(root: Path, student: str, notebook, filename: str = f"{NAME}.ipynb") -> None:
    folder = root / "submitted" / student / NAME
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, folder / filename)


def gradebook_scores(root: Path) -> dict[str, dict[str, float]]:
    """student -> grade_id -> score, read from the course's gradebook."""
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{root}/gradebook.db") as gradebook:
        return {submission.student.id: {grade.name: grade.score
                                        for notebook in submission.notebooks
                                        for grade in notebook.grades}
                for submission in gradebook.find_assignment(NAME).submissions}


def page_lines(path: Path) -> set[str]:
    """The page's stripped text lines, also without a traceback's "---> 12 " prefix."""
    lines = {line.strip() for line in page_text(path).splitlines()}
    return lines | {re.sub(r"^(-*>)?\s*\d+\s+", "", line) for line in lines}


def page_text(path: Path) -> str:
    """The visible text of an HTML page: scripts, styles and tags removed, entities decoded."""
    page = re.sub(r"<(script|style)\b.*?</\1>", "", path.read_text(), flags=re.S | re.I)
    return html.unescape(re.sub(r"<[^>]+>", "", page))


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def course(tmp_path_factory, repo_root):
    """The fixture course, released with `course release`."""
    root = make_course(tmp_path_factory.mktemp("course"), repo_root)
    assert main(["--root", str(root), "release", NAME]) == 0
    return root


@pytest.fixture(scope="module")
def graded(course):
    """The class submitted, graded twice by `course grade`: (scores, outputs) of each run."""
    solution = nbformat.read(course / "solutions" / NAME / f"{NAME}.ipynb", as_version=4)
    submit(course, "alice", solution)
    submit(course, "blank", nbformat.read(course / "assignments" / NAME / f"{NAME}.ipynb",
                                          as_version=4))
    submit(course, "partial", replace_in_cell(solution, "masked_mean",
                                              "if not 1 <= valid_len <= len(values):",
                                              "if valid_len > len(values):"))
    submit(course, "raiser", replace_in_cell(solution, "masked_mean", "def masked_mean",
                                             "raise RuntimeError('oops')\n\ndef masked_mean"))
    submit(course, "loud", replace_in_cell(
        solution, "safe_ratio", "        return math.inf",
        "        import os\n        os.write(2, b'[W NNPACK.cpp:64] Could not initialize "
        "NNPACK! Reason: Unsupported hardware.\\n')\n        return math.inf"))
    submit(course, "missing", solution, filename=f"Copy of {NAME}.ipynb")
    submit(course, "crasher", replace_in_cell(solution, "squares", "def squares",
                                              "import os\nos._exit(3)\n\ndef squares"))
    runs = []
    for _ in range(2):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(["--root", str(course), "grade", NAME, "--no-progress"])
        runs.append((code, gradebook_scores(course), out.getvalue()))
    return runs


# --- release -------------------------------------------------------------------------------

def test_release_is_reproducible_and_has_no_solutions_or_hidden_tests(course, tmp_path,
                                                                     repo_root):
    released = tree(course / "assignments" / NAME)
    assert sorted(released) == [f"{NAME}.ipynb", "squares.txt"]
    assert main(["--root", str(course), "release", NAME]) == 0
    assert tree(course / "assignments" / NAME) == released, "a second release differs"
    elsewhere = make_course(tmp_path / "other", repo_root)
    shutil.copy(course / "gradebook.db", elsewhere)  # saves creating one (slow), same result
    assert main(["--root", str(elsewhere), "release", "--all"]) == 0
    assert tree(elsewhere / "assignments" / NAME) == released, "release depends on the folder"

    text = released[f"{NAME}.ipynb"].decode()
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"):
        assert marker not in text, f"{marker!r} in the released notebook"
    source = nbformat.read(FIXTURE / f"{NAME}.ipynb", as_version=4)
    notebook = nbformat.reads(text, as_version=4)
    solution_lines = {"return [i * i for i in range(n)]", "return math.inf",
                      "return sum(values[:valid_len]) / valid_len"}
    hidden = hidden_only_lines()
    assert len(hidden) >= 8, "the fixture has hidden tests"
    for cell in notebook.cells:
        lines = {line.strip() for line in cell.source.splitlines()}
        assert not lines & (solution_lines | hidden), f"cell {cells.grade_id(cell)} leaks"
    answers = [cell for cell in notebook.cells if cell.metadata["nbgrader"].get("solution")]
    assert len(answers) == 3 and all("raise NotImplementedError()" in cell.source
                                     for cell in answers)
    assert [cell.id for cell in notebook.cells] == [cell.id for cell in source.cells]


def test_release_refuses_a_leaking_file_and_keeps_the_previous_release(course, capsys):
    before = tree(course / "assignments" / NAME)
    helper = course / "solutions" / NAME / "helper.py"
    helper.write_text("def answer():\n    ### BEGIN SOLUTION\n    return 42\n"
                      "    ### END SOLUTION\n")
    try:
        assert main(["--root", str(course), "release", NAME]) == 2
    finally:
        helper.unlink()
    assert "helper.py" in capsys.readouterr().err
    assert tree(course / "assignments" / NAME) == before


def test_release_of_an_unknown_assignment_exits_2(course, capsys):
    assert main(["--root", str(course), "release", "hw9_nothing"]) == 2
    assert "hw0_demo" in capsys.readouterr().err  # names the assignments there are


# --- check ---------------------------------------------------------------------------------

def test_check_passes_a_correct_notebook_and_leaves_it_unchanged(course, tmp_path, capsys):
    solution = nbformat.read(FIXTURE / f"{NAME}.ipynb", as_version=4)
    released = nbformat.read(course / "assignments" / NAME / f"{NAME}.ipynb", as_version=4)
    answers = {cells.grade_id(cell): cell.source for cell in solution.cells}
    for cell in released.cells:
        if cell.metadata["nbgrader"].get("solution"):
            cell.source = answers[cells.grade_id(cell)]  # a student who got everything right
    work = tmp_path / "work"
    shutil.copytree(course / "assignments" / NAME, work)
    nbformat.write(released, work / f"{NAME}.ipynb")
    before = (work / f"{NAME}.ipynb").read_bytes()

    assert main(["check", str(work / f"{NAME}.ipynb")]) == 0
    out = capsys.readouterr().out
    for grade_id, points in POINTS.items():
        assert re.search(rf"PASS\s+{grade_id}\s+{points}/{points}", out), out
    assert "squares of the first n numbers" in out  # the `# Test:` line
    assert "RuntimeWarning" in out and "not counted as failures" in out
    assert "4 of 4 passed, 100 of 100 points" in out
    assert (work / f"{NAME}.ipynb").read_bytes() == before
    assert sorted(p.name for p in work.iterdir()) == [f"{NAME}.ipynb", "squares.txt"]


def test_check_reports_failures_briefly_and_exits_1(course, tmp_path, capsys):
    released = nbformat.read(course / "assignments" / NAME / f"{NAME}.ipynb", as_version=4)
    solution = nbformat.read(FIXTURE / f"{NAME}.ipynb", as_version=4)
    answers = {cells.grade_id(cell): cell.source for cell in solution.cells}
    for cell in released.cells:
        if cells.grade_id(cell) in ("squares", "safe_ratio"):
            cell.source = answers[cells.grade_id(cell)]
        elif cells.grade_id(cell) == "masked_mean":  # off by one, and no input checks
            cell.source = cell.source.replace(
                "# YOUR CODE HERE\n    raise NotImplementedError()",
                "return sum(values[:valid_len - 1]) / valid_len")
    work = tmp_path / "work"
    shutil.copytree(course / "assignments" / NAME, work)
    nbformat.write(released, work / f"{NAME}.ipynb")

    assert main(["check", str(work / f"{NAME}.ipynb")]) == 1
    out = capsys.readouterr().out
    assert re.search(r"FAIL\s+test_masked_mean\s+0/30", out), out
    assert "AssertionError: expected 2.0, got 0.5" in out
    assert re.search(r"FAIL\s+test_masked_mean_edges\s+0/30", out), out
    assert "AssertionError: expected ValueError for valid_len=3 > 2 values" in out
    assert re.search(r"PASS\s+test_squares\s+20/20", out), out
    assert "2 of 4 passed, 40 of 100 points" in out
    assert "Traceback" not in out and "File " not in out


def test_check_rejects_what_is_not_an_assignment(tmp_path, capsys):
    assert main(["check", str(tmp_path / "absent.ipynb")]) == 2
    plain = tmp_path / "plain.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")]), plain)
    assert main(["check", str(plain)]) == 2
    assert "no autograded test cells" in capsys.readouterr().err


# --- grade ---------------------------------------------------------------------------------

def test_grade_scores_the_class_exactly(graded):
    code, scores, out = graded[0]
    assert code == 0, out
    assert sorted(scores) == sorted(EXPECTED)
    for student, (total, failing) in EXPECTED.items():
        got = scores[student]
        assert sum(score or 0 for score in got.values()) == total, (student, got)
        assert sorted(g for g, score in got.items() if (score or 0) < POINTS[g]) == \
            sorted(failing), (student, got)


def test_grade_prints_a_summary_per_student(graded):
    out = graded[0][2]
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    for student, (total, failing) in EXPECTED.items():
        assert f"{total} / 100" in lines[student], lines[student]
        for grade_id in failing:
            assert grade_id in lines[student]
    assert "RuntimeError: oops" in lines["raiser"]
    assert "missing notebook hw0_demo.ipynb (found Copy of hw0_demo.ipynb)" in lines["missing"]
    # its process died in the answer cell: the sandbox names the cell and the exit status
    assert "squares: KernelDied: the notebook's process exited with status 3" in lines["crasher"]
    assert lines["alice"].rstrip().endswith("-")  # no failed tests, no errors
    assert f"{len(EXPECTED)} submission(s) of hw0_demo graded" in out


def test_grading_twice_gives_identical_results(graded):
    (code1, scores1, out1), (code2, scores2, out2) = graded
    assert code1 == code2 == 0
    assert scores1 == scores2
    assert out1 == out2


def test_stderr_would_zero_a_correct_answer_without_the_course_setting(tmp_path, repo_root,
                                                                        course, graded, capsys):
    """nbgrader 0.9 scores a test cell 0 if it wrote to stderr (the reason for the
    IgnorePattern setting, nbgrader PR 1904): here it is off, in a course whose gradebook does
    not know the assignment, so `course grade` also has to record it first."""
    from nbgrader.api import Gradebook

    root = make_course(tmp_path / "plain", repo_root,
                       extra_config="\nc.IgnorePattern.enabled = False\n")
    shutil.copytree(course / "submitted" / "alice", root / "submitted" / "alice")
    shutil.copy(course / "gradebook.db", root)  # a copy is faster than a new one
    with Gradebook(f"sqlite:///{root}/gradebook.db") as gradebook:
        gradebook.remove_assignment(NAME)
    assert main(["--root", str(root), "grade", NAME, "--no-progress"]) == 0
    assert f"recorded {NAME} in the gradebook" in capsys.readouterr().err
    scores = gradebook_scores(root)["alice"]
    assert scores["test_safe_ratio"] == 0, scores
    assert sum(scores.values()) == 80


def test_grade_set_up_problems_exit_2_and_no_submissions_is_fine(course, tmp_path, capsys):
    assert main(["--root", str(course), "grade", "hw9_nothing", "--no-progress"]) == 2
    assert "no assignment 'hw9_nothing'" in capsys.readouterr().err
    empty = tmp_path / "empty"
    shutil.copytree(course / "solutions", empty / "solutions")
    shutil.copy(course / "nbgrader_config.py", empty)
    assert main(["--root", str(empty), "grade", NAME, "--jobs", "4", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "No submissions of hw0_demo" in captured.out and not captured.err


# --- feedback ------------------------------------------------------------------------------

def hidden_only_lines() -> set[str]:
    """Lines of the fixture's hidden tests that appear nowhere else in the notebook."""
    source = nbformat.read(FIXTURE / f"{NAME}.ipynb", as_version=4)
    hidden = cells.hidden_lines(cells.test_cells(source))
    elsewhere = set()
    for cell in source.cells:
        text = cells.remove_hidden_tests(cell.source, None) if cells.is_test_cell(cell) \
            else cell.source
        elsewhere |= {line.strip() for line in text.splitlines()}
    return {line for line in hidden - elsewhere if len(line) > 8}


def test_feedback_shows_every_test_and_no_hidden_test_code(course, graded, capsys):
    assert main(["--root", str(course), "feedback", NAME]) == 0
    capsys.readouterr()
    pages = {student: course / "feedback" / student / NAME / f"{NAME}.html"
             for student in EXPECTED}
    assert not any(pages[student].exists() for student in NOT_AUTOGRADED)
    secret = hidden_only_lines()
    assert {"assert squares(0) == [], f\"expected [] for n=0, got {squares(0)}\"",
            "masked_mean([4.0, 2.0], bad_len)"} <= secret
    for student, (total, failing) in EXPECTED.items():
        if student in NOT_AUTOGRADED:
            continue
        text = page_text(pages[student])
        lines = page_lines(pages[student])
        assert not lines & secret, (student, sorted(lines & secret))
        assert "BEGIN HIDDEN TESTS" not in text
        assert f"Score: {total:.1f} / 100.0" in text
        page = pages[student].read_text()
        for grade_id, points in POINTS.items():  # the table of tests at the top
            earned = 0 if grade_id in failing else points
            assert re.search(rf"<code>{grade_id}</code></td><td>[^<]+</td>"
                             rf"<td>{earned} / {points}</td>", page), (student, grade_id)
    partial = page_text(pages["partial"])
    assert "ZeroDivisionError: division by zero" in partial  # the message of a hidden test
    assert "masked_mean rejects impossible lengths" in partial  # its description
    assert "NotImplementedError" in page_text(pages["blank"])
    assert "RuntimeWarning: division by zero" not in page_text(pages["alice"])  # quotes hidden


def test_nbgrader_default_feedback_would_leak_the_hidden_tests(course, graded, tmp_path):
    """What the course's feedback preprocessor prevents (nbgrader issue 917): without it the
    page shows hidden test source and tracebacks quoting it."""
    from nbgrader.converters import GenerateFeedback
    from traitlets.config import Config

    from course_lib.grading.course import Course
    from course_lib.grading.feedback import find_leaks

    plain = Config()
    plain.GenerateFeedback.preprocessors = ["nbgrader.preprocessors.GetGrades",
                                            "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor"]
    plain.CourseDirectory.feedback_directory = str(tmp_path / "feedback")
    demo = Course.open(course)
    assert demo.run(GenerateFeedback, config=plain, assignment_id=NAME, student_id="partial",
                    force=True).success
    page = tmp_path / "feedback" / "partial" / NAME / f"{NAME}.html"
    assert page_lines(page) & hidden_only_lines()
    quoted = [line for line in page_text(page).splitlines()  # "     11   masked_mean(..."
              if re.match(r"\s*(-+>)?\s*\d+\s", line) and "bad_len" in line]
    assert any("masked_mean([4.0, 2.0], bad_len)" in line for line in quoted), quoted
    graded_notebook = nbformat.read(course / "autograded" / "partial" / NAME / f"{NAME}.ipynb",
                                    as_version=4)
    assert find_leaks(page.read_text(), graded_notebook)


# --- export --------------------------------------------------------------------------------

def test_export_writes_one_row_per_student(course, graded, tmp_path, capsys):
    out = tmp_path / "grades.csv"
    assert main(["--root", str(course), "export", "--to", str(out)]) == 0
    assert f"wrote {len(EXPECTED)} grade row(s)" in capsys.readouterr().out
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["student_id"]: float(row["score"]) for row in rows} == {
        student: float(total) for student, (total, _) in EXPECTED.items()}
    assert {row["assignment"] for row in rows} == {NAME}
    assert {float(row["max_score"]) for row in rows} == {100.0}
    assert main(["--root", str(course), "export"]) == 0
    assert (course / "grades.csv").read_text() == out.read_text()


def test_parallel_runs_are_used_not_repeated(tmp_path, repo_root, monkeypatch):
    """With --jobs 2 the notebooks run in worker threads ahead of nbgrader; nbgrader's own
    restored cells match, so none is run a second time in the main thread."""
    from course_lib.grading import autograde

    root = make_course(tmp_path / "course", repo_root)
    assert main(["--root", str(root), "release", NAME]) == 0
    solution = nbformat.read(root / "solutions" / NAME / f"{NAME}.ipynb", as_version=4)
    for student in ("s1", "s2", "s3"):
        submit(root, student, solution)
    contexts = []
    real = autograde.grading_context

    def spy(context):
        contexts.append(context)
        return real(context)

    monkeypatch.setattr(autograde, "grading_context", spy)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["--root", str(root), "grade", NAME, "--jobs", "2", "--no-progress"]) == 0
    assert "3 submission(s) of hw0_demo graded; mean score 100.0 of 100." in out.getvalue()
    assert len(contexts) == 3 and contexts[0].reruns == 0 and not contexts[0].prefetched
