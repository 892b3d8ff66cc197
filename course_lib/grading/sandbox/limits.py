"""What a sandboxed run may use (``Limits``) and what it reports: the ``Fault`` that stopped it,
if any, and the ``SandboxResult``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import nbformat

__all__ = ["FAULT_KINDS", "NOBODY", "Fault", "Limits", "SandboxResult"]

FAULT_KINDS = ("timeout", "memory", "disk", "killed", "output_limit", "crashed",
               "invalid_notebook")
NOBODY = 65534  # the uid a run switches to when the grader is root


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandboxed notebook run."""

    memory_bytes: int = 2 * 2**30  # RLIMIT_AS: address space; torch imports in ~0.7 GiB
    cpu_seconds: int = 120  # RLIMIT_CPU: SIGXCPU at this, SIGKILL a second later
    cell_timeout: float = 60.0  # wall clock per cell, seconds
    notebook_timeout: float = 300.0  # wall clock for the whole run, start-up included
    max_processes: int = 64  # RLIMIT_NPROC (enforced only for a non-root uid)
    max_output_bytes: int = 4 * 2**20  # everything the run prints or displays, all cells
    max_file_bytes: int = 64 * 2**20  # RLIMIT_FSIZE: the largest file it may write
    max_disk_bytes: int = 256 * 2**20  # all it writes: the size of its tmpfs (/tmp, its folder)
    max_open_files: int = 256  # RLIMIT_NOFILE


@dataclass
class Fault:
    """Why a sandboxed run stopped early: ``kind`` is one of FAULT_KINDS."""

    kind: str
    cell: int | None  # index in notebook.cells of the cell running, None if none was
    message: str

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class SandboxResult:
    """The executed notebook, the fault that stopped it (None if none), and what was enforced."""

    notebook: nbformat.NotebookNode
    fault: Fault | None
    network_isolated: bool
    paths_hidden: bool
    privileges_dropped: bool
    seconds: float
    output_bytes: int  # bytes of output stored in the notebook (<= max_output_bytes)
    executed: list[int] = field(default_factory=list)  # indices of the cells that completed
    files: dict[str, bytes] = field(default_factory=dict)  # each file of ``collect``, as the
    # run left it in its working folder (b"" if it wrote none)
