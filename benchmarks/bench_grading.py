"""``course grade`` against plain ``nbgrader autograde``, side by side on the same submissions.

A temporary course (this repository's ``nbgrader_config.py`` and one assignment's source,
released with ``course release``) gets N submissions, each a copy of the solution notebook.
Each command then grades all N, in turn (the order reversed on every other repeat), each a
fresh process as an instructor runs it, regrading over the previous run (``--force`` for
nbgrader):
  - ``nbgrader autograde ASSIGNMENT --force``: nbgrader as shipped, a Jupyter kernel per
    notebook with the grader's permissions;
  - ``course grade ASSIGNMENT --jobs 1``: each submission in the sandbox, its tests judged
    outside it, the integrity checks, the solution notebook run once first;
  - ``course grade ASSIGNMENT --jobs 2``: the same, two sandboxes at a time.
The table gives submissions per second (medians), the ratio to nbgrader (the sandbox's
overhead) and the ratio of two jobs to one; every run's scores are checked to be full marks,
so a fast but broken grader cannot win.

    python benchmarks/bench_grading.py                  # hw3_attention, 40 submissions, 1 repeat
    python benchmarks/bench_grading.py --assignment hw2_bleu_decoding --students 10 --repeats 2
    python benchmarks/bench_grading.py --quick          # CI smoke: the demo assignment, 2 students
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, median, print_table, write_csv  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "tests" / "data" / "grading" / "hw0_demo"


def make_course(folder: Path, assignment: str, students: int) -> Path:
    """A released course with ``students`` copies of the solution submitted."""
    source = DEMO if assignment == DEMO.name else ROOT / "solutions" / assignment
    if not source.is_dir():
        raise SystemExit(f"no assignment source at {source}")
    shutil.copytree(source, folder / "solutions" / assignment)
    shutil.copy(ROOT / "nbgrader_config.py", folder / "nbgrader_config.py")
    run([sys.executable, "-m", "course_lib.cli", "--root", str(folder), "release", assignment],
        folder)
    notebooks = sorted((folder / "solutions" / assignment).glob("*.ipynb"))
    for i in range(students):
        target = folder / "submitted" / f"student{i:02d}" / assignment
        target.mkdir(parents=True)
        for notebook in notebooks:
            shutil.copy(notebook, target / notebook.name)
    return folder


def run(command: list[str], cwd: Path) -> None:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}"
                                f"{os.environ.get('PATH', '')}")  # nbgrader runs alembic
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}):\n"
                         f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}")


def scores(folder: Path, assignment: str) -> dict[str, tuple[float, float]]:
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{folder}/gradebook.db") as gradebook:
        return {s.student.id: (float(s.score), float(s.max_score))
                for s in gradebook.find_assignment(assignment).submissions}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the demo assignment, 2 students")
    parser.add_argument("--assignment", default=None)
    parser.add_argument("--students", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--csv", type=Path, default=RESULTS / "grading.csv")
    args = parser.parse_args(argv)
    assignment = args.assignment or ("hw0_demo" if args.quick else "hw3_attention")
    students = args.students or (2 if args.quick else 40)
    repeats = args.repeats or 1
    print(machine())
    with tempfile.TemporaryDirectory(prefix="bench-grading-") as temp:
        folder = make_course(Path(temp), assignment, students)
        python = [sys.executable, "-m"]
        commands = {
            "nbgrader autograde": python + ["nbgrader", "autograde", assignment, "--force"],
            **{f"course grade --jobs {jobs}": python + [
                "course_lib.cli", "--root", str(folder), "grade", assignment, "--no-progress",
                "--jobs", str(jobs)] for jobs in (1, 2)},
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        names = list(commands)
        for repeat in range(repeats):
            for name in names if repeat % 2 == 0 else reversed(names):
                start = time.perf_counter()
                run(commands[name], folder)
                times[name].append(time.perf_counter() - start)
                graded = scores(folder, assignment)
                wrong = {s: v for s, v in graded.items() if v[0] != v[1]}
                if len(graded) != students or wrong:
                    raise SystemExit(f"{name}: expected full marks for {students} students, "
                                     f"got {graded}")
    base = students / median(times["nbgrader autograde"])
    serial = students / median(times["course grade --jobs 1"])
    rows = [{"assignment": assignment, "what": name, "students": students, "repeats": repeats,
             "median_s": median(t), "submissions_per_s": students / median(t),
             "s_per_submission": median(t) / students,
             "time_vs_nbgrader": median(t) / median(times["nbgrader autograde"]),
             "throughput_vs_jobs_1": (students / median(t)) / serial,
             "throughput_vs_nbgrader": (students / median(t)) / base}
            for name, t in times.items()]
    print_table(f"Grading {students} correct submissions of {assignment} (medians of "
                f"{repeats}; every run checked to give full marks)", rows,
                ["what", "median_s", "s_per_submission", "time_vs_nbgrader",
                 "throughput_vs_jobs_1"])
    write_csv(args.csv, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
