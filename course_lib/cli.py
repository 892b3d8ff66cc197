"""The ``course`` command: the course's jobs for students and instructors.

    course build                 execute every lesson headless, write executed copies and HTML
    course build --only 03       just the lessons whose file name contains "03"
    course --version

Graded homework, on nbgrader (see course_lib/grading/):

    course release hw1_rnn_seq2seq | --all   regenerate assignments/ from solutions/
    course check NOTEBOOK                    a student's run of the visible tests
    course grade hw1_rnn_seq2seq [--jobs 2]  autograde submitted/*/hw1_rnn_seq2seq/ in sandboxes
        [--cluster local | tcp://HOST:PORT]  ... on Dask workers (docs/deployment.md)
        [--db postgresql://...]              ... into another gradebook database
    course feedback hw1_rnn_seq2seq          HTML per student, hidden tests left out
    course export [--to grades.csv]          grades from the gradebook to CSV
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path

from course_lib import __version__

__all__ = ["main", "find_course_root"]


def find_course_root(start: Path | None = None) -> Path:
    """The folder holding ``notebooks/`` and ``pyproject.toml``: from ``start`` (cwd) upwards,
    else the checkout this package was installed from."""
    candidates = [start or Path.cwd()]
    candidates += list(candidates[0].resolve().parents)
    candidates.append(Path(__file__).resolve().parents[1])
    for folder in candidates:
        if (folder / "notebooks").is_dir() and (folder / "pyproject.toml").is_file():
            return folder.resolve()
    raise SystemExit("course: cannot find the course folder (one with notebooks/ and "
                     "pyproject.toml); run this inside the course checkout or pass --root.")


def _lessons(root: Path, only: list[str]) -> list[Path]:
    notebooks = sorted((root / "notebooks").glob("*.ipynb"))
    if only:
        notebooks = [nb for nb in notebooks if any(key in nb.name for key in only)]
    return notebooks


INLINE_BACKEND = "module://matplotlib_inline.backend_inline"


def execute_notebook(path: Path, out_dir: Path, *, timeout: int,
                     html: bool = True) -> tuple[float, str | None]:
    """Run a notebook top to bottom in a fresh kernel, save the executed copy (and HTML).

    Returns (seconds, error message or None). The source notebook is never modified.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            extra_arguments=["--IPKernelApp.log_level=ERROR"],
                            resources={"metadata": {"path": str(path.parent)}})
    error = None
    start = time.perf_counter()
    try:
        # Figures as PNG outputs, as in JupyterLab: the inline backend, even where the calling
        # process runs headless with MPLBACKEND=Agg (which would leave figures out).
        client.execute(env=dict(os.environ, MPLBACKEND=INLINE_BACKEND))
    except CellExecutionError as exc:
        error = f"{exc.ename}: {exc.evalue}"
    except (CellTimeoutError, DeadKernelError) as exc:
        error = f"{type(exc).__name__}: {exc}".splitlines()[0]
    seconds = time.perf_counter() - start
    out_dir.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, out_dir / path.name)
    if html:
        from nbconvert import HTMLExporter
        body, _ = HTMLExporter().from_notebook_node(notebook)
        (out_dir / path.with_suffix(".html").name).write_text(body, encoding="utf-8")
    return seconds, error


def cmd_build(args: argparse.Namespace) -> int:
    """Execute the lessons headless into build/lessons/ and report each one's time."""
    root = args.root or find_course_root()
    out_dir = root / "build" / "lessons"
    lessons = _lessons(root, args.only)
    if not lessons:
        where = root / "notebooks"
        print(f"course build: no lessons to run in {where}"
              + (f" matching {args.only}" if args.only else "") + ".")
        return 1 if args.only else 0
    if args.quick:
        os.environ["COURSE_QUICK"] = "1"  # lessons shrink data and epochs, same code path
    print(f"Executing {len(lessons)} lesson(s) into {out_dir} ...", flush=True)
    failures = 0
    total = 0.0
    for path in lessons:
        seconds, error = execute_notebook(path, out_dir, timeout=args.timeout,
                                          html=not args.no_html)
        total += seconds
        status = "ok" if error is None else f"FAILED: {error}"
        print(f"  {path.name:<50} {seconds:7.1f} s  {status}", flush=True)
        failures += error is not None
    print(f"{len(lessons) - failures}/{len(lessons)} lessons ran in {total:.1f} s.")
    return 1 if failures else 0


def _grading_errors(func):
    """Run a grading command; a set-up problem (GradingError) prints one line, exit code 2."""
    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        from course_lib.grading.course import GradingError

        try:
            return func(args)
        except GradingError as exc:
            print(f"course {args.command}: error: {exc}", file=sys.stderr)
            return 2
    return run


def _course(args: argparse.Namespace):
    from course_lib.grading.course import Course

    return Course.open(args.root)


@_grading_errors
def cmd_release(args: argparse.Namespace) -> int:
    """Regenerate assignments/<name>/ from solutions/<name>/ (nbgrader generate_assignment)."""
    import nbformat

    from course_lib.grading.cells import total_points
    from course_lib.grading.release import release_assignment

    course = _course(args)
    names = course.source_assignments() if args.all else args.assignments
    if not names:
        print(f"course release: nothing to release in {course.source_dir}.")
        return 0
    for name in names:
        start = time.perf_counter()
        target = release_assignment(course, name)
        notebooks = sorted(target.glob("*.ipynb"))
        points = sum(total_points(nbformat.read(path, as_version=4)) for path in notebooks)
        print(f"released {name} -> {target.relative_to(course.root)}/ ({len(notebooks)} "
              f"notebook(s), {points:g} points) in {time.perf_counter() - start:.1f} s")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Run a notebook's visible tests in a fresh kernel and print a pass/fail summary."""
    from course_lib.grading.check import check_notebook, format_report
    from course_lib.grading.course import GradingError, ensure_scripts_on_path

    ensure_scripts_on_path()
    try:
        report = check_notebook(args.notebook)
    except (FileNotFoundError, ValueError, GradingError) as exc:
        print(f"course check: error: {exc}", file=sys.stderr)
        return 2
    print(format_report(report))
    return 0 if report.passed else 1


@_grading_errors
def cmd_grade(args: argparse.Namespace) -> int:
    """Autograde every submission of an assignment into the gradebook; print a summary."""
    from course_lib.grading.autograde import format_summary, grade_assignment
    from course_lib.grading.course import GradingError

    course = _course(args)
    if args.jobs < 1:
        raise GradingError(f"--jobs must be at least 1, got {args.jobs}")
    if args.db is not None:
        course.use_database(args.db)
    results = grade_assignment(course, args.assignment, students=args.student or None,
                               jobs=args.jobs, cluster=args.cluster,
                               progress=not args.no_progress)
    print(format_summary(args.assignment, results))
    return 0


@_grading_errors
def cmd_feedback(args: argparse.Namespace) -> int:
    """Write HTML feedback per student to feedback/<student>/<assignment>/."""
    from course_lib.grading.feedback import generate_feedback

    course = _course(args)
    results = generate_feedback(course, args.assignment, students=args.student or None)
    if not results:
        print(f"course feedback: no autograded submissions of {args.assignment}; run "
              f"`course grade {args.assignment}` first.")
    for result in results:
        pages = ", ".join(str(page.relative_to(course.root)) for page in result.pages)
        print(f"{result.student}: {pages or '-'}" + (f"  ERROR: {result.error}"
                                                     if result.error else ""))
    return 1 if any(result.error for result in results) else 0


@_grading_errors
def cmd_export(args: argparse.Namespace) -> int:
    """Export the gradebook's grades to CSV (nbgrader's CSV export plugin)."""
    from course_lib.grading.export import export_grades

    course = _course(args)
    to = args.to if args.to is not None else course.root / "grades.csv"
    rows = export_grades(course, to, assignments=args.assignment or None)
    print(f"wrote {rows} grade row(s) to {to}")
    return 0


def add_grading_commands(commands) -> None:
    """The release, check, grade, feedback and export subcommands."""
    release = commands.add_parser("release", help="regenerate assignments/ from solutions/")
    which = release.add_mutually_exclusive_group(required=True)
    which.add_argument("assignments", nargs="*", default=[], metavar="ASSIGNMENT")
    which.add_argument("--all", action="store_true", help="every assignment in solutions/")
    release.set_defaults(func=cmd_release)

    check = commands.add_parser("check", help="run a notebook's visible tests before submitting")
    check.add_argument("notebook", type=Path, metavar="NOTEBOOK")
    check.set_defaults(func=cmd_check)

    grade = commands.add_parser("grade", help="autograde submitted/*/ASSIGNMENT/")
    grade.add_argument("assignment", metavar="ASSIGNMENT")
    grade.add_argument("--jobs", type=int, default=1, metavar="N",
                       help="run N submissions at once (each sandbox under its own uid; "
                            "default 1); with --cluster local, N worker processes")
    grade.add_argument("--cluster", default=None, metavar="ADDRESS",
                       help="run the sandboxes on Dask workers: 'local' (a LocalCluster on "
                            "127.0.0.1) or a running scheduler's tcp://HOST:PORT")
    grade.add_argument("--db", default=None, metavar="URL",
                       help="the gradebook's SQLAlchemy URL (default: c.CourseDirectory.db_url, "
                            "sqlite:///gradebook.db), e.g. postgresql://USER@HOST/DB")
    grade.add_argument("--student", nargs="+", metavar="ID", help="only these students")
    grade.add_argument("--no-progress", action="store_true", help="no progress bar")
    grade.set_defaults(func=cmd_grade)

    feedback = commands.add_parser("feedback", help="HTML feedback per student, no hidden tests")
    feedback.add_argument("assignment", metavar="ASSIGNMENT")
    feedback.add_argument("--student", nargs="+", metavar="ID", help="only these students")
    feedback.set_defaults(func=cmd_feedback)

    export = commands.add_parser("export", help="grades from the gradebook to CSV")
    export.add_argument("--to", type=Path, default=None, metavar="FILE",
                        help="output file (default: grades.csv in the course folder)")
    export.add_argument("--assignment", nargs="+", metavar="NAME", help="only these")
    export.set_defaults(func=cmd_export)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="course", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--root", type=Path, default=None,
                        help="course folder (default: found from the current directory)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    build = commands.add_parser("build", help="execute the lessons headless and build HTML")
    build.add_argument("--only", nargs="*", default=[], metavar="PART",
                       help="only lessons whose file name contains one of these")
    build.add_argument("--timeout", type=int, default=600, help="seconds allowed per cell")
    build.add_argument("--quick", action="store_true",
                       help="set COURSE_QUICK=1 so lessons shrink their data (used by CI)")
    build.add_argument("--no-html", action="store_true", help="skip the HTML export")
    build.set_defaults(func=cmd_build)
    add_grading_commands(commands)
    return parser


def _skip_iri_grammars() -> None:
    """Start commands 2-3 s sooner: where ``rfc3987_syntax`` is installed (jupyter-events pulls
    it in), jsonschema compiles 38 lark grammars for its "iri" formats when nbformat imports it.
    Notebook schemas never use those formats, so this command's process goes without them."""
    if "jsonschema" not in sys.modules:  # too late once jsonschema is in
        sys.modules.setdefault("rfc3987_syntax", None)  # None: `import` raises ImportError


def main(argv: list[str] | None = None) -> int:
    _skip_iri_grammars()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    # nbgrader runs `alembic` as a subprocess: make this environment's scripts findable.
    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
