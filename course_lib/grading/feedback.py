"""``course feedback ASSIGNMENT``: HTML feedback per student, without the hidden tests.

nbgrader's ``generate_feedback`` renders the autograded notebook, and that notebook holds the
full test cells, hidden tests included (autograding restores them from the gradebook), so its
default feedback shows the hidden tests' source (nbgrader issue 917). Their outputs leak too:
an IPython traceback quotes the failing source line, and a warning on stderr quotes the line
that triggered it. ``HideHiddenTests`` (run between nbgrader's ``GetGrades`` and the HTML
export) removes the hidden regions, cuts test-cell errors to exception type and message, drops
their stderr, and puts a table of every test (grade_id, what it checks, points, failure
message) at the top. Every page written is then searched for hidden-test lines; a page that
contains one is deleted and reported.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import Bool, List, Unicode
from traitlets.config import Config

from course_lib.grading import cells
from course_lib.grading.course import FEEDBACK_PREPROCESSORS, Course

__all__ = ["FeedbackResult", "HideHiddenTests", "find_leaks",
           "generate_feedback"]


_MIN_LEAK_CHARS = 6  # shorter hidden lines ("pass", "try:") say nothing about a test


def _points(value) -> str:
    return f"{float(value or 0):g}"


class HideHiddenTests(NbGraderPreprocessor):
    """Feedback preprocessor: test cells without hidden tests, outputs cut to their errors'
    type and message, and a table of all tests first."""

    # declared configurable as in nbgrader's GetGrades, so nbconvert's HTML settings for it
    # do not raise a "not recognized" warning
    display_data_priority = List(["text/html", "application/pdf", "text/latex", "image/svg+xml",
                                  "image/png", "image/jpeg", "text/plain"]).tag(config=True)
    placeholder = Unicode(cells.HIDDEN_PLACEHOLDER,
                          help="the line that replaces each hidden-test region").tag(config=True)
    summary = Bool(True, help="put a table of the tests at the top").tag(config=True)

    def preprocess(self, nb, resources):
        rows = []
        for cell in nb.cells:
            if cells.is_test_cell(cell):
                rows.append(self._row(cell))
        nb, resources = super().preprocess(nb, resources)
        if self.summary and rows:
            table = nbformat.v4.new_markdown_cell(self._table(rows))
            if nb.get("nbformat_minor", 0) >= 5:
                table["id"] = "course-test-summary"  # stable, not nbformat's random id
            else:
                table.pop("id", None)
            nb.cells.insert(0, table)
        return nb, resources

    def preprocess_cell(self, cell, resources, index):
        if cells.is_test_cell(cell):
            cell.source = cells.remove_hidden_tests(cell.source, self.placeholder)
            cell.outputs = [self._sanitised(output) for output in cell.get("outputs", [])
                            if not (output.get("output_type") == "stream"
                                    and output.get("name") == "stderr")]
        return cell, resources

    @staticmethod
    def _sanitised(output):
        if output.get("output_type") != "error":
            return output
        message = cells.error_message(output)
        return nbformat.v4.new_output("error", ename=output.get("ename", "Error"),
                                      evalue=output.get("evalue", ""), traceback=[message])

    @staticmethod
    def _row(cell) -> tuple[str, str, str, str, bool]:
        meta = cell.metadata.nbgrader
        score, points = meta.get("score"), meta.get("points")
        passed = score is not None and float(score) >= float(points or 0)
        message = cells.first_error(cell) or (
            "" if passed else "partial credit" if score else "no points for this test")
        return (meta.get("grade_id", ""), cells.description(cell),
                f"{_points(score)} / {_points(points)}", message, passed)

    @staticmethod
    def _table(rows) -> str:
        out = ["<h3>Tests</h3>", "<table>",
               "<tr><th>test</th><th>what it checks</th><th>points</th><th>result</th></tr>"]
        for grade_id, what, points, message, passed in rows:
            result = "passed" if passed else f"failed: {message}"
            out.append(f"<tr><td><code>{html.escape(grade_id)}</code></td>"
                       f"<td>{html.escape(what)}</td><td>{points}</td>"
                       f"<td>{html.escape(result)}</td></tr>")
        out.append("</table>")
        return "\n".join(out)


_TRACEBACK_PREFIX = re.compile(r"^(?:-*>\s*)?\d+\s+")  # "---> 12 " or "     9 " in a traceback


def _text_lines(page: str) -> set[str]:
    """The stripped lines of an HTML page's text (tags removed, entities decoded), each also
    without the line-number prefix an IPython traceback puts before quoted source."""
    page = re.sub(r"<(script|style)\b.*?</\1>", "", page, flags=re.S | re.I)
    text = html.unescape(re.sub(r"<[^>]+>", "", page))
    lines = {line.strip() for line in text.splitlines() if line.strip()}
    return lines | {_TRACEBACK_PREFIX.sub("", line) for line in lines}


def find_leaks(page: str, notebook: nbformat.NotebookNode) -> list[str]:
    """Hidden-test lines of ``notebook`` that appear as lines of the HTML ``page``.

    Lines that also occur outside the hidden regions (in visible tests, in the student's
    code) do not count, nor do very short ones.
    """
    visible = set()
    for cell in notebook.cells:
        source = cells.remove_hidden_tests(cell.source, None) if cells.is_test_cell(cell) \
            else cell.source
        visible |= {line.strip() for line in source.splitlines()}
    hidden = {line for line in cells.hidden_lines(cells.test_cells(notebook))
              if len(line) >= _MIN_LEAK_CHARS and line not in visible}
    return sorted(hidden & _text_lines(page))


@dataclass
class FeedbackResult:
    """The feedback pages written for one student, or why there are none."""

    student: str
    pages: list[Path]
    error: str | None = None


def generate_feedback(course: Course, assignment: str,
                      students: list[str] | None = None) -> list[FeedbackResult]:
    """HTML feedback for every autograded submission of ``assignment`` (or ``students``)."""
    from nbgrader.converters import GenerateFeedback

    course.require_assignment(assignment)
    graded = sorted(folder.name for folder in course.autograded_dir.glob("*")
                    if any((folder / assignment).glob("*.ipynb"))) \
        if course.autograded_dir.is_dir() else []
    if students:
        graded = [student for student in graded if student in students]
    config = Config()
    config.GenerateFeedback.preprocessors = FEEDBACK_PREPROCESSORS
    results = []
    for student in graded:
        run = course.run(GenerateFeedback, config=config, assignment_id=assignment,
                         student_id=student, force=True)
        if not run.success:
            results.append(FeedbackResult(student, [], f"nbgrader generate_feedback failed: "
                                                        f"{run.summary()}"))
            continue
        pages, leaks = [], []
        for graded_path in sorted((course.autograded_dir / student / assignment).glob("*.ipynb")):
            page = course.feedback_dir / student / assignment / f"{graded_path.stem}.html"
            if not page.is_file():
                continue
            found = find_leaks(page.read_text(encoding="utf-8"),
                               nbformat.read(graded_path, as_version=4))
            if found:
                page.unlink()
                leaks.append(f"{page.name} showed hidden test code ({found[0]!r}); deleted it")
            else:
                pages.append(page)
        results.append(FeedbackResult(student, pages, "; ".join(leaks) or None))
    return results
