"""``course export``: grades from the gradebook to CSV, through nbgrader's export plugin.

nbgrader's ``CsvExportPlugin`` (or the plugin named by ``ExportApp.plugin_class`` in
``nbgrader_config.py``) writes one row per assignment and student in the gradebook, with 0 for
a missing submission: assignment, duedate, timestamp, student_id, last_name, first_name, email,
raw_score, late_submission_penalty, score, max_score.
"""

from __future__ import annotations

import csv
from pathlib import Path

from traitlets.utils.importstring import import_item

from course_lib.grading.course import Course

__all__ = ["export_grades"]


def export_grades(course: Course, to: Path, *, assignments: list[str] | None = None,
                  students: list[str] | None = None) -> int:
    """Write the grades to ``to`` (CSV by default); returns the number of rows written."""
    from nbgrader.plugins import CsvExportPlugin

    plugin_class = course.config.ExportApp.get("plugin_class", CsvExportPlugin)
    if isinstance(plugin_class, str):
        plugin_class = import_item(plugin_class)
    plugin = plugin_class(config=course.config)
    to = Path(to).resolve()
    to.parent.mkdir(parents=True, exist_ok=True)
    plugin.to = str(to)
    plugin.assignment = list(assignments or [])
    plugin.student = list(students or [])
    with course.gradebook() as gradebook:
        plugin.export(gradebook)
    if to.suffix.lower() != ".csv" or not to.is_file():
        return 0
    with to.open(newline="", encoding="utf-8") as handle:
        return sum(1 for _ in csv.DictReader(handle))
