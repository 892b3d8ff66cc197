"""What the integrity checks look for in a student's code (answer cells and added cells), by its
syntax tree with names resolved through every cell's imports: IPython and interpreter hooks,
patches, objects that lie, dynamic code, frames, the grader's recorder, and the assignment's
forbidden APIs (``policy.py``). ``integrity.py`` says why, and what it does with the findings.
"""

from __future__ import annotations

import ast
import functools

from course_lib.grading.policy import Policy, forbidden_entry
from course_lib.grading.recorder import NAME_PREFIX, RECORDER_NAME, RECORDS_MARK

__all__ = ["CodeChecker", "Scope", "parse_cell"]

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


def parse_cell(source: str) -> ast.Module | None:
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


class Scope:
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


class CodeChecker(ast.NodeVisitor):
    def __init__(self, scope: Scope, policy: Policy):
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

    def _check_path(self, path: str | None) -> None:
        if path and (path == "unittest.mock" or path.startswith("unittest.mock.")) \
                and "mock" not in self.reported:
            self.reported.add("mock")
            self.found.append(("patch", "uses unittest.mock, which can replace what the tests "
                                        "call"))
        entry = forbidden_entry(path, self.policy)
        if entry and entry not in self.reported:
            self.reported.add(entry)
            self.found.append(("forbidden-api", f"uses {entry} ({self.policy.reason})"))

    def _check_module(self, module: str, words: str) -> None:
        """Findings for a module imported (``words``: "imports" or "imports from")."""
        if module == "__main__":
            self.found.append(("interpreter-hook", f"{words} __main__, which holds the test's "
                                                   "variables"))
        if module.split(".")[0] in ("importlib", "builtins", "ctypes"):
            self.found.append(("dynamic-code", f"{words} {module}"))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._check_path(alias.name)
            self._check_module(alias.name, "imports")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module:
            for alias in node.names:
                self._check_path(f"{node.module}.{alias.name}")
                if f"{node.module}.{alias.name}" in _FRAME_ACCESS:
                    self.found.append(("interpreter-hook", f"imports {node.module}."
                                       f"{alias.name}, which reaches the test's variables"))
            self._check_module(node.module, "imports from")

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
