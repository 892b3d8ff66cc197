"""Integrity checks of submissions (course_lib.grading.integrity), on the real assignments.

Each attack is the released hw4 (or hw5) notebook with the solution's answers filled in, as a
student would submit it, plus one hostile or forbidden line in an answer cell; the same
notebook without that line has no finding, so a finding is caused by the line itself.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import nbformat
import pytest

from course_lib.grading import cells
from course_lib.grading.integrity import Finding, check_notebook, check_submission
from course_lib.grading.policy import Policy, load_policy

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENTS = ["hw1_rnn_seq2seq", "hw2_bleu_decoding", "hw3_attention", "hw4_multihead",
               "hw5_transformer"]


def released(assignment: str) -> nbformat.NotebookNode:
    return nbformat.read(ROOT / "assignments" / assignment / f"{assignment}.ipynb", as_version=4)


def answered(assignment: str) -> nbformat.NotebookNode:
    """The released notebook with every answer cell holding the solution's code."""
    solution = nbformat.read(ROOT / "solutions" / assignment / f"{assignment}.ipynb",
                             as_version=4)
    answers = {cells.grade_id(c): c.source for c in solution.cells
               if c.metadata.get("nbgrader", {}).get("solution")}
    notebook = copy.deepcopy(released(assignment))
    for cell in notebook.cells:
        if cells.grade_id(cell) in answers:
            cell.source = answers[cells.grade_id(cell)]
    return notebook


def with_code(assignment: str, grade_id: str, code: str) -> nbformat.NotebookNode:
    notebook = answered(assignment)
    for cell in notebook.cells:
        if cells.grade_id(cell) == grade_id:
            cell.source += "\n\n" + code
            return notebook
    raise AssertionError(f"no cell {grade_id} in {assignment}")


def source_of(assignment: str) -> nbformat.NotebookNode:
    return nbformat.read(ROOT / "solutions" / assignment / f"{assignment}.ipynb", as_version=4)


def findings_of(notebook, assignment="hw4_multihead") -> list[Finding]:
    return check_notebook(notebook, released(assignment), load_policy(ROOT, assignment),
                          source_of(assignment))


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_solutions_and_blanks_have_no_finding(assignment):
    """No false alarm: the model answers and the untouched release pass every check."""
    assert findings_of(answered(assignment), assignment) == []
    assert findings_of(released(assignment), assignment) == []


ATTACKS = {
    # name: (code added to hw4's multihead_attention answer cell, expected kind, reason text)
    "input transformer": ("get_ipython().input_transformers_cleanup.append(lambda lines: [])",
                          "ipython-hook", "input_transformers_cleanup"),
    "ast transformer": ("ip = get_ipython()\nip.ast_transformers.append(object())",
                        "ipython-hook", "ast_transformers"),
    "pre-run event": ("get_ipython().events.register('pre_run_cell', print)",
                      "ipython-hook", "events"),
    "custom exception handler": ("get_ipython().set_custom_exc((AssertionError,), print)",
                                 "ipython-hook", "set_custom_exc"),
    "patched assert_close": ("torch.testing.assert_close = lambda *args, **kwargs: None",
                             "patch", "assigns to torch.testing"),
    "patched via setattr": ("setattr(torch.testing, 'assert_close', print)",
                            "patch", "setattr() on torch.testing"),
    "mock patch started": ("from unittest import mock as m\n"
                           "m.patch('torch.allclose', return_value=True).start()",
                           "patch", "unittest.mock"),
    "rebinding torch": ("class Fake:\n    pass\ntorch = Fake()", "patch", "rebinds 'torch'"),
    "lying __eq__": ("class Always:\n    def __eq__(self, other):\n        return True",
                     "lying-object", "defines __eq__"),
    "lying __bool__ via lambda": ("class Yes:\n    __bool__ = lambda self: True",
                                  "lying-object", "defines __bool__"),
    "tensor subclass": ("class Sneaky(torch.Tensor):\n    pass", "lying-object",
                        "subclasses torch.Tensor"),
    "dunder assigned": ("Fake = type('Fake', (), {})\nFake.__eq__ = lambda s, o: True",
                        "lying-object", "assigns __eq__"),
    "exec of hidden code": ("exec(bytes.fromhex('7072696e74283129').decode())",
                            "dynamic-code", "calls exec()"),
    "computed getattr": ("cls = getattr(nn, 'Multihead' + 'Attention')", "dynamic-code",
                         "computed attribute name"),
    "importlib": ("import importlib\nmha = importlib.import_module('torch.nn').Linear",
                  "dynamic-code", "imports importlib"),
    "settrace": ("import sys as system\nsystem.settrace(None)", "interpreter-hook",
                 "sys.settrace"),
    "sys.modules": ("import sys\nsys.modules['torch.testing'] = None", "interpreter-hook",
                    "sys.modules"),
    "builtins": ("import builtins\nbuiltins.AssertionError = Warning", "dynamic-code",
                 "imports builtins"),
    "global rebinding a hidden test's variable": ("def cheat(result):\n    global upstream\n"
                                                  "    upstream = result\n    return result",
                                                  "patch", "declares global upstream"),
    "globals()": ("globals()['expected'] = None", "interpreter-hook", "uses globals"),
    "frame access": ("import sys\nframe = sys._getframe(1)", "interpreter-hook",
                     "uses sys._getframe"),
    "inspect frames": ("from inspect import currentframe\nf = currentframe()",
                       "interpreter-hook", "inspect.currentframe"),
    "__main__": ("import __main__\n__main__.want = 1", "interpreter-hook", "imports __main__"),
    "the grader's recorder": ("__course_verdict__.check = print", "patch",
                              "names the grader's recorder"),
    "the recorder's file": ("open('.course-verdicts.jsonl', 'a').write('{}')", "patch",
                            "names the grader's recorder"),
    "torch MultiheadAttention": ("attention = nn.MultiheadAttention(8, 2, batch_first=True)",
                                 "forbidden-api", "uses torch.nn.MultiheadAttention"),
    "MultiheadAttention by its module path": (
        "from torch.nn.modules.activation import MultiheadAttention as M",
        "forbidden-api", "uses torch.nn.MultiheadAttention"),
    "the library's d2l via the tests' import": ("Answer = load_d2l().MultiHeadAttention",
                                                "forbidden-api", "uses course_lib.compat.load_d2l"),
    "the library's answer re-exported": (
        "from course_lib.models.transformer import MultiHeadAttention as M",
        "forbidden-api", "uses course_lib.attention"),
    "fused attention": ("out = F.scaled_dot_product_attention", "forbidden-api",
                        "scaled_dot_product_attention"),
    "getattr with a constant name": ("cls = getattr(torch.nn, 'MultiheadAttention')",
                                     "forbidden-api", "uses torch.nn.MultiheadAttention"),
}


@pytest.mark.parametrize("name", ATTACKS)
def test_attack_is_found_with_its_reason(name):
    code, kind, text = ATTACKS[name]
    found = findings_of(with_code("hw4_multihead", "multihead_attention", code))
    assert any(f.kind == kind and text in f.reason for f in found), found
    assert all(f.where == "multihead_attention" for f in found), found


def test_ordinary_code_and_magics_are_not_flagged():
    code = ("%timeit -n1 -r1 sum(range(3))\n"
            "class Helper(nn.Module):\n"
            "    def __init__(self):\n"
            "        super().__init__()\n"
            "        self.proj = nn.Linear(4, 4)\n"
            "    def forward(self, X):\n"
            "        return torch.relu(self.proj(X))\n"
            "class Vocabulary:\n"
            "    def __init__(self, tokens):\n        self.tokens = list(tokens)\n"
            "    def __len__(self):\n        return len(self.tokens)\n"
            "    def __getitem__(self, i):\n        return self.tokens[i]\n"
            "    def __iter__(self):\n        return iter(self.tokens)\n"
            "    def __contains__(self, token):\n        return token in self.tokens\n"
            "    def __repr__(self):\n        return f'Vocabulary({len(self)})'\n"
            "torch.manual_seed(0)\nvalues = [getattr(Helper(), 'proj')]\n"
            "with torch.no_grad():\n    total = F.softmax(torch.zeros(3), dim=-1).sum()")
    assert findings_of(with_code("hw4_multihead", "multihead_attention", code)) == []


def test_the_library_allowed_in_one_assignment_is_forbidden_in_another():
    """hw5 may build on course_lib.attention; hw4 may not, nor may hw5 use the library's
    decoder block."""
    code = "from course_lib.attention import MultiHeadAttention as M"
    assert findings_of(with_code("hw5_transformer", "decoder_block", code),
                       "hw5_transformer") == []
    found = findings_of(with_code("hw5_transformer", "decoder_block",
                                  "Block = reference.DecoderBlock"), "hw5_transformer")
    assert [f.kind for f in found] == ["forbidden-api"]
    assert "course_lib.models.transformer.DecoderBlock" in found[0].reason


def edit(notebook, grade_id, change):
    notebook = copy.deepcopy(notebook)
    for index, cell in enumerate(notebook.cells):
        if cells.grade_id(cell) == grade_id:
            change(notebook, index, cell)
            return notebook
    raise AssertionError(grade_id)


def test_structure_tampering_is_found():
    base = answered("hw4_multihead")
    tests = [c for c in base.cells if cells.is_test_cell(c)]
    first = cells.grade_id(tests[0])

    def delete(nb, i, cell):
        del nb.cells[i]

    def rewrite(nb, i, cell):
        cell.source = "assert True"

    def more_points(nb, i, cell):
        cell.metadata["nbgrader"]["points"] = 100

    def not_graded(nb, i, cell):
        cell.metadata["nbgrader"]["grade"] = False

    def duplicate(nb, i, cell):
        nb.cells.insert(i, copy.deepcopy(cell))

    def added(nb, i, cell):
        extra = copy.deepcopy(cell)
        extra.metadata["nbgrader"]["grade_id"] = "my_free_points"
        nb.cells.append(extra)

    cases = {delete: "was deleted", rewrite: "test cell was edited",
             more_points: "metadata was edited (points)", not_graded: "(grade)",
             duplicate: "appears 2 times", added: "release does not have"}
    for change, text in cases.items():
        found = findings_of(edit(base, first, change))
        assert any(f.kind == "structure" and text in f.reason for f in found), (text, found)
    kernel = copy.deepcopy(base)
    kernel.metadata["kernelspec"]["name"] = "evil"
    assert any("kernel was changed" in f.reason for f in findings_of(kernel))
    whitespace = edit(base, first, lambda nb, i, cell: setattr(cell, "source",
                                                                cell.source + "\n\n   "))
    assert findings_of(whitespace) == []  # trailing blank lines are not an edit


def test_the_instructors_version_of_a_test_cell_is_accepted():
    """Instructors try the grader on the source notebook, whose test cells hold the hidden
    tests: equal to the source's version is fine, anything else is an edit."""
    solution = nbformat.read(ROOT / "solutions" / "hw4_multihead" / "hw4_multihead.ipynb",
                             as_version=4)
    policy = load_policy(ROOT, "hw4_multihead")
    edited = check_notebook(solution, released("hw4_multihead"), policy)  # no source given
    assert edited and all("test cell was edited" in f.reason for f in edited)
    assert check_notebook(solution, released("hw4_multihead"), policy, source=solution) == []
    tampered = edit(solution, cells.grade_id([c for c in solution.cells
                                              if cells.is_test_cell(c)][0]),
                    lambda nb, i, cell: setattr(cell, "source", "assert True"))
    found = check_notebook(tampered, released("hw4_multihead"), policy, source=solution)
    assert [f.reason for f in found] == ["this test cell was edited"]


def test_unreadable_notebook_is_a_finding(tmp_path):
    broken = tmp_path / "hw4_multihead.ipynb"
    broken.write_text('{"cells": [', encoding="utf-8")
    released_path = ROOT / "assignments" / "hw4_multihead" / "hw4_multihead.ipynb"
    found = check_submission(broken, released_path)
    assert [f.kind for f in found] == ["invalid-notebook"]
    good = tmp_path / "good.ipynb"
    good.write_text(json.dumps(answered("hw4_multihead")), encoding="utf-8")
    assert check_submission(good, released_path, load_policy(ROOT, "hw4_multihead")) == []


def test_policy_file_errors_name_the_problem(tmp_path):
    assert load_policy(tmp_path, "hw4_multihead") == Policy()
    (tmp_path / "grading_policy.toml").write_text("[hw4_multihead]\nforbidden = 'torch'\n")
    with pytest.raises(ValueError, match="forbidden must be a list of dotted names"):
        load_policy(tmp_path, "hw4_multihead")
    (tmp_path / "grading_policy.toml").write_text("[hw4_multihead\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_policy(tmp_path, "hw4_multihead")
    policy = load_policy(ROOT, "hw4_multihead")
    assert "torch.nn.MultiheadAttention" in policy.forbidden and "hw4" in policy.reason


# --- through the real `course grade`, against plain `nbgrader autograde` ---------------------

HOOK = ("get_ipython().input_transformers_cleanup.append(\n"
        "    lambda lines: [line for line in lines if not line.lstrip().startswith('assert')])")
LIAR = ("class _Anything(float):\n"
        "    def __eq__(self, other):\n        return True\n"
        "    __hash__ = float.__hash__\n")


@pytest.fixture(scope="module")
def attacked_course(tmp_path_factory, repo_root):
    """The demo course with an honest student and two who neuter the tests, graded once by
    plain nbgrader (in a copy) and once by `course grade`."""
    import contextlib
    import io
    import os
    import shutil
    import subprocess
    import sys

    from test_grading_demo import NAME, make_course, replace_in_cell, submit

    from course_lib.cli import main

    root = make_course(tmp_path_factory.mktemp("attacked"), repo_root)
    assert main(["--root", str(root), "release", NAME]) == 0
    solution = nbformat.read(root / "solutions" / NAME / f"{NAME}.ipynb", as_version=4)
    blank = nbformat.read(root / "assignments" / NAME / f"{NAME}.ipynb", as_version=4)
    answers = {cells.grade_id(c): c.source for c in solution.cells
               if c.metadata.get("nbgrader", {}).get("solution")}

    def as_student(notebook):  # the release, answered with the solution's code
        notebook = copy.deepcopy(notebook)
        for cell in notebook.cells:
            if cells.grade_id(cell) in answers:
                cell.source = answers[cells.grade_id(cell)]
        return notebook

    honest = as_student(blank)
    submit(root, "honest", honest)
    # hooked: blank answers, but the first answer cell deletes every assert that follows.
    submit(root, "hooked", replace_in_cell(blank, "squares", "def squares", HOOK + "\ndef squares"))
    # liar: masked_mean returns an object equal to anything.
    submit(root, "liar", replace_in_cell(honest, "masked_mean", "def masked_mean",
                                         LIAR + "\ndef masked_mean"))
    plain = tmp_path_factory.mktemp("plain") / "course"
    shutil.copytree(root, plain)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    done = subprocess.run([sys.executable, "-m", "nbgrader", "autograde", NAME, "--force"],
                          cwd=plain, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    garbled = root / "submitted" / "garbled" / NAME  # for course grade only
    garbled.mkdir(parents=True)
    (garbled / f"{NAME}.ipynb").write_text('{"cells": [', encoding="utf-8")  # cut short
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["--root", str(root), "grade", NAME, "--no-progress"]) == 0
    return root, plain, out.getvalue()


def submission_grades(root: Path, student: str):
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{root}/gradebook.db") as gradebook:
        submission = gradebook.find_submission("hw0_demo", student)
        notebook = submission.notebooks[0]
        return (float(submission.score), bool(notebook.flagged),
                [(g.name, g.auto_score, g.manual_score, g.needs_manual_grade)
                 for g in notebook.grades],
                [c.manual_comment for c in notebook.comments])


def test_plain_nbgrader_gives_points_to_the_neutered_tests(attacked_course):
    """The attacks work against nbgrader as shipped: that is what the checks are for."""
    _, plain, _ = attacked_course
    assert submission_grades(plain, "hooked")[0] > 0  # blank answers, yet points
    assert submission_grades(plain, "liar")[0] == 100
    assert submission_grades(plain, "honest")[0] == 100


@pytest.mark.parametrize("student, reason", [
    ("hooked", "input_transformers_cleanup"), ("liar", "class _Anything defines __eq__")])
def test_course_grade_scores_attacks_zero_and_flags_them_with_the_reason(attacked_course,
                                                                         student, reason):
    root, _, summary = attacked_course
    score, flagged, grades, comments = submission_grades(root, student)
    assert score == 0 and flagged
    assert all(manual == 0 and needs for _, _, manual, needs in grades)
    assert all(reason in comment for comment in comments) and comments
    assert f"{student} is flagged for review" in summary and reason in summary


def test_course_grade_leaves_the_honest_student_alone(attacked_course):
    root, _, summary = attacked_course
    score, flagged, grades, _ = submission_grades(root, "honest")
    assert score == 100 and not flagged
    assert all(manual is None for _, _, manual, _ in grades)
    assert "honest is flagged" not in summary


def test_student_paths_are_never_imported_by_the_checker():
    """Resolving a name from student code follows attributes only: a submodule the student
    names (here one that would run a program on import) is not imported in the grader."""
    import sys

    code = "import numpy.f2py.__main__\nfrom sacrebleu import __main__ as m"
    before = set(sys.modules)
    findings_of(with_code("hw4_multihead", "multihead_attention", code))
    assert not {"numpy.f2py.__main__", "sacrebleu.__main__"} & (set(sys.modules) - before)


def test_an_unreadable_notebook_is_zero_and_flagged_and_the_batch_goes_on(attacked_course):
    root, _, summary = attacked_course
    assert "garbled is flagged for review" in summary and "not a readable notebook" in summary
    import contextlib

    from nbgrader.api import Gradebook, MissingEntry

    # nbgrader may record nothing for it (MissingEntry): no points either
    with Gradebook(f"sqlite:///{root}/gradebook.db") as gradebook, \
            contextlib.suppress(MissingEntry):
        assert float(gradebook.find_submission("hw0_demo", "garbled").score) == 0
    assert submission_grades(root, "honest")[0] == 100
