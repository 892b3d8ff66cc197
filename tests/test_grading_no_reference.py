"""course_lib.grading.no_reference: the no-reference rule while a check runs, defined once by
grading_policy.toml, and the one way all five homeworks apply it."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
import tomllib
import types
from pathlib import Path

import nbformat
import pytest
import torch

from course_lib.grading import cells
from course_lib.grading.no_reference import (
    ReferenceUsedError,
    forbid,
    forbid_references,
    forbidden_targets,
)
from course_lib.grading.policy import POLICY_FILE

ROOT = Path(__file__).resolve().parents[1]
HOMEWORKS = sorted(folder.name for folder in (ROOT / "solutions").glob("hw*")
                   if (folder / f"{folder.name}.ipynb").is_file())


def elsewhere():
    """A function defined outside the reference module, which it merely imports."""
    return "elsewhere"


@pytest.fixture
def reference(monkeypatch):
    """A loaded module ``refmod`` (and a submodule) standing for a library's reference code."""
    module = types.ModuleType("refmod")
    source = '''
def answer(x):
    return x + 1

class Model:
    def __init__(self, k=2):
        self.k = k
    def forward(self, x):
        return self.k * x
    def __call__(self, x):
        return self.forward(x)
    def __repr__(self):
        return "Model()"
    @staticmethod
    def helper():
        return "static"
    @classmethod
    def build(cls):
        return cls(3)
'''
    exec(compile(source, "refmod.py", "exec"), module.__dict__)  # noqa: S102 (test module)
    module.elsewhere = elsewhere  # a re-export: not the module's own
    submodule = types.ModuleType("refmod.fast")
    exec("def quick():\n    return 'quick'\n", submodule.__dict__)  # noqa: S102
    submodule.__dict__["quick"].__module__ = "refmod.fast"
    module.fast = submodule
    monkeypatch.setitem(sys.modules, "refmod", module)
    monkeypatch.setitem(sys.modules, "refmod.fast", submodule)
    return module


def test_a_module_entry_covers_its_own_functions_classes_and_submodules(reference):
    model = reference.Model()  # made before the block: its methods raise inside it too
    raw = {name: vars(reference.Model)[name] for name in ("helper", "build", "__init__")}
    notebook = {"answer": reference.answer, "mine": lambda: 1, "quick": reference.fast.quick}
    with forbid(["refmod"], notebook, reason="write it yourself"):
        for call in (lambda: reference.answer(1), lambda: model(1), lambda: model.forward(1),
                     reference.Model, reference.Model.helper, reference.Model.build,
                     notebook["answer"], notebook["quick"], reference.fast.quick):
            with pytest.raises(ReferenceUsedError, match="write it yourself"):
                call()
        assert repr(model) == "Model()" and reference.elsewhere() == "elsewhere"
        assert notebook["mine"]() == 1
    assert reference.answer(1) == 2 and model(2) == 4 and reference.Model.build().k == 3
    assert reference.Model.helper() == "static" and notebook["answer"] is reference.answer
    assert all(vars(reference.Model)[name] is value for name, value in raw.items())


def test_function_and_class_entries_cover_only_themselves_and_everything_is_put_back(reference):
    with pytest.raises(ZeroDivisionError), forbid(["refmod.answer"]):
        assert reference.Model().forward(2) == 4  # the class is not forbidden
        with pytest.raises(ReferenceUsedError, match="refmod.answer"):
            reference.answer(1)
        raise ZeroDivisionError  # the block ends with an error: still undone
    assert reference.answer(1) == 2
    with forbid(["refmod.Model.forward"]), pytest.raises(ReferenceUsedError,  # a method alone
                                                         match=r"refmod\.Model\.forward"):
        reference.Model()(1)
    assert reference.Model()(1) == 2
    assert forbidden_targets(["not_loaded_anywhere", "refmod.missing"]) == []
    targets = forbidden_targets(["refmod", "refmod.Model", "refmod.answer"])
    assert len(targets) == len(set(targets)) == 7  # answer, quick, 5 methods; no repeats


def test_an_inherited_method_is_shadowed_then_removed(reference):
    class Child(reference.Model):
        pass

    reference.Child = Child
    with forbid(["refmod.Child.forward"]):
        with pytest.raises(ReferenceUsedError, match="Child.forward"):
            Child().forward(1)
        assert reference.Model().forward(1) == 2  # the parent keeps its own
    assert "forward" not in vars(Child) and Child()(1) == 2


def write_policy(folder: Path, text: str) -> Path:
    (folder / POLICY_FILE).write_text(text)
    return folder


def test_the_policy_file_says_what_raises_and_why(reference, tmp_path):
    root = write_policy(tmp_path, '[hw9]\nforbidden = ["refmod.answer", "torch.layer_norm"]\n'
                                  'reason = "hw9 asks you to write it"\n[empty]\nforbidden = []\n')
    with forbid_references("hw9", {}, root=root):
        with pytest.raises(ReferenceUsedError, match="refmod.answer.*hw9 asks you to write it"):
            reference.answer(1)
        with pytest.raises(ReferenceUsedError, match="torch.layer_norm"):
            torch.layer_norm(torch.ones(2, 3), (3,))
        assert reference.Model()(1) == 2
    with pytest.raises(ValueError, match="forbids nothing for empty"):
        forbid_references("empty", root=root)
    with pytest.raises(ValueError, match="forbids nothing for hw0"):
        forbid_references("hw0", root=tmp_path / "no course here")


def course_policy() -> dict:
    return tomllib.loads((ROOT / POLICY_FILE).read_text())


def resolves(path: str) -> bool:
    """Whether a dotted path names something installed (a package that is not installed, such
    as nltk on a machine without it, cannot be called either)."""
    parts = path.split(".")
    if importlib.util.find_spec(parts[0]) is None:
        return True
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            target = getattr(target, attribute, None)
        return target is not None
    return False


def test_every_policy_entry_names_something_that_exists():
    policy = course_policy()
    assert sorted(policy) == HOMEWORKS
    stale = [f"{homework}: {entry}" for homework, table in policy.items()
             for entry in table["forbidden"] if not resolves(entry)]
    assert stale == [], "grading_policy.toml names what the library no longer has"


def test_the_course_policy_raises_where_each_homework_needs_it(d2l):
    import course_lib.attention
    import course_lib.bleu
    import course_lib.masking
    import course_lib.models.transformer as transformer
    import course_lib.positional

    with forbid_references("hw4_multihead", {}):
        for call in (lambda: torch.nn.MultiheadAttention(4, 2),
                     lambda: course_lib.positional.sinusoidal_table(4, 4),
                     lambda: torch.layer_norm(torch.ones(2, 3), (3,)),
                     lambda: d2l.PositionalEncoding(8, 0.0)):
            with pytest.raises(ReferenceUsedError, match="hw4 asks you"):
                call()
        mask = course_lib.masking.padding_mask(torch.tensor([1, 2]), 3)  # allowed in hw4
        assert mask.tolist() == [[True, False, False], [True, True, False]]
    config = transformer.TransformerConfig(5, 5, d_model=8, num_heads=2, d_ff=8, dropout=0.0)
    with forbid_references("hw5_transformer", {}):
        assert transformer.EncoderBlock(config)(torch.ones(1, 2, 8), None).shape == (1, 2, 8)
        with pytest.raises(ReferenceUsedError):
            transformer.DecoderBlock(config)
    with forbid_references("hw2_bleu_decoding", {}), pytest.raises(ReferenceUsedError):
        course_lib.bleu.corpus_bleu(["a b"], ["a b"])


def setup_cell(notebook) -> str:
    return next(cell.source for cell in notebook.cells if cells.grade_id(cell) == "setup")


@pytest.mark.parametrize("homework", HOMEWORKS)
def test_each_homework_uses_the_helper_and_pastes_no_harness(homework):
    notebook = nbformat.read(ROOT / "solutions" / homework / f"{homework}.ipynb", as_version=4)
    setup = ast.parse(setup_cell(notebook))
    imports = [node for node in setup.body if isinstance(node, ast.ImportFrom)
               and node.module == "course_lib.grading.no_reference"]
    assert [alias.name for node in imports for alias in node.names] == ["forbid_references"]
    helper = [node for node in setup.body if isinstance(node, ast.FunctionDef)
              and node.name == "no_reference_implementations"]
    assert len(helper) == 1, "the setup cell binds the helper to the homework, once"
    body = helper[0].body[1:] if isinstance(helper[0].body[0].value, ast.Constant) \
        else helper[0].body
    assert ast.unparse(ast.Module(body, [])) == (
        f"return forbid_references('{homework}', globals())")
    uses = 0
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        tree = ast.parse(cell.source)
        names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
        attributes = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
        assert not names & {"mock", "setattr", "ExitStack", "forbid", "ReferenceUsedError"}
        assert not attributes & {"contextmanager", "patch", "ExitStack"}
        assert not any(isinstance(node, ast.ClassDef) and node.name.endswith("Error")
                       for node in ast.walk(tree))
        uses += sum(isinstance(node, ast.Call) and ast.unparse(node.func)
                    == "no_reference_implementations" for node in ast.walk(tree)
                    if cells.is_test_cell(cell))
    assert uses >= 2, f"{homework}: its hidden tests run the answers under the helper"
