"""nbgrader configuration: instructors' sources in solutions/, students' copies in assignments/.

The `course` commands (course_lib/grading/) read this file, and so does a plain `nbgrader ...`
run in this folder; course_lib.grading.course.default_config() holds the same values (a test
checks that they agree).
"""

c = get_config()  # noqa: F821 (provided by nbgrader when it loads this file)

# nbgrader's directories, under the folder it runs in (its default root: the current directory).
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "assignments"
c.CourseDirectory.submitted_directory = "submitted"
c.CourseDirectory.autograded_directory = "autograded"
c.CourseDirectory.feedback_directory = "feedback"
c.CourseDirectory.db_url = "sqlite:///gradebook.db"

# Seconds one cell may run when grading (nbgrader's default is 30): the Transformer homework
# trains for up to ~40 s in one cell on a laptop, and a busy grading machine is slower.
c.Execute.timeout = 120
# The kernel's own log (ipykernel 7 warns that a local kernel talks over TCP) is not output of
# the notebook; keep it off the instructor's and the student's terminal.
c.Execute.extra_arguments = ["--IPKernelApp.log_level=ERROR"]

# nbgrader gives a test cell 0 points if it wrote anything to stderr, so a correct answer that
# triggers a torch warning or a tqdm bar would score 0. The course's tests fail by raising, so
# stderr is dropped before grades are read (nbgrader's IgnorePattern, PR 1904; any text).
c.IgnorePattern.enabled = True
c.IgnorePattern.pattern = r"[\s\S]*"

# Feedback without the hidden tests (nbgrader issue 917): their source is removed and test
# errors are cut to exception type and message before the HTML is written.
c.GenerateFeedback.preprocessors = [
    "nbgrader.preprocessors.GetGrades",
    "course_lib.grading.feedback.HideHiddenTests",
    "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
]
