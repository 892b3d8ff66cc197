"""What a submission sees: an allow-list of the machine, built by bubblewrap (``bwrap``).

The project keeps only the policy; Debian's ``bubblewrap`` (the sandbox Flatpak uses) builds the
view. Inside it, a submission sees
- its working folder, ``/tmp/work``, on a private tmpfs of ``Limits.max_disk_bytes``: ``/tmp``
  and the working folder together are everything it can write, so one submission cannot fill
  the grading machine's disk (a write past the cap fails with ENOSPC);
- read-only: the system's programs and libraries (``/usr`` and its merged-``/usr`` links), a few
  files of ``/etc`` that libc and Python read, the Python installation (``sys.base_prefix``),
  the environment (``sys.prefix``, which may sit inside the course repository: only it is
  bound, not its parent), each package of ``PACKAGES`` at the folder it is imported from, and
  the files of ``BESIDE`` next to it (``grading_policy.toml``);
- a fresh ``/proc`` of its own PID namespace, a minimal ``/dev``, no network (a network
  namespace with only loopback), its own IPC and host name.
Nothing else: not the course folder, not ``solutions/`` of this or any other checkout, not the
gradebook, not ``/root`` or ``/home``. An editable install of ``course_lib`` points Python at
the repository it was installed from; only the package's own folder is bound there, so
``import course_lib`` works and the rest of that repository does not exist in the view.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

__all__ = ["ETC_FILES", "PACKAGES", "SYSTEM", "WORK", "allowed_paths", "bwrap_arguments"]

WORK = "/tmp/work"  # the working folder inside the view (cwd, HOME and TMPDIR under it)
INPUT = "/run/submission"  # the submission's files, read-only, copied into WORK by the runner
SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/localtime", "/etc/passwd",
             "/etc/group", "/etc/nsswitch.conf", "/etc/hosts", "/etc/fonts")
PACKAGES = ("course_lib",)  # packages homework imports that may live outside site-packages
# files a package reads from the folder above it: course_lib.grading.no_reference reads the
# course's grading_policy.toml (the no-reference rule, which students are told anyway)
BESIDE = {"course_lib": ("grading_policy.toml",)}


def package_folders(names=PACKAGES) -> list[Path]:
    """The folders the packages ``names`` are imported from (an editable install's source)."""
    folders = []
    for name in names:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            folders += [Path(path) for path in spec.submodule_search_locations]
    return folders


def allowed_paths() -> list[Path]:
    """Every folder bound read-only into the view besides the system's: the interpreter, the
    environment and the packages of ``PACKAGES``, each also at its resolved path."""
    paths = [Path(sys.base_prefix), Path(sys.prefix), Path(sys.executable).parent]
    for name in PACKAGES:
        folders = package_folders([name])
        paths += folders + [folder.parent / file for folder in folders
                            for file in BESIDE.get(name, ())]
    unique: list[Path] = []
    for path in paths + [path.resolve() for path in paths]:
        if path.exists() and path not in unique:
            unique.append(path)
    return unique


def _parents(path: Path, made: set[str]) -> list[str]:
    """``--dir`` for each missing parent of ``path``, mode 0755 (bwrap would copy the
    original's mode, and ``/root`` is 0700: the unprivileged uid could not walk through)."""
    args = []
    for parent in reversed(path.parents):
        name = str(parent)
        if name == "/" or name in made or name in SYSTEM:
            continue
        made.add(name)
        args += ["--perms", "0755", "--dir", name]
    return args


def bwrap_arguments(bwrap: str, *, disk_bytes: int, submission: Path, keep: dict[str, Path],
                    hide: list[Path], user_namespace: bool) -> list[str]:
    """The ``bwrap`` command line (up to the program to run) for one sandboxed run.

    ``submission``: the staged files, bound read-only at INPUT. ``keep``: name -> a file on this
    machine bound writable at ``WORK/name``, so that what the run writes there outlives it.
    ``hide``: paths covered even if an allowed folder holds them (defence in depth)."""
    args = [bwrap, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--hostname", "sandbox", "--die-with-parent",
            "--new-session"]
    if user_namespace:  # a grader that is not root: bwrap needs a user namespace
        args.append("--unshare-user")
    for path in SYSTEM:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    made: set[str] = set()
    for path in ETC_FILES:
        if os.path.exists(path):
            args += _parents(Path(path), made) + ["--ro-bind", path, path]
    for path in allowed_paths():
        args += _parents(path, made) + ["--ro-bind", str(path), str(path)]
        made.add(str(path))
    for path in hide:
        if any(path.is_relative_to(allowed) for allowed in allowed_paths()):
            args += (["--tmpfs", str(path), "--remount-ro", str(path)] if path.is_dir()
                     else ["--ro-bind", "/dev/null", str(path)])
    args += ["--proc", "/proc", "--dev", "/dev",
             "--perms", "1777", "--size", str(disk_bytes), "--tmpfs", "/tmp",
             "--perms", "1777", "--dir", WORK,
             *_parents(Path(INPUT), made), "--ro-bind", str(submission), INPUT]
    for name, host in keep.items():
        args += ["--bind", str(host), f"{WORK}/{name}"]
    return [*args, "--remount-ro", "/", "--chdir", WORK]
