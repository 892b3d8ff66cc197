"""How a sandboxed run is isolated before any cell runs: whether bubblewrap works here, the uid
each run drops to, a fresh staging folder, a scrubbed environment, the rlimits, and the
runner's command line and configuration (``runner.py`` applies the parts that must happen
inside the view; ``view.py`` says what the view holds)."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from course_lib.grading.sandbox.limits import NOBODY, Limits
from course_lib.grading.sandbox.view import INPUT, WORK, bwrap_arguments

__all__ = ["RUNNER", "environment", "missing_isolation", "namespace_support", "prepare_workdir",
           "rlimits", "runner_command", "runner_config", "uid_slot", "view_arguments",
           "working_folder"]

RUNNER = Path(__file__).with_name("runner.py")
UID_SLOTS = 256  # uids NOBODY, NOBODY - 1, ... handed to the runs of one machine


@functools.lru_cache(maxsize=1)
def namespace_support() -> tuple[str, ...]:
    """``(bwrap,)`` or ``(bwrap, "--unshare-user")`` where bubblewrap can build its view here
    (Linux; as root, or where unprivileged user namespaces are allowed), else ()."""
    bwrap = shutil.which("bwrap")
    if sys.platform != "linux" or bwrap is None:
        return ()
    prefix = (bwrap,) if os.geteuid() == 0 else (bwrap, "--unshare-user")
    probe = [*prefix, "--ro-bind", "/", "/", "--unshare-pid", "--unshare-net", "--proc",
             "/proc", "--dev", "/dev", "--size", "65536", "--tmpfs", "/tmp", "true"]
    try:
        done = subprocess.run(probe, capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return prefix if done.returncode == 0 else ()


def missing_isolation() -> str | None:
    """What the sandbox cannot do on this machine, in one sentence for the start of a run;
    None where bubblewrap builds its view."""
    if namespace_support():
        return None
    why = ("bubblewrap (bwrap) is not installed: `apt-get install bubblewrap`"
           if shutil.which("bwrap") is None else
           "bubblewrap cannot create namespaces here (not root, and unprivileged user "
           "namespaces are disabled)")
    return (f"{why}. Submissions will run WITHOUT the allow-list view: they can read every "
            "file this user can, reach the network, and write to disk without a total cap.")


@contextlib.contextmanager
def uid_slot() -> Iterator[int]:
    """An unprivileged uid no other run on this machine holds now (``NOBODY - n``), held
    until the block ends: RLIMIT_NPROC counts every process of a uid, so two runs must not
    share one. A lock file per uid makes the choice hold across threads and processes (the
    workers of a cluster on one machine)."""
    folder = Path(tempfile.gettempdir()) / "course-sandbox-uids"
    folder.mkdir(mode=0o700, exist_ok=True)
    for slot in range(UID_SLOTS):
        handle = open(folder / f"{NOBODY - slot}.lock", "w")  # noqa: SIM115 - held to the end
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        try:
            yield NOBODY - slot
        finally:
            handle.close()  # releases the lock
        return
    raise RuntimeError(f"all {UID_SLOTS} sandbox uids are in use on this machine")


def rlimits(limits: Limits) -> list[tuple[str, int, int]]:
    """(name, soft, hard) of each rlimit the runner sets on itself before any cell runs (after
    dropping privileges, so that RLIMIT_NPROC counts)."""
    return [("RLIMIT_AS", limits.memory_bytes, limits.memory_bytes),
            ("RLIMIT_CPU", limits.cpu_seconds, limits.cpu_seconds + 1),
            ("RLIMIT_FSIZE", limits.max_file_bytes, limits.max_file_bytes),
            ("RLIMIT_NOFILE", limits.max_open_files, limits.max_open_files),
            ("RLIMIT_NPROC", limits.max_processes, limits.max_processes),
            ("RLIMIT_CORE", 0, 0)]


def prepare_workdir(files, uid: int | None, collect=()) -> Path:
    """A fresh folder holding copies of ``files`` (a folder's contents or a list of paths) in
    ``work/``, and an empty ``keep/NAME`` for each name of ``collect``; returns the folder."""
    folder = isinstance(files, (str, os.PathLike)) and Path(files).is_dir()
    if isinstance(files, (str, os.PathLike)) and not folder:
        files = [files]
    sources = [] if files is None or folder else list(map(Path, files))
    missing = [str(path) for path in sources if not path.exists()]
    if missing:
        raise ValueError(f"files to copy into the sandbox must exist; missing {', '.join(missing)}")
    root = Path(tempfile.mkdtemp(prefix="course-sandbox-"))
    work, keep = root / "work", root / "keep"
    if folder:
        shutil.copytree(files, work, symlinks=True)
    else:
        work.mkdir()
        for path in sources:
            (shutil.copytree if path.is_dir() else shutil.copy2)(path, work / path.name)
    for name in (".home", ".tmp"):
        (work / name).mkdir(exist_ok=True)
    keep.mkdir()
    for name in collect:
        (work / name).unlink(missing_ok=True)  # never a copy the submission brought along
        (keep / name).touch()
    if uid is not None:
        os.chmod(root, 0o711)
        for top in (work, keep):
            for parent, subdirs, names in os.walk(top):
                for name in [parent, *(os.path.join(parent, item) for item in subdirs + names)]:
                    os.lchown(name, uid, uid)
    return root


def environment(work: str) -> dict[str, str]:
    """The runner's whole environment: nothing of the grader's beyond the interpreter's bin."""
    venv_bin = str(Path(sys.executable).parent)
    return {"PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin", "HOME": f"{work}/.home",
            "TMPDIR": f"{work}/.tmp", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "MPLBACKEND": "module://matplotlib_inline.backend_inline",  # figures as in Jupyter
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}


def view_arguments(prefix: tuple[str, ...], root: Path, limits: Limits, hide: list[Path],
                   collect=()) -> list[str]:
    """bubblewrap's command line for a run staged in ``root`` (nothing without ``prefix``)."""
    if not prefix:
        return []
    return bwrap_arguments(prefix[0], disk_bytes=limits.max_disk_bytes,
                           submission=root / "work", hide=hide,
                           keep={name: root / "keep" / name for name in collect},
                           user_namespace="--unshare-user" in prefix)


def runner_command(protocol_fd: int, view: list[str] = ()) -> list[str]:
    """``python -I runner.py FD``, inside bubblewrap's ``view`` where there is one."""
    return [*view, sys.executable, "-I", str(RUNNER), str(protocol_fd)]


def runner_config(prefix: tuple[str, ...], limits: Limits, drop_uid: int | None,
                  real_root: bool, collect=()) -> dict:
    """The configuration line the runner reads first: whom to become, what to copy into its
    working folder (inside the view) and its rlimits."""
    copy = {"source": INPUT, "skip": list(collect)} if prefix else None
    return {"uid": drop_uid, "gid": drop_uid, "real_root": real_root, "copy": copy,
            "limits": rlimits(limits)}


def working_folder(prefix: tuple[str, ...], root: Path) -> str:
    """The run's working folder as the runner sees it."""
    return WORK if prefix else str(root / "work")
