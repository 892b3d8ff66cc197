"""The grading sandbox: a notebook runs in a fresh folder, under limits, and faults come back as
data with the outputs of the cells that completed before them."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import pytest

from course_lib.grading import sandbox
from course_lib.grading.sandbox import FAULT_KINDS, Limits, namespace_support, run_notebook

FAST = Limits(cell_timeout=8, notebook_timeout=20, memory_bytes=2**30, cpu_seconds=20,
              max_output_bytes=64 * 2**10)
NAMESPACES = pytest.mark.skipif(not namespace_support(), reason="no net/pid/mount namespaces "
                                "here (not Linux, or not root and user namespaces are disabled)")


def notebook(*sources: str) -> nbformat.NotebookNode:
    """A notebook of code cells, with one markdown cell first (so indices are not trivial)."""
    node = nbformat.v4.new_notebook()
    node.cells = [nbformat.v4.new_markdown_cell("# Homework")]
    node.cells += [nbformat.v4.new_code_cell(source) for source in sources]
    return node


def text(cell) -> str:
    """Everything a cell printed, stdout and stderr together."""
    return "".join(output.get("text", "") for output in cell.get("outputs", []))


def test_outputs_match_a_jupyter_kernel():
    from nbclient import NotebookClient

    node = notebook("print('hello'); x = 6 * 7\nx",
                    "import sys; print('warn', file=sys.stderr)",
                    "from IPython.display import display, Markdown; display(Markdown('**b**'))",
                    "[i * i for i in range(4)]", "1 / 0", "print(x + 1)")
    result = run_notebook(node, limits=FAST)
    reference = nbformat.from_dict(nbformat.v4.new_notebook(cells=[c.copy() for c in node.cells]))
    NotebookClient(reference, timeout=60, kernel_name="python3", allow_errors=True).execute()

    assert result.fault is None
    assert result.executed == [1, 2, 3, 4, 5, 6]
    for ours, theirs in zip(result.notebook.cells[1:], reference.cells[1:], strict=True):
        assert ours.execution_count == theirs.execution_count
        assert [o.output_type for o in ours.outputs] == [o.output_type for o in theirs.outputs]
        for mine, real in zip(ours.outputs, theirs.outputs, strict=True):
            if mine.output_type == "stream":
                assert (mine.name, mine.text) == (real.name, real.text)
            elif mine.output_type == "error":
                assert (mine.ename, mine.evalue) == (real.ename, real.evalue)
            else:
                assert mine.data["text/plain"] == real.data["text/plain"]
    nbformat.validate(result.notebook)


def test_fresh_folder_holds_only_the_submission_and_no_grader_environment(tmp_path, monkeypatch):
    submission = tmp_path / "submitted" / "alice" / "hw1"
    submission.mkdir(parents=True)
    (submission / "data.txt").write_text("alice's data")
    monkeypatch.setenv("COURSE_GRADEBOOK", str(tmp_path / "gradebook.db"))
    node = notebook("import os, json, tempfile\n"
                    "print(json.dumps({'cwd': os.getcwd(), 'files': sorted(os.listdir('.')),\n"
                    "  'data': open('data.txt').read(), 'env': dict(os.environ),\n"
                    "  'tmp': tempfile.gettempdir()}))")
    result = run_notebook(node, files=submission, limits=FAST)

    assert result.fault is None
    import json

    seen = json.loads(text(result.notebook.cells[1]))
    cwd = Path(seen["cwd"])
    assert seen["files"] == [".home", ".tmp", "data.txt"]
    assert seen["data"] == "alice's data"
    assert not cwd.is_relative_to(tmp_path) and not cwd.exists()  # removed after the run
    assert seen["env"]["HOME"] == str(cwd / ".home") and seen["tmp"] == str(cwd / ".tmp")
    assert "COURSE_GRADEBOOK" not in seen["env"]
    assert not any(str(tmp_path) in value for value in seen["env"].values())
    assert seen["env"]["PATH"].split(":")[0] == str(Path(sys.executable).parent)


@pytest.fixture
def world_readable():
    """A folder everyone may read (pytest's own are 0700, which would hide it by themselves)."""
    folder = Path(tempfile.mkdtemp(prefix="sandbox-test-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


@NAMESPACES
def test_the_view_holds_only_what_is_allowed(world_readable):
    """The allow-list: a folder of this machine that nobody hid is not there either; the
    Python environment is, read-only; a hidden path inside an allowed folder is covered."""
    secret = world_readable / "solutions.txt"
    secret.write_text("answer = 42")
    secret.chmod(0o644)
    venv_file = Path(sys.prefix) / "pyvenv.cfg"
    node = notebook(f"print(repr(open({str(secret)!r}).read()))",
                    f"print(len(open({str(venv_file)!r}).read()) > 0)",
                    f"open({str(venv_file)!r}, 'a').write('x')")
    result = run_notebook(node, limits=FAST)
    assert result.paths_hidden and result.fault is None
    assert result.notebook.cells[1].outputs[0].ename == "FileNotFoundError"
    assert text(result.notebook.cells[2]) == "True\n"
    assert result.notebook.cells[3].outputs[0].evalue.startswith(("[Errno 13]", "[Errno 30]"))
    covered = run_notebook(node, limits=FAST, hidden_paths=[venv_file])
    assert covered.notebook.cells[2].outputs[0].ename == "PermissionError"  # /dev/null, nodev


@NAMESPACES
def test_an_editable_install_does_not_open_its_repository():
    """course_lib is installed in editable mode from this checkout: a submission imports it,
    and finds nothing else of the repository (solutions/, tests/, the gradebook)."""
    import course_lib

    repository = Path(course_lib.__file__).resolve().parents[1]
    probe = ("import os, pathlib, course_lib\n"
             "repo = pathlib.Path(course_lib.__file__).resolve().parents[1]\n"
             "print(sorted(os.listdir(repo)))\n"
             "print(sorted(os.listdir('/')))\n"
             f"print(os.path.exists({str(repository / 'solutions')!r}), "
             f"os.path.exists({str(repository / 'tests' / 'conftest.py')!r}))")
    result = run_notebook(notebook(probe), limits=FAST)
    assert result.fault is None, result.fault
    repo_listing, root_listing, exists, *_ = text(result.notebook.cells[1]).splitlines()
    visible = set(eval(repo_listing))
    assert visible <= {"course_lib", ".venv", "grading_policy.toml"} and "course_lib" in visible
    assert exists == "False False"
    assert not set(eval(root_listing)) & {"home", "srv", "opt", "mnt", "var", "boot"}


@NAMESPACES
def test_everything_a_run_writes_is_capped_and_the_fault_names_the_cell():
    fill = "for i in range(100):\n    open(f'part{i}.bin', 'wb').write(b'0' * 1_000_000)"
    result = run_notebook(notebook("print('ok')", fill, "print('unreached')"),
                          limits=Limits(max_disk_bytes=16 * 2**20, cell_timeout=20,
                                        notebook_timeout=40))
    assert result.fault.kind == "disk" and result.fault.cell == 2
    assert "16 MiB" in result.fault.message
    assert result.executed == [1] and text(result.notebook.cells[1]) == "ok\n"


@NAMESPACES
def test_no_network_not_even_to_the_graders_localhost():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        node = notebook("import socket\n"
                        f"socket.create_connection(('127.0.0.1', {port}), timeout=3)")
        result = run_notebook(node, limits=FAST)
    assert result.network_isolated
    error = result.notebook.cells[1].outputs[0]
    assert error.output_type == "error" and error.ename in {"OSError", "ConnectionRefusedError"}


def test_infinite_loop_is_a_timeout_and_keeps_earlier_outputs():
    limits = Limits(cell_timeout=1.5, notebook_timeout=20)
    start = time.monotonic()
    result = run_notebook(notebook("print('before')", "while True:\n    pass", "print('after')"),
                          limits=limits)
    assert time.monotonic() - start < 8
    assert result.fault.kind == "timeout" and result.fault.cell == 2
    assert "cell time limit of 1.5 s" in result.fault.message
    assert text(result.notebook.cells[1]) == "before\n" and result.executed == [1]
    unreached = result.notebook.cells[3]
    assert unreached.outputs == [] and unreached.execution_count is None


def test_notebook_time_limit_covers_all_cells():
    result = run_notebook(notebook(*["import time; time.sleep(0.7)"] * 8),
                          limits=Limits(cell_timeout=5, notebook_timeout=3))
    assert result.fault.kind == "timeout" and "notebook time limit" in result.fault.message
    assert 1 <= len(result.executed) < 8


def test_cpu_time_limit_ends_a_busy_cell():
    result = run_notebook(notebook("while True:\n    pass"),
                          limits=Limits(cpu_seconds=1, cell_timeout=15, notebook_timeout=20))
    assert result.fault.kind == "timeout" and "CPU time limit" in result.fault.message


def test_memory_bomb_is_a_memory_fault():
    limits = Limits(memory_bytes=512 * 2**20, cell_timeout=8, notebook_timeout=20)
    result = run_notebook(notebook("small = [0] * 10\nprint(len(small))",
                                   "hog = bytearray(2**30)", "print('unreached')"), limits=limits)
    assert result.fault.kind == "memory" and result.fault.cell == 2
    assert "512 MiB" in result.fault.message
    assert text(result.notebook.cells[1]) == "10\n" and result.executed == [1]


@pytest.mark.parametrize("flood", ["while True:\n    print('x' * 999)",
                                   "import os\nwhile True:\n    os.write(1, b'y' * 4096)"])
def test_printing_gigabytes_stops_at_the_output_cap(flood):
    cap = 20_000
    result = run_notebook(notebook("print('ok')", flood),
                          limits=Limits(max_output_bytes=cap, cell_timeout=8, notebook_timeout=20))
    assert result.fault.kind == "output_limit" and result.fault.cell == 2
    stored = sum(len(text(cell).encode()) for cell in result.notebook.cells)
    assert stored == result.output_bytes <= cap
    assert text(result.notebook.cells[2])  # what came before the cap is kept


def test_fork_bomb_is_bounded():
    uid = 61_234  # its own uid: RLIMIT_NPROC counts every process of the uid on the machine
    cell = ("import os, time\nborn = 0\ntry:\n    for _ in range(300):\n"
            "        if os.fork() == 0:\n            time.sleep(60)\n            os._exit(0)\n"
            "        born += 1\nexcept OSError as error:\n    print(type(error).__name__)\n"
            "print(born)")
    result = run_notebook(notebook(cell), uid=uid,
                          limits=Limits(max_processes=16, cell_timeout=8, notebook_timeout=20))
    if not result.privileges_dropped:
        pytest.skip("RLIMIT_NPROC is only enforced for a non-root uid; the sandbox dropped none "
                    "(not root, or no namespaces): processes are bounded by time limits only")
    lines = text(result.notebook.cells[1]).split()
    assert lines[0] == "BlockingIOError" and int(lines[1]) < 16
    time.sleep(0.2)
    survivors = [pid for pid in os.listdir("/proc") if pid.isdigit()
                 and _owner(pid) == uid]
    assert survivors == []  # the PID namespace died with the run, sleepers included


def _owner(pid: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except FileNotFoundError:
        return None


@pytest.mark.parametrize("death", ["import os; os._exit(3)",
                                   "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
def test_process_death_is_a_crash_with_the_cell(death):
    result = run_notebook(notebook("print(1)", death, "print(3)"), limits=FAST)
    assert result.fault.kind == "crashed" and result.fault.cell == 2
    assert ("status 3" in result.fault.message) or ("SIGKILL" in result.fault.message)
    assert text(result.notebook.cells[1]) == "1\n" and result.executed == [1]


def test_oversized_files_raise_in_the_cell_instead_of_killing():
    cell = "with open('big.bin', 'wb') as f:\n    f.write(b'0' * 2_000_000)"
    result = run_notebook(notebook(cell, "print('still here')"),
                          limits=Limits(max_file_bytes=1_000_000, cell_timeout=8))
    assert result.fault is None
    assert result.notebook.cells[1].outputs[0].ename == "OSError"  # EFBIG
    assert text(result.notebook.cells[2]) == "still here\n"


def test_unreadable_notebooks_are_a_fault_not_an_exception(tmp_path):
    broken = tmp_path / "hw1.ipynb"
    broken.write_text('{"cells": [')
    result = run_notebook(broken)
    assert result.fault.kind == "invalid_notebook" and "hw1.ipynb" in result.fault.message
    missing = run_notebook(tmp_path / "absent.ipynb")
    assert missing.fault.kind == "invalid_notebook" and "no notebook" in missing.fault.message
    assert set(missing.fault.as_dict()) == {"kind", "cell", "message"}
    assert {result.fault.kind, missing.fault.kind} <= set(FAULT_KINDS)


def test_a_path_runs_like_a_node_and_named_files_come_back(tmp_path):
    path = tmp_path / "hw1.ipynb"
    nbformat.write(notebook("40 + 2", "open('answer.txt', 'w').write('42')",
                            "open('other.txt', 'w').write('?')"), path)
    (tmp_path / "answer.txt").write_text("brought along")  # replaced by an empty file
    result = run_notebook(path, files=[path, tmp_path / "answer.txt"], limits=FAST,
                          collect=["answer.txt", "absent.txt"])
    assert result.fault is None
    assert result.notebook.cells[1].outputs[0].data["text/plain"] == "42"
    assert result.files == {"answer.txt": b"42", "absent.txt": b""}
    with pytest.raises(ValueError, match="must exist"):
        run_notebook(path, files=[tmp_path / "absent.csv"])


def test_without_namespaces_limits_still_hold_and_the_result_says_what_is_missing(monkeypatch):
    monkeypatch.setattr(sandbox, "namespace_support", lambda: ())
    result = run_notebook(notebook("import os; print(os.getcwd() != '/')", "while True:\n    pass"),
                          limits=Limits(cell_timeout=1.5, notebook_timeout=20))
    assert (result.network_isolated, result.paths_hidden, result.privileges_dropped) == (
        False, False, False)
    assert text(result.notebook.cells[1]) == "True\n"
    assert result.fault.kind == "timeout" and result.fault.cell == 2


def test_forged_protocol_messages_cannot_break_the_grader():
    forge = ("import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, {message!r})\n"
             "    except OSError:\n        pass")
    fake = b'{"type": "start", "cell": 99}\n{"type": "done", "execution_count": "x"}\n'
    result = run_notebook(notebook("print(1)", forge.format(message=fake), "print(3)",
                                   forge.format(message=b"garbage\n"), "print(5)"), limits=FAST)
    assert text(result.notebook.cells[1]) == "1\n"
    assert all(cell.get("execution_count") is None or isinstance(cell.execution_count, int)
               for cell in result.notebook.cells)
    assert result.fault.kind == "killed" and "corrupted" in result.fault.message
    assert result.notebook.cells[5].outputs == []


def test_ci_runs_the_sandbox_with_its_view():
    """Where the isolation tests would skip, CI fails instead: bootstrap.py installs
    bubblewrap there, so a missing view is a broken set-up, not a machine without one."""
    if not os.environ.get("CI"):
        pytest.skip("outside CI the isolation tests skip where bubblewrap is missing")
    assert namespace_support(), sandbox.missing_isolation()
