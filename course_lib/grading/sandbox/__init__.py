"""Run one student notebook in a sandboxed process, with limits, and report faults as data.

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

import contextlib
import functools
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat

__all__ = ["Fault", "Limits", "SandboxResult", "namespace_support", "run_notebook"]

FAULT_KINDS = ("timeout", "memory", "killed", "output_limit", "crashed", "invalid_notebook")
NOBODY = 65534
_CHUNK = 65536


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandboxed notebook run."""

    memory_bytes: int = 2 * 2**30  # RLIMIT_AS: address space; torch imports in ~0.7 GiB
    cpu_seconds: int = 120  # RLIMIT_CPU: SIGXCPU at this, SIGKILL a second later
    cell_timeout: float = 60.0  # wall clock per cell, seconds
    notebook_timeout: float = 300.0  # wall clock for the whole run, start-up included
    max_processes: int = 64  # RLIMIT_NPROC (enforced only for a non-root uid)
    max_output_bytes: int = 4 * 2**20  # everything the run prints or displays, all cells
    max_file_bytes: int = 64 * 2**20  # RLIMIT_FSIZE: the largest file it may write
    max_open_files: int = 256  # RLIMIT_NOFILE


@dataclass
class Fault:
    """Why a sandboxed run stopped early: ``kind`` is one of FAULT_KINDS."""

    kind: str
    cell: int | None  # index in notebook.cells of the cell running, None if none was
    message: str

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class SandboxResult:
    """The executed notebook, the fault that stopped it (None if none), and what was enforced."""

    notebook: nbformat.NotebookNode
    fault: Fault | None
    network_isolated: bool
    paths_hidden: bool
    privileges_dropped: bool
    seconds: float
    output_bytes: int  # bytes of output stored in the notebook (<= max_output_bytes)
    executed: list[int] = field(default_factory=list)  # indices of the cells that completed
    workdir: Path | None = None  # the run's folder, kept only with keep_workdir=True (then yours
    # to remove, with its parent): where the files a notebook wrote can be collected


@functools.lru_cache(maxsize=1)
def namespace_support() -> tuple[str, ...]:
    """The ``unshare`` prefix that gives net, pid and mount namespaces here, or () if none."""
    if sys.platform != "linux" or shutil.which("unshare") is None:
        return ()
    base = ("unshare", "--net", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc")
    candidates = [base] if os.geteuid() == 0 else [base[:1] + ("--user", "--map-root-user")
                                                    + base[1:]]
    for prefix in candidates:
        try:
            probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return prefix
    return ()


# The runner: executed with `python -I -c`, so it imports nothing from the grader's cwd.
# stdin: one JSON config line, then one JSON line per cell; fd 3: JSON messages to the parent.
_RUNNER = r'''
import json, os, signal, subprocess, sys
proto = os.fdopen(int(sys.argv[1]), "w", buffering=1)
config = json.loads(sys.stdin.readline())
def send(kind, **fields):
    proto.write(json.dumps(dict(type=kind, **fields)) + "\n")
expose = config["expose"]
if expose:  # the interpreter lives in a folder the uid cannot enter: cover that folder with a
    # tmpfs and bind only the interpreter's prefix back, read-only
    for args in (["mount", "--rbind", "-o", "ro", expose["target"], expose["stage"]],
                 ["mount", "-t", "tmpfs", "-o", "mode=0755,size=64k", "none", expose["closed"]],
                 ["mkdir", "-p", expose["target"]],
                 ["mount", "--rbind", "-o", "ro", expose["stage"], expose["target"]]):
        subprocess.run(args, check=True, capture_output=True)
hidden = 0
for path in config["hide"]:
    if os.path.isdir(path):
        args = ["mount", "-t", "tmpfs", "-o", "ro,size=4k,mode=0555", "none", path]
    elif os.path.exists(path):
        args = ["mount", "--bind", "/dev/null", path]
    else:
        hidden += 1
        continue
    hidden += subprocess.run(args, capture_output=True).returncode == 0
dropped = False
if config["uid"] is not None and os.getuid() == 0 and config["real_root"]:
    os.setgroups([])
    os.setgid(config["gid"])
    os.setuid(config["uid"])
    dropped = True
import resource  # set here, not in a preexec_fn: the grader may start sandboxes from threads
for name, soft, hard in config["limits"]:
    resource.setrlimit(getattr(resource, name), (soft, hard))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write raises OSError instead
sys.path.insert(0, "")
cells_in = sys.stdin
sys.stdin = open(os.devnull)

class Stream:
    """sys.stdout / sys.stderr that sends stream outputs to the parent."""
    def __init__(self, name):
        self.name, self.parts, self.size = name, [], 0
    def write(self, text):
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self.parts.append(text)
        self.size += len(text)
        if self.size > 8192 or "\n" in text:
            self.flush()
        return len(text)
    def flush(self):
        if self.parts:
            text, self.parts, self.size = "".join(self.parts), [], 0
            for begin in range(0, len(text), 65536):
                send("output", output=dict(output_type="stream", name=self.name,
                                           text=text[begin:begin + 65536]))
    def isatty(self):
        return False
    def fileno(self):  # the raw descriptors are captured too
        return 1 if self.name == "stdout" else 2
    def writable(self):
        return True
    encoding = "utf-8"

def plain(bundle):
    return {key: value for key, value in bundle.items() if isinstance(value, (str, dict, list))}

from IPython.core.displayhook import DisplayHook
from IPython.core.displaypub import DisplayPublisher
from IPython.core.interactiveshell import InteractiveShell

class Hook(DisplayHook):
    def write_output_prompt(self):
        pass
    def write_format_data(self, format_dict, md_dict=None):
        send("output", output=dict(output_type="execute_result", data=plain(format_dict),
             metadata=md_dict or {}, execution_count=count))

class Publisher(DisplayPublisher):
    def publish(self, data, metadata=None, source=None, *, transient=None, update=False, **kw):
        sys.stdout.flush()
        sys.stderr.flush()
        send("output", output=dict(output_type="display_data", data=plain(data),
             metadata=metadata or {}))

class Shell(InteractiveShell):
    displayhook_class = Hook
    display_pub_class = Publisher
    def _showtraceback(self, etype, evalue, stb):
        sys.stdout.flush()
        sys.stderr.flush()
        send("output", output=dict(output_type="error", ename=etype.__name__,
             evalue=str(evalue), traceback=list(stb)))

sys.stdout, sys.stderr = Stream("stdout"), Stream("stderr")
from traitlets.config import Config
settings = Config()
settings.HistoryManager.enabled = False
shell = Shell.instance(colors="nocolor", config=settings)
send("ready", hidden=hidden, dropped=dropped)
for line in cells_in:
    cell = json.loads(line)
    count = shell.execution_count
    send("start", cell=cell["index"])
    shell.run_cell(cell["source"], store_history=True)
    sys.stdout.flush()
    sys.stderr.flush()
    send("done", cell=cell["index"], execution_count=count)
'''


def _rlimits(limits: Limits) -> list[tuple[str, int, int]]:
    """(name, soft, hard) of each rlimit the runner sets on itself before any cell runs (after
    dropping privileges, so that RLIMIT_NPROC counts)."""
    return [("RLIMIT_AS", limits.memory_bytes, limits.memory_bytes),
            ("RLIMIT_CPU", limits.cpu_seconds, limits.cpu_seconds + 1),
            ("RLIMIT_FSIZE", limits.max_file_bytes, limits.max_file_bytes),
            ("RLIMIT_NOFILE", limits.max_open_files, limits.max_open_files),
            ("RLIMIT_NPROC", limits.max_processes, limits.max_processes),
            ("RLIMIT_CORE", 0, 0)]


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


def _prepare_workdir(files, uid: int | None) -> Path:
    """A fresh folder holding copies of ``files`` (a folder's contents or a list of paths)."""
    folder = isinstance(files, (str, os.PathLike)) and Path(files).is_dir()
    if isinstance(files, (str, os.PathLike)) and not folder:
        files = [files]
    sources = [] if files is None or folder else list(map(Path, files))
    missing = [str(path) for path in sources if not path.exists()]
    if missing:
        raise ValueError(f"files to copy into the sandbox must exist; missing {', '.join(missing)}")
    root = Path(tempfile.mkdtemp(prefix="course-sandbox-"))
    work = root / "work"
    if folder:
        shutil.copytree(files, work, symlinks=True)
    else:
        work.mkdir()
        for path in sources:
            (shutil.copytree if path.is_dir() else shutil.copy2)(path, work / path.name)
    for name in (".home", ".tmp"):
        (work / name).mkdir(exist_ok=True)
    if uid is not None:
        os.chmod(root, 0o711)
        for folder, subdirs, names in os.walk(work):
            for name in [folder, *(os.path.join(folder, item) for item in subdirs + names)]:
                os.lchown(name, uid, uid)
    return root


def _closed_ancestor(path: Path) -> Path | None:
    """The highest folder above ``path`` that others may not enter (e.g. /root), or None."""
    for folder in [*reversed(path.parents), path]:
        if not os.stat(folder).st_mode & 0o001:
            return folder
    return None


def _environment(work: Path) -> dict[str, str]:
    """The runner's whole environment: nothing of the grader's beyond the interpreter's bin."""
    venv_bin = str(Path(sys.executable).parent)
    return {"PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin", "HOME": str(work / ".home"),
            "TMPDIR": str(work / ".tmp"), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "MPLBACKEND": "module://matplotlib_inline.backend_inline",  # figures as in Jupyter
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}


def _describe_exit(status: int | None, limits: Limits) -> tuple[str, str]:
    """Fault kind and message for a runner that ended while a cell ran."""
    if status is None:
        return "crashed", "the runner stopped answering"
    signum = -status if status < 0 else status - 128 if status > 128 else 0
    if signum == signal.SIGXCPU:
        return "timeout", f"CPU time limit of {limits.cpu_seconds} s reached"
    if signum:
        name = signal.Signals(signum).name if signum in signal.Signals._value2member_map_ \
            else f"signal {signum}"
        return "crashed", (f"the notebook's process died of {name} (a segfault, the kernel's OOM "
                           "killer, or os.kill in a cell)")
    return "crashed", (f"the notebook's process exited with status {status} (sys.exit or "
                       "os._exit in a cell?)")


def run_notebook(notebook, *, files=None, limits: Limits | None = None,
                 hidden_paths: Iterable[str | os.PathLike] = (), uid: int | None = NOBODY,
                 keep_workdir: bool = False) -> SandboxResult:
    """Execute the code cells of ``notebook`` (a NotebookNode or a path) in a sandbox.

    ``files``: the submission's folder (its contents are copied) or a list of files to copy.
    ``hidden_paths``: absolute paths to make unreadable inside the sandbox (needs namespaces).
    ``uid``: the unprivileged uid the runner switches to when the grader is root (None: stay).
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
    root = _prepare_workdir(files, drop_uid)
    work = root / "work"
    try:
        covering = [str(path) for path in hide if work.is_relative_to(path)]
        if covering:
            raise ValueError(f"hidden_paths must not contain the sandbox folder {work}; "
                             f"got {', '.join(covering)}")
        result = _execute(node, work, prefix, limits, [str(path) for path in hide],
                          drop_uid, real_root, start)
        result.workdir = work if keep_workdir else None
        return result
    finally:
        if not keep_workdir:
            shutil.rmtree(root, ignore_errors=True)


class _Capture:
    """Outputs read from the runner, stored until ``cap`` bytes and no further."""

    def __init__(self, node: nbformat.NotebookNode, cap: int):
        self.node, self.cap, self.stored, self.seen = node, cap, 0, 0
        self.cell: int | None = None
        self.orphan = ""  # raw output written outside any cell (start-up errors), last 2000

    def count(self, size: int) -> bool:
        """Count ``size`` bytes read; False once the total passes the cap."""
        self.seen += size
        return self.seen <= self.cap

    def add(self, output: dict, cell: int | None = None) -> None:
        """Store one output in the running cell, trimmed to what the cap leaves."""
        cell = self.cell if cell is None else cell
        if cell is None:
            self.orphan = (self.orphan + str(output.get("text", "")))[-2000:]
            return
        room = self.cap - self.stored
        if output.get("output_type") == "stream":
            text = str(output.get("text", ""))[:room]
            self.stored += len(text.encode())
            outputs = self.node.cells[cell].outputs
            if outputs and outputs[-1].get("output_type") == "stream" \
                    and outputs[-1].get("name") == output.get("name"):
                outputs[-1]["text"] += text
                return
            output = {**output, "text": text}
        else:
            size = len(json.dumps(output).encode())
            if size > room:
                return
            self.stored += size
        with contextlib.suppress(Exception):  # a malformed output is dropped, never trusted
            self.node.cells[cell].outputs.append(nbformat.from_dict(output))


def _execute(node, work: Path, prefix: tuple[str, ...], limits: Limits, hide: list[str],
             drop_uid: int | None, real_root: bool, start: float) -> SandboxResult:
    """Start the runner in ``work``, feed it the code cells, collect outputs and the fault."""
    for cell in node.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    code = [index for index, cell in enumerate(node.cells) if cell.cell_type == "code"]
    protocol_read, protocol_write = os.pipe()
    command = [sys.executable, "-I", "-c", _RUNNER, str(protocol_write)]
    if prefix:  # sh as PID 1 of the namespace: the runner can then die of its own signals
        command = [*prefix, "sh", "-c", 'cd "$0" && "$@"; exit $?', str(work), *command]
    config = {"hide": hide if prefix else [], "uid": drop_uid, "gid": drop_uid,
              "real_root": real_root, "expose": None, "limits": _rlimits(limits)}
    closed = _closed_ancestor(Path(sys.base_prefix)) if drop_uid is not None else None
    if closed is not None:
        stage = work.parent / "python"
        stage.mkdir()
        config["expose"] = {"target": sys.base_prefix, "stage": str(stage), "closed": str(closed)}
    try:
        process = subprocess.Popen(
            command, cwd=work, env=_environment(work), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(protocol_write,),
            start_new_session=True)
    except BaseException:
        os.close(protocol_read)
        raise
    finally:
        os.close(protocol_write)
    capture = _Capture(node, limits.max_output_bytes)
    fault: Fault | None = None
    executed: list[int] = []
    info = {"hidden": 0, "dropped": False}
    pending = list(code)
    buffers = {protocol_read: b"", process.stdout.fileno(): b"", process.stderr.fileno(): b""}
    names = {process.stdout.fileno(): "stdout", process.stderr.fileno(): "stderr"}
    selector = selectors.DefaultSelector()
    for fd in buffers:
        os.set_blocking(fd, False)
        selector.register(fd, selectors.EVENT_READ)
    cell_started = time.monotonic()
    finished = False
    flood_message = (f"output limit of {limits.max_output_bytes} bytes reached; "
                     "the run was stopped")
    last_cell = sent = None  # the cell that last started; the cell last sent to the runner
    ready = False

    def send(payload: dict) -> bool:
        try:
            process.stdin.write((json.dumps(payload) + "\n").encode())
            process.stdin.flush()
            return True
        except (BrokenPipeError, OSError):
            return False

    def next_cell() -> None:
        nonlocal sent
        if pending:
            sent = pending.pop(0)
            send({"index": sent, "source": node.cells[sent].source})
        else:
            process.stdin.close()

    send(config)
    try:
        while selector.get_map() and not finished:
            now = time.monotonic()
            if now - start > limits.notebook_timeout:
                fault = Fault("timeout", capture.cell,
                              f"notebook time limit of {limits.notebook_timeout:g} s reached")
                break
            if capture.cell is not None and now - cell_started > limits.cell_timeout:
                fault = Fault("timeout", capture.cell,
                              f"cell time limit of {limits.cell_timeout:g} s reached")
                break
            deadline = start + limits.notebook_timeout
            if capture.cell is not None:
                deadline = min(deadline, cell_started + limits.cell_timeout)
            for key, _ in selector.select(max(0.0, min(1.0, deadline - now))):
                fd = key.fd
                try:
                    chunk = os.read(fd, _CHUNK)
                except BlockingIOError:
                    continue
                if not chunk:
                    selector.unregister(fd)
                    # all cells done: stray children holding stdout must not keep us waiting
                    finished = fd == protocol_read and not pending and capture.cell is None
                    continue
                # counted as read; stored only up to the cap (Capture.add); stopped past it
                flooded = not capture.count(len(chunk))
                if fd != protocol_read:  # raw fd 1/2 writes (os.write, subprocesses)
                    capture.add({"output_type": "stream", "name": names[fd],
                                 "text": chunk.decode("utf-8", "replace")},
                                capture.cell if capture.cell is not None else last_cell)
                    if flooded:
                        fault = Fault("output_limit", capture.cell, flood_message)
                        break
                    continue
                buffers[fd] += chunk
                *lines, buffers[fd] = buffers[fd].split(b"\n")
                for line in lines:
                    try:
                        message = json.loads(line)
                        kind = message["type"]
                    except (ValueError, KeyError, TypeError):
                        fault = Fault("killed", capture.cell, "the runner's message stream was "
                                      "corrupted (a cell wrote to the sandbox's private pipe)")
                        break
                    # messages are checked against what was sent: cell code can forge them
                    if kind == "ready" and not ready:
                        ready = True
                        info.update(hidden=message.get("hidden", 0),
                                    dropped=message.get("dropped", False))
                        next_cell()
                    elif kind == "start" and sent is not None and capture.cell is None:
                        capture.cell, cell_started = sent, time.monotonic()
                        last_cell = capture.cell
                    elif kind == "output" and isinstance(message.get("output"), dict):
                        output = message["output"]
                        capture.add(output)
                        if output.get("output_type") == "error" \
                                and output.get("ename") == "MemoryError":
                            fault = Fault("memory", capture.cell, "out of memory (limit "
                                          f"{limits.memory_bytes / 2**20:.0f} MiB)")
                    elif kind == "done" and capture.cell is not None:
                        count = message.get("execution_count")
                        node.cells[capture.cell].execution_count = \
                            count if isinstance(count, int) else None
                        executed.append(capture.cell)
                        capture.cell = None
                        next_cell()
                    if fault:
                        break
                if fault is None and (flooded or len(buffers[fd]) > capture.cap + _CHUNK):
                    fault = Fault("output_limit", capture.cell, flood_message)
                if fault:
                    break
            if fault:
                break
        if fault is None:  # what the last cell wrote to fd 1/2 is already in the pipes
            for fd, name in names.items():
                while capture.seen < capture.cap:
                    try:
                        chunk = os.read(fd, _CHUNK)
                    except (BlockingIOError, OSError):
                        break
                    if not chunk:
                        break
                    capture.count(len(chunk))
                    capture.add({"output_type": "stream", "name": name,
                                 "text": chunk.decode("utf-8", "replace")}, last_cell)
    finally:
        selector.close()
        _kill(process)
        os.close(protocol_read)
    if fault is None and (pending or capture.cell is not None):
        kind, message = _describe_exit(process.returncode, limits)
        if capture.orphan:
            message += "; it wrote: " + capture.orphan[-1000:].strip()
        fault = Fault(kind, capture.cell, message)
    return SandboxResult(node, fault, bool(prefix), bool(prefix) and info["hidden"] == len(hide),
                         bool(info["dropped"]), time.monotonic() - start, capture.stored, executed)


def _kill(process: subprocess.Popen) -> None:
    """End the runner and everything it started (process group; the PID namespace dies too)."""
    if process.poll() is None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=0.2 if process.stdin.closed else 0)
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    for stream in (process.stdin, process.stdout, process.stderr):
        with contextlib.suppress(OSError):
            stream.close()
