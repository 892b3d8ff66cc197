"""Run one student notebook in a sandboxed process, with limits, and report faults as data.

    limits.py      what a run may use (Limits) and what it reports (Fault, SandboxResult)
    isolation.py   namespaces, the fresh folder, the environment, rlimits, the runner's command
    supervisor.py  the parent's side: feeds cells, reads outputs, enforces limits, one method
                   per event
    runner.py      the child's side, started as ``python -I runner.py FD``: runs the cells in
                   IPython's InteractiveShell

``run_notebook(notebook, files=folder)`` copies the submission's folder into a fresh working
directory, starts a plain Python runner there (IPython's ``InteractiveShell``, no Jupyter kernel,
no ZeroMQ) under resource limits, feeds it the code cells one at a time as JSON on stdin, and
reads outputs back as JSON lines on a private pipe. It returns the executed notebook (the outputs
of every cell that completed) and a ``Fault`` (or None) saying why execution stopped.

Threat model: the submission's code is hostile and runs with whatever the runner can do.

Defended (on Linux as root, or where unprivileged user namespaces are allowed):
- *Working directory*: fresh, holding only the files given; ``HOME`` and ``TMPDIR`` inside it;
  environment scrubbed to ``PATH`` (venv bin first), ``HOME``, ``TMPDIR``, locale and a few
  thread/backend settings: no grader paths, no tokens.
- *Network*: a new network namespace (``unshare --net``) whose only interface, loopback, is down:
  no connection anywhere, not even to the grader's 127.0.0.1.
- *Processes*: a new PID namespace (``sh`` as its PID 1, the runner its child, so that a cell
  can still die of its own signals) with a fresh ``/proc``: the grader's processes and their
  command lines are invisible, and when the sandbox ends the kernel kills every process in it,
  including ones that called ``setsid`` or double-forked; ``killpg`` is used as well.
- *Files outside*: as root, the runner switches to an unprivileged uid (``nobody`` by default), so
  mode-0600 files and root-only folders are unreadable, and every path in ``hidden_paths`` (the
  gradebook, ``source/``, ``solutions/``, other students' folders) is covered inside a private
  mount namespace: folders by an empty read-only tmpfs, files by ``/dev/null``. Where the
  interpreter lives in a folder that uid cannot enter (pyenv under ``/root``), that folder is
  covered by a tmpfs too and only the interpreter's prefix is bound back, read-only.
- *Resources*: ``RLIMIT_AS`` (memory), ``RLIMIT_CPU``, ``RLIMIT_FSIZE`` (largest file written),
  ``RLIMIT_NOFILE``, ``RLIMIT_NPROC`` (enforced only for a non-root uid: Linux exempts root, so it
  counts only once privileges are dropped, and it counts every process of that uid on the
  machine, i.e. parallel sandboxes under the same uid share it: give each job its own ``uid``);
  wall-clock time per cell and per notebook, enforced by the parent, which kills the whole group.
- *Output*: stdout, stderr and rich outputs are counted while they are read, in chunks; storing
  stops at ``max_output_bytes`` and the sandbox is killed: a flood never reaches memory or disk.
- *Faults*: timeout, memory exhaustion (``MemoryError``), a crash (``os._exit``, a signal, a
  segfault, the OOM killer), an output flood or an unreadable notebook become a ``Fault`` with the
  cell index and a readable message; the outputs of earlier cells are kept.

Not defended here:
- *Verdicts*: the runner's outputs are whatever the student's code wants them to be (it shares the
  runner's process and can write to the protocol pipe, patch ``assert``, return objects whose
  ``__eq__`` is always True). Grades must be decided elsewhere, from plain data the submission
  exports (numbers, arrays), in a process the submission cannot reach. This module isolates; it
  does not judge.
- *The runner's own channels*: cell code shares the runner's process, so it can read the next
  cell from stdin (skipping it) or write forged messages to the private pipe (faking outputs or
  corrupting the stream, which ends the run as ``killed``). Both only change outputs, which are
  untrusted anyway.
- *Without namespaces* (non-Linux, or a non-root user where user namespaces are disabled) the
  runner still gets the fresh directory, the scrubbed environment, rlimits, timeouts and the output
  cap, but it keeps the network and can read every file the grader's uid can read, by absolute
  path: hiding then rests only on the paths not being disclosed; a child that calls ``setsid``
  escapes the process-group kill; ``RLIMIT_NPROC`` counts the grader's own processes.
  ``SandboxResult`` reports which protections were in force (``network_isolated``,
  ``paths_hidden``, ``privileges_dropped``); ``namespace_support()`` probes once per process.
- *Disk*: ``RLIMIT_FSIZE`` caps each file, not the number of files; the working directory lives
  on the grader's temporary file system. Reads of world-readable system files (``/etc``, the venv,
  the course library, which notebooks import) stay possible by design.
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
