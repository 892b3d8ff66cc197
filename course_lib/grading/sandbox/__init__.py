"""Run one student notebook in a sandboxed process, with limits, and report faults as data.

    limits.py      what a run may use (Limits) and what it reports (Fault, SandboxResult)
    view.py        what a run sees: the allow-list that bubblewrap (bwrap) builds
    isolation.py   whether bwrap works here, uids, the staging folder, environment, rlimits
    supervisor.py  the parent's side: feeds cells, reads outputs, enforces limits, one method
                   per event
    runner.py      the child's side, started as ``python -I runner.py FD``: runs the cells in
                   IPython's InteractiveShell

``run_notebook(notebook, files=folder)`` stages the submission's files, starts a plain Python
runner inside bubblewrap's view (IPython's ``InteractiveShell``, no Jupyter kernel, no ZeroMQ)
under resource limits, feeds it the code cells one at a time as JSON on stdin, and reads outputs
back as JSON lines on a private pipe. It returns the executed notebook (the outputs of every
cell that completed) and a ``Fault`` (or None) saying why execution stopped.

Threat model: the submission's code is hostile and runs with whatever the runner can do.

Defended (on Linux with Debian's ``bubblewrap``, as root or where unprivileged user namespaces
are allowed):
- *What it sees* (``view.py``): an allow-list, not a list of hidden paths. Its working folder
  on a private tmpfs; read-only, the system's ``/usr``, a few ``/etc`` files, the Python
  installation, the environment and ``course_lib``'s own folder (an editable install's
  repository stays out); a fresh ``/proc`` and a minimal ``/dev``. Nothing else: not the course
  folder, the gradebook, ``solutions/`` of any checkout, ``/root`` or ``/home``.
  ``hidden_paths`` are covered too where an allowed folder holds one.
- *Environment*: scrubbed to ``PATH`` (venv bin first), ``HOME``, ``TMPDIR``, locale and a few
  thread/backend settings: no grader paths, no tokens, no database URL.
- *Network*: a network namespace with only loopback: nothing reaches the grader's 127.0.0.1.
- *Processes*: a PID namespace (bwrap's init as PID 1, so a cell can die of its own signals):
  the grader's processes and command lines are invisible, and when the run ends (or the grader
  or its Dask worker dies: ``--die-with-parent``) every process in it is killed.
- *Privileges*: as root, the runner switches to an unprivileged uid (``uid_slot``: one per
  concurrent run on the machine, since ``RLIMIT_NPROC`` counts per uid).
- *Resources*: ``RLIMIT_AS`` (memory), ``RLIMIT_CPU``, ``RLIMIT_FSIZE`` (largest file),
  ``RLIMIT_NOFILE``, ``RLIMIT_NPROC``; *disk*: everything it writes (``/tmp`` and its folder)
  lives on one tmpfs of ``max_disk_bytes``, and ENOSPC stops the run as a ``disk`` fault; the
  only host file it writes is the records file (one file, capped by ``RLIMIT_FSIZE``);
  wall-clock time per cell and per notebook, enforced by the parent.
- *Output*: counted while it is read; storing stops at ``max_output_bytes``, the run is killed.
- *Faults*: timeout, memory, disk, a crash, an output flood or an unreadable notebook become a
  ``Fault`` with the cell index and a readable message; earlier cells keep their outputs.

Not defended here:
- *Verdicts*: the runner's outputs are whatever the student's code wants them to be. Grades are
  decided elsewhere, from plain data, in a process the submission cannot reach.
- *The runner's own channels*: cell code shares the runner's process (it can skip cells or
  forge messages); both only change outputs, which are untrusted anyway.
- *Without bubblewrap* (not installed, non-Linux, or a non-root grader where user namespaces
  are disabled) the runner still gets a fresh folder, the scrubbed environment, rlimits,
  timeouts and the output cap, but it sees every file the grader's uid can read, keeps the
  network, and its writes are not capped in total. ``missing_isolation()`` says so, and
  ``course grade`` prints it at the start of a run; ``SandboxResult`` reports what was in force.
- *CPU share and memory bandwidth* of other jobs (no cgroups); a kernel exploit.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

import nbformat

from course_lib.grading.sandbox.isolation import (
    environment,
    missing_isolation,
    namespace_support,
    prepare_workdir,
    runner_command,
    runner_config,
    uid_slot,
    view_arguments,
    working_folder,
)
from course_lib.grading.sandbox.limits import FAULT_KINDS, NOBODY, Fault, Limits, SandboxResult
from course_lib.grading.sandbox.supervisor import Supervisor

__all__ = ["FAULT_KINDS", "NOBODY", "Fault", "Limits", "SandboxResult", "missing_isolation",
           "namespace_support", "run_notebook", "uid_slot"]


def run_notebook(notebook, *, files=None, limits: Limits | None = None,
                 hidden_paths: Iterable[str | os.PathLike] = (), uid: int | None = NOBODY,
                 collect: Iterable[str] = ()) -> SandboxResult:
    """Execute the code cells of ``notebook`` (a NotebookNode or a path) in a sandbox.

    ``files``: the submission's folder (its contents are copied) or a list of files to copy.
    ``hidden_paths``: paths covered even where an allowed folder of the view holds them.
    ``uid``: the unprivileged uid the runner switches to when the grader is root (None: stay).
    ``collect``: names of files in the working folder to bring back (``SandboxResult.files``).
    """
    limits = limits or Limits()
    start = time.monotonic()
    prefix = namespace_support()
    try:
        node = _read_notebook(notebook)
    except ValueError as error:
        return SandboxResult(nbformat.v4.new_notebook(), Fault("invalid_notebook", None,
                             str(error)), bool(prefix), False, False,
                             time.monotonic() - start, 0)
    real_root = os.geteuid() == 0
    drop_uid = uid if real_root and prefix else None
    hide = [Path(path).resolve() for path in hidden_paths]
    collect = list(collect)
    root = prepare_workdir(files, drop_uid, collect)
    try:
        covering = [str(path) for path in hide if root.is_relative_to(path)]
        if covering:
            raise ValueError(f"hidden_paths must not contain the sandbox folder {root}; "
                             f"got {', '.join(covering)}")
        run = Supervisor(node, limits, start)
        view = view_arguments(prefix, root, limits, hide, collect)
        fault = run.run(lambda fd: runner_command(fd, view),
                        root / "work", environment(working_folder(prefix, root)),
                        runner_config(prefix, limits, drop_uid, real_root, collect))
        kept = root / ("keep" if prefix else "work")
        files_back = {name: (kept / name).read_bytes() if (kept / name).is_file()
                      and not (kept / name).is_symlink() else b"" for name in collect}
        return SandboxResult(node, fault, bool(prefix), bool(prefix), bool(run.dropped),
                             time.monotonic() - start, run.capture.stored, run.executed,
                             files_back)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _read_notebook(notebook) -> nbformat.NotebookNode:
    """``notebook`` as a v4 node; ValueError (a readable reason) if it is not a notebook."""
    if isinstance(notebook, nbformat.NotebookNode):
        return nbformat.from_dict(json.loads(json.dumps(notebook)))
    path = Path(notebook)
    try:
        node = nbformat.read(path, as_version=4)
    except FileNotFoundError as error:
        raise ValueError(f"no notebook at {path}") from error
    except Exception as error:  # nbformat raises many kinds for bad JSON / bad schema
        raise ValueError(f"{path.name} is not a readable notebook: "
                         f"{type(error).__name__}: {error}") from error
    if not isinstance(node, dict) or "cells" not in node:
        raise ValueError(f"{path.name} is not a notebook: expected a 'cells' list")
    return node
