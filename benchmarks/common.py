"""Shared helpers for the benchmark scripts: side-by-side timing, tables, CSV, data."""

from __future__ import annotations

import csv
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SHARED_FRA = Path(os.environ.get("COURSE_SHARED_DIR",
                                 Path(__file__).resolve().parents[2] / "shared")) \
    / "data" / "fra-eng" / "fra.txt"


def machine() -> str:
    """One line describing where the numbers were measured."""
    import torch

    return (f"{platform.machine()}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
            f"torch {torch.__version__}, {torch.get_num_threads()} torch threads")


def side_by_side(candidates: dict[str, Callable[[], float]], repeats: int,
                 ) -> dict[str, list[float]]:
    """Run each candidate ``repeats`` times, interleaved (A B, B A, A B, ...), so slow phases of
    a noisy machine hit both. Each callable returns the work it did (tokens, sentences, ...);
    the result maps a name to its rates (work per second)."""
    names = list(candidates)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else reversed(names):
            start = time.perf_counter()
            work = candidates[name]()
            rates[name].append(work / (time.perf_counter() - start))
    return rates


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    """A plain aligned table."""
    print(f"\n{title}")
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        print("  ".join(_fmt(row.get(c)).ljust(w) for c, w in zip(columns, widths, strict=True)))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}"
    return "" if value is None else str(value)


def write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as file:
        fields = list(dict.fromkeys(key for row in rows for key in row))  # rows may differ
        writer = csv.DictWriter(file, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)
    print(f"\nwrote {path}")
