"""Instrumenting a trusted test cell: before each ``assert TEST``, record the values ``TEST``
needs from the notebook (its *holes*), so that the grader can evaluate ``TEST`` itself.

``instrument(source, cell)`` rewrites one test cell (the instructors' copy, never the
student's). A hole is the smallest part of a test the grader cannot compute on its own: a name
of the notebook (``got``, ``want``) or a call of notebook code (``squares(3)``). Names of trusted
modules (``torch``, ``math``, ``F``, ...), safe builtins and pure helpers of the read-only cells
(``pure_helpers``) are not holes: the grader uses its own. Each hole becomes a ``lambda`` passed
to the recorder (``recorder.py``), which runs in the notebook and writes its value as plain
data; ``verdicts.judge`` evaluates the rest. ``verdicts.py`` gives the whole scheme.
"""

from __future__ import annotations

import ast
import builtins
import copy
from dataclasses import dataclass, field

from course_lib.grading.recorder import RECORDER_NAME

__all__ = ["HOLE", "SAFE_BUILTINS", "TRUSTED_MODULES", "CellPlan", "Check", "instrument",
           "pure_helpers"]

HOLE = "__hole{}__"  # the placeholder name of hole N in the expression the grader evaluates


# Names a test may use that the grader resolves itself (never recorded): its own modules and
# these builtins.
TRUSTED_MODULES = {"torch", "math", "np", "numpy", "F", "nn", "statistics"}
TYPE_PREDICATES = {"isinstance", "issubclass", "callable", "hasattr"}
SAFE_BUILTINS = {name: getattr(builtins, name) for name in (
    "abs", "all", "any", "bool", "dict", "enumerate", "filter", "float", "frozenset", "int",
    "isinstance", "len", "list", "map", "max", "min", "range", "repr", "reversed", "round",
    "set", "sorted", "str", "sum", "tuple", "type", "zip", "True", "False", "None",
    "ValueError", "TypeError", "AssertionError", "Exception")}



class _LiftError(Exception):
    """A subexpression must become a hole, but uses a name bound inside the test expression."""


def _root_name(node: ast.expr) -> str | None:
    """``a`` for ``a``, ``a.b``, ``a.b(x)``, ``a(x).c[0]``: the name a chain of attributes,
    calls and subscripts starts from; None if it starts from anything else."""
    while isinstance(node, ast.Attribute | ast.Subscript | ast.Call):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def _bound_by(generators: list[ast.comprehension]) -> set[str]:
    return {name.id for gen in generators for name in ast.walk(gen.target)
            if isinstance(name, ast.Name)}


class _Holes:
    """Splits one assert's test expression into holes (recorded) and the rest (judged)."""

    def __init__(self, helpers: frozenset[str] = frozenset()):
        self.holes: list[ast.expr] = []
        self.trusted = TRUSTED_MODULES | set(SAFE_BUILTINS) | helpers

    def hole(self, node: ast.expr, bound: set[str]) -> ast.expr:
        if isinstance(node, ast.GeneratorExp):  # not data: record what consumes it instead
            raise _LiftError
        if any(isinstance(sub, ast.Name) and sub.id in bound for sub in ast.walk(node)):
            raise _LiftError
        self.holes.append(node)
        return ast.Name(id=HOLE.format(len(self.holes) - 1), ctx=ast.Load())

    def visit(self, node: ast.expr, bound: set[str]) -> ast.expr:
        """A copy of ``node`` with its holes replaced by placeholder names; ``node`` itself is
        left as it is (it may still become a hole whole)."""
        if isinstance(node, ast.Name):
            trusted = node.id in self.trusted or node.id in bound
            return node if trusted else self.hole(node, bound)
        root = _root_name(node)
        untrusted = root is not None and root not in self.trusted and root not in bound
        if isinstance(node, ast.Attribute | ast.Subscript | ast.Call) and untrusted:
            # the whole chain from a notebook name is one hole: got.shape, squares(3),
            # d2l.PositionalEncoding(8).P[0], block.eval()(X) ((got - want).abs() is not: the
            # grader calls .abs() on the values it rebuilt)
            return self.hole(node, bound)
        if isinstance(node, (ast.Lambda, ast.NamedExpr, ast.Await, ast.Yield, ast.YieldFrom)):
            return self.hole(node, bound)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in TYPE_PREDICATES and node.func.id not in bound:
            # about the submission's own types and objects: recorded as the answer (a bool)
            return self.hole(node, bound)
        mark = len(self.holes)
        try:
            if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
                return self._comprehension(copy.deepcopy(node), bound)
            return self._children(copy.deepcopy(node), bound)
        except _LiftError:  # a part needs a name bound inside: record this whole node, if it can be
            del self.holes[mark:]
            return self.hole(node, bound)

    def _children(self, node: ast.AST, bound: set[str]) -> ast.AST:
        for name, value in ast.iter_fields(node):
            if isinstance(value, ast.expr):
                setattr(node, name, self.visit(value, bound))
            elif isinstance(value, list):
                setattr(node, name, [self.visit(item, bound) if isinstance(item, ast.expr)
                                     else self._children(item, bound)
                                     if isinstance(item, ast.keyword) else item
                                     for item in value])
        return node

    def _comprehension(self, node, bound: set[str]) -> ast.expr:
        inner = bound | _bound_by(node.generators)
        for index, gen in enumerate(node.generators):
            gen.iter = self.visit(gen.iter, inner if index else bound)  # first: outer scope
            gen.ifs = [self.visit(test, inner) for test in gen.ifs]
        if isinstance(node, ast.DictComp):
            node.key, node.value = self.visit(node.key, inner), self.visit(node.value, inner)
        else:
            node.elt = self.visit(node.elt, inner)
        return node


@dataclass
class Check:
    """One assert of a test cell: the expression the grader evaluates, and its holes."""

    index: int
    line: int
    expression: str  # the test with holes as __holeN__ names
    holes: int
    opaque: bool  # the whole test is one hole: the grader only sees its truth value


@dataclass
class CellPlan:
    """A test cell as sent to the sandbox, and the checks the grader evaluates."""

    cell: str
    source: str  # instrumented
    checks: dict[int, Check] = field(default_factory=dict)
    helpers: dict[str, str] = field(default_factory=dict)  # pure helpers the grader defines too


class _Instrument(ast.NodeTransformer):
    def __init__(self, cell: str, helpers: frozenset[str]):
        self.cell, self.checks, self.helpers = cell, {}, helpers

    def _call(self, method: str, *args: ast.expr) -> ast.stmt:
        return ast.Expr(ast.Call(
            func=ast.Attribute(ast.Name(RECORDER_NAME, ast.Load()), method, ast.Load()),
            args=[ast.Constant(self.cell), *args], keywords=[]))

    def visit_Assert(self, node: ast.Assert):
        index = len(self.checks)
        holes = _Holes(self.helpers)
        test = ast.parse(ast.unparse(node.test), mode="eval").body  # a private copy
        try:
            judged = holes.visit(test, set())
        except _LiftError:  # cannot happen at the top (nothing is bound there); be safe
            holes.holes, judged = [test], ast.Name(HOLE.format(0), ast.Load())
        opaque = isinstance(judged, ast.Name) and judged.id.startswith("__hole")
        self.checks[index] = Check(index, node.lineno, ast.unparse(judged), len(holes.holes),
                                   opaque)
        thunks = [ast.Lambda(ast.arguments([], [], None, [], [], None, []), hole)
                  for hole in holes.holes]
        record = self._call("check", ast.Constant(index), *thunks)
        return [record, node]

    def visit_Raise(self, node: ast.Raise):
        exc = node.exc
        name = exc.func if isinstance(exc, ast.Call) else exc
        if isinstance(name, ast.Name) and name.id == "AssertionError":
            index = len(self.checks)
            self.checks[index] = Check(index, node.lineno, "False", 0, False)
            return [self._call("fail", ast.Constant(index)), node]
        return node


def pure_helpers(sources: list[str]) -> dict[str, str]:
    """name -> source of each top-level function in ``sources`` (the read-only cells) that the
    grader can run itself on plain data: it uses only its parameters, its own variables, the
    trusted modules, builtins and other such helpers, and calls none of its parameters (so it
    never runs the submission's code). ``close(actual, expected)`` is one; a helper that calls
    ``fn(*args)`` is not."""
    candidates: dict[str, ast.FunctionDef] = {}
    texts: dict[str, str] = {}
    for source in sources:
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and not node.decorator_list:
                candidates[node.name] = node
                texts[node.name] = ast.unparse(node)
    pure = set(candidates)
    changed = True
    while changed:  # drop helpers that use anything untrusted, until nothing changes
        changed = False
        for name in sorted(pure):
            node = candidates[name]
            arguments = node.args
            params = {arg.arg for arg in [*arguments.posonlyargs, *arguments.args,
                                          *arguments.kwonlyargs]}
            params |= {arg.arg for arg in (arguments.vararg, arguments.kwarg) if arg}
            stored = {sub.id for sub in ast.walk(node) if isinstance(sub, ast.Name)
                      and isinstance(sub.ctx, ast.Store)}
            loaded = {sub.id for sub in ast.walk(node) if isinstance(sub, ast.Name)
                      and isinstance(sub.ctx, ast.Load)}
            calls_param = any(isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name)
                              and sub.func.id in params for sub in ast.walk(node))
            scoped = any(isinstance(sub, ast.Global | ast.Nonlocal | ast.Lambda
                                    | ast.FunctionDef | ast.ClassDef)
                         for sub in ast.walk(node) if sub is not node)
            allowed = params | stored | TRUSTED_MODULES | set(SAFE_BUILTINS) | pure
            if calls_param or scoped or not loaded <= allowed:
                pure.discard(name)
                changed = True
    return {name: texts[name] for name in sorted(pure)}


def instrument(source: str, cell: str, helpers: dict[str, str] | None = None) -> CellPlan:
    """The test cell ``source`` (trusted) with its checks recorded; ValueError if it does not
    parse as Python (a test cell must not use IPython syntax). ``helpers``: pure helpers of the
    read-only cells (``pure_helpers``), which the grader evaluates itself."""
    try:
        tree = ast.parse(source)
    except SyntaxError as error:
        raise ValueError(f"test cell {cell} is not plain Python (line {error.lineno}: "
                         f"{error.msg}); its checks cannot be judged outside the notebook") \
            from error
    helpers = dict(helpers or {})
    transformer = _Instrument(cell, frozenset(helpers))
    tree = transformer.visit(tree)
    begin, end = transformer._call("begin"), transformer._call("end")
    tree.body = [begin, *tree.body, end]
    ast.fix_missing_locations(tree)
    return CellPlan(cell, ast.unparse(tree), transformer.checks, helpers)
