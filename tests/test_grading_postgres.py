"""A PostgreSQL gradebook: a real server (Debian's ``postgresql``, a fresh data folder in a
temporary directory, a port on 127.0.0.1), two ``course grade`` processes writing into it at
once, and a submission that hunts for the database's password."""

from __future__ import annotations

import glob
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
import pytest
from test_grading_cluster import EXPECTED, scores, submit_class
from test_grading_demo import NAME, make_course, replace_in_cell, submit

from course_lib.cli import main

# The probe: everything a submission could read for the password (its environment, every
# process it can see, every file of its view outside /usr and /proc), then the solution.
HUNT = '''import os, json
needle = "{backwards}"[::-1]  # not spelled out: the notebook itself is in the view
found = [k for k, v in os.environ.items() if needle in v]
for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
    for part in ("cmdline", "environ"):
        try:
            if needle.encode() in open(f"/proc/{{pid}}/{{part}}", "rb").read():
                found.append(f"/proc/{{pid}}/{{part}}")
        except OSError:
            pass
for top in ("/tmp", "/run", "/etc", "/root", "/home", "/work", "/var", "/srv"):
    for folder, _, names in os.walk(top):
        for name in names:
            path = os.path.join(folder, name)
            try:
                if os.path.getsize(path) < 2**20 and needle.encode() in open(path, "rb").read():
                    found.append(path)
            except OSError:
                pass
print("HUNT", json.dumps({{"found": found, "processes": len([p for p in os.listdir("/proc")
                                                              if p.isdigit()])}}))

def squares'''


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server of its own: (URL of an empty database, password)."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        message = ("needs Debian's postgresql (initdb in /usr/lib/postgresql/*/bin); "
                   "`apt-get install postgresql` (bootstrap.py test installs it)")
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs it: its absence there is a failure
        pytest.skip(message)
    import psycopg

    folder = Path(tempfile.mkdtemp(prefix="course-postgres-"))
    # initdb refuses to run as root: as root, the server runs as Debian's `postgres` user
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(folder, "postgres")
    password = "pw-" + secrets.token_hex(12)
    (folder / "pw").write_text(password)
    if as_user:
        shutil.chown(folder / "pw", "postgres")
    port, data = free_port(), folder / "data"
    subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "grader",
                    f"--pwfile={folder / 'pw'}", "--auth-host=scram-sha-256",
                    "--auth-local=reject", "-E", "UTF8", "--no-sync"],
                   check=True, capture_output=True)
    (folder / "pw").unlink()
    subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-l",
                    str(folder / "log"), "-o", f"-p {port} -k {folder} -c "
                    "listen_addresses=127.0.0.1 -c fsync=off", "start"],
                   check=True, capture_output=True)
    try:
        with psycopg.connect(host="127.0.0.1", port=port, user="grader", password=password,
                             dbname="postgres", autocommit=True) as admin:
            admin.execute("CREATE DATABASE gradebook")
        yield f"postgresql://grader:{password}@127.0.0.1:{port}/gradebook", password
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                        "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def course(tmp_path_factory, repo_root, postgres):
    root = make_course(tmp_path_factory.mktemp("postgres-course"), repo_root)
    assert main(["--root", str(root), "release", NAME]) == 0
    submit_class(root)
    _, password = postgres
    solution = nbformat.read(root / "solutions" / NAME / f"{NAME}.ipynb", as_version=4)
    submit(root, "hunter", replace_in_cell(solution, "squares", "def squares",
                                           HUNT.format(backwards=password[::-1])))
    return root


def grade(root: Path, db_url: str, students: list[str], *options: str) -> subprocess.Popen:
    """``course grade`` as an instructor starts it, in a process of its own."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.Popen([sys.executable, "-m", "course_lib.cli", "--root", str(root),
                             "grade", NAME, "--no-progress", "--db", db_url, "--student",
                             *students, *options], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_two_graders_write_into_one_postgresql_gradebook_at_once(course, postgres):
    db_url, password = postgres
    first = grade(course, db_url, ["alice", "blank", "crasher", "hunter"])
    second = grade(course, db_url, ["partial", "raiser", "slow"], "--jobs", "2")
    outputs = [process.communicate(timeout=300) for process in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outputs
    graded = scores(db_url)
    totals = {student: sum(grades.values()) for student, grades in graded.items()}
    assert totals == {**EXPECTED, "hunter": 100}
    assert all(len(grades) == 4 for grades in graded.values())  # whole results only

    # the password reached neither the submission's environment, nor a process or a file it
    # could see: the sandbox's PID namespace holds only its own processes
    autograded = course / "autograded" / "hunter" / NAME / f"{NAME}.ipynb"
    text = "".join(output.get("text", "") for cell in nbformat.read(autograded, 4).cells
                   if cell.cell_type == "code" for output in cell.outputs)
    line = next(line for line in text.splitlines() if line.startswith("HUNT "))
    hunt = json.loads(line[len("HUNT "):])
    assert hunt["found"] == []
    assert hunt["processes"] <= 3  # bwrap's init, the runner, at most one child of its own
