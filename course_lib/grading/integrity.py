"""Integrity checks of a submitted notebook: tampering and forbidden shortcuts, found statically.

nbgrader restores the source of locked and test cells from its gradebook before running a
submission, but it runs whatever else the student wrote in the same interpreter as the tests.
Code in an answer cell can therefore neuter the tests that follow (IPython input or AST
transformers, a patched ``torch.testing.assert_close``, an object whose ``__eq__`` is always
True) or call the library's implementation of the very function the assignment asks for. These
checks read the submission without running it and report each such thing as a ``Finding``
with a reason; ``course grade`` then scores the notebook as wrong (zero) and flags it for an
instructor's review (``needs_manual_grade`` in nbgrader's formgrader), who can restore points.

What is checked:
- *Structure*, against the released notebook: every graded or locked cell is still there
  (by ``grade_id``), with its nbgrader metadata and cell type unchanged; test and locked cells
  keep their source; no graded cell was added; the kernel is the released one.
- *Student code* (answer cells and cells the student added; after IPython's own transforms, so
  ``%magics`` parse), by its syntax tree with names resolved through every cell's imports:
  - IPython hooks: ``input_transformers_*``, ``ast_transformers``, ``events``, custom exception
    handlers, ``run_cell``, ...;
  - interpreter hooks: ``sys.settrace``/``setprofile``/``excepthook``/``displayhook``,
    ``sys.modules``, ``sys.meta_path``, ``builtins``;
  - patching a module's attribute (``torch.testing.assert_close = ...``, ``setattr(np, ...)``,
    ``unittest.mock``) or rebinding a name that the notebook's read-only cells imported or
    defined (``np = ...``);
  - classes that define comparison, truth or conversion methods (``__eq__``, ``__bool__``,
    ``__float__``, ``__array__``, ``__torch_function__``, ...) or subclass a tensor, an array or
    a number, and dunder methods assigned onto objects;
  - dynamic code that would hide any of the above: ``eval``, ``exec``, ``compile``,
    ``__import__``, ``importlib``, ``getattr``/``setattr`` with a computed name;
  - the assignment's forbidden APIs (``grading_policy.toml``): a dotted path matches itself and
    everything under it, whatever alias it was imported by.

What is not: static analysis cannot see every way of doing these things (data that decodes to
code, C extensions, ``ctypes``). The stronger defence is that such code gains nothing where
verdicts are computed outside the student's process; these checks are the tripwire that tells
an instructor someone tried, and they catch the honest mistake of calling the library's
answer.
"""

from __future__ import annotations

import ast
import functools
import importlib
import tomllib
import types
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbformat import NotebookNode

from course_lib.grading import cells
from course_lib.grading.recorder import NAME_PREFIX, RECORDER_NAME, RECORDS_MARK

__all__ = ["Finding", "Policy", "check_notebook", "check_submission", "load_policy"]

POLICY_FILE = "grading_policy.toml"

_NBGRADER_KEYS = ("grade", "solution", "locked", "points", "task", "grade_id")
_IPYTHON_HOOKS = {
    "input_transformers_cleanup", "input_transformers_post", "input_transformer_manager",
    "ast_transformers", "events", "set_custom_exc", "custom_exceptions", "run_cell",
    "run_cell_async", "run_ast_nodes", "run_code", "showtraceback", "_showtraceback",
    "prefilter_manager", "display_formatter", "displayhook", "register_magic_function",
    "register_magics", "InteractiveShell", "ex", "ev", "user_ns", "user_global_ns",
}
_SYS_HOOKS = {"settrace", "setprofile", "excepthook", "displayhook", "modules", "meta_path",
              "path_hooks", "audit", "addaudithook", "breakpointhook"}
# What a test compares with: equality, ordering, truth, conversion to numbers and arrays,
# arithmetic in tolerance checks, type checks. Container methods (__len__, __iter__,
# __getitem__, __contains__) are left alone: honest classes (a vocabulary) define them.
_LYING_DUNDERS = {
    "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__bool__", "__float__",
    "__int__", "__index__", "__complex__", "__abs__", "__sub__", "__rsub__", "__array__",
    "__array_ufunc__", "__array_function__", "__array_interface__", "__torch_function__",
    "__torch_dispatch__", "__instancecheck__", "__subclasscheck__", "__getattribute__",
    "__class__",
}
_SUSPECT_BASES = {"torch.Tensor", "numpy.ndarray", "float", "int", "complex", "bool", "str",
                  "list", "tuple", "dict", "set", "torch.nn.Parameter"}
_DYNAMIC_CALLS = {"eval", "exec", "compile", "__import__", "importlib.import_module",
                  "importlib.reload", "importlib.__import__", "builtins.eval", "builtins.exec"}
_NAME_TAKING = {"getattr", "setattr", "delattr", "hasattr"}
# Ways to reach the test's own variables (``want``) from code the test calls.
_FRAME_ACCESS = {"sys._getframe", "sys._current_frames", "inspect.currentframe", "inspect.stack",
                 "inspect.getouterframes", "inspect.trace", "gc.get_referrers",
                 "gc.get_objects", "globals"}
# The grader's recorder in the sandbox (recorder.py): not for students to touch.
_RECORDER_MARKS = (RECORDER_NAME, RECORDS_MARK)


@dataclass(frozen=True)
class Finding:
    """One integrity problem: what kind, where (a cell label), and a sentence saying what."""

    kind: str   # structure, ipython-hook, interpreter-hook, patch, lying-object, dynamic-code,
    #             forbidden-api, invalid-notebook
    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass(frozen=True)
class Policy:
    """What one assignment forbids: dotted paths (``torch.nn.MultiheadAttention``,
    ``course_lib.attention``) and the sentence a student is shown."""

    forbidden: tuple[str, ...] = ()
    reason: str = "the assignment asks you to write this yourself"


def load_policy(root: Path, assignment: str) -> Policy:
    """The assignment's entry of ``<root>/grading_policy.toml`` (an empty policy if none)."""
    path = Path(root) / POLICY_FILE
    if not path.is_file():
        return Policy()
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8")).get(assignment, {})
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path} is not valid TOML: {error}") from error
    forbidden = table.get("forbidden", [])
    if not isinstance(forbidden, list) or not all(isinstance(f, str) for f in forbidden):
        raise ValueError(f"{path}: [{assignment}] forbidden must be a list of dotted names, "
                         f"got {forbidden!r}")
    return Policy(tuple(forbidden), table.get("reason", Policy.reason))


def check_submission(submitted: Path, released: Path | NotebookNode, policy: Policy = Policy(),
                     source: Path | NotebookNode | None = None) -> list[Finding]:
    """Findings for the notebook file ``submitted`` against the released notebook (and the
    instructors' ``source`` notebook, whose test cells, hidden tests included, are accepted
    too: instructors try the grader on it). The references are files or parsed notebooks
    (parse them once when checking a whole class)."""
    try:
        notebook = nbformat.read(submitted, as_version=4)
    except Exception as error:  # noqa: BLE001 - any unreadable file is the same finding
        return [Finding("invalid-notebook", submitted.name,
                        f"not a readable notebook ({type(error).__name__}: {error})")]
    return check_notebook(notebook, _parsed(released), policy,
                          None if source is None else _parsed(source))


def _parsed(notebook: Path | NotebookNode) -> NotebookNode:
    return notebook if isinstance(notebook, dict) else nbformat.read(notebook, as_version=4)


def check_notebook(notebook: NotebookNode, released: NotebookNode, policy: Policy = Policy(),
                   source: NotebookNode | None = None) -> list[Finding]:
    """Findings for a submitted notebook against the released one (both parsed); a read-only
    cell may also equal its version in the instructors' ``source`` notebook."""
    findings = _structure(notebook, released, source)
    read_only_sources, student_sources = [], []
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        meta = cell.get("metadata", {}).get("nbgrader", {})
        is_student = bool(meta.get("solution")) or not meta.get("grade_id")
        (student_sources if is_student else read_only_sources).append(
            (cells.cell_label(cell, index), cell.source))
    scope = _Scope()
    for _, text in read_only_sources:  # the aliases and names the tests rely on
        tree = _parse(text)
        if tree is not None:
            scope.learn(tree, read_only=True)
    for cell in source.cells if source is not None else []:  # and the hidden tests' variables
        meta = cell.get("metadata", {}).get("nbgrader", {})
        tree = _parse(cell.source) if cell.cell_type == "code" and meta.get("grade_id") \
            and not meta.get("solution") else None
        if tree is not None:
            scope.test_variables |= {node.id for node in ast.walk(tree)
                                     if isinstance(node, ast.Name)
                                     and isinstance(node.ctx, ast.Store)}
    for label, source in student_sources:
        tree = _parse(source)
        if tree is None:
            continue  # a syntax error fails the student's own cell; nothing to hide here
        scope.learn(tree, read_only=False)
        findings += [Finding(kind, label, reason)
                     for kind, reason in _Checker(scope, policy).run(tree)]
    return _unique(findings)


def _unique(findings: list[Finding]) -> list[Finding]:
    return list(dict.fromkeys(findings))


def _structure(notebook: NotebookNode, released: NotebookNode,
               source: NotebookNode | None) -> list[Finding]:
    findings = []
    original = {cells.grade_id(cell): _normalise(cell.source)
                for cell in (source.cells if source is not None else []) if cells.grade_id(cell)}
    by_id: dict[str, list[NotebookNode]] = {}
    for cell in notebook.cells:
        if cells.grade_id(cell):
            by_id.setdefault(cells.grade_id(cell), []).append(cell)
    released_ids = set()
    for cell in released.cells:
        grade_id = cells.grade_id(cell)
        if not grade_id:
            continue
        released_ids.add(grade_id)
        copies = by_id.get(grade_id, [])
        if not copies:
            findings.append(Finding("structure", grade_id, "this graded or read-only cell was "
                                    "deleted (or its nbgrader metadata removed)"))
            continue
        if len(copies) > 1:
            findings.append(Finding("structure", grade_id,
                                    f"this cell appears {len(copies)} times"))
        mine = copies[0]
        theirs_meta = cell.metadata.get("nbgrader", {})
        mine_meta = mine.get("metadata", {}).get("nbgrader", {})
        changed = [key for key in _NBGRADER_KEYS if mine_meta.get(key) != theirs_meta.get(key)]
        if mine.cell_type != cell.cell_type:
            changed.append("cell type")
        if changed:
            findings.append(Finding("structure", grade_id,
                                    f"its nbgrader metadata was edited ({', '.join(changed)})"))
        read_only = cells.is_test_cell(cell) or (theirs_meta.get("locked")
                                                 and not theirs_meta.get("solution"))
        if read_only and _normalise(mine.source) not in (_normalise(cell.source),
                                                         original.get(grade_id)):
            what = "test" if cells.is_test_cell(cell) else "read-only"
            findings.append(Finding("structure", grade_id, f"this {what} cell was edited"))
    for grade_id in sorted(set(by_id) - released_ids):
        findings.append(Finding("structure", grade_id,
                                "a cell with nbgrader metadata that the release does not have"))
    kernel = notebook.metadata.get("kernelspec", {}).get("name")
    expected = released.metadata.get("kernelspec", {}).get("name")
    if kernel != expected:
        findings.append(Finding("structure", "notebook",
                                f"the kernel was changed from {expected!r} to {kernel!r}"))
    return findings


def _normalise(source: str) -> str:
    return "\n".join(line.rstrip() for line in source.strip().splitlines())


def _parse(source: str) -> ast.Module | None:
    """The cell's syntax tree after IPython's transforms (magics become plain calls)."""
    try:
        return ast.parse(_ipython_transform(source))
    except SyntaxError:
        return None


@functools.lru_cache(maxsize=4096)
def _ipython_transform(source: str) -> str:
    """IPython's rewrite of a cell to plain Python. Cached: the read-only and test cells are
    the same in every submission, and the transform is most of a parse's time."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager

        return TransformerManager().transform_cell(source)
    except Exception:  # noqa: BLE001 - fall back to the raw source
        return source


class _Scope:
    """Aliases from imports (local name -> dotted path) and the read-only cells' names."""

    def __init__(self):
        self.aliases: dict[str, str] = {}
        self.protected: set[str] = set()  # what read-only cells import or define (def, class)
        self.test_variables: set[str] = set()  # every name a read-only or test cell assigns

    def learn(self, tree: ast.Module, *, read_only: bool) -> None:
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    local = alias.asname or alias.name.split(".")[0]
                    self.aliases[local] = alias.name if alias.asname else local
                    if read_only:
                        self.protected.add(local)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:
                    local = alias.asname or alias.name
                    self.aliases[local] = f"{node.module}.{alias.name}"
                    if read_only:
                        self.protected.add(local)
        if read_only:
            self.test_variables |= {node.id for node in ast.walk(tree)
                                    if isinstance(node, ast.Name)
                                    and isinstance(node.ctx, ast.Store)}
            for node in tree.body:
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    self.protected.add(node.name)  # (variables they assign may be reused)

    def resolve(self, node: ast.AST) -> str | None:
        """The dotted path an expression names (``F.softmax`` -> ``torch.nn.functional.
        softmax``), or None when it is not a name, attribute chain or constant getattr."""
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id, node.id)
        if isinstance(node, ast.Attribute):
            base = self.resolve(node.value)
            return f"{base}.{node.attr}" if base else None
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id == "getattr" and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str)):
            base = self.resolve(node.args[0])
            return f"{base}.{node.args[1].value}" if base else None
        return None


class _Checker(ast.NodeVisitor):
    def __init__(self, scope: _Scope, policy: Policy):
        self.scope = scope
        self.policy = policy
        self.found: list[tuple[str, str]] = []
        self.reported: set[str] = set()  # forbidden entries already reported for this cell

    def run(self, tree: ast.Module) -> list[tuple[str, str]]:
        self.visit(tree)
        for node in tree.body:  # top-level rebinding of what the tests rely on
            for name in _bound_names(node):
                if name in self.scope.protected:
                    self.found.append(("patch", f"rebinds {name!r}, which the notebook's "
                                                f"read-only cells define and its tests use"))
        return self.found

    def _forbidden(self, path: str | None) -> str | None:
        """The policy entry ``path`` falls under: by name, or by the object it imports to
        (``torch.nn.modules.activation.MultiheadAttention`` is ``torch.nn.MultiheadAttention``;
        a class re-exported elsewhere still belongs to its defining module)."""
        if not path:
            return None
        for entry in self.policy.forbidden:
            if path == entry or path.startswith(entry + "."):
                return entry
        target = _lookup(path)
        if target is _MISSING:
            return None
        module = getattr(target, "__module__", None) or ""
        for entry in self.policy.forbidden:
            wanted = _lookup(entry, import_submodules=True)
            if wanted is not _MISSING and target is wanted:
                return entry
            if isinstance(wanted, types.ModuleType) and (module == entry
                                                         or module.startswith(entry + ".")):
                return entry
        return None

    def _check_path(self, path: str | None) -> None:
        if path and (path == "unittest.mock" or path.startswith("unittest.mock.")) \
                and "mock" not in self.reported:
            self.reported.add("mock")
            self.found.append(("patch", "uses unittest.mock, which can replace what the tests "
                                        "call"))
        entry = self._forbidden(path)
        if entry and entry not in self.reported:
            self.reported.add(entry)
            self.found.append(("forbidden-api", f"uses {entry} ({self.policy.reason})"))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._check_path(alias.name)
            if alias.name == "__main__":
                self.found.append(("interpreter-hook", "imports __main__, which holds the "
                                                       "test's variables"))
            if alias.name.split(".")[0] in ("importlib", "builtins", "ctypes"):
                self.found.append(("dynamic-code", f"imports {alias.name}"))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module:
            for alias in node.names:
                self._check_path(f"{node.module}.{alias.name}")
                if f"{node.module}.{alias.name}" in _FRAME_ACCESS:
                    self.found.append(("interpreter-hook", f"imports {node.module}."
                                       f"{alias.name}, which reaches the test's variables"))
            if node.module == "__main__":
                self.found.append(("interpreter-hook", "imports from __main__, which holds "
                                                       "the test's variables"))
            if node.module.split(".")[0] in ("importlib", "builtins", "ctypes"):
                self.found.append(("dynamic-code", f"imports from {node.module}"))

    def visit_Attribute(self, node: ast.Attribute) -> None:
        path = self.scope.resolve(node)
        self._check_path(path)
        if node.attr in _IPYTHON_HOOKS:
            self.found.append(("ipython-hook", f"uses IPython's {node.attr!r} hook"))
        if path and path.startswith("sys.") and path.split(".")[1] in _SYS_HOOKS:
            self.found.append(("interpreter-hook", f"uses {path}"))
        if path in _FRAME_ACCESS:
            self.found.append(("interpreter-hook", f"uses {path}, which reaches the test's "
                                                   "variables"))
        if node.attr in _LYING_DUNDERS and isinstance(node.ctx, ast.Store | ast.Del):
            self.found.append(("lying-object", f"assigns {node.attr} onto an object"))
        self.generic_visit(node)

    def _scope_statement(self, node: ast.Global | ast.Nonlocal) -> None:
        shared = sorted(set(node.names) & (self.scope.test_variables | self.scope.protected))
        if shared:
            keyword = "global" if isinstance(node, ast.Global) else "nonlocal"
            self.found.append(("patch", f"declares {keyword} {', '.join(shared)}: a variable "
                                        "the notebook's tests assign, which a function they "
                                        "call could change"))

    def visit_Global(self, node: ast.Global) -> None:
        self._scope_statement(node)

    def visit_Nonlocal(self, node: ast.Nonlocal) -> None:
        self._scope_statement(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and any(mark in node.value for mark in _RECORDER_MARKS):
            self.found.append(("patch", "names the grader's recorder"))

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in ("__builtins__", "builtins"):
            self.found.append(("interpreter-hook", f"uses {node.id}"))
        if node.id.startswith(NAME_PREFIX):
            self.found.append(("patch", "names the grader's recorder"))
        if node.id == "globals" or node.id == "__main__":
            self.found.append(("interpreter-hook", f"uses {node.id}, which reaches the test's "
                                                   "variables"))
        if isinstance(node.ctx, ast.Load):
            self._check_path(self.scope.aliases.get(node.id))

    def visit_Call(self, node: ast.Call) -> None:
        path = self.scope.resolve(node.func)
        if path in _DYNAMIC_CALLS:
            self.found.append(("dynamic-code", f"calls {path}()"))
        if isinstance(node.func, ast.Name) and node.func.id in _NAME_TAKING and node.args:
            name = node.args[1] if len(node.args) > 1 else None
            if not (isinstance(name, ast.Constant) and isinstance(name.value, str)):
                self.found.append(("dynamic-code",
                                   f"calls {node.func.id}() with a computed attribute name"))
            elif node.func.id in ("setattr", "delattr"):
                target = self.scope.resolve(node.args[0])
                modules = {path.split(".")[0] for path in self.scope.aliases.values()}
                if target and target.split(".")[0] in modules | {"sys", "builtins"}:
                    self.found.append(("patch", f"{node.func.id}() on {target}"))
                if name.value in _LYING_DUNDERS:
                    self.found.append(("lying-object", f"sets {name.value} with setattr()"))
            self._check_path(self.scope.resolve(node))
        self.generic_visit(node)

    def _check_targets(self, targets: list[ast.expr]) -> None:
        for target in targets:
            for node in ast.walk(target):
                if isinstance(node, ast.Attribute | ast.Subscript):
                    root = _root_name(node)
                    path = self.scope.resolve(node.value) if isinstance(node, ast.Attribute) \
                        else None
                    if root is not None and root in self.scope.aliases:
                        self.found.append(("patch", f"assigns to {path or root}"
                                                    + ("" if path else "[...]")))

    def visit_Assign(self, node: ast.Assign) -> None:
        self._check_targets(node.targets)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._check_targets([node.target])
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._check_targets([node.target])
        self.generic_visit(node)

    def visit_Delete(self, node: ast.Delete) -> None:
        self._check_targets(node.targets)
        self.generic_visit(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for base in node.bases:
            path = self.scope.resolve(base)
            if path in _SUSPECT_BASES:
                self.found.append(("lying-object", f"class {node.name} subclasses {path}"))
        for item in node.body:
            names = (_bound_names(item) if not isinstance(item, ast.FunctionDef
                                                          | ast.AsyncFunctionDef)
                     else {item.name})
            for name in sorted(names & _LYING_DUNDERS):
                self.found.append(("lying-object", f"class {node.name} defines {name}"))
        self.generic_visit(node)


_MISSING = object()
_TRUSTED_ROOTS = {"torch", "numpy", "course_lib", "sacrebleu", "scipy", "math", "nltk"}


@functools.lru_cache(maxsize=4096)
def _lookup(path: str, import_submodules: bool = False) -> object:
    """The object a dotted path names in the grader's process, for trusted libraries only:
    ``_MISSING`` when it cannot be found. A path from student code imports nothing but its
    top-level package and is followed by attribute access alone (importing a student-chosen
    submodule, such as some package's ``__main__``, would run it here); ``import_submodules``
    is for the policy's own entries."""
    parts = path.split(".")
    if parts[0] not in _TRUSTED_ROOTS or any(part.startswith("__") for part in parts):
        return _MISSING
    cuts = range(len(parts), 0, -1) if import_submodules else (1,)
    for cut in cuts:
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except Exception:  # noqa: BLE001 - not a module (or not installed): try shorter
            continue
        for attribute in parts[cut:]:
            target = getattr(target, attribute, _MISSING)
            if target is _MISSING:
                return _MISSING
        return target
    return _MISSING


def _root_name(node: ast.AST) -> str | None:
    while isinstance(node, ast.Attribute | ast.Subscript):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _bound_names(node: ast.stmt) -> set[str]:
    """Names a top-level statement binds in the notebook's namespace."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return {node.name}
    targets: list[ast.expr] = []
    if isinstance(node, ast.Assign):
        targets = node.targets
    elif isinstance(node, ast.AugAssign | ast.AnnAssign):
        targets = [node.target]
    elif isinstance(node, ast.Import | ast.ImportFrom):
        return {alias.asname or alias.name.split(".")[0] for alias in node.names}
    elif isinstance(node, ast.For | ast.AsyncFor | ast.With):
        targets = [node.target] if isinstance(node, ast.For | ast.AsyncFor) else [
            item.optional_vars for item in node.items if item.optional_vars is not None]
    names = set()
    for target in targets:
        names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    return names
