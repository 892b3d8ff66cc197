"""Graded homework on nbgrader: the ``course`` commands' machinery, one module per step.

    course.py     the course folder: paths, nbgrader_config.py, gradebook (CourseDirectory)
    release.py    course release: solutions/ -> assignments/, reproducible (generate_assignment)
    check.py      course check: a student's run of the visible tests (Execute, determine_grade)
    autograde.py  course grade: every submission, progress bar, summary table (autograde)
    feedback.py   course feedback: HTML per student without hidden tests (generate_feedback)
    export.py     course export: grades to CSV (CsvExportPlugin)
    cells.py      reading nbgrader cells: tests, descriptions, errors, hidden regions

Importing this package imports nothing from nbgrader; each command imports what it uses.
"""
