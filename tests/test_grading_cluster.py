"""``course grade --cluster``: the demo class graded on real Dask workers (processes on
127.0.0.1), against the same class graded with one job; a worker killed with SIGKILL in the
middle of a task; a task whose every worker dies."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import threading
import time
from pathlib import Path

import nbformat
import pytest
from test_grading_demo import NAME, POINTS, make_course, replace_in_cell, submit

from course_lib.cli import main
from course_lib.grading.autograde import grade_assignment
from course_lib.grading.course import Course

# student -> expected score; "slow" is the solution with a 4 s pause in its first answer cell,
# so that a kill lands while its task runs
EXPECTED = {"alice": 100, "blank": 0, "partial": 70, "raiser": 40, "crasher": 0, "slow": 100}


def scores(db_url: str) -> dict[str, dict[str, float]]:
    """student -> grade_id -> score, read from the gradebook at ``db_url``."""
    from nbgrader.api import Gradebook

    with Gradebook(db_url) as gradebook:
        return {submission.student.id: {grade.name: grade.score
                                        for notebook in submission.notebooks
                                        for grade in notebook.grades}
                for submission in gradebook.find_assignment(NAME).submissions}


def submit_class(root: Path) -> None:
    """The class of EXPECTED, in ``root``'s submitted/."""
    solution = nbformat.read(root / "solutions" / NAME / f"{NAME}.ipynb", as_version=4)
    submit(root, "alice", solution)
    submit(root, "blank", nbformat.read(root / "assignments" / NAME / f"{NAME}.ipynb",
                                        as_version=4))
    submit(root, "partial", replace_in_cell(solution, "masked_mean",
                                            "if not 1 <= valid_len <= len(values):",
                                            "if valid_len > len(values):"))
    submit(root, "raiser", replace_in_cell(solution, "masked_mean", "def masked_mean",
                                           "raise RuntimeError('oops')\n\ndef masked_mean"))
    submit(root, "crasher", replace_in_cell(solution, "squares", "def squares",
                                            "import os\nos._exit(3)\n\ndef squares"))
    submit(root, "slow", replace_in_cell(solution, "squares", "def squares",
                                         "import time\ntime.sleep(4)\n\ndef squares"))


@pytest.fixture(scope="module")
def course(tmp_path_factory, repo_root):
    root = make_course(tmp_path_factory.mktemp("cluster-course"), repo_root)
    assert main(["--root", str(root), "release", NAME]) == 0
    submit_class(root)
    return root


@pytest.fixture(scope="module")
def serial(course):
    """The class graded with --jobs 1 into the course's own SQLite gradebook."""
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["--root", str(course), "grade", NAME, "--no-progress"]) == 0
    graded = scores(f"sqlite:///{course}/gradebook.db")
    assert {student: sum(grades.values()) for student, grades in graded.items()} == EXPECTED
    return graded


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster of two worker processes on 127.0.0.1, as `dask scheduler` and two
    `dask worker`s would be (the tests reach it by its tcp:// address)."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, memory_limit=0) as local, Client(local) as client:
        yield local, client


def test_a_local_cluster_grades_like_one_job(course, serial, tmp_path):
    db_url = f"sqlite:///{tmp_path}/cluster.db"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["--root", str(course), "grade", NAME, "--no-progress", "--cluster",
                     "local", "--jobs", "2", "--db", db_url])
    assert code == 0
    assert scores(db_url) == serial
    assert "6 submission(s) of hw0_demo graded" in out.getvalue()


def kill_worker_running(client, student: str, killed: list, timeout: float = 120) -> None:
    """SIGKILL the worker process running ``student``'s task, once it runs there."""
    pids = client.run(os.getpid)  # worker address -> pid
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for worker, keys in client.processing().items():
            running = [key for key in keys if f"grade-{student}/" in str(key)]
            if running:
                time.sleep(1.0)  # well inside its 4 s cell
                os.kill(pids[worker], signal.SIGKILL)
                killed.append((worker, pids[worker], running))
                return
        time.sleep(0.05)


def grade_while_killing(course: Course, cluster, db_url: str, allowed_failures: int):
    """Grade the class on ``cluster`` while one worker is killed in the middle of slow's
    task; the results and what was killed."""
    local, client = cluster
    local.scheduler.allowed_failures = allowed_failures
    course.use_database(db_url)
    killed: list = []
    killer = threading.Thread(target=kill_worker_running, args=(client, "slow", killed))
    killer.start()
    try:
        results = grade_assignment(course, NAME, cluster=local.scheduler_address,
                                   progress=False)
    finally:
        killer.join()
    assert len(killed) == 1, "no worker was killed while slow's task ran"
    _, pid, _ = killed[0]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # that process is gone
    return results


def test_a_killed_worker_has_its_task_retried_and_every_score_matches_one_job(
        course, serial, cluster, tmp_path):
    results = grade_while_killing(Course.open(course), cluster, f"sqlite:///{tmp_path}/k.db",
                                  allowed_failures=1)
    assert [result.student for result in results] == sorted(EXPECTED)  # each graded once
    graded = scores(f"sqlite:///{tmp_path}/k.db")
    assert graded == serial  # slow's task ran again on a live worker: 100 like the others
    assert all(set(grades) == set(POINTS) for grades in graded.values())  # nothing partial


def test_a_task_whose_workers_all_die_is_reported_and_the_batch_goes_on(
        course, serial, cluster, tmp_path):
    results = grade_while_killing(Course.open(course), cluster, f"sqlite:///{tmp_path}/d.db",
                                  allowed_failures=0)
    by_student = {result.student: result for result in results}
    assert sorted(by_student) == sorted(EXPECTED)
    assert any("every worker that ran hw0_demo.ipynb died" in error
               for error in by_student["slow"].errors)
    graded = scores(f"sqlite:///{tmp_path}/d.db")
    assert graded["slow"] == dict.fromkeys(POINTS, 0)  # whole zeros, not a half-written run
    assert {student: grades for student, grades in graded.items() if student != "slow"} == {
        student: grades for student, grades in serial.items() if student != "slow"}
