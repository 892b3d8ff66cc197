"""The ``course`` command: the course's jobs for students and instructors.

    course build                 execute every lesson headless, write executed copies and HTML
    course build --only 03       just the lessons whose file name contains "03"
    course --version

Later subcommands (release, check, grade, feedback, export) wrap nbgrader.
"""

from __future__ import annotations

import argparse
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
                            resources={"metadata": {"path": str(path.parent)}})
    error = None
    start = time.perf_counter()
    try:
        client.execute()
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
    os.environ.setdefault("MPLBACKEND", "Agg")
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
    return parser


def main(argv: list[str] | None = None) -> int:
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
