#!/usr/bin/env python3
"""Set up the course in a virtual environment, then optionally run its main job or its tests.

    python3 bootstrap.py            # set up .venv (idempotent, fast when nothing changed)
    python3 bootstrap.py build      # set up, then execute the lessons and build the course
    python3 bootstrap.py test       # set up (and Debian's chromium, postgresql and
                                    # bubblewrap for the browser, gradebook and sandbox
                                    # tests), then lint and run the whole test suite
    python3 bootstrap.py test -- -k bleu   # arguments after -- go to pytest

Options: --venv PATH (default .venv), --no-venv (install into the running interpreter, e.g. an
activated conda environment made from environment.yml).

Why a script and not just `pip install -e .`: d2l 1.0.3 hard-pins old numpy/matplotlib/pandas,
so it must be installed with --no-deps after everything else, and torch must be pinned so pip
does not pull a CUDA build. Uses only the standard library so it runs on a bare Python 3.11.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
STAMP_NAME = ".course-install-stamp"


def venv_python(venv_dir: Path) -> Path:
    """Path of the interpreter inside a virtual environment."""
    scripts = "Scripts" if os.name == "nt" else "bin"
    exe = "python.exe" if os.name == "nt" else "python"
    return venv_dir / scripts / exe


def install_fingerprint(python: Path) -> str:
    """Changes whenever what must be installed changes."""
    digest = hashlib.sha256()
    digest.update((ROOT / "pyproject.toml").read_bytes())
    digest.update(str(python).encode())
    return digest.hexdigest()


def run(cmd: list[str], env: dict[str, str] | None = None) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env)


def setup(venv_dir: Path | None) -> Path:
    """Create the environment if needed and install the course into it; return its python."""
    if sys.version_info < (3, 11):  # noqa: UP036 (bootstrap may run on an older python3)
        sys.exit(f"bootstrap.py needs Python 3.11 or newer; this is {sys.version.split()[0]}. "
                 "Run it with python3.11.")
    if venv_dir is None:
        python = Path(sys.executable)
        stamp = ROOT / "build" / STAMP_NAME
    else:
        python = venv_python(venv_dir)
        if not python.exists():
            print(f"Creating virtual environment {venv_dir}", flush=True)
            venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir)
        stamp = venv_dir / STAMP_NAME
    fingerprint = install_fingerprint(python)
    if stamp.exists() and stamp.read_text().strip() == fingerprint:
        print(f"Course already installed in {python.parent.parent} (pyproject.toml unchanged).")
        return python
    no_deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["course"]["no-deps"]
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
    run(pip + ["-e", f"{ROOT}[dev]"])
    run(pip + ["--no-deps"] + no_deps)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(fingerprint + "\n")
    return python


# Debian packages the tests need, by the file that shows each is installed: chromium for the
# JupyterLab browser test, PostgreSQL for the gradebook server test, bubblewrap for the
# grading sandbox's allow-list view.
DEBIAN_PACKAGES = {
    "chromium": ("/usr/bin/chromium", "/usr/bin/chromium-browser"),
    "postgresql": ("/usr/lib/postgresql",),
    "bubblewrap": ("/usr/bin/bwrap",),
}


def ensure_debian_packages() -> None:
    """Install the missing packages of DEBIAN_PACKAGES with apt-get, in one go.

    They come from the package registry (Playwright's own browser download would need the
    internet). Needs root (or sudo) and apt-get; elsewhere it says what to do, and the tests
    that need them skip (outside CI: in CI, the grading tests fail without them).
    """
    missing = [name for name, paths in DEBIAN_PACKAGES.items()
               if not any(Path(path).exists() for path in paths)]
    if not missing:
        return
    command = "apt-get install " + " ".join(missing)
    if not shutil.which("apt-get") or not hasattr(os, "geteuid"):
        print(f"note: some tests need Debian's {', '.join(missing)}: `{command}` (or set "
              "COURSE_CHROMIUM to a Chromium); they skip otherwise.", flush=True)
        return
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    if prefix and not shutil.which("sudo"):
        print(f"note: run `sudo {command}` (the tests that need them skip otherwise).",
              flush=True)
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        run(prefix + ["apt-get", "update", "-qq"], env=env)
        run(prefix + ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
            env=env)
    except (subprocess.CalledProcessError, OSError) as exc:
        print(f"note: could not install {', '.join(missing)} ({exc}); the tests that need "
              "them will skip.", flush=True)


def env_with_bin(python: Path) -> dict[str, str]:
    """The environment with the venv's bin first on PATH (nbgrader runs `alembic` from there)."""
    env = dict(os.environ)
    env["PATH"] = str(python.parent) + os.pathsep + env.get("PATH", "")
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("job", nargs="?", choices=["build", "test"],
                        help="what to run after setting up (default: only set up)")
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv",
                        help="virtual environment to create or reuse (default: .venv)")
    parser.add_argument("--no-venv", action="store_true",
                        help="install into the running interpreter instead of a venv")
    parser.add_argument("extra", nargs=argparse.REMAINDER,
                        help="after --: arguments passed on to `course build` or pytest")
    args = parser.parse_args(argv)
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra

    python = setup(None if args.no_venv else args.venv.resolve())
    env = env_with_bin(python)
    if args.job == "build":
        return subprocess.run([str(python), "-m", "course_lib.cli", "build", *extra],
                              env=env, cwd=ROOT).returncode
    if args.job == "test":
        ensure_debian_packages()
        code = subprocess.run([str(python), "-m", "pytest", *extra], env=env, cwd=ROOT).returncode
        if code == 5:
            print("pytest collected no tests: that counts as a failure.", file=sys.stderr)
            return 1
        return code
    print(f"Done. Activate with: source {python.parent}/activate")
    return 0


if __name__ == "__main__":
    sys.exit(main())
