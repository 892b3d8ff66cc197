"""What the first code cell of every lesson calls: seeds, threads, the device, the CI switch.

    from course_lib.lesson import setup_lesson
    lesson = setup_lesson(seed=0)
    epochs = lesson.pick(full=30, quick=2)   # the student's value, or a tiny one for CI
    model.to(lesson.device)                  # cuda, then mps, then cpu (COURSE_DEVICE=cpu)

``COURSE_QUICK=1`` (set by ``course build --quick`` and by the test suite) shrinks data and
epochs for CI without changing the code path; the defaults are what a student runs.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from typing import TypeVar

import torch

from course_lib import __version__
from course_lib.devices import pick_device
from course_lib.training import set_seed

__all__ = ["LessonSettings", "quick_mode", "setup_lesson"]

T = TypeVar("T")


def quick_mode() -> bool:
    """True when ``COURSE_QUICK`` is set to anything but empty, ``0`` or ``false``."""
    return os.environ.get("COURSE_QUICK", "").strip().lower() not in ("", "0", "false", "no")


@dataclass(frozen=True)
class LessonSettings:
    """The settings a lesson runs with (printed once at the top of the notebook)."""

    seed: int
    threads: int
    quick: bool
    device: torch.device = torch.device("cpu")

    def pick(self, full: T, quick: T) -> T:
        """``full`` for a student's run, ``quick`` under ``COURSE_QUICK=1`` (CI)."""
        return quick if self.quick else full


AUTO = "auto"


def setup_lesson(seed: int = 0, threads: int | str | None = AUTO, *,
                 device: str | torch.device | None = None, verbose: bool = True
                 ) -> LessonSettings:
    """Seed Python, NumPy and torch, cap torch's threads, pick the device, report the settings.

    Args:
        seed: the seed for every generator (lessons are deterministic on one machine).
        threads: torch intra-op threads. ``"auto"``: 2 on a machine with 4 or more CPUs, else
            1, and 1 in quick mode. The course's models are small: a second thread gains
            little, and where the cores are busy (a 2-core laptop running a browser, a shared
            CI machine) OpenMP's spinning threads made training 10-40x slower than 1 thread
            (measured). ``None`` keeps torch's default.
        device: where the lesson's models run: given, else ``$COURSE_DEVICE``, else ``cuda``,
            then ``mps``, then ``cpu`` (``course_lib.devices.pick_device``). Lessons are timed
            on a CPU; on a GPU they run the same code, usually faster.
    """
    quick = quick_mode()
    if threads == AUTO:
        threads = 2 if (os.cpu_count() or 1) >= 4 and not quick else 1
    if threads is not None:
        if not isinstance(threads, int) or isinstance(threads, bool):
            raise ValueError(f"threads must be an int, None or 'auto', got {threads!r}")
        if threads < 1:
            raise ValueError(f"threads must be at least 1 (or None), got {threads}")
        torch.set_num_threads(threads)
    set_seed(seed)
    settings = LessonSettings(seed=seed, threads=torch.get_num_threads(), quick=quick,
                              device=pick_device(device))
    if verbose:
        mode = "QUICK mode (COURSE_QUICK=1): small data, few epochs" if settings.quick \
            else "full mode"
        print(f"course_lib {__version__} · torch {torch.__version__} · Python "
              f"{platform.python_version()} · {settings.device} · {settings.threads} threads · "
              f"seed {seed} · {mode}")
    return settings
