"""course_lib.grading.instrument, .recorder and .verdicts: which parts of an assert are
recorded, how values travel as plain data, and how the grader judges a test cell from the
records."""

from __future__ import annotations

import collections
import contextlib
import json

import numpy as np
import pytest
import torch

from course_lib.grading.instrument import instrument, pure_helpers
from course_lib.grading.verdicts import RECORDER, RECORDS_FILE, judge, read_records


def checks(source: str) -> list[str]:
    return [check.expression for check in instrument(source, "t").checks.values()]


def test_holes_are_the_notebooks_values_and_calls_not_trusted_modules():
    assert checks("assert torch.equal(got, want)") == ["torch.equal(__hole0__, __hole1__)"]
    assert checks("assert squares(3) == [0, 1, 4]") == ["__hole0__ == [0, 1, 4]"]
    assert checks("assert got.dtype == torch.bool") == ["__hole0__ == torch.bool"]
    assert checks("assert math.isclose(mean(x), 2.0)") == ["math.isclose(__hole0__, 2.0)"]
    # a method of a value the grader rebuilt runs in the grader
    assert checks("assert (got - want).abs().max() < 1e-5") == [
        "(__hole0__ - __hole1__).abs().max() < 1e-05"]
    # names bound inside the expression stay in it; the iterables are recorded
    assert checks("assert all(torch.equal(a, b) for a, b in zip(xs, ys))") == [
        "all((torch.equal(a, b) for a, b in zip(__hole0__, __hole1__)))"]
    # a notebook call on a bound name cannot be lifted out: what consumes it is recorded
    plan = instrument("assert all(f(x) == 1 for x in xs)", "t")
    assert plan.checks[0].expression == "__hole0__" and plan.checks[0].opaque
    # questions about the submission's own types are answered in its process
    assert checks("assert isinstance(model, nn.Module) and n > 0") == [
        "__hole0__ and __hole1__ > 0"]


def test_a_chain_from_a_notebook_name_is_one_hole():
    # the tensor at the end of the chain is recorded, not the object it starts from
    assert checks("assert torch.allclose(P, d2l.PositionalEncoding(8).P[0])") == [
        "torch.allclose(__hole0__, __hole1__)"]
    assert checks("assert torch.equal(block.eval()(X), want)") == [
        "torch.equal(__hole0__, __hole1__)"]


def test_pure_helpers_of_read_only_cells_run_in_the_grader():
    read_only = [
        "def close(a, b, atol=1e-5):\n    return a.shape == b.shape and "
        "bool(torch.allclose(a, b, atol=atol))\n\n"
        "def both_close(a, b):\n    return close(a, b) and close(b, a)",
        "def raises(fn, *args):\n    try:\n        fn(*args)\n    except ValueError:\n"
        "        return True\n    return False",  # calls its parameter: runs student code
        "def uses_library(x):\n    return course_lib.masking.padding_mask(x, 3)",
        "%matplotlib inline",  # not Python: skipped
    ]
    helpers = pure_helpers(read_only)
    assert sorted(helpers) == ["both_close", "close"]
    plan = instrument("assert both_close(got, want)\nassert raises(f, 1)", "t", helpers)
    assert [c.expression for c in plan.checks.values()] == [
        "both_close(__hole0__, __hole1__)", "__hole0__"]
    records = [{"cell": "t", "event": "begin"},
               {"cell": "t", "event": "check", "check": 0,
                "holes": [{"py": 1.0}, {"py": 1.0}]}]  # floats have no .shape: the check fails
    verdict = judge(plan, records, records)
    assert not verdict.passed and "AttributeError" in verdict.reason


def test_instrumented_cell_records_begin_checks_failures_and_end():
    plan = instrument("x = f()\nassert x == 1, 'one'\nif x:\n    raise AssertionError('no')\n",
                      "cell_a")
    lines = plan.source.splitlines()
    assert lines[0] == "__course_verdict__.begin('cell_a')"
    assert lines[-1] == "__course_verdict__.end('cell_a')"
    assert "__course_verdict__.check('cell_a', 0, lambda: x)" in lines
    assert "    __course_verdict__.fail('cell_a', 1)" in lines
    assert "assert x == 1, 'one'" in lines  # the original assert still runs, for feedback
    with pytest.raises(ValueError, match="not plain Python"):
        instrument("%timeit f()\nassert True", "magic")


@pytest.fixture
def recorder(tmp_path, monkeypatch):
    """The sandbox's recorder, run here in a scratch folder."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(RECORDER, namespace)  # noqa: S102 (the recorder's own source)
    return namespace["__course_verdict__"], tmp_path / RECORDS_FILE


class Liar(float):
    def __eq__(self, other):
        return True


class SneakyTensor(torch.Tensor):
    pass


def run_checks(recorder, path, source: str, values: dict, reference=None):
    """Instrument ``source``, run it with ``values`` bound and the recorder, then judge."""
    record, _ = recorder
    plan = instrument(source, "t")
    namespace = {"__course_verdict__": record, "torch": torch, "math": __import__("math"),
                 **values}
    with contextlib.suppress(Exception):  # the cell stops, as in a notebook
        exec(plan.source, namespace)  # noqa: S102 (test code)
    records = read_records(path)
    return judge(plan, records, records if reference is None else reference), records


def test_plain_values_round_trip_and_the_grader_judges_them(recorder):
    _, path = recorder
    values = {"t_float": torch.randn(2, 3), "t_bool": torch.tensor([True, False]),
              "t_long": torch.arange(4), "t_half": torch.ones(2, dtype=torch.float16),
              "array": np.arange(6.0).reshape(2, 3), "size": torch.Size([2, 3]),
              "dtype": torch.int64, "nested": {"a": [1, (2.5, "x")], 3: None},
              "counts": collections.Counter("abca"), "error": ValueError("bad shape (2, 3)"),
              "big": 2**70, "inf": float("inf")}
    source = "\n".join([
        "assert torch.equal(t_float, t_float.clone()) and t_float.dtype == torch.float32",
        "assert t_bool.dtype == torch.bool and t_bool.tolist() == [True, False]",
        "assert t_long.dtype == torch.int64 and t_long.sum() == 6",
        "assert t_half.dtype == torch.float16",
        "assert array.shape == (2, 3) and array[1, 2] == 5.0",
        "assert size == (2, 3) and dtype == torch.int64",
        "assert nested == {'a': [1, (2.5, 'x')], 3: None}",
        "assert counts == {'a': 2, 'b': 1, 'c': 1}",
        "assert isinstance(error, ValueError) and '(2, 3)' in str(error)",
        "assert big == 2**70 and inf == math.inf",
        "assert (x * 2 for x in [1, 2]) is not None",
    ])
    verdict, records = run_checks(recorder, path, source, values)
    assert verdict.passed, verdict.reason
    assert verdict.checks == 11
    assert [r["event"] for r in records] == ["begin"] + ["check"] * 11 + ["end"]
    json.dumps(records)  # plain JSON throughout


@pytest.mark.parametrize("value, why", [
    (Liar(0.0), "not plain data (Liar)"),
    (torch.zeros(2).as_subclass(SneakyTensor), "a subclass of torch.Tensor"),
    (object(), "not plain data (object)"),
])
def test_objects_that_are_not_plain_data_fail_in_the_grader(recorder, value, why):
    _, path = recorder
    # in the notebook's process the liar passes; in the grader it cannot be checked
    verdict, _ = run_checks(recorder, path, "assert got == got", {"got": value})
    assert not verdict.passed and why in verdict.reason


def test_a_patched_helper_in_the_notebook_does_not_reach_the_grader(recorder):
    _, path = recorder
    import types

    patched = types.SimpleNamespace(isclose=lambda *args, **kwargs: True)  # the notebook's math
    record, _ = recorder
    plan = instrument("got = 0.0\nassert math.isclose(got, 2.0)", "t")
    exec(plan.source, {"__course_verdict__": record, "math": patched})  # noqa: S102
    records = read_records(path)  # the assert passed in the notebook's process...
    assert [r["event"] for r in records] == ["begin", "check", "end"]
    verdict = judge(plan, records, records)  # ...the grader uses its own math
    assert not verdict.passed and "the check is false" in verdict.reason


def test_skipped_extra_and_failed_checks_fail_the_cell(recorder):
    record, path = recorder
    source = "for v in values:\n    assert v > 0\n"
    reference, _ = run_checks(recorder, path, source, {"values": [1, 2, 3]})
    assert reference.passed
    expected = read_records(path)
    path.write_text("")  # the recorder keeps its file open: empty it
    fewer, _ = run_checks(recorder, path, source, {"values": [1, 2]}, expected)
    assert not fewer.passed and "did not run as in the solution's run" in fewer.reason
    path.write_text("")  # the recorder keeps its file open: empty it
    # the cell stops at an exception: no end record
    stopped, _ = run_checks(recorder, path, "assert v > 0\nv.boom()\n", {"v": 1},
                            [{"cell": "t", "event": "begin"},
                             {"cell": "t", "event": "check", "check": 0},
                             {"cell": "t", "event": "end"}])
    assert not stopped.passed and "stopped after 1 of 1 checks" in stopped.reason
    path.write_text("")  # the recorder keeps its file open: empty it
    failed, _ = run_checks(recorder, path, "if True:\n    raise AssertionError('no')\n", {})
    assert not failed.passed and "check 0 (line 2) failed" in failed.reason


def test_forged_and_malformed_records_do_not_pass(recorder):
    record, path = recorder
    plan = instrument("assert got == 1", "t")
    reference = [{"cell": "t", "event": "begin"}, {"cell": "t", "event": "check", "check": 0},
                 {"cell": "t", "event": "end"}]
    path.write_text("not json\n" + json.dumps({"cell": "t", "event": "begin"}) + "\n"
                    + json.dumps({"cell": "t", "event": "check", "check": 0,
                                  "holes": [{"tensor": "float32", "shape": [3],
                                             "data": "AAAA"}]}) + "\n"
                    + json.dumps({"cell": "t", "event": "end"}) + "\n")
    verdict = judge(plan, read_records(path), reference)
    assert not verdict.passed and "could not be checked" in verdict.reason
    # records claiming the cell ran with no checks at all
    path.write_text(json.dumps({"cell": "t", "event": "begin"}) + "\n"
                    + json.dumps({"cell": "t", "event": "end"}) + "\n")
    assert not judge(plan, read_records(path), reference).passed
    assert not judge(plan, [], reference).passed
