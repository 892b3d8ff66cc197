"""course_lib.grading.sandbox.runner as code: its parts called here, and the file itself run
as the sandbox runs it, ``python -I runner.py FD``, without namespaces."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from course_lib.grading.sandbox import runner
from course_lib.grading.sandbox.isolation import RUNNER, runner_command


def messages(buffer: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_the_channel_writes_one_json_line_per_message():
    buffer = io.StringIO()
    runner.Channel(buffer).send("done", cell=3, execution_count=2)
    assert buffer.getvalue() == '{"type": "done", "cell": 3, "execution_count": 2}\n'


def test_a_stream_sends_whole_lines_large_writes_and_chunks(monkeypatch):
    monkeypatch.setattr(runner, "CHUNK", 4)
    buffer = io.StringIO()
    stream = runner.Stream("stderr", runner.Channel(buffer))
    assert stream.write("ab") == 2 and buffer.getvalue() == ""  # held until a newline
    stream.write("cdef\n")  # 7 characters: two messages of at most CHUNK
    sent = messages(buffer)
    assert [m["output"]["text"] for m in sent] == ["abcd", "ef\n"]
    assert {m["output"]["name"] for m in sent} == {"stderr"}
    assert all(m["type"] == "output" and m["output"]["output_type"] == "stream" for m in sent)
    stream.write("x" * (runner.FLUSH_AT + 1))  # no newline, but too much to hold
    assert len(messages(buffer)) > 2
    with pytest.raises(TypeError, match="must be str, not bytes"):
        stream.write(b"raw")
    assert (stream.fileno(), runner.Stream("stdout", None).fileno()) == (2, 1)
    assert not stream.isatty() and stream.writable()


def test_plain_keeps_only_what_is_json_already():
    bundle = {"text/plain": "1", "application/json": {"a": 1}, "image/png": b"\x89PNG",
              "text/html": ["<b>", "</b>"], "odd": object()}
    assert runner.plain(bundle) == {"text/plain": "1", "application/json": {"a": 1},
                                    "text/html": ["<b>", "</b>"]}


def test_copying_in_takes_every_file_but_those_bound_for_collection(tmp_path, monkeypatch):
    source, work = tmp_path / "submission", tmp_path / "work"
    (source / "data").mkdir(parents=True)
    (source / "hw1.ipynb").write_text("{}")
    (source / "data" / "pairs.tsv").write_text("a\tb\n")
    (source / ".records.jsonl").write_text("forged\n")
    work.mkdir()
    monkeypatch.chdir(work)
    runner.copy_in(None)
    assert list(work.iterdir()) == []
    runner.copy_in({"source": str(source), "skip": [".records.jsonl"]})
    assert sorted(path.name for path in work.iterdir()) == ["data", "hw1.ipynb"]
    assert (work / "data" / "pairs.tsv").read_text() == "a\tb\n"


def test_privileges_are_dropped_only_for_a_real_root_with_a_uid():
    assert runner.drop_privileges(None, None, real_root=True) is False
    assert runner.drop_privileges(65534, 65534, real_root=False) is False  # a mapped root


def run_runner(folder: Path, cells: list[str], limits=()) -> tuple[list[dict], str]:
    """Start the runner file as the sandbox does (no namespaces), send a configuration and
    ``cells``; its messages and raw stdout."""
    read, write = os.pipe()
    process = subprocess.Popen(runner_command(write), cwd=folder,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, pass_fds=(write,))
    os.close(write)
    config = {"copy": None, "uid": None, "gid": None, "real_root": False,
              "limits": [list(limit) for limit in limits]}
    lines = [config] + [{"index": index, "source": source} for index, source in enumerate(cells)]
    process.stdin.write("".join(json.dumps(line) + "\n" for line in lines).encode())
    process.stdin.close()
    with os.fdopen(read) as protocol:
        sent = [json.loads(line) for line in protocol]
    process.wait(timeout=60)
    stdout = process.stdout.read().decode()
    process.stdout.close()
    process.stderr.close()
    return sent, stdout


def test_the_file_runs_with_python_isolated_and_speaks_the_protocol(tmp_path):
    assert runner_command(5) == [sys.executable, "-I", str(RUNNER), "5"]
    (tmp_path / "helper.py").write_text("VALUE = 41\n")
    cells = ["import sys, resource\nprint(sys.flags.isolated, resource.getrlimit("
             "resource.RLIMIT_NOFILE))", "from helper import VALUE\nVALUE + 1", "1 / 0",
             "import os\nwritten = os.write(1, b'raw\\n')",
             "from IPython.display import display, Markdown; display(Markdown('**b**'))"]
    sent, stdout = run_runner(tmp_path, cells, limits=[("RLIMIT_NOFILE", 200, 200)])
    assert sent[0] == {"type": "ready", "dropped": False}
    assert [m["type"] for m in sent[1:4]] == ["start", "output", "done"]
    assert sent[2]["output"]["text"] == "1 (200, 200)\n"  # -I, and the limits it was given
    outputs = {m["cell"]: [] for m in sent if m["type"] == "start"}
    current = None
    for message in sent[1:]:
        if message["type"] == "start":
            current = message["cell"]
        elif message["type"] == "output":
            outputs[current].append(message["output"])
    assert outputs[1] == [{"output_type": "execute_result", "data": {"text/plain": "42"},
                           "metadata": {}, "execution_count": 2}]  # the folder is importable
    assert outputs[2][0]["ename"] == "ZeroDivisionError"
    assert outputs[3] == [] and stdout == "raw\n"  # fd 1 itself is the parent's to read
    assert outputs[4][0]["data"]["text/markdown"] == "**b**"
    assert [m["execution_count"] for m in sent if m["type"] == "done"] == [1, 2, 3, 4, 5]
