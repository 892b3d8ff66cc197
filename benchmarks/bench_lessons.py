"""How long each lesson takes as a student runs it (full mode), and what BLEU it reports.

    python benchmarks/bench_lessons.py                 # every lesson, full mode, 2 threads
    python benchmarks/bench_lessons.py --only 03 12    # some lessons
    python benchmarks/bench_lessons.py --quick         # CI smoke: lesson 01 in COURSE_QUICK mode

Each lesson runs top to bottom in a fresh kernel (nbclient, as ``course build`` does). The table
gives its seconds against the 60 s budget, the course's total against 10 minutes, and every output
line that mentions BLEU, so the figures a lesson reports can be read without opening it.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, print_table, write_csv  # noqa: E402

from course_lib.cli import execute_notebook  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LESSON_BUDGET_S = 60.0
COURSE_BUDGET_S = 600.0


def bleu_lines(notebook_path: Path, limit: int = 6) -> list[str]:
    """Output lines of an executed notebook that report a BLEU figure."""
    notebook = nbformat.read(notebook_path, as_version=4)
    lines = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            text = output.get("text") or output.get("data", {}).get("text/plain", "")
            lines += [line.strip() for line in str(text).splitlines()
                      if re.search(r"\bBLEU\b", line) and re.search(r"\d", line)]
    return lines[:limit]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", default=[], help="lessons whose name contains these")
    parser.add_argument("--quick", action="store_true", help="smoke: lesson 01, COURSE_QUICK=1")
    parser.add_argument("--csv", type=Path, default=RESULTS / "lessons.csv")
    args = parser.parse_args(argv)

    lessons = sorted((ROOT / "notebooks").glob("*.ipynb"))
    if args.quick:
        lessons = lessons[:1]
        os.environ["COURSE_QUICK"] = "1"
    else:
        os.environ.pop("COURSE_QUICK", None)
    if args.only:
        lessons = [p for p in lessons if any(key in p.name for key in args.only)]
    if not lessons:
        print("no lessons found in notebooks/", file=sys.stderr)
        return 1
    os.environ.setdefault("MPLBACKEND", "Agg")
    print(f"Lessons, {'QUICK' if args.quick else 'full'} mode, on {machine()}")

    rows, total, failures = [], 0.0, 0
    reported: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as out:
        for path in lessons:
            seconds, error = execute_notebook(path, Path(out), timeout=900, html=False)
            total += seconds
            failures += error is not None
            bleu = bleu_lines(Path(out) / path.name) if error is None else []
            reported[path.stem] = bleu
            rows.append({"lesson": path.stem, "seconds": round(seconds, 1),
                         "within_60s": seconds <= LESSON_BUDGET_S,
                         "status": "ok" if error is None else f"FAILED: {error}"[:80],
                         "bleu_reported": " / ".join(bleu)})
            print(f"  {path.stem:<32} {seconds:6.1f} s  {rows[-1]['status']}", flush=True)
    rows.append({"lesson": "TOTAL", "seconds": round(total, 1),
                 "within_60s": total <= COURSE_BUDGET_S, "status": f"{failures} failed",
                 "bleu_reported": f"budget {COURSE_BUDGET_S:.0f} s"})
    print_table("Lesson execution times (budget: 60 s each, 600 s in all)", rows,
                ["lesson", "seconds", "within_60s", "status"])
    print("\nBLEU figures the lessons report:")
    for lesson, lines in reported.items():
        for line in lines:
            print(f"  {lesson}: {line}")
    write_csv(args.csv, rows)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
