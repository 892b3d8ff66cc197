"""Verdicts a submission cannot change: test asserts re-evaluated by the grader on plain data.

nbgrader decides a test cell's points inside the student's kernel: the cell passes if it raised
nothing there. Code in the same process can make that so without a correct answer (a patched
``torch.allclose``, an ``__eq__`` that is always True, an input transformer that deletes every
``assert``). ``course grade`` keeps the in-process run, but a test cell earns its points only if
the grader, in its own process, also finds every check of that cell true:

1. ``instrument.py`` rewrites each test cell (the trusted copy from ``source/``, never the
   student's) so that before each ``assert TEST, MESSAGE`` the values ``TEST`` needs are
   recorded: its *holes*, the smallest parts the grader cannot compute itself (names of the
   notebook such as ``got`` or ``want``, calls of notebook functions such as ``squares(3)``).
   Names of trusted modules (``torch``, ``math``, ``F``, ...) and builtins are not holes: the
   grader uses its own. ``raise AssertionError(...)`` is recorded as a failed check, and each
   cell records that it began and reached its end.
2. In the sandbox the recorder (``recorder.py``, sent as the cell ``RECORDER`` that runs before
   the notebook's first) turns each hole's value into plain data, JSON with tensors and arrays
   as dtype, shape and base64 bytes, never pickle, and appends it to a file.
3. ``judge`` (this module) reads that file in the grader's process, rebuilds the values as fresh
   tensors, numbers and strings, and evaluates each ``TEST`` with the grader's own torch and
   builtins. A cell passes only if its checks ran in the same sequence as in the run of the
   solution notebook (none skipped, none added, the cell reached its end) and every one is true.

So a lying object reaches the grader as the plain tensor or number it converts to (or as an
opaque value that fails), a patched helper patches nothing the grader uses, and a deleted or
skipped assert is a missing record. What the recorder reports is still whatever the student's
process chose to write: code that takes over that process (beyond what the static checks of
``integrity.py`` find) can forge records. docs/grading.md gives the threat model.
"""

from __future__ import annotations

import base64
import builtins
import collections
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from course_lib.grading import recorder
from course_lib.grading.instrument import HOLE, CellPlan, Check
from course_lib.grading.recorder import NAME_PREFIX, RECORDER_NAME, RECORDS_FILE

__all__ = ["RECORDER", "RECORDS_FILE", "CellVerdict", "judge", "parse_records", "read_records"]

MAX_RECORDS_BYTES = 64 * 2**20  # a larger records file is not read: the cells it covers fail


def _recorder_cell() -> str:
    """The code cell that starts the recorder in the notebook: ``recorder.py``'s source, run in
    a namespace of its own (the notebook's names cannot shadow the recorder's), leaving only
    ``__course_verdict__`` in the notebook."""
    source = Path(recorder.__file__).read_text(encoding="utf-8")
    start = f"{NAME_PREFIX}_start_recorder"
    return (f"def {start}(source):\n"
            f"    namespace = {{'__name__': '{NAME_PREFIX}_recorder__'}}\n"
            "    exec(compile(source, 'recorder.py', 'exec'), namespace)\n"
            "    return namespace['Recorder'](namespace['RECORDS_FILE'])\n\n\n"
            f"{RECORDER_NAME} = {start}({source!r})\n"
            f"del {start}\n")


RECORDER = _recorder_cell()  # run in the sandbox before the notebook's first cell


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
            namespace[HOLE.format(index)] = _decode(raw)
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
    """The records a run wrote to the file ``path``, in order (see ``parse_records``)."""
    path = Path(path)
    if not path.is_file() or path.is_symlink():
        return []
    with open(path, "rb") as handle:
        return parse_records(handle.read(MAX_RECORDS_BYTES + 1))


def parse_records(data: bytes) -> list[dict]:
    """The records in ``data`` (JSON lines), in order; malformed lines and anything past the
    size cap are dropped (the cells they belong to then fail)."""
    records, size = [], 0
    for line in data.splitlines(keepends=True):
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
