"""course_lib.grading.recorder as code: what each kind of value becomes, what the recorder
writes, and the cell that starts it in a notebook without leaving names behind."""

from __future__ import annotations

import base64
import collections
import json
import sys

import numpy as np
import pytest
import torch

from course_lib.grading import recorder
from course_lib.grading.recorder import RECORDER_NAME, RECORDS_FILE, Exporter, Recorder
from course_lib.grading.verdicts import RECORDER


def export(value):
    return Exporter().export(value)


def data_of(exported: dict, dtype: str) -> np.ndarray:
    little_endian = np.dtype(dtype).newbyteorder("<")
    return np.frombuffer(base64.b64decode(exported["data"]), dtype=little_endian)


@pytest.mark.parametrize("value, expected", [
    (None, {"py": None}), (True, {"py": True}), ("é", {"py": "é"}), (7, {"py": 7}),
    (2**70, {"int": str(2**70)}), (-(2**63), {"int": str(-(2**63))}), (0.5, {"py": 0.5}),
    (float("inf"), {"float": "inf"}), (float("nan"), {"float": "nan"}),
    ((1, [2.0, "x"]), {"tuple": [{"py": 1}, {"list": [{"py": 2.0}, {"py": "x"}]}]}),
    (ValueError("bad (2, 3)"), {"exception": "ValueError", "message": "bad (2, 3)"}),
    (collections.Counter("aab"), {"counter": [[{"py": "a"}, {"py": 2}], [{"py": "b"}, {"py": 1}]]}),
    ((x * x for x in range(3)), {"list": [{"py": 0}, {"py": 1}, {"py": 4}]}),
    (zip([1], [2], strict=True), {"list": [{"tuple": [{"py": 1}, {"py": 2}]}]}),
    ({"a": 1, 2: None}, {"dict": [[{"py": "a"}, {"py": 1}], [{"py": 2}, {"py": None}]]}),
    (frozenset({3}), {"set": [{"py": 3}]}),
    (torch.int64, {"dtype": "int64"}), (torch.Size([2, 3]), {"size": [2, 3]}),
    (torch.device("cpu"), {"device": "cpu"}), (np.float64(1.5), {"py": 1.5}),
])
def test_plain_values_become_json_data(value, expected):
    exported = export(value)
    assert exported == expected
    assert json.loads(json.dumps(exported)) == expected


def test_tensors_and_arrays_travel_as_dtype_shape_and_little_endian_bytes():
    tensor = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    exported = export(tensor)
    assert (exported["tensor"], exported["shape"]) == ("float32", [2, 3])
    assert data_of(exported, "float32").tolist() == [0, 1, 2, 3, 4, 5]
    half = export(torch.tensor([0.5, 2.0], dtype=torch.float16))
    assert half["tensor"] == "float16" and data_of(half, "float32").tolist() == [0.5, 2.0]
    parameter = export(torch.nn.Parameter(torch.ones(2)))
    assert parameter["tensor"] == "float32"
    array = export(np.array([[1, 2]], dtype=">i4"))  # big-endian in, little-endian out
    assert (array["ndarray"], array["shape"]) == (">i4", [1, 2])
    assert data_of(array, "int32").tolist() == [1, 2]


class SneakyTensor(torch.Tensor):
    pass


class Liar(float):
    def __eq__(self, other):
        return True


@pytest.mark.parametrize("value, why", [
    (torch.zeros(2).as_subclass(SneakyTensor), "a subclass of torch.Tensor: SneakyTensor"),
    (torch.zeros(2, dtype=torch.complex64), "a tensor of dtype complex64"),
    (np.array(["a"]), "an array of dtype <U1"),
    (Liar(1.0), "Liar"), (object(), "object"), ({object()}, "set"), ({(1,): 2}, "dict"),
])
def test_anything_else_is_opaque_with_a_reason(value, why):
    assert export(value) == {"opaque": why}


def test_limits_depth_items_and_bytes(monkeypatch):
    nested: list = []
    for _ in range(recorder.MAX_DEPTH + 1):
        nested = [nested]
    assert "nested too deeply" in json.dumps(export(nested))
    monkeypatch.setattr(recorder, "MAX_ITEMS", 3)
    assert export(i for i in range(3))["list"] == [{"py": 0}, {"py": 1}, {"py": 2}]
    assert export(i for i in range(4)) == {"opaque": "an iterator of more than 3 items"}
    exporter = Exporter(budget=24)  # one run's budget: the second tensor does not fit
    assert "tensor" in exporter.export(torch.zeros(4))
    assert exporter.export(torch.zeros(4)) == {"opaque": "too large to record"}


def test_torch_is_found_only_where_the_notebook_imported_it(monkeypatch):
    tensor = torch.zeros(1)
    monkeypatch.delitem(sys.modules, "torch")
    assert export(tensor) == {"opaque": "Tensor"}


def test_the_recorder_appends_one_flushed_line_per_event(tmp_path):
    path = tmp_path / "records.jsonl"
    record = Recorder(str(path))
    record.begin("t")
    record.check("t", 0, lambda: 1, lambda: 1 / 0, lambda: torch.ones(1, dtype=torch.int8))
    record.fail("t", 1)
    record.end("t")
    lines = [json.loads(line) for line in path.read_text().splitlines()]  # not closed: flushed
    assert [line["event"] for line in lines] == ["begin", "check", "fail", "end"]
    holes = lines[1]["holes"]
    assert holes[0] == {"py": 1} and holes[1] == {"error": "ZeroDivisionError"}
    assert holes[2]["tensor"] == "int8" and lines[2] == {"cell": "t", "event": "fail", "check": 1}


def test_the_recorder_cell_leaves_one_name_that_the_notebook_cannot_shadow(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    notebook = {"Exporter": None, "export": None, "json": None, "sys": None}  # a student's names
    exec(RECORDER, notebook)  # noqa: S102 (the grader's own cell)
    assert sorted(set(notebook) - {"__builtins__"}) == sorted(
        ["Exporter", "export", "json", "sys", RECORDER_NAME])
    started = notebook[RECORDER_NAME]
    assert type(started).__name__ == "Recorder" and type(started) is not Recorder  # its own copy
    started.check("t", 0, lambda: torch.arange(2))
    line = json.loads((tmp_path / RECORDS_FILE).read_text())
    assert line["holes"][0]["tensor"] == "int64"


def test_the_names_the_grader_shares_are_spelled_once():
    import ast

    from course_lib.grading.code_checks import CodeChecker, Scope
    from course_lib.grading.instrument import instrument
    from course_lib.grading.policy import Policy

    assert instrument("assert x", "t").source.startswith(f"{RECORDER_NAME}.begin('t')")
    for code in (f"{RECORDER_NAME}.check = print", f"open({RECORDS_FILE!r}, 'a')",
                 f"name = '{recorder.RECORDS_MARK}' + '.jsonl'", f"{recorder.NAME_PREFIX}_x = 1"):
        found = CodeChecker(Scope(), Policy()).run(ast.parse(code))
        assert ("patch", "names the grader's recorder") in found, code
