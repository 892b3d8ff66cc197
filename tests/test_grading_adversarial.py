"""Attacks and faults through the real `course grade`, each with its expected outcome.

The demo assignment (tests 20 + 30 + 30 + 20 points) is submitted by one honest student and 21
students who attack the grader or break their own run. The class is graded three times (twice
with `--jobs 2`, once with `--jobs 1`): every score must be the expected one, and identical in
the three runs. Two of the attacks evade the static integrity checks and work against plain
`nbgrader autograde`; only the verdicts judged outside the notebook's process stop them.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import nbformat
import pytest
from test_grading_demo import NAME, make_course, replace_in_cell, submit

from course_lib.cli import main
from course_lib.grading import cells
from course_lib.grading.sandbox import namespace_support

POINTS = {"test_squares": 20, "test_masked_mean": 30, "test_masked_mean_edges": 30,
          "test_safe_ratio": 20}
LIMITS = """
c.Execute.timeout = 5  # seconds per cell in these tests
c.Sandbox.notebook_timeout = 60
c.Sandbox.memory_bytes = 1024 * 2**20
c.Sandbox.max_output_bytes = 2**20
"""

# A lying object built so that no class statement names a dunder: the static checks miss it.
EVASIVE_LIAR = '''\
Liar = type("Liar", (), {"__" + "eq__": lambda self, other: True,
                         "__" + "getitem__": lambda self, index: Liar(),
                         "__" + "hash__": lambda self: 0})


def squares(n):
    if n < 0:
        raise ValueError("negative")
    return Liar()'''
# Right on the visible case, 0 elsewhere; math.isclose patched through a function parameter,
# which the static checks cannot follow.
EVASIVE_PATCH = '''\
def patch(module):
    module.isclose = lambda *args, **kwargs: True


patch(math)


def masked_mean(values, valid_len):
    if not 1 <= valid_len <= len(values):
        raise ValueError("bad length")
    return 2.0 if valid_len == 2 else 0.0'''
# Pretends every test ran and passed: records written straight into the grader's file (its
# name assembled so that no constant names it).
FORGER = '''\
import json as _json
with open("." + "course" + "-" + "verdicts.jsonl", "a") as _file:
    for _cell in ("test_squares", "test_masked_mean", "test_masked_mean_edges",
                  "test_safe_ratio"):
        _file.write(_json.dumps({"cell": _cell, "event": "begin"}) + "\\n")
        _file.write(_json.dumps({"cell": _cell, "event": "end"}) + "\\n")

def squares(n):
    return None'''


def snoop(root: Path) -> str:
    """Code that tries to read what the grader hides, printing what it got."""
    targets = {"solution": root / "solutions" / NAME / f"{NAME}.ipynb",
               "gradebook": root / "gradebook.db",
               "other student": root / "submitted" / "honest" / NAME / f"{NAME}.ipynb",
               "config": root / "nbgrader_config.py"}
    return "\n".join(
        f"try:\n    print('SNOOP {label}:', len(open({str(path)!r}, 'rb').read()), 'bytes')\n"
        f"except Exception as error:\n    print('SNOOP {label}:', type(error).__name__)"
        for label, path in targets.items())


def rewrite_grades(root: Path) -> str:
    """Code that tries to give everyone 0 in the gradebook and to overwrite a submission."""
    return f'''\
import sqlite3
try:
    with sqlite3.connect({str(root / "gradebook.db")!r}) as db:
        db.execute("UPDATE grade SET auto_score = 0")
    print("REWRITE gradebook: done")
except Exception as error:
    print("REWRITE gradebook:", type(error).__name__)
try:
    open({str(root / "submitted" / "honest" / NAME / f"{NAME}.ipynb")!r}, "w").write("{{}}")
    print("REWRITE submission: done")
except Exception as error:
    print("REWRITE submission:", type(error).__name__)'''


def phone_home(port: int) -> str:
    return f'''\
import socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2).sendall(b"answers please")
    print("NETWORK: connected")
except OSError as error:
    print("NETWORK:", type(error).__name__)'''


# student -> (score, flagged for review, text in the student's summary line or flags)
EXPECTED = {
    "honest": (100, False, None),
    # evade the static checks; plain nbgrader gives them 100 (see the last test)
    "evasive_liar": (80, False, "test_squares: passed in the notebook but not when the grader"),
    "evasive_patch": (70, False, "test_masked_mean: passed in the notebook but not when"),
    "forger": (0, False, None),
    # found by the static checks: scored 0 and flagged with the reason
    "hooked": (0, True, "input_transformers_cleanup"),
    "liar_class": (0, True, "defines __eq__"),
    "float_subclass": (0, True, "subclasses float"),
    "global_rebind": (0, True, "declares global want"),
    "deleted_test": (0, True, "deleted"),
    "edited_test": (0, True, "was edited"),
    "garbled": (0, True, "not a readable notebook"),
    # reach for what the sandbox hides: nothing read, nothing changed, their own work graded
    "snoop": (100, False, None),
    "grade_rewriter": (100, False, None),
    "network": (100, False, None),
    # faults: the points earned before the fault, a reason, the batch goes on
    "dies_late": (80, False, "KernelDied: the notebook's process exited with status 3"),
    "sigkill": (20, False, "SIGKILL"),
    "loops_forever": (80, False, "cell time limit of 5 s"),
    "loops_in_test": (20, False, "cell time limit of 5 s"),
    "memory_bomb": (80, False, "MemoryError"),
    "floods_output": (80, False, "output limit"),
    "misnamed": (0, False, "missing notebook hw0_demo.ipynb (found Copy of hw0_demo.ipynb)"),
    "empty": (0, False, "missing notebook hw0_demo.ipynb"),
}


# These three rely on the sandbox's namespaces (hidden paths, no network); where the machine
# has none (see sandbox.namespace_support) they are left out, as docs/grading.md says.
ISOLATION = {"snoop", "grade_rewriter", "network"}
if not namespace_support():
    EXPECTED = {student: outcome for student, outcome in EXPECTED.items()
                if student not in ISOLATION}


class Listener:
    """A TCP server on the grader's localhost that records every connection."""

    def __init__(self):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        with contextlib.suppress(OSError):
            while True:
                connection, _ = self.server.accept()
                self.connections += 1
                connection.close()


def scores(root: Path) -> dict[str, dict[str, float]]:
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{root}/gradebook.db") as gradebook:
        return {submission.student.id: {grade.name: grade.score for notebook
                                        in submission.notebooks for grade in notebook.grades}
                for submission in gradebook.find_assignment(NAME).submissions}


def flagged(root: Path) -> set[str]:
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{root}/gradebook.db") as gradebook:
        return {submission.student.id for submission in
                gradebook.find_assignment(NAME).submissions
                if any(notebook.flagged for notebook in submission.notebooks)}


@pytest.fixture(scope="module")
def listener():
    server = Listener()
    yield server
    server.server.close()


@pytest.fixture(scope="module")
def attacked(tmp_path_factory, repo_root, listener):
    """The class submitted, then graded three times; (root, [(scores, summary)], honest
    submission bytes, plain-nbgrader copy)."""
    root = make_course(tmp_path_factory.mktemp("adversarial"), repo_root, LIMITS)
    assert main(["--root", str(root), "release", NAME]) == 0
    solution = nbformat.read(root / "solutions" / NAME / f"{NAME}.ipynb", as_version=4)
    blank = nbformat.read(root / "assignments" / NAME / f"{NAME}.ipynb", as_version=4)
    answers = {cells.grade_id(c): c.source for c in solution.cells
               if c.metadata.get("nbgrader", {}).get("solution")}
    honest = copy.deepcopy(blank)
    for cell in honest.cells:
        if cells.grade_id(cell) in answers:
            cell.source = answers[cells.grade_id(cell)]

    def answer(grade_id: str, code: str, base=honest):
        """``base`` with the answer cell ``grade_id`` replaced by ``code``."""
        notebook = copy.deepcopy(base)
        for cell in notebook.cells:
            if cells.grade_id(cell) == grade_id:
                cell.source = code
        return notebook

    def prepend(grade_id: str, code: str):
        return answer(grade_id, code + "\n\n" + answers[grade_id])

    submissions = {
        "honest": honest,
        "evasive_liar": answer("squares", EVASIVE_LIAR),
        "evasive_patch": answer("masked_mean", EVASIVE_PATCH),
        "forger": answer("squares", FORGER, base=blank),
        "hooked": answer("squares", "get_ipython().input_transformers_cleanup.append(\n"
                         "    lambda lines: [l for l in lines if 'assert' not in l])\n",
                         base=blank),
        "liar_class": prepend("masked_mean", "class Anything:\n    def __eq__(self, other):\n"
                              "        return True"),
        "float_subclass": prepend("masked_mean", "class Close(float):\n    pass"),
        "global_rebind": answer("masked_mean", "def masked_mean(values, valid_len):\n"
                                "    global want\n    want = 0.0\n    return 0.0"),
        "deleted_test": nbformat.from_dict({**honest, "cells": [
            cell for cell in honest.cells if cells.grade_id(cell) != "test_safe_ratio"]}),
        "edited_test": replace_in_cell(honest, "test_masked_mean", "assert got == 2.0",
                                       "assert True or got == 2.0"),
        "snoop": prepend("squares", snoop(root)),
        "grade_rewriter": prepend("safe_ratio", rewrite_grades(root)),
        "network": prepend("squares", phone_home(listener.port)),
        "dies_late": prepend("safe_ratio", "import os\nos._exit(3)"),
        "sigkill": prepend("masked_mean", "import os, signal\nos.kill(os.getpid(), "
                           "signal.SIGKILL)"),
        "loops_forever": prepend("safe_ratio", "while True:\n    pass"),
        "loops_in_test": answer("masked_mean", "def masked_mean(values, valid_len):\n"
                                "    while True:\n        pass"),
        "memory_bomb": prepend("safe_ratio", "hog = bytearray(8 * 2**30)"),
        "floods_output": prepend("safe_ratio", "while True:\n    print('x' * 100000)"),
    }
    for student, notebook in submissions.items():
        if student in EXPECTED:
            submit(root, student, notebook)
    submit(root, "misnamed", honest, filename=f"Copy of {NAME}.ipynb")
    (root / "submitted" / "empty" / NAME).mkdir(parents=True)
    garbled = root / "submitted" / "garbled" / NAME
    garbled.mkdir(parents=True)
    (garbled / f"{NAME}.ipynb").write_text('{"cells": [', encoding="utf-8")
    assert set(EXPECTED) == (set(submissions) | {"misnamed", "empty", "garbled"}) - (
        set() if namespace_support() else ISOLATION)

    # plain nbgrader, for the two attacks that evade the static checks
    plain = tmp_path_factory.mktemp("plain") / "course"
    shutil.copytree(root, plain, ignore=shutil.ignore_patterns("submitted"))
    for student in ("evasive_liar", "evasive_patch", "honest"):
        submit(plain, student, submissions[student])
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    done = subprocess.run([sys.executable, "-m", "nbgrader", "autograde", NAME, "--force"],
                          cwd=plain, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

    honest_bytes = (root / "submitted" / "honest" / NAME / f"{NAME}.ipynb").read_bytes()
    runs = []
    for jobs in ("2", "2", "1"):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(["--root", str(root), "grade", NAME, "--jobs", jobs,
                         "--no-progress"]) == 0
        runs.append((scores(root), out.getvalue()))
    return root, runs, honest_bytes, plain


def summary_lines(summary: str) -> dict[str, str]:
    """student -> their table row plus their lines in the flagged list."""
    lines: dict[str, str] = {}
    current = None
    for line in summary.splitlines():
        word = line.split()[0] if line.strip() else ""
        if word in EXPECTED:
            current = word
            lines[word] = lines.get(word, "") + line + "\n"
        elif line.startswith("  - ") and current:
            lines[current] += line + "\n"
    return lines


@pytest.mark.parametrize("student", EXPECTED)
def test_each_attack_and_fault_gets_its_expected_outcome(attacked, student):
    root, runs, _, _ = attacked
    score, is_flagged, text = EXPECTED[student]
    got, summary = runs[0]
    assert sum(value or 0 for value in got[student].values()) == score, (student, got[student])
    assert (student in flagged(root)) == is_flagged
    if text is not None:
        assert text in summary_lines(summary)[student], summary_lines(summary)[student]


def test_the_same_submissions_graded_three_times_get_identical_scores(attacked):
    _, runs, _, _ = attacked
    first = runs[0][0]
    assert len(first) == len(EXPECTED)
    for later, _ in runs[1:]:  # with --jobs 2 again, then with --jobs 1
        assert later == first


@pytest.mark.skipif(not namespace_support(), reason="no namespaces: paths and network stay "
                    "reachable (docs/grading.md)")
def test_nothing_hidden_was_read_nothing_was_changed_and_no_connection_was_made(attacked,
                                                                                listener):
    root, _, honest_bytes, _ = attacked
    autograded = root / "autograded"
    snooped = nbformat.read(autograded / "snoop" / NAME / f"{NAME}.ipynb", as_version=4)
    text = "".join(output.get("text", "") for cell in snooped.cells if cell.cell_type == "code"
                   for output in cell.outputs)
    for label in ("solution", "gradebook", "other student", "config"):
        line = next(line for line in text.splitlines() if line.startswith(f"SNOOP {label}:"))
        assert line.endswith(("0 bytes", "Error")), line  # an empty file, or no file at all
    rewriter = nbformat.read(autograded / "grade_rewriter" / NAME / f"{NAME}.ipynb",
                             as_version=4)
    text = "".join(output.get("text", "") for cell in rewriter.cells if cell.cell_type == "code"
                   for output in cell.outputs)
    assert "REWRITE gradebook:" in text and "REWRITE gradebook: done" not in text
    assert "REWRITE submission:" in text and "REWRITE submission: done" not in text
    assert (root / "submitted" / "honest" / NAME / f"{NAME}.ipynb").read_bytes() == honest_bytes
    caller = nbformat.read(autograded / "network" / NAME / f"{NAME}.ipynb", as_version=4)
    text = "".join(output.get("text", "") for cell in caller.cells if cell.cell_type == "code"
                   for output in cell.outputs)
    assert "NETWORK:" in text and "NETWORK: connected" not in text
    assert listener.connections == 0


def test_the_forged_records_and_blank_answers_earn_nothing(attacked):
    root, runs, _, _ = attacked
    assert set(runs[0][0]["forger"].values()) == {0}
    records = root / "autograded" / "forger" / NAME / ".course-verdicts.jsonl"
    assert not records.exists()  # the records stay in the sandbox; nothing is left behind


def test_plain_nbgrader_gives_full_marks_to_the_attacks_that_evade_the_static_checks(attacked):
    """Why verdicts are judged outside the notebook: plain nbgrader is fooled by both."""
    _, runs, _, plain = attacked
    fooled = scores(plain)
    assert sum(fooled["evasive_liar"].values()) == 100
    assert sum(fooled["evasive_patch"].values()) == 100
    assert sum(fooled["honest"].values()) == 100
    assert sum(runs[0][0]["evasive_liar"].values()) == 80
    assert sum(runs[0][0]["evasive_patch"].values()) == 70


def test_the_gradebook_holds_whole_results_only(attacked):
    """Every student has one submission with all four grades, none left half-written."""
    root, _, _, _ = attacked
    for student, grades in scores(root).items():
        assert sorted(grades) == sorted(POINTS), student
        assert all(value is not None for value in grades.values()), (student, grades)
    json.dumps(scores(root))  # plain numbers throughout
