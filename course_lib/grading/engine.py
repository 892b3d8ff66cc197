"""Where ``course grade`` runs the sandboxes: a thread pool on this machine (``--jobs N``) or a
Dask cluster (``--cluster local`` starts a ``distributed.LocalCluster`` on 127.0.0.1 with N
worker processes; ``--cluster tcp://HOST:PORT`` uses a running scheduler and its workers).

Both take the same ``Task``: one notebook and its folder's files as plain data, the test plans
and the limits. ``run_task`` runs it on a worker (any machine with this environment installed)
and returns an ``Execution``: the executed notebook, the fault, the records. Nothing on a
worker touches the gradebook; ``autograde.py`` judges and writes in the client alone.

A worker that dies mid-task (killed, out of memory, its machine gone) is Dask's to handle: the
scheduler hands the task to another worker, up to ``retries`` times
(``distributed.scheduler.allowed-failures``), then ``result()`` raises ``KilledWorker``, which
``autograde.py`` reports for that student while the batch goes on.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nbformat

from course_lib.grading.course import GradingError
from course_lib.grading.execution import Execution, TestPlans, execute
from course_lib.grading.sandbox import Limits, missing_isolation, uid_slot

__all__ = ["RETRIES", "Engine", "Task", "is_lost_worker", "read_files", "run_task"]

RETRIES = 2  # a task is tried again on another worker at most this often after its worker died


@dataclass
class Task:
    """One notebook to run in a sandbox, with everything a worker needs, as plain data."""

    key: str  # "student/notebook", unique in a run
    notebook: nbformat.NotebookNode  # trusted cells already restored from the source
    files: dict[str, bytes]  # the folder's files by relative path (the notebook's own too)
    tests: TestPlans
    limits: Limits
    hidden_paths: list[str]  # covered even inside the view's allowed folders


def read_files(*folders: Path) -> dict[str, bytes]:
    """Every file under ``folders`` by relative path, later folders over earlier ones;
    symbolic links are left out (they would point into the grader's machine)."""
    files = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.is_symlink():
                files[path.relative_to(folder).as_posix()] = path.read_bytes()
    return files


def run_task(task: Task) -> Execution:
    """On a worker: lay the files out in a fresh folder and run the notebook in the sandbox,
    under a uid no other run on this machine holds."""
    staging = Path(tempfile.mkdtemp(prefix="course-task-"))
    try:
        for name, data in task.files.items():
            target = staging / name
            if not target.resolve().is_relative_to(staging.resolve()):
                continue  # "../x": nothing outside the folder
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        with uid_slot() as uid:
            return execute(task.notebook, staging, task.tests, limits=task.limits,
                           hidden_paths=task.hidden_paths, uid=uid)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def is_lost_worker(error: BaseException) -> bool:
    """True for Dask's "the workers running this task kept dying" (KilledWorker)."""
    return type(error).__name__ == "KilledWorker"


class Engine:
    """A pool of sandbox runners: ``submit(task)`` returns a future of its Execution."""

    def __init__(self, jobs: int = 1, cluster: str | None = None, retries: int = RETRIES):
        if jobs < 1:
            raise ValueError(f"jobs must be at least 1, got {jobs}")
        self.jobs, self.address, self.retries = jobs, cluster, retries
        self.pool: ThreadPoolExecutor | None = None
        self.client = self.cluster = None

    def __enter__(self) -> Engine:
        if self.address is None:
            self.pool = ThreadPoolExecutor(self.jobs)
            return self
        import dask
        from distributed import Client, LocalCluster

        try:
            if self.address == "local":
                # the scheduler's setting (a running scheduler has its own); it runs here
                with dask.config.set({"distributed.scheduler.allowed-failures": self.retries}):
                    self.cluster = LocalCluster(
                        n_workers=self.jobs, threads_per_worker=1, processes=True,
                        host="127.0.0.1", dashboard_address=None, silence_logs=logging.ERROR,
                        memory_limit=0)  # the sandbox limits each run; its runner is a child
                self.client = Client(self.cluster)
            elif self.address.startswith(("tcp://", "tls://")):
                self.client = Client(self.address, timeout=30)
            else:
                raise GradingError(f"--cluster takes 'local' or a scheduler address "
                                   f"(tcp://HOST:PORT); got {self.address!r}")
        except OSError as error:
            self.__exit__(None, None, None)
            raise GradingError(f"cannot reach the Dask scheduler at {self.address}: "
                               f"{error}") from error
        return self

    def __exit__(self, *exc_info) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def submit(self, task: Task) -> Future:
        if self.client is None:
            return self.pool.submit(run_task, task)
        return self.client.submit(run_task, task, key=f"grade-{task.key}-{id(task)}",
                                  pure=False)

    def warnings(self) -> list[str]:
        """What the sandbox cannot do where the runs happen: here, or on each worker."""
        if self.client is None:
            found = missing_isolation()
            return [found] if found else []
        found = self.client.run(missing_isolation)  # worker address -> sentence or None
        return [f"worker {worker}: {why}" for worker, why in sorted(found.items()) if why]

    def workers(self) -> int:
        """How many runs go at once."""
        if self.client is None:
            return self.jobs
        return sum(self.client.nthreads().values())
