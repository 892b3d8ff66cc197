"""How a sandboxed run is isolated before any cell runs: the namespaces this machine allows, a
fresh working folder, a scrubbed environment, the rlimits, and the runner's command line and
configuration (``runner.py`` applies the parts that must happen inside the namespaces)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from course_lib.grading.sandbox.limits import Limits

__all__ = ["RUNNER", "closed_ancestor", "environment", "namespace_support", "prepare_workdir",
           "rlimits", "runner_command", "runner_config"]

RUNNER = Path(__file__).with_name("runner.py")


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


def rlimits(limits: Limits) -> list[tuple[str, int, int]]:
    """(name, soft, hard) of each rlimit the runner sets on itself before any cell runs (after
    dropping privileges, so that RLIMIT_NPROC counts)."""
    return [("RLIMIT_AS", limits.memory_bytes, limits.memory_bytes),
            ("RLIMIT_CPU", limits.cpu_seconds, limits.cpu_seconds + 1),
            ("RLIMIT_FSIZE", limits.max_file_bytes, limits.max_file_bytes),
            ("RLIMIT_NOFILE", limits.max_open_files, limits.max_open_files),
            ("RLIMIT_NPROC", limits.max_processes, limits.max_processes),
            ("RLIMIT_CORE", 0, 0)]


def prepare_workdir(files, uid: int | None) -> Path:
    """A fresh folder holding copies of ``files`` (a folder's contents or a list of paths);
    returns its parent (the run's ``work/`` is inside)."""
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


def closed_ancestor(path: Path) -> Path | None:
    """The highest folder above ``path`` that others may not enter (e.g. /root), or None."""
    for folder in [*reversed(path.parents), path]:
        if not os.stat(folder).st_mode & 0o001:
            return folder
    return None


def environment(work: Path) -> dict[str, str]:
    """The runner's whole environment: nothing of the grader's beyond the interpreter's bin."""
    venv_bin = str(Path(sys.executable).parent)
    return {"PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin", "HOME": str(work / ".home"),
            "TMPDIR": str(work / ".tmp"), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "MPLBACKEND": "module://matplotlib_inline.backend_inline",  # figures as in Jupyter
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}


def runner_command(prefix: tuple[str, ...], work: Path, protocol_fd: int) -> list[str]:
    """``python -I runner.py FD``, inside the namespaces of ``prefix`` when there are any."""
    command = [sys.executable, "-I", str(RUNNER), str(protocol_fd)]
    if prefix:  # sh as PID 1 of the namespace: the runner can then die of its own signals
        command = [*prefix, "sh", "-c", 'cd "$0" && "$@"; exit $?', str(work), *command]
    return command


def runner_config(work: Path, prefix: tuple[str, ...], limits: Limits, hide: list[str],
                  drop_uid: int | None, real_root: bool) -> dict:
    """The configuration line the runner reads first: what to hide, whom to become, its
    rlimits, and where the interpreter must be bound back (``runner.expose_interpreter``)."""
    config = {"hide": hide if prefix else [], "uid": drop_uid, "gid": drop_uid,
              "real_root": real_root, "expose": None, "limits": rlimits(limits)}
    closed = closed_ancestor(Path(sys.base_prefix)) if drop_uid is not None else None
    if closed is not None:
        stage = work.parent / "python"
        stage.mkdir()
        config["expose"] = {"target": sys.base_prefix, "stage": str(stage), "closed": str(closed)}
    return config
