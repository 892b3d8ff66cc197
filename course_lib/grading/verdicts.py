"""Verdicts a submission cannot change: test asserts re-evaluated by the grader on plain data.

nbgrader decides a test cell's points inside the student's kernel: the cell passes if it raised
nothing there. Code in the same process can make that so without a correct answer (a patched
``torch.allclose``, an ``__eq__`` that is always True, an input transformer that deletes every
``assert``). ``course grade`` keeps the in-process run, but a test cell earns its points only if
the grader, in its own process, also finds every check of that cell true:

1. ``instrument`` rewrites each test cell (the trusted copy from ``source/``, never the
   student's) so that before each ``assert TEST, MESSAGE`` the values ``TEST`` needs are
   recorded: its *holes*, the smallest parts the grader cannot compute itself (names of the
   notebook such as ``got`` or ``want``, calls of notebook functions such as ``squares(3)``).
   Names of trusted modules (``torch``, ``math``, ``F``, ...) and builtins are not holes: the
   grader uses its own. ``raise AssertionError(...)`` is recorded as a failed check, and each
   cell records that it began and reached its end.
2. In the sandbox the recorder (``RECORDER``, run before the notebook) turns each hole's value
   into plain data, JSON with tensors and arrays as dtype, shape and base64 bytes, never pickle,
   and appends it to a file.
3. ``judge`` reads that file in the grader's process, rebuilds the values as fresh tensors,
   numbers and strings, and evaluates each ``TEST`` with the grader's own torch and builtins.
   A cell passes only if its checks ran in the same sequence as in the run of the solution
   notebook (none skipped, none added, the cell reached its end) and every one is true.

So a lying object reaches the grader as the plain tensor or number it converts to (or as an
opaque value that fails), a patched helper patches nothing the grader uses, and a deleted or
skipped assert is a missing record. What the recorder reports is still whatever the student's
process chose to write: code that takes over that process (beyond what the static checks of
``integrity.py`` find) can forge records. docs/grading.md gives the threat model.
"""

from __future__ import annotations

import ast
import base64
import builtins
import collections
import copy
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["RECORDER", "RECORDS_FILE", "CellPlan", "CellVerdict", "instrument", "judge",
           "pure_helpers", "read_records"]

RECORDS_FILE = ".course-verdicts.jsonl"
RECORDER_NAME = "__course_verdict__"
MAX_RECORDS_BYTES = 64 * 2**20  # a larger records file is not read: the cells it covers fail
_HOLE = "__hole{}__"

# Names a test may use that the grader resolves itself (never recorded): its own modules and
# these builtins.
TRUSTED_MODULES = {"torch", "math", "np", "numpy", "F", "nn", "statistics"}
TYPE_PREDICATES = {"isinstance", "issubclass", "callable", "hasattr"}
SAFE_BUILTINS = {name: getattr(builtins, name) for name in (
    "abs", "all", "any", "bool", "dict", "enumerate", "filter", "float", "frozenset", "int",
    "isinstance", "len", "list", "map", "max", "min", "range", "repr", "reversed", "round",
    "set", "sorted", "str", "sum", "tuple", "type", "zip", "True", "False", "None",
    "ValueError", "TypeError", "AssertionError", "Exception")}


# --- instrumenting a trusted test cell ----------------------------------------------------

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
        return ast.Name(id=_HOLE.format(len(self.holes) - 1), ctx=ast.Load())

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
            holes.holes, judged = [test], ast.Name(_HOLE.format(0), ast.Load())
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


# --- the recorder, run in the sandbox before the notebook's first cell ---------------------

RECORDER = r'''
def __course_make_recorder(path):
    import base64, json, math, sys
    handle = open(path, "a", encoding="utf-8")
    limit = [64 * 2 ** 20]
    state = {"cell": None}

    def export(value, depth=0):
        if depth > 8:
            return {"opaque": "nested too deeply"}
        kind = type(value)
        if value is None or kind in (bool, str):
            return {"py": value}
        if kind is int:
            return {"py": value} if abs(value) < 2 ** 63 else {"int": str(value)}
        if kind is float:
            return {"py": value} if math.isfinite(value) else {"float": repr(value)}
        torch = sys.modules.get("torch")
        numpy = sys.modules.get("numpy")
        if torch is not None:
            if isinstance(value, torch.Tensor):
                if kind is not torch.Tensor and kind is not torch.nn.Parameter:
                    return {"opaque": "a subclass of torch.Tensor: " + kind.__name__}
                tensor = torch.Tensor.detach(value).cpu()
                dtype = str(tensor.dtype).replace("torch.", "")
                if tensor.dtype in (torch.bfloat16, torch.float16):
                    tensor = tensor.float()
                if tensor.is_complex() or tensor.dtype not in (
                        torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32,
                        torch.int64, torch.float32, torch.float64):
                    return {"opaque": "a tensor of dtype " + dtype}
                return array(tensor.contiguous().numpy(), dtype, "tensor")
            if kind is torch.dtype:
                return {"dtype": str(value).replace("torch.", "")}
            if kind is torch.Size:
                return {"size": [int(n) for n in value]}
            if kind is torch.device:
                return {"device": str(value)}
        if numpy is not None:
            if kind is numpy.ndarray:
                if value.dtype.kind not in "biuf" or value.dtype.itemsize > 8:
                    return {"opaque": "an array of dtype " + str(value.dtype)}
                return array(numpy.ascontiguousarray(value), str(value.dtype), "ndarray")
            if isinstance(value, numpy.generic) and kind.__module__ == "numpy":
                return export(value.item(), depth + 1)
        if kind in (list, tuple):
            return {kind.__name__: [export(item, depth + 1) for item in value]}
        if isinstance(value, BaseException):
            return {"exception": kind.__name__, "message": str(value)}
        if kind.__name__ == "Counter" and kind.__module__ == "collections":
            return {"counter": [[export(key), export(count)] for key, count in value.items()]}
        if kind.__name__ in ("generator", "map", "filter", "zip", "dict_keys", "dict_values",
                             "dict_items", "range", "enumerate", "reversed"):
            items = []
            for item in value:  # what the assert would have iterated, made a list
                items.append(item)
                if len(items) > 100000:
                    return {"opaque": "an iterator of more than 100000 items"}
            return {"list": [export(item, depth + 1) for item in items]}
        if kind in (set, frozenset):
            items = list(value)
            if all(type(item) in (int, str, float, bool, tuple) for item in items):
                return {"set": [export(item, depth + 1) for item in items]}
        if kind is dict and all(type(key) in (str, int) for key in value):
            return {"dict": [[export(key), export(item, depth + 1)]
                             for key, item in value.items()]}
        return {"opaque": kind.__name__}

    def array(values, dtype, kind):
        data = values.astype(values.dtype.newbyteorder("<")).tobytes()
        limit[0] -= len(data)
        if limit[0] < 0:
            return {"opaque": "too large to record"}
        return {kind: dtype, "shape": list(values.shape),
                "data": base64.b64encode(data).decode("ascii")}

    def write(record):
        handle.write(json.dumps(record) + "\n")
        handle.flush()

    class Recorder:
        def begin(self, cell):
            write({"cell": cell, "event": "begin"})

        def end(self, cell):
            write({"cell": cell, "event": "end"})

        def fail(self, cell, index):
            write({"cell": cell, "event": "fail", "check": index})

        def check(self, cell, index, *thunks):
            holes = []
            for thunk in thunks:
                try:
                    holes.append(export(thunk()))
                except BaseException as error:  # the in-process assert meets it too
                    holes.append({"error": type(error).__name__})
            write({"cell": cell, "event": "check", "check": index, "holes": holes})

    return Recorder()


__course_verdict__ = __course_make_recorder(''' + repr(RECORDS_FILE) + r''')
del __course_make_recorder
'''


# --- judging, in the grader's process ------------------------------------------------------

class _OpaqueError(Exception):
    """A recorded value the grader cannot use (the submission's object was not plain data)."""


def _decode(value):
    import torch

    if not isinstance(value, dict) or len(value) not in (1, 2, 3):
        raise _OpaqueError("a malformed record")
    if "py" in value:
        if type(value["py"]) not in (type(None), bool, int, float, str):
            raise _OpaqueError("a malformed record")
        return value["py"]
    if "int" in value:
        return int(value["int"])
    if "float" in value:
        return float(value["float"])
    if "tensor" in value or "ndarray" in value:
        kind = "tensor" if "tensor" in value else "ndarray"
        dtype, shape = str(value[kind]), value.get("shape")
        stored = "float32" if dtype in ("bfloat16", "float16") else dtype
        if stored not in ("bool", "uint8", "int8", "int16", "int32", "int64", "float32",
                          "float64") or not isinstance(shape, list) \
                or not all(type(n) is int and n >= 0 for n in shape):
            raise _OpaqueError("a malformed array")
        data = base64.b64decode(str(value.get("data", "")), validate=True)
        array = np.frombuffer(data, dtype=np.dtype(stored).newbyteorder("<"))
        if array.size != math.prod(shape):
            raise _OpaqueError("a malformed array")
        array = array.astype(np.dtype(stored)).reshape(shape)
        if kind == "ndarray":
            return array.copy()
        tensor = torch.from_numpy(array.copy())
        return tensor.to(getattr(torch, dtype)) if stored != dtype else tensor
    if "dtype" in value:
        dtype = getattr(torch, str(value["dtype"]), None)
        if not isinstance(dtype, torch.dtype):
            raise _OpaqueError("a malformed dtype")
        return dtype
    if "size" in value:
        return torch.Size([int(n) for n in value["size"]])
    if "device" in value:
        return torch.device(str(value["device"]))
    if "list" in value:
        return [_decode(item) for item in value["list"]]
    if "tuple" in value:
        return tuple(_decode(item) for item in value["tuple"])
    if "set" in value:
        return {_decode(item) for item in value["set"]}
    if "dict" in value:
        return {_decode(key): _decode(item) for key, item in value["dict"]}
    if "exception" in value:
        name = str(value["exception"])
        kind = getattr(builtins, name, None)
        if not (isinstance(kind, type) and issubclass(kind, BaseException)):
            kind = type(name, (Exception,), {})  # the submission's own class, by name
        return kind(str(value.get("message", "")))
    if "counter" in value:
        return collections.Counter({_decode(key): _decode(count) for key, count in
                                    value["counter"]})
    if "error" in value:
        raise _OpaqueError(f"computing it raised {value['error']}")
    if "opaque" in value:
        raise _OpaqueError(f"it was not plain data ({value['opaque']})")
    raise _OpaqueError("a malformed record")


def _namespace() -> dict:
    import torch
    from torch import nn
    from torch.nn import functional

    # The full builtins: the expression is the course's own test, and every value is plain
    # data (torch's Python functions also import lazily through them).
    return {"__builtins__": builtins.__dict__, "torch": torch, "math": math, "np": np,
            "numpy": np, "F": functional, "nn": nn, "statistics": statistics}


def _evaluate(check: Check, holes: list, base: dict) -> tuple[bool, str]:
    """(passed, why not) for one recorded check, in a copy of the namespace ``base``."""
    if len(holes) != check.holes:
        return False, "the record does not match the check"
    namespace = dict(base)
    try:
        for index, raw in enumerate(holes):
            namespace[_HOLE.format(index)] = _decode(raw)
    except (_OpaqueError, ValueError, TypeError, OverflowError) as error:
        return False, f"a value this check uses could not be checked: {error}"
    try:  # every value here is plain data the grader rebuilt: bool() cannot be lied to
        passed = bool(eval(check.expression, namespace))  # noqa: S307 (trusted source)
    except Exception as error:  # a check that raises on these values fails
        return False, f"{type(error).__name__}: {error}"
    return passed, "" if passed else "the check is false"


@dataclass
class CellVerdict:
    """The grader's verdict on one test cell."""

    cell: str
    passed: bool
    reason: str = ""  # for a failed cell: which check, and why
    checks: int = 0  # checks evaluated


def read_records(path: Path) -> list[dict]:
    """The records a run wrote, in order; malformed lines and anything past the size cap are
    dropped (the cells they belong to then fail)."""
    path = Path(path)
    if not path.is_file() or path.is_symlink():
        return []
    records, size = [], 0
    with open(path, "rb") as handle:
        for line in handle:
            size += len(line)
            if size > MAX_RECORDS_BYTES:
                break
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("cell"), str):
                records.append(record)
    return records


def _sequence(records: list[dict], cell: str) -> list[tuple[str, object]]:
    return [(record.get("event"), record.get("check")) for record in records
            if record["cell"] == cell]


def judge(plan: CellPlan, records: list[dict], reference: list[dict]) -> CellVerdict:
    """Judge one test cell from the records of the student's run against the sequence of
    checks the solution's run recorded (``reference``)."""
    expected = _sequence(reference, plan.cell)
    mine = [record for record in records if record["cell"] == plan.cell]
    base = _namespace()
    for helper in plan.helpers.values():  # the instructors' source, defined in the grader
        exec(helper, base)  # noqa: S102
    got = [(record.get("event"), record.get("check")) for record in mine]
    evaluated = 0
    for position, record in enumerate(mine):
        if position >= len(expected) or got[position] != expected[position]:
            break
        event = record.get("event")
        if event == "fail":
            check = plan.checks.get(record.get("check"))
            return CellVerdict(plan.cell, False, f"check {record.get('check')} (line "
                               f"{check.line if check else '?'}) failed", evaluated)
        if event == "check":
            check = plan.checks.get(record.get("check"))
            holes = record.get("holes")
            if check is None or not isinstance(holes, list):
                return CellVerdict(plan.cell, False, "a record names no known check", evaluated)
            passed, why = _evaluate(check, holes, base)
            evaluated += 1
            if not passed:
                return CellVerdict(plan.cell, False, f"check {check.index} (line {check.line}) "
                                   f"failed when the grader evaluated it: {why}", evaluated)
    if got != expected:
        if not got:
            return CellVerdict(plan.cell, False, "the test did not run", evaluated)
        if got[-1][0] != "end" and len(got) < len(expected):
            return CellVerdict(plan.cell, False, f"the test stopped after {evaluated} of "
                               f"{sum(event == 'check' for event, _ in expected)} checks",
                               evaluated)
        return CellVerdict(plan.cell, False, "the test's checks did not run as in the "
                           "solution's run (skipped, repeated or reordered)", evaluated)
    return CellVerdict(plan.cell, True, "", evaluated)
