"""The sandbox's runner: runs a notebook's code cells one at a time in a plain IPython shell and
sends everything they print or display to the parent as JSON messages.

``supervisor.py`` starts it as ``python -I runner.py FD`` in the sandbox's working folder,
inside bubblewrap's view (``view.py``; as root where the grader is root). ``-I`` keeps the
grader's folders and environment off ``sys.path``, so this file imports only the standard
library, and IPython once the sandbox is set up.

Protocol. stdin: one JSON line of configuration (``uid``, ``gid``, ``real_root``, ``copy``,
``limits``; see ``isolation.runner_config``), then one JSON line per cell,
``{"index": i, "source": text}``. File descriptor FD: one JSON line per message, ``ready``
(``dropped``: privileges dropped), then for each cell ``start``, any
number of ``output`` (an nbformat output) and ``done`` (its ``execution_count``). Cell code
shares this process, so the parent trusts none of it beyond what it checks.

Set-up runs in this order, each step needing the one before: drop privileges, copy the
submission into the working folder (so the copies are the unprivileged uid's), set the rlimits
(after the drop, so that RLIMIT_NPROC counts), then start IPython.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys

CHUNK = 65536  # the longest stream text in one message
FLUSH_AT = 8192  # characters a stream holds before it sends without a newline


class Channel:
    """The private pipe to the parent: one JSON line per message."""

    def __init__(self, stream):
        self.stream = stream

    def send(self, kind: str, **fields) -> None:
        self.stream.write(json.dumps({"type": kind, **fields}) + "\n")


def copy_in(copy: dict | None) -> None:
    """Copy the submission's files (``copy["source"]``, read-only in the view) into the working
    folder, a size-limited tmpfs, leaving out the names bound there already
    (``copy["skip"]``: files whose contents must outlive the run). Runs after the privileges
    are dropped, so the copies belong to the unprivileged uid."""
    if not copy:
        return
    import shutil

    for name in os.listdir(copy["source"]):
        if name in copy["skip"]:
            continue
        source, target = os.path.join(copy["source"], name), os.path.join(os.getcwd(), name)
        if os.path.isdir(source) and not os.path.islink(source):
            shutil.copytree(source, target, symlinks=True)
        else:
            shutil.copy2(source, target, follow_symlinks=False)


def drop_privileges(uid: int | None, gid: int | None, real_root: bool) -> bool:
    """Switch to ``uid``/``gid`` where this process is root, and root outside the namespace
    too (``real_root``); True if it did."""
    if uid is None or not real_root or os.getuid() != 0:
        return False
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    return True


def apply_limits(limits: list[list]) -> None:
    """Set each ``(name, soft, hard)`` rlimit on this process. Set here, not in a preexec_fn:
    the grader may start sandboxes from threads."""
    for name, soft, hard in limits:
        resource.setrlimit(getattr(resource, name), (soft, hard))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write raises OSError instead


class Stream:
    """``sys.stdout`` / ``sys.stderr`` that sends stream outputs to the parent."""

    encoding = "utf-8"

    def __init__(self, name: str, channel: Channel):
        self.name, self.channel, self.parts, self.size = name, channel, [], 0

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self.parts.append(text)
        self.size += len(text)
        if self.size > FLUSH_AT or "\n" in text:
            self.flush()
        return len(text)

    def flush(self) -> None:
        if self.parts:
            text, self.parts, self.size = "".join(self.parts), [], 0
            for begin in range(0, len(text), CHUNK):
                self.channel.send("output", output={"output_type": "stream", "name": self.name,
                                                    "text": text[begin:begin + CHUNK]})

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:  # the raw descriptors are captured too
        return 1 if self.name == "stdout" else 2

    def writable(self) -> bool:
        return True


def plain(bundle: dict) -> dict:
    """The entries of a display bundle that are JSON already (text, JSON, lists)."""
    return {key: value for key, value in bundle.items() if isinstance(value, (str, dict, list))}


def shell_class(channel: Channel) -> type:
    """IPython's InteractiveShell with results, displays and tracebacks sent to the parent."""
    from IPython.core.displayhook import DisplayHook
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell

    def flush_streams():
        sys.stdout.flush()
        sys.stderr.flush()

    class Hook(DisplayHook):
        def write_output_prompt(self):
            pass

        def write_format_data(self, format_dict, md_dict=None):
            channel.send("output", output={
                "output_type": "execute_result", "data": plain(format_dict),
                "metadata": md_dict or {}, "execution_count": self.shell.cell_count})

    class Publisher(DisplayPublisher):
        def publish(self, data, metadata=None, source=None, *, transient=None, update=False,
                    **kwargs):
            flush_streams()
            channel.send("output", output={"output_type": "display_data", "data": plain(data),
                                           "metadata": metadata or {}})

    class Shell(InteractiveShell):
        displayhook_class = Hook
        display_pub_class = Publisher
        cell_count = None  # the execution count of the cell running (IPython's moves on)

        def _showtraceback(self, etype, evalue, stb):
            flush_streams()
            channel.send("output", output={"output_type": "error", "ename": etype.__name__,
                                           "evalue": str(evalue), "traceback": list(stb)})

    return Shell


def serve(shell, channel: Channel, cells) -> None:
    """Run each cell read from ``cells`` (JSON lines), reporting start, outputs and done."""
    for line in cells:
        cell = json.loads(line)
        count = shell.cell_count = shell.execution_count
        channel.send("start", cell=cell["index"])
        shell.run_cell(cell["source"], store_history=True)
        sys.stdout.flush()
        sys.stderr.flush()
        channel.send("done", cell=cell["index"], execution_count=count)


def main(argv: list[str]) -> None:
    """``runner.py FD``: set up from the configuration line on stdin, then serve the cells."""
    channel = Channel(os.fdopen(int(argv[1]), "w", buffering=1))
    config = json.loads(sys.stdin.readline())
    dropped = drop_privileges(config["uid"], config["gid"], config["real_root"])
    copy_in(config["copy"])
    apply_limits(config["limits"])
    sys.path.insert(0, "")  # cells import the submission's own modules from the folder
    cells, sys.stdin = sys.stdin, open(os.devnull)  # noqa: SIM115 - stdin for the whole run
    shell_type = shell_class(channel)  # IPython imported before the streams are replaced
    sys.stdout, sys.stderr = Stream("stdout", channel), Stream("stderr", channel)
    from traitlets.config import Config

    settings = Config()
    settings.HistoryManager.enabled = False
    shell = shell_type.instance(colors="nocolor", config=settings)
    channel.send("ready", dropped=dropped)
    serve(shell, channel, cells)


if __name__ == "__main__":
    main(sys.argv)
