"""Graded homework on nbgrader: the ``course`` commands' machinery, one module per step.

    course.py        the course folder: paths, nbgrader_config.py, gradebook (CourseDirectory)
    release.py       course release: solutions/ -> assignments/, reproducible (generate_assignment)
    check.py         course check: a student's run of the visible tests (Execute, determine_grade)
    autograde.py     course grade: every submission, progress bar, summary table (autograde)
    gradebook.py     what course grade writes to and reads from nbgrader's gradebook
    execution.py     one notebook run in the sandbox and judged outside it (replaces Execute)
    sandbox/         the sandbox: limits, isolation, the supervisor and the runner it starts
    instrument.py    test cells rewritten to record the values each assert needs
    recorder.py      the recorder that writes those values as plain data, in the notebook
    verdicts.py      the grader's verdict on each test cell, from the records
    integrity.py     a submission checked statically: structure against the release
    code_checks.py   ... and its code: hooks, patches, lying objects, forbidden APIs
    policy.py        grading_policy.toml: what each assignment forbids
    no_reference.py  the same policy while the hidden tests run: forbidden calls raise
    feedback.py      course feedback: HTML per student without hidden tests (generate_feedback)
    export.py        course export: grades to CSV (CsvExportPlugin)
    cells.py         reading nbgrader cells: tests, descriptions, errors, hidden regions

Importing this package imports nothing from nbgrader; each command imports what it uses.
"""
