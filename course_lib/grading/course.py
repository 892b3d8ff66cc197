"""A course folder as nbgrader sees it: its paths, its configuration, its gradebook.

The folder holds ``nbgrader_config.py``, which names nbgrader's directories (``solutions/`` for
the instructors' sources, ``assignments/`` for the released student versions, then
``submitted/<student>/<assignment>/``, ``autograded/``, ``feedback/``) and the gradebook
(``gradebook.db``). Every ``course`` grading command reads that file, so the commands and a
plain ``nbgrader ...`` run in the same folder behave the same way.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traitlets.config import Config, PyFileConfigLoader

__all__ = ["CELL_TIMEOUT", "FEEDBACK_PREPROCESSORS", "KERNEL_ARGUMENTS", "STDERR_IGNORED",
           "Course", "GradingError", "RunResult", "default_config", "find_grading_root",
           "load_config"]

CONFIG_FILE = "nbgrader_config.py"

# Seconds one cell may run when a notebook is graded or checked. nbgrader's default (30 s) is
# too short: the Transformer homework trains for up to ~40 s in one cell on a laptop, and a
# grading machine running other jobs can be three times slower.
CELL_TIMEOUT = 120

# nbgrader 0.9 gives a test cell 0 points as soon as it writes anything to stderr
# (nbgrader.utils.determine_grade), so a correct answer that triggers a torch warning, a
# RuntimeWarning or a tqdm bar scores 0. The course's tests fail by raising, never by printing,
# so nbgrader's IgnorePattern preprocessor (nbgrader PR 1904) drops every stderr output of the
# executed notebook before grades are read: this regex matches any stderr text.
STDERR_IGNORED = r"[\s\S]*"


# The kernel's own log (ipykernel 7 warns that a local kernel talks over TCP) is not output of
# the notebook: keep it off the terminal.
KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=ERROR"]

# nbgrader's feedback preprocessors with HideHiddenTests after GetGrades (which puts each
# cell's score into its metadata): the hidden tests never reach the HTML (nbgrader issue 917).
FEEDBACK_PREPROCESSORS = [
    "nbgrader.preprocessors.GetGrades",
    "course_lib.grading.feedback.HideHiddenTests",
    "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
]


class GradingError(Exception):
    """A problem with the course set-up (configuration, assignment, gradebook), not with a
    student's code; the ``course`` commands exit with status 2 on it."""


@dataclass(frozen=True)
class RunResult:
    """What one nbgrader converter run reported: success, its log, and the traceback if any."""

    success: bool
    log: str
    error: str

    def summary(self) -> str:
        """What went wrong, in one line: the exception at the end of the last traceback in
        the log (nbgrader logs the real one there and then raises a generic one), else the
        last specific ERROR line, else the last line of the raised exception."""
        exceptions = _EXCEPTION_LINE.findall(self.log)
        if exceptions:
            name, message = exceptions[-1]
            return f"{name.rsplit('.', 1)[-1]}: {message.strip()}"
        errors = [line[len("[ERROR] "):] for line in self.log.splitlines()
                  if line.startswith("[ERROR] ") and not line.startswith(_GENERIC_ERRORS)]
        if errors:
            return errors[-1]
        lines = [line.strip() for line in self.error.splitlines() if line.strip()]
        return lines[-1] if lines else "unknown error"


# "    nbclient.exceptions.DeadKernelError: Kernel died" at the end of a logged traceback
_EXCEPTION_LINE = re.compile(r"^\s*([A-Za-z_][\w.]*(?:Error|Exception)): (.*)$", re.M)
_GENERIC_ERRORS = ("[ERROR] There was an error processing", "[ERROR] Please see",
                   "[ERROR] Traceback")


def default_config() -> Config:
    """The settings the ``course`` commands rely on; the course's ``nbgrader_config.py`` sets
    the same values (a test checks that) and may override them."""
    c = Config()
    c.CourseDirectory.source_directory = "solutions"
    c.CourseDirectory.release_directory = "assignments"
    c.CourseDirectory.submitted_directory = "submitted"
    c.CourseDirectory.autograded_directory = "autograded"
    c.CourseDirectory.feedback_directory = "feedback"
    c.CourseDirectory.db_url = "sqlite:///gradebook.db"
    c.Execute.timeout = CELL_TIMEOUT
    c.Execute.extra_arguments = list(KERNEL_ARGUMENTS)
    c.IgnorePattern.enabled = True
    c.IgnorePattern.pattern = STDERR_IGNORED
    c.GenerateFeedback.preprocessors = list(FEEDBACK_PREPROCESSORS)
    return c


def find_grading_root(start: Path | None = None) -> Path:
    """The course folder: the nearest folder holding ``nbgrader_config.py``, from ``start``
    (default: the current directory) upwards, else the checkout this package lives in."""
    start = (start or Path.cwd()).resolve()
    for folder in [start, *start.parents, Path(__file__).resolve().parents[2]]:
        if (folder / CONFIG_FILE).is_file():
            return folder
    raise GradingError(f"no {CONFIG_FILE} in {start} or above: run this inside the course "
                       "folder or pass --root")


def _absolute_db_url(db_url: str, root: Path) -> str:
    """A relative ``sqlite:///name.db`` made absolute under ``root``, other URLs unchanged."""
    prefix = "sqlite:///"
    if db_url.startswith(prefix) and not db_url.startswith(prefix + "/"):
        return prefix + str(root / db_url[len(prefix):])
    return db_url


def load_config(root: Path) -> Config:
    """``default_config()`` overlaid with ``root/nbgrader_config.py``; paths made absolute."""
    root = Path(root).resolve()
    config = default_config()
    path = root / CONFIG_FILE
    if path.is_file():
        try:
            config.merge(PyFileConfigLoader(CONFIG_FILE, path=str(root)).load_config())
        except Exception as exc:  # a syntax error or a failing import in the instructor's file
            raise GradingError(f"cannot load {path}: {type(exc).__name__}: {exc}") from exc
    config.CourseDirectory.root = str(root)
    _set_database(config, config.CourseDirectory.db_url, root)
    return config


def _set_database(config: Config, db_url: str, root: Path) -> None:
    """Point ``config`` at ``db_url``. A server database (PostgreSQL) enforces the foreign
    key from an assignment to its course, which nbgrader leaves empty by default (SQLite does
    not check it): there the course is nbgrader's own default, "default_course"."""
    config.CourseDirectory.db_url = _absolute_db_url(db_url, root)
    if not db_url.startswith("sqlite:") and not config.CourseDirectory.get("course_id"):
        config.CourseDirectory.course_id = "default_course"


def ensure_scripts_on_path() -> None:
    """nbgrader runs ``alembic`` as a subprocess: put this Python's scripts folder on PATH."""
    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")


def _nbgrader_logger() -> logging.Logger:
    """A logger for nbgrader's converters that records INFO and prints nothing by itself."""
    log = logging.getLogger("course_lib.grading.nbgrader")
    log.setLevel(logging.INFO)
    log.propagate = False
    if not log.handlers:
        log.addHandler(logging.NullHandler())
    return log


class _Folder:
    """A course folder named by one of nbgrader's ``CourseDirectory`` settings."""

    def __init__(self, setting: str):
        self.setting = setting

    def __get__(self, course: Course | None, owner: type | None = None):
        if course is None:
            return self
        return course.root / getattr(course.config.CourseDirectory, self.setting)


@dataclass
class Course:
    """One course folder: nbgrader's configuration and the paths and gradebook it names."""

    root: Path
    config: Config

    @classmethod
    def open(cls, root: Path | None = None) -> Course:
        """The course at ``root`` (default: found from the current directory)."""
        root = Path(root).resolve() if root is not None else find_grading_root()
        if not root.is_dir():
            raise GradingError(f"course folder {root} does not exist")
        ensure_scripts_on_path()
        return cls(root=root, config=load_config(root))

    source_dir = _Folder("source_directory")
    release_dir = _Folder("release_directory")
    submitted_dir = _Folder("submitted_directory")
    autograded_dir = _Folder("autograded_directory")
    feedback_dir = _Folder("feedback_directory")

    @property
    def db_url(self) -> str:
        return self.config.CourseDirectory.db_url

    def use_database(self, db_url: str) -> None:
        """Grade into ``db_url`` (``course grade --db``): a relative sqlite path is taken
        from the course folder, as in nbgrader_config.py."""
        _set_database(self.config, db_url, self.root)

    @contextmanager
    def gradebook(self) -> Iterator[Any]:
        """nbgrader's ``Gradebook`` on this course's database, closed afterwards."""
        from nbgrader.api import Gradebook

        with Gradebook(self.db_url) as gradebook:
            yield gradebook

    def source_assignments(self) -> list[str]:
        """Names of the assignments in the source folder (folders holding a notebook)."""
        if not self.source_dir.is_dir():
            return []
        return sorted(folder.name for folder in self.source_dir.iterdir()
                      if folder.is_dir() and any(folder.glob("*.ipynb")))

    def require_assignment(self, name: str) -> Path:
        """The source folder of assignment ``name``; a GradingError naming the known ones."""
        known = self.source_assignments()
        if name not in known:
            raise GradingError(f"no assignment {name!r} in {self.source_dir}; expected one of "
                               f"{', '.join(known) or '(none)'}")
        return self.source_dir / name

    def source_notebooks(self, name: str) -> list[Path]:
        """The source notebooks of assignment ``name``, sorted by file name."""
        return sorted(self.require_assignment(name).glob("*.ipynb"))

    def run(self, converter: type, config: Config | None = None, **settings: Any) -> RunResult:
        """Run one nbgrader converter (``GenerateAssignment``, ``Autograde``, ...) in-process.

        ``settings`` set attributes of the converter, or of its ``CourseDirectory`` where the
        name is one of the latter's traits (``assignment_id``, ``student_id``, ...).
        """
        from nbgrader.coursedir import CourseDirectory
        from nbgrader.utils import capture_log

        merged = copy.deepcopy(self.config)
        if config is not None:
            merged.merge(config)
        coursedir = CourseDirectory(config=merged, log=_nbgrader_logger())
        app_settings = {}
        for key, value in settings.items():
            if coursedir.has_trait(key):
                setattr(coursedir, key, value)
            else:
                app_settings[key] = value
        app = converter(coursedir=coursedir, config=merged, log=_nbgrader_logger())
        for key, value in app_settings.items():
            setattr(app, key, value)
        outcome = capture_log(app)
        return RunResult(success=bool(outcome["success"]), log=outcome.get("log", ""),
                         error=outcome.get("error", ""))
