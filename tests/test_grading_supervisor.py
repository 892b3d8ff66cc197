"""course_lib.grading.sandbox.supervisor event by event, without a runner: each handler is fed
the messages and bytes a runner (or a cell forging them) could send."""

from __future__ import annotations

import io
import json
import signal
import time

import nbformat
import pytest

from course_lib.grading.sandbox.limits import Limits
from course_lib.grading.sandbox.supervisor import Supervisor, _Stop, describe_exit

LIMITS = Limits(cell_timeout=5, notebook_timeout=50, max_output_bytes=1000)


class FakeProcess:
    """What the supervisor uses of the runner's Popen: stdin, and a return code."""

    def __init__(self, returncode: int | None = None):
        self.stdin = io.BytesIO()
        self.returncode = returncode


def supervisor(*sources: str, limits: Limits = LIMITS) -> Supervisor:
    """A supervisor over a markdown cell and ``sources``, with a fake runner process."""
    node = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# hw")]
                                    + [nbformat.v4.new_code_cell(s) for s in sources])
    run = Supervisor(node, limits, time.monotonic())
    run.process = FakeProcess()
    run.streams = {11: "stdout", 12: "stderr"}
    return run


def line(kind: str, **fields) -> bytes:
    return (json.dumps({"type": kind, **fields}) + "\n").encode()


def sent(run: Supervisor) -> list[int]:
    """Indices of the cells sent to the runner so far."""
    return [json.loads(text)["index"] for text in run.process.stdin.getvalue().splitlines()]


def output(text: str) -> dict:
    return {"output_type": "stream", "name": "stdout", "text": text}


def test_cells_are_sent_one_at_a_time_as_the_runner_reports_them():
    run = supervisor("print(1)", "x = 2")
    run.on_protocol(line("start", cell=1) + line("done", cell=1, execution_count=7))
    assert sent(run) == [] and run.executed == []  # nothing sent yet: forged, ignored
    run.on_protocol(line("ready", dropped=True))
    assert sent(run) == [1] and run.dropped
    run.on_protocol(line("ready", dropped=False))  # only the first counts
    assert sent(run) == [1] and run.dropped
    run.on_protocol(line("start", cell=1) + line("output", output=output("1\n")))
    run.on_protocol(line("output", output="not a dict") + line("done", execution_count=1))
    assert run.node.cells[1].outputs[0].text == "1\n" and run.node.cells[1].execution_count == 1
    assert sent(run) == [1, 2] and run.executed == [1]
    run.on_protocol(line("start", cell=99))  # the cell started is the one sent, not 99
    assert run.capture.cell == 2
    run.on_protocol(line("done", execution_count="x"))
    assert run.node.cells[2].execution_count is None and run.process.stdin.closed
    run.on_protocol(line("done", execution_count=3))  # no cell running: ignored
    assert run.executed == [1, 2] and run.ending() is None


def test_a_message_split_across_reads_is_joined():
    run = supervisor("print(1)")
    message = line("ready", dropped=False)
    run.on_protocol(message[:5])
    assert not run.ready
    run.on_protocol(message[5:])
    assert run.ready and sent(run) == [1]


@pytest.mark.parametrize("garbage", [b"not json\n", b'"a string"\n', b'{"no": "type"}\n',
                                     b'[1, 2]\n'])
def test_a_corrupted_stream_stops_the_run_as_killed(garbage):
    run = supervisor("print(1)")
    run.on_protocol(line("ready") + line("start", cell=1))
    with pytest.raises(_Stop) as stop:
        run.on_protocol(garbage)
    assert (stop.value.fault.kind, stop.value.fault.cell) == ("killed", 1)
    assert "corrupted" in stop.value.fault.message


def test_unknown_or_unhashable_kinds_are_ignored():
    run = supervisor("print(1)")
    run.on_protocol(line("hello") + b'{"type": ["ready"]}\n')
    assert not run.ready


def test_memory_errors_and_floods_stop_the_run():
    run = supervisor("x = [0] * 10**12")
    run.on_protocol(line("ready") + line("start", cell=1))
    with pytest.raises(_Stop) as stop:
        run.on_protocol(line("output", output={"output_type": "error", "ename": "MemoryError",
                                               "evalue": "", "traceback": []}))
    assert stop.value.fault.kind == "memory" and "MiB" in stop.value.fault.message
    flood = supervisor("print('x' * 10**6)")
    flood.on_protocol(line("ready") + line("start", cell=1))
    with pytest.raises(_Stop) as stop:
        flood.on_protocol(line("output", output=output("x" * 2000)))
    assert (stop.value.fault.kind, stop.value.fault.cell) == ("output_limit", 1)
    assert len(flood.node.cells[1].outputs[0].text) <= LIMITS.max_output_bytes


def test_raw_output_goes_to_the_running_cell_or_the_last_one():
    run = supervisor("print(1)")
    run.on_raw_output(11, b"before any cell\n")
    assert run.capture.orphan == "before any cell\n"
    run.on_protocol(line("ready") + line("start", cell=1))
    run.on_raw_output(12, b"warn\n")
    run.on_protocol(line("done", execution_count=1))
    run.on_raw_output(12, b"late\n")  # written by the last cell, read after its done
    assert run.node.cells[1].outputs[0].name == "stderr"
    assert run.node.cells[1].outputs[0].text == "warn\nlate\n"  # one stream output
    with pytest.raises(_Stop) as stop:
        run.on_raw_output(11, b"y" * 2000)
    assert stop.value.fault.kind == "output_limit"


def test_time_limits_per_cell_and_per_notebook():
    run = supervisor("while True: pass")
    assert 0 < run.wait_time() <= 1.0
    run.on_protocol(line("ready") + line("start", cell=1))
    run.cell_started -= LIMITS.cell_timeout + 1
    with pytest.raises(_Stop) as stop:
        run.wait_time()
    assert (stop.value.fault.kind, stop.value.fault.cell) == ("timeout", 1)
    assert "cell time limit of 5 s" in stop.value.fault.message
    run.start -= LIMITS.notebook_timeout + 1
    with pytest.raises(_Stop, match="notebook time limit of 50 s"):
        run.wait_time()


def test_the_end_of_the_pipe_and_of_the_runner():
    run = supervisor("print(1)")
    run.on_eof(run.protocol)
    assert not run.finished  # a cell is still to run
    run.process.returncode = -signal.SIGKILL
    run.capture.orphan = "Traceback: boom"
    fault = run.ending()
    assert (fault.kind, fault.cell) == ("crashed", None)
    assert "SIGKILL" in fault.message and fault.message.endswith("it wrote: Traceback: boom")
    done = supervisor()
    done.on_protocol(line("ready"))  # no code cell: stdin closed at once
    done.on_eof(done.protocol)
    assert done.finished and done.ending() is None


@pytest.mark.parametrize("status, kind, words", [
    (None, "crashed", "stopped answering"), (-signal.SIGXCPU, "timeout", "CPU time limit of 9"),
    (128 + signal.SIGSEGV, "crashed", "SIGSEGV"), (3, "crashed", "exited with status 3"),
])
def test_exit_statuses_are_explained(status, kind, words):
    got_kind, message = describe_exit(status, Limits(cpu_seconds=9))
    assert got_kind == kind and words in message
