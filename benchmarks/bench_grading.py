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
  - ``course grade ASSIGNMENT --jobs 2``: the same, two sandboxes at a time;
  - ``course grade ASSIGNMENT --cluster local --jobs 2``: on a Dask LocalCluster of two worker
    processes (``--cluster-only`` leaves nbgrader and --jobs 2 out).
The table gives submissions per second (medians), the ratio to nbgrader (the sandbox's
overhead) and the ratio to one job; every run's scores are checked to be full marks, so a fast
but broken grader cannot win.

``--overhead``: the demo assignment (a trivial notebook) graded with ``--jobs 1`` and with
``--cluster local --jobs 1``: the difference per submission is the cluster's cost (start-up,
scheduling, shipping files and results). ``--fault``: a LocalCluster of two workers, one killed
with SIGKILL a third of the way through the batch: every student graded once, the scores those
of the ``--jobs 1`` run, four grades each. The last lines project the wall time of 1,000
students x 5 homeworks on 1, 8 and 64 workers from the measured times.

    python benchmarks/bench_grading.py                  # hw3_attention, 40 submissions, 1 repeat
    python benchmarks/bench_grading.py --assignment hw2_bleu_decoding --students 10 --repeats 2
    python benchmarks/bench_grading.py --quick          # CI smoke: the demo assignment, 2 students
    python benchmarks/bench_grading.py --cluster-only --overhead --fault   # issue 22's figures
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


def scores(folder: Path, assignment: str, db_url: str | None = None
           ) -> dict[str, tuple[float, float]]:
    from nbgrader.api import Gradebook, MissingEntry

    with Gradebook(db_url or f"sqlite:///{folder}/gradebook.db") as gradebook:
        try:
            gradebook.find_assignment(assignment)
        except MissingEntry:
            return {}
        return {s.student.id: (float(s.score), float(s.max_score))
                for s in gradebook.find_assignment(assignment).submissions}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the demo assignment, 2 students")
    parser.add_argument("--assignment", default=None)
    parser.add_argument("--students", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--csv", type=Path, default=RESULTS / "grading.csv")
    parser.add_argument("--cluster-only", action="store_true",
                        help="only --jobs 1 and --cluster local --jobs 2")
    parser.add_argument("--overhead", action="store_true",
                        help="the cluster's cost per submission on a trivial notebook")
    parser.add_argument("--fault", action="store_true",
                        help="a worker killed mid-batch: the same scores as --jobs 1")
    args = parser.parse_args(argv)
    assignment = args.assignment or ("hw0_demo" if args.quick else "hw3_attention")
    students = args.students or (2 if args.quick else 40)
    repeats = args.repeats or 1
    print(machine())
    with tempfile.TemporaryDirectory(prefix="bench-grading-") as temp:
        folder = make_course(Path(temp), assignment, students)
        python = [sys.executable, "-m"]
        grade = python + ["course_lib.cli", "--root", str(folder), "grade", assignment,
                          "--no-progress"]
        commands = {
            "nbgrader autograde": python + ["nbgrader", "autograde", assignment, "--force"],
            **{f"course grade --jobs {jobs}": grade + ["--jobs", str(jobs)] for jobs in (1, 2)},
            "course grade --cluster local --jobs 2": grade + ["--cluster", "local", "--jobs",
                                                              "2"],
        }
        if args.cluster_only:
            for name in ("nbgrader autograde", "course grade --jobs 2"):
                del commands[name]
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
    base = median(times.get("nbgrader autograde", [float("nan")]))
    serial = students / median(times["course grade --jobs 1"])
    rows = [{"assignment": assignment, "what": name, "students": students, "repeats": repeats,
             "median_s": median(t), "submissions_per_s": students / median(t),
             "s_per_submission": median(t) / students,
             "time_vs_nbgrader": median(t) / base,
             "throughput_vs_jobs_1": (students / median(t)) / serial}
            for name, t in times.items()]
    print_table(f"Grading {students} correct submissions of {assignment} (medians of "
                f"{repeats}; every run checked to give full marks)", rows,
                ["what", "median_s", "s_per_submission", "time_vs_nbgrader",
                 "throughput_vs_jobs_1"])
    if args.overhead:
        rows += overhead_rows(students)
    if args.fault:
        rows += fault_rows(assignment, students)
    projection(rows, assignment)
    write_csv(args.csv, rows)
    return 0


def timed(command: list[str], folder: Path) -> float:
    start = time.perf_counter()
    run(command, folder)
    return time.perf_counter() - start


def overhead_rows(students: int) -> list[dict]:
    """The cluster's own cost per submission, on the demo assignment's trivial notebook."""
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as temp:
        folder = make_course(Path(temp), DEMO.name, students)
        grade = [sys.executable, "-m", "course_lib.cli", "--root", str(folder), "grade",
                 DEMO.name, "--no-progress", "--jobs", "1"]
        serial = timed(grade, folder)
        cluster = timed(grade + ["--cluster", "local"], folder)
    row = {"assignment": DEMO.name, "what": "cluster overhead (1 worker vs --jobs 1)",
           "students": students, "repeats": 1, "median_s": cluster,
           "s_per_submission": (cluster - serial) / students, "serial_s": serial}
    print(f"\nOverhead on a trivial notebook ({students} submissions of {DEMO.name}): "
          f"--jobs 1 {serial:.1f} s, --cluster local --jobs 1 {cluster:.1f} s: "
          f"{row['s_per_submission']:.3f} s per submission (start-up included)")
    return [row]


def fault_rows(assignment: str, students: int) -> list[dict]:
    """Two workers, one killed a third of the way through: every submission graded once,
    the scores of a serial run, nothing partial."""
    import signal
    import threading

    from distributed import Client, LocalCluster

    from course_lib.grading.autograde import grade_assignment
    from course_lib.grading.course import Course

    with tempfile.TemporaryDirectory(prefix="bench-fault-") as temp:
        folder = make_course(Path(temp), assignment, students)
        run([sys.executable, "-m", "course_lib.cli", "--root", str(folder), "grade", assignment,
             "--no-progress", "--jobs", "1"], folder)
        expected = scores(folder, assignment)
        course = Course.open(folder)
        course.use_database(f"sqlite:///{temp}/fault.db")
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address=None, memory_limit=0) as cluster, \
                Client(cluster) as client:
            pids, killed = client.run(os.getpid), []

            def kill_a_third_of_the_way():
                while len(killed) == 0 and not done.is_set():
                    graded = len(scores(folder, assignment, f"sqlite:///{temp}/fault.db"))
                    busy = [w for w, keys in client.processing().items() if keys]
                    if graded >= students // 3 and busy:
                        os.kill(pids[busy[0]], signal.SIGKILL)
                        killed.append((busy[0], list(client.processing()[busy[0]])))
                    time.sleep(0.2)

            done = threading.Event()
            killer = threading.Thread(target=kill_a_third_of_the_way)
            killer.start()
            start = time.perf_counter()
            try:
                results = grade_assignment(course, assignment,
                                           cluster=cluster.scheduler_address, progress=False)
            finally:
                done.set()
                killer.join()
            seconds = time.perf_counter() - start
        got = scores(folder, assignment, f"sqlite:///{temp}/fault.db")
    once = sorted(result.student for result in results) == sorted(expected)
    same = got == expected
    print(f"\nFault run: {students} submissions of {assignment} on 2 workers, worker "
          f"{killed[0][0] if killed else '-'} killed with SIGKILL while running "
          f"{killed[0][1] if killed else '-'}: {seconds:.1f} s; every submission graded once: "
          f"{once}; same scores as --jobs 1: {same}; errors: "
          f"{[error for result in results for error in result.errors] or 'none'}")
    if not (killed and once and same):
        raise SystemExit("the fault run failed")
    return [{"assignment": assignment, "what": "cluster local, 2 workers, one killed",
             "students": students, "repeats": 1, "median_s": seconds,
             "s_per_submission": seconds / students,
             # the client's own work per student (nbgrader's bookkeeping, the writes)
             "client_s_per_submission": sum(r.seconds for r in results) / len(results)}]


def projection(rows: list[dict], assignment: str) -> None:
    """Wall time of 1,000 students x 5 homeworks from the measured per-submission times: the
    workers' share divides by their number; the client's (nbgrader's writes, one student at
    a time) does not."""
    by_name = {row["what"]: row for row in rows}
    work = by_name["course grade --jobs 1"]["s_per_submission"]  # one worker's pace
    client = next((row["client_s_per_submission"] for row in rows
                   if "client_s_per_submission" in row), None)
    if client is None:
        print("\n(no projection: it needs the client's time per submission, from --fault)")
        return
    total = 1000 * 5
    print(f"\nProjection for {total} submissions like {assignment} ({work:.2f} s each on one "
          f"worker; the client's own work {client:.2f} s each, not divided by workers):")
    for workers in (1, 8, 64):
        hours = max(total * work / workers, total * client) / 3600
        print(f"  {workers:>2} worker(s): {hours:.2f} h")


if __name__ == "__main__":
    sys.exit(main())
