"""course_lib.grading's pure parts: cell reading, stable ids, leak search, configuration."""

from __future__ import annotations

import copy
import re

import nbformat
import pytest
from traitlets.config import PyFileConfigLoader

from course_lib.grading import cells
from course_lib.grading.course import (
    Course,
    GradingError,
    RunResult,
    default_config,
    find_grading_root,
    load_config,
)
from course_lib.grading.feedback import find_leaks
from course_lib.grading.release import stable_cell_ids, verify_release


def grade_cell(source: str, grade_id: str = "test_x", points: int = 5):
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["nbgrader"] = {"grade": True, "solution": False, "locked": True,
                                 "task": False, "points": points, "grade_id": grade_id,
                                 "schema_version": 3}
    return cell


def answer_cell(source: str, grade_id: str = "answer"):
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["nbgrader"] = {"grade": False, "solution": True, "locked": False,
                                 "task": False, "grade_id": grade_id, "schema_version": 3}
    return cell


HIDDEN = "# Test: shapes\nassert f(1) == 1\n### BEGIN HIDDEN TESTS\nassert f(2) == 4\n" \
         "### END HIDDEN TESTS\nprint('done')"


def test_test_cells_and_points_follow_nbgrader_metadata():
    notebook = nbformat.v4.new_notebook(cells=[
        answer_cell("def f(x):\n    return x"), grade_cell(HIDDEN, points=7),
        nbformat.v4.new_code_cell("x = 1"), grade_cell("assert True", "test_y", points=3)])
    assert [cells.grade_id(c) for c in cells.test_cells(notebook)] == ["test_x", "test_y"]
    assert cells.total_points(notebook) == 10
    assert not cells.is_test_cell(notebook.cells[0]) and not cells.is_test_cell(notebook.cells[2])


@pytest.mark.parametrize(("source", "expected"), [
    (HIDDEN, "shapes"),
    ("\n# test: lower-case prefix\nassert 1", "lower-case prefix"),
    ("## just a comment\nassert 1", "just a comment"),
    ("assert 1  # no leading comment", ""),
])
def test_description_is_the_first_comment_without_its_prefix(source, expected):
    assert cells.description(grade_cell(source)) == expected


def test_remove_hidden_tests_keeps_visible_lines_and_marks_the_gap():
    assert cells.remove_hidden_tests(HIDDEN) == (
        "# Test: shapes\nassert f(1) == 1\n" + cells.HIDDEN_PLACEHOLDER + "\nprint('done')")
    assert cells.remove_hidden_tests(HIDDEN, None) == (
        "# Test: shapes\nassert f(1) == 1\nprint('done')")
    indented = "for k in range(2):\n    ### BEGIN HIDDEN TESTS\n    assert k < 2\n" \
               "    ### END HIDDEN TESTS"
    assert cells.remove_hidden_tests(indented) == (
        "for k in range(2):\n    " + cells.HIDDEN_PLACEHOLDER)
    assert cells.hidden_lines([grade_cell(HIDDEN), grade_cell(indented)]) == {
        "assert f(2) == 4", "assert k < 2"}


@pytest.mark.parametrize("source", [
    "### BEGIN HIDDEN TESTS\nx\n### BEGIN HIDDEN TESTS\n### END HIDDEN TESTS",
    "### BEGIN HIDDEN TESTS\nassert x",
    "assert x\n### END HIDDEN TESTS",
])
def test_remove_hidden_tests_rejects_broken_regions(source):
    with pytest.raises(ValueError, match="HIDDEN TESTS"):
        cells.remove_hidden_tests(source)


def test_error_message_is_type_and_message_without_ansi_or_traceback():
    output = nbformat.v4.new_output("error", ename="AssertionError",
                                    evalue="\x1b[0;31mexpected 3, got 4\x1b[0m",
                                    traceback=["secret source line"])
    assert cells.error_message(output) == "AssertionError: expected 3, got 4"
    bare = nbformat.v4.new_output("error", ename="NotImplementedError", evalue="",
                                  traceback=[])
    assert cells.error_message(bare) == "NotImplementedError"
    long = nbformat.v4.new_output("error", ename="ValueError", evalue="x" * 1000, traceback=[])
    assert len(cells.error_message(long)) <= 400 and cells.error_message(long).endswith("...")
    cell = grade_cell("assert 0")
    cell.outputs = [nbformat.v4.new_output("stream", name="stderr", text="warn\n"), output]
    assert cells.first_error(cell) == "AssertionError: expected 3, got 4"
    assert cells.stderr_text(cell) == "warn\n"


def test_stable_cell_ids_replace_random_ids_deterministically():
    source = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("intro"), answer_cell("pass", "answer one"),
        grade_cell("assert 1", "test_x")])
    for cell in source.cells:
        del cell["id"]  # a v4.5 source without ids: nbformat would invent random ones
    released = []
    for _ in range(2):
        notebook = nbformat.from_dict(copy.deepcopy(dict(source)))
        for cell in notebook.cells:
            cell["id"] = nbformat.v4.new_code_cell().id  # what a release run may write
        stable_cell_ids(notebook, source)
        released.append([cell.id for cell in notebook.cells])
    assert released[0] == released[1] == ["cell-1", "answer-one", "test_x"]
    nbformat.validate(notebook)

    with_ids = nbformat.v4.new_notebook(cells=[grade_cell("assert 1", "t")])
    kept = nbformat.from_dict(copy.deepcopy(dict(with_ids)))
    kept.cells[0]["id"] = "random1"
    assert stable_cell_ids(kept, with_ids) == 1 and kept.cells[0].id == with_ids.cells[0].id


def test_verify_release_refuses_any_delimiter(tmp_path):
    (tmp_path / "hw.ipynb").write_text('{"source": "raise NotImplementedError()"}')
    verify_release(tmp_path)
    (tmp_path / "helper.py").write_text("def f():\n    ### BEGIN SOLUTION\n    return 1\n")
    with pytest.raises(GradingError, match="helper.py.*BEGIN SOLUTION"):
        verify_release(tmp_path)


def test_find_leaks_sees_hidden_lines_through_html_markup():
    notebook = nbformat.v4.new_notebook(cells=[
        answer_cell("def f(x):\n    return x * x"),
        grade_cell("# Test: f\nassert f(1) == 1\n### BEGIN HIDDEN TESTS\nassert f(1) == 1\n"
                  "assert f(-3) == 9, 'negative'\npass\n### END HIDDEN TESTS")])
    leaked = ('<pre><span class="k">assert</span> <span class="n">f</span>(<span class="o">-'
              '</span>3) <span class="o">==</span> 9, <span class="s1">&#39;negative&#39;'
              '</span></pre>')
    assert find_leaks(leaked, notebook) == ["assert f(-3) == 9, 'negative'"]
    traceback = "<pre>Cell In[3], line 4\n---&gt; 4 assert f(-3) == 9, 'negative'</pre>"
    assert find_leaks(traceback, notebook) == ["assert f(-3) == 9, 'negative'"]
    # visible lines, very short lines and error messages are no leak
    clean = "<pre>assert f(1) == 1\npass\nAssertionError: negative</pre>"
    assert find_leaks(clean, notebook) == []


def test_repository_nbgrader_config_sets_what_the_commands_rely_on(repo_root):
    from_file = PyFileConfigLoader("nbgrader_config.py", path=str(repo_root)).load_config()
    defaults = default_config()
    for section, values in defaults.items():
        for key, value in values.items():
            assert from_file[section][key] == value, (
                f"nbgrader_config.py: expected {section}.{key} = {value!r}, "
                f"got {from_file[section].get(key)!r}")
    assert from_file.Execute.timeout >= 60, "the Transformer homework trains ~40 s in one cell"
    assert re.search(from_file.IgnorePattern.pattern, "UserWarning: x\n[W NNPACK.cpp:64] y")


def test_load_config_makes_paths_absolute(tmp_path):
    (tmp_path / "nbgrader_config.py").write_text(
        "c = get_config()\nc.CourseDirectory.submitted_directory = 'inbox'\n")
    config = load_config(tmp_path)
    assert config.CourseDirectory.root == str(tmp_path.resolve())
    assert config.CourseDirectory.db_url == f"sqlite:///{tmp_path.resolve()}/gradebook.db"
    assert Course(tmp_path, config).submitted_dir == tmp_path.resolve() / "inbox"
    assert find_grading_root(tmp_path / "deeper" / "still") == tmp_path.resolve()
    (tmp_path / "nbgrader_config.py").write_text("c = get_config(\n")
    with pytest.raises(GradingError, match="cannot load"):
        load_config(tmp_path)


def test_run_result_summary_names_the_error():
    logged = ("[INFO] Converting\n[ERROR] There was an error processing assignment: x\n"
              "[ERROR] Traceback (most recent call last):\n      File \"base.py\", line 3\n"
              "    nbclient.exceptions.DeadKernelError: Kernel died\n\n"
              "[ERROR] Please see the the above traceback for details\n")
    generic = "Traceback (most recent call last):\nNbGraderException: Please see the above"
    assert RunResult(False, logged, generic).summary() == "DeadKernelError: Kernel died"
    log = "[INFO] Converting\n[ERROR] No notebooks found, did you forget?\n[ERROR] Please see"
    assert RunResult(False, log, "").summary() == "No notebooks found, did you forget?"
    error = "Traceback (most recent call last):\n  File x\nnbgrader.X: bad config\n"
    assert RunResult(False, "", error).summary() == "nbgrader.X: bad config"
