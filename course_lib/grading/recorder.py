"""The verdict recorder: runs inside the sandboxed notebook and writes each check's values as
plain data, for the grader to judge outside (``verdicts.py`` gives the whole scheme).

An instrumented test cell (``instrument.py``) calls ``__course_verdict__.begin(cell)``, then
``check(cell, index, *thunks)`` before each assert (one thunk per value the assert needs), or
``fail(cell, index)`` before a ``raise AssertionError``, and ``end(cell)``. Each call appends one
JSON line to ``RECORDS_FILE`` in the notebook's working folder. Values become JSON: numbers,
strings, lists, dicts, dtypes, and tensors or arrays as dtype, shape and base64 bytes; never
pickle. Anything else is written as ``{"opaque": why}`` and fails every check that uses it.

This file is sent to the notebook as text (``verdicts.RECORDER``) and runs there in a private
namespace, before the notebook's first cell: it imports only the standard library, and finds
``torch`` and ``numpy`` in ``sys.modules`` when a value needs them (the notebook imported them
if it made such a value). The grader imports the names below from here, so that the notebook's
and the grader's spelling of them cannot drift apart.
"""

from __future__ import annotations

import base64
import json
import math
import sys

# Names the grader and the notebook share; integrity.py flags student code that uses them.
NAME_PREFIX = "__course"  # every name the grader puts into the notebook's namespace
RECORDER_NAME = f"{NAME_PREFIX}_verdict__"  # the Recorder instance the instrumented cells call
RECORDS_MARK = "course-verdicts"  # the records file's name without its dot and suffix
RECORDS_FILE = f".{RECORDS_MARK}.jsonl"

MAX_ARRAY_BYTES = 64 * 2**20  # tensor and array data of one run; past it values are opaque
MAX_ITEMS = 100_000  # items taken from an iterator before it counts as opaque
MAX_DEPTH = 8  # nesting of lists, tuples and dicts
_RECORDED_DTYPES = ("bool", "uint8", "int8", "int16", "int32", "int64", "float32", "float64")
_ITERATORS = ("generator", "map", "filter", "zip", "dict_keys", "dict_values", "dict_items",
              "range", "enumerate", "reversed")


class Exporter:
    """Turns one value into plain JSON data, within a budget of array bytes for the run."""

    def __init__(self, budget: int = MAX_ARRAY_BYTES):
        self.budget = budget  # bytes of tensor and array data still allowed

    def export(self, value, depth: int = 0) -> dict:
        """``value`` as a one-key dict (two or three for arrays) the grader can rebuild."""
        if depth > MAX_DEPTH:
            return {"opaque": "nested too deeply"}
        kind = type(value)
        if value is None or kind in (bool, str):
            return {"py": value}
        if kind is int:
            return {"py": value} if abs(value) < 2**63 else {"int": str(value)}
        if kind is float:
            return {"py": value} if math.isfinite(value) else {"float": repr(value)}
        for convert in (self._torch, self._numpy, self._container):
            exported = convert(value, kind, depth)
            if exported is not None:
                return exported
        return {"opaque": kind.__name__}

    def _torch(self, value, kind, depth):
        torch = sys.modules.get("torch")
        if torch is None:
            return None
        if isinstance(value, torch.Tensor):
            if kind is not torch.Tensor and kind is not torch.nn.Parameter:
                return {"opaque": "a subclass of torch.Tensor: " + kind.__name__}
            tensor = torch.Tensor.detach(value).cpu()
            dtype = str(tensor.dtype).replace("torch.", "")
            if tensor.dtype in (torch.bfloat16, torch.float16):
                tensor = tensor.float()
            stored = str(tensor.dtype).replace("torch.", "")
            if tensor.is_complex() or stored not in _RECORDED_DTYPES:
                return {"opaque": "a tensor of dtype " + dtype}
            return self.array(tensor.contiguous().numpy(), dtype, "tensor")
        if kind is torch.dtype:
            return {"dtype": str(value).replace("torch.", "")}
        if kind is torch.Size:
            return {"size": [int(n) for n in value]}
        if kind is torch.device:
            return {"device": str(value)}
        return None

    def _numpy(self, value, kind, depth):
        numpy = sys.modules.get("numpy")
        if numpy is None:
            return None
        if kind is numpy.ndarray:
            if value.dtype.kind not in "biuf" or value.dtype.itemsize > 8:
                return {"opaque": "an array of dtype " + str(value.dtype)}
            return self.array(numpy.ascontiguousarray(value), str(value.dtype), "ndarray")
        if isinstance(value, numpy.generic) and kind.__module__ == "numpy":
            return self.export(value.item(), depth + 1)
        return None

    def _container(self, value, kind, depth):
        if kind in (list, tuple):
            return {kind.__name__: [self.export(item, depth + 1) for item in value]}
        if isinstance(value, BaseException):
            return {"exception": kind.__name__, "message": str(value)}
        if kind.__name__ == "Counter" and kind.__module__ == "collections":
            return {"counter": [[self.export(key), self.export(count)]
                                for key, count in value.items()]}
        if kind.__name__ in _ITERATORS:
            items = []
            for item in value:  # what the assert would have iterated, made a list
                items.append(item)
                if len(items) > MAX_ITEMS:
                    return {"opaque": f"an iterator of more than {MAX_ITEMS} items"}
            return {"list": [self.export(item, depth + 1) for item in items]}
        if kind in (set, frozenset):
            items = list(value)
            if all(type(item) in (int, str, float, bool, tuple) for item in items):
                return {"set": [self.export(item, depth + 1) for item in items]}
        if kind is dict and all(type(key) in (str, int) for key in value):
            return {"dict": [[self.export(key), self.export(item, depth + 1)]
                             for key, item in value.items()]}
        return None

    def array(self, values, dtype: str, kind: str) -> dict:
        """A numpy array as dtype, shape and little-endian base64 bytes, if the budget allows."""
        data = values.astype(values.dtype.newbyteorder("<")).tobytes()
        self.budget -= len(data)
        if self.budget < 0:
            return {"opaque": "too large to record"}
        return {kind: dtype, "shape": list(values.shape),
                "data": base64.b64encode(data).decode("ascii")}


class Recorder:
    """What the instrumented test cells call: one JSON line per event, appended to ``path``."""

    def __init__(self, path: str = RECORDS_FILE, exporter: Exporter | None = None):
        self._handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the run
        self._exporter = exporter or Exporter()

    def _write(self, record: dict) -> None:
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()

    def begin(self, cell: str) -> None:
        self._write({"cell": cell, "event": "begin"})

    def end(self, cell: str) -> None:
        self._write({"cell": cell, "event": "end"})

    def fail(self, cell: str, index: int) -> None:
        self._write({"cell": cell, "event": "fail", "check": index})

    def check(self, cell: str, index: int, *thunks) -> None:
        """Record the values of one assert's holes; a hole that raises is recorded as such."""
        holes = []
        for thunk in thunks:
            try:
                holes.append(self._exporter.export(thunk()))
            except BaseException as error:  # the in-process assert meets it too
                holes.append({"error": type(error).__name__})
        self._write({"cell": cell, "event": "check", "check": index, "holes": holes})
