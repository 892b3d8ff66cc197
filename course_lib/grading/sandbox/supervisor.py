"""The parent's side of a sandboxed run: start the runner, feed it the code cells, read what
comes back, enforce the time and output limits, and turn the way the run ended into a Fault.

``Supervisor`` is driven by events, one method each: a pipe became readable (``on_readable``),
raw output on fd 1/2 (``on_raw_output``), protocol bytes (``on_protocol``) and the messages they
hold (``on_ready``, ``on_start``, ``on_output``, ``on_done``), a pipe closed (``on_eof``), a
deadline passed (``wait_time``). A handler that must stop the run raises ``_Stop`` with the
fault. Messages are checked against what was sent: cell code shares the runner's process and
can forge them.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import time
from pathlib import Path

import nbformat

from course_lib.grading.sandbox.limits import Fault, Limits

__all__ = ["Capture", "Supervisor", "describe_exit", "kill"]

CHUNK = 65536  # bytes read from a pipe at a time
DISK_FULL = "[Errno 28]"  # ENOSPC: the run's tmpfs (Limits.max_disk_bytes) is full
CORRUPTED = ("the runner's message stream was corrupted (a cell wrote to the sandbox's private "
             "pipe)")


class _Stop(Exception):  # noqa: N818 - a signal to end the run, not an error
    """Ends the run with ``fault``."""

    def __init__(self, fault: Fault):
        super().__init__(fault.message)
        self.fault = fault


class Capture:
    """Outputs read from the runner, stored until ``cap`` bytes and no further."""

    def __init__(self, node: nbformat.NotebookNode, cap: int):
        self.node, self.cap, self.stored, self.seen = node, cap, 0, 0
        self.cell: int | None = None  # the cell running now
        self.orphan = ""  # raw output written outside any cell (start-up errors), last 2000

    def count(self, size: int) -> bool:
        """Count ``size`` bytes read; False once the total passes the cap."""
        self.seen += size
        return self.seen <= self.cap

    def add(self, output: dict, cell: int | None = None) -> None:
        """Store one output in the running cell, trimmed to what the cap leaves."""
        cell = self.cell if cell is None else cell
        if cell is None:
            self.orphan = (self.orphan + str(output.get("text", "")))[-2000:]
            return
        room = self.cap - self.stored
        if output.get("output_type") == "stream":
            text = str(output.get("text", ""))[:room]
            self.stored += len(text.encode())
            outputs = self.node.cells[cell].outputs
            if outputs and outputs[-1].get("output_type") == "stream" \
                    and outputs[-1].get("name") == output.get("name"):
                outputs[-1]["text"] += text
                return
            output = {**output, "text": text}
        else:
            size = len(json.dumps(output).encode())
            if size > room:
                return
            self.stored += size
        with contextlib.suppress(Exception):  # a malformed output is dropped, never trusted
            self.node.cells[cell].outputs.append(nbformat.from_dict(output))


class Supervisor:
    """One run of the runner over ``node``'s code cells, from start to the fault (or none)."""

    def __init__(self, node: nbformat.NotebookNode, limits: Limits, start: float):
        for cell in node.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        self.node, self.limits, self.start = node, limits, start
        self.capture = Capture(node, limits.max_output_bytes)
        self.pending = [index for index, cell in enumerate(node.cells)
                        if cell.cell_type == "code"]
        self.executed: list[int] = []  # cells that completed
        self.dropped = False  # as the runner reported it
        self.sent: int | None = None  # the cell last sent to the runner
        self.last_cell: int | None = None  # the cell that last started
        self.cell_started = start
        self.ready = self.finished = False
        self.partial = b""  # protocol bytes after the last whole line
        self.flood = Fault("output_limit", None, f"output limit of {limits.max_output_bytes} "
                                                 "bytes reached; the run was stopped")
        self.process: subprocess.Popen | None = None
        self.protocol = -1  # the read end of the private pipe
        self.streams: dict[int, str] = {}  # the runner's stdout and stderr: fd -> name

    def run(self, command, cwd: Path, env: dict[str, str], config: dict) -> Fault | None:
        """Start the runner (``command(fd)``: its command line, given the private pipe's
        write end) with ``config``, serve every cell, end it; the fault or None."""
        self.protocol, protocol_write = os.pipe()
        try:
            self.process = subprocess.Popen(
                command(protocol_write), cwd=cwd,
                env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, pass_fds=(protocol_write,), start_new_session=True)
        except BaseException:
            os.close(self.protocol)
            raise
        finally:
            os.close(protocol_write)
        self.streams = {self.process.stdout.fileno(): "stdout",
                        self.process.stderr.fileno(): "stderr"}
        selector = selectors.DefaultSelector()
        try:
            for fd in (self.protocol, *self.streams):
                os.set_blocking(fd, False)
                selector.register(fd, selectors.EVENT_READ)
            self.send(config)
            while selector.get_map() and not self.finished:
                for key, _ in selector.select(self.wait_time()):
                    self.on_readable(key.fd, selector)
            self.drain()
        except _Stop as stop:
            return stop.fault
        finally:
            selector.close()
            kill(self.process)
            os.close(self.protocol)
        return self.ending()

    def send(self, payload: dict) -> bool:
        try:
            self.process.stdin.write((json.dumps(payload) + "\n").encode())
            self.process.stdin.flush()
            return True
        except (BrokenPipeError, OSError):
            return False

    def next_cell(self) -> None:
        """Send the next code cell, or close the runner's stdin when there is none."""
        if self.pending:
            self.sent = self.pending.pop(0)
            self.send({"index": self.sent, "source": self.node.cells[self.sent].source})
        else:
            self.process.stdin.close()

    def wait_time(self) -> float:
        """Seconds to wait for the next event; _Stop once a time limit has passed."""
        now, cell = time.monotonic(), self.capture.cell
        if now - self.start > self.limits.notebook_timeout:
            raise _Stop(Fault("timeout", cell, "notebook time limit of "
                                               f"{self.limits.notebook_timeout:g} s reached"))
        if cell is not None and now - self.cell_started > self.limits.cell_timeout:
            raise _Stop(Fault("timeout", cell,
                              f"cell time limit of {self.limits.cell_timeout:g} s reached"))
        deadline = self.start + self.limits.notebook_timeout
        if cell is not None:
            deadline = min(deadline, self.cell_started + self.limits.cell_timeout)
        return max(0.0, min(1.0, deadline - now))

    def on_readable(self, fd: int, selector: selectors.BaseSelector) -> None:
        try:
            chunk = os.read(fd, CHUNK)
        except BlockingIOError:
            return
        if not chunk:
            selector.unregister(fd)
            self.on_eof(fd)
        elif fd == self.protocol:
            self.on_protocol(chunk)
        else:
            self.on_raw_output(fd, chunk)

    def on_eof(self, fd: int) -> None:
        # all cells done: stray children holding stdout must not keep us waiting
        if fd == self.protocol and not self.pending and self.capture.cell is None:
            self.finished = True

    def on_raw_output(self, fd: int, chunk: bytes) -> None:
        """Bytes written to fd 1/2 directly (os.write, subprocesses): the running cell's."""
        flooded = not self.capture.count(len(chunk))  # counted as read, stored up to the cap
        cell = self.capture.cell if self.capture.cell is not None else self.last_cell
        self.capture.add({"output_type": "stream", "name": self.streams[fd],
                          "text": chunk.decode("utf-8", "replace")}, cell)
        if flooded:
            raise _Stop(Fault("output_limit", self.capture.cell, self.flood.message))

    def on_protocol(self, chunk: bytes) -> None:
        """Bytes of the private pipe: each whole line is one message."""
        flooded = not self.capture.count(len(chunk))
        *lines, self.partial = (self.partial + chunk).split(b"\n")
        for line in lines:
            try:
                message = json.loads(line)
                kind = message["type"]
            except (ValueError, KeyError, TypeError) as error:
                raise _Stop(Fault("killed", self.capture.cell, CORRUPTED)) from error
            handler = {"ready": self.on_ready, "start": self.on_start, "output": self.on_output,
                       "done": self.on_done}.get(kind) if isinstance(kind, str) else None
            if handler is not None:
                handler(message)
        if flooded or len(self.partial) > self.capture.cap + CHUNK:
            raise _Stop(Fault("output_limit", self.capture.cell, self.flood.message))

    def on_ready(self, message: dict) -> None:
        if not self.ready:
            self.ready = True
            self.dropped = message.get("dropped", False)
            self.next_cell()

    def on_start(self, message: dict) -> None:
        if self.sent is not None and self.capture.cell is None:
            self.capture.cell = self.last_cell = self.sent
            self.cell_started = time.monotonic()

    def on_output(self, message: dict) -> None:
        output = message.get("output")
        if not isinstance(output, dict):
            return
        self.capture.add(output)
        if output.get("output_type") == "error" and output.get("ename") == "MemoryError":
            raise _Stop(Fault("memory", self.capture.cell, "out of memory (limit "
                              f"{self.limits.memory_bytes / 2**20:.0f} MiB)"))
        if output.get("output_type") == "error" and DISK_FULL in str(output.get("evalue")):
            raise _Stop(Fault("disk", self.capture.cell, "disk limit reached: everything a "
                              f"run writes is capped at {self.limits.max_disk_bytes / 2**20:.0f}"
                              " MiB"))

    def on_done(self, message: dict) -> None:
        if self.capture.cell is None:
            return
        count = message.get("execution_count")
        self.node.cells[self.capture.cell].execution_count = \
            count if isinstance(count, int) else None
        self.executed.append(self.capture.cell)
        self.capture.cell = None
        self.next_cell()

    def drain(self) -> None:
        """What the last cell wrote to fd 1/2 is already in the pipes: store it."""
        for fd, name in self.streams.items():
            while self.capture.seen < self.capture.cap:
                try:
                    chunk = os.read(fd, CHUNK)
                except (BlockingIOError, OSError):
                    break
                if not chunk:
                    break
                self.capture.count(len(chunk))
                self.capture.add({"output_type": "stream", "name": name,
                                  "text": chunk.decode("utf-8", "replace")}, self.last_cell)

    def ending(self) -> Fault | None:
        """The fault of a runner that ended with cells left to run (after ``kill``)."""
        if not self.pending and self.capture.cell is None:
            return None
        kind, message = describe_exit(self.process.returncode, self.limits)
        if self.capture.orphan:
            message += "; it wrote: " + self.capture.orphan[-1000:].strip()
        return Fault(kind, self.capture.cell, message)


def describe_exit(status: int | None, limits: Limits) -> tuple[str, str]:
    """Fault kind and message for a runner that ended while a cell ran."""
    if status is None:
        return "crashed", "the runner stopped answering"
    signum = -status if status < 0 else status - 128 if status > 128 else 0
    if signum == signal.SIGXCPU:
        return "timeout", f"CPU time limit of {limits.cpu_seconds} s reached"
    if signum:
        name = signal.Signals(signum).name if signum in signal.Signals._value2member_map_ \
            else f"signal {signum}"
        return "crashed", (f"the notebook's process died of {name} (a segfault, the kernel's OOM "
                           "killer, or os.kill in a cell)")
    return "crashed", (f"the notebook's process exited with status {status} (sys.exit or "
                       "os._exit in a cell?)")


def kill(process: subprocess.Popen) -> None:
    """End the runner and everything it started (process group; the PID namespace dies too)."""
    if process.poll() is None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=0.2 if process.stdin.closed else 0)
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    for stream in (process.stdout, process.stderr):
        with contextlib.suppress(OSError):
            stream.close()
    with contextlib.suppress(OSError):
        process.stdin.close()
