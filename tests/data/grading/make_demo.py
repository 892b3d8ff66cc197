"""Write the grading tests' fixture assignment, ``hw0_demo/hw0_demo.ipynb`` (an nbgrader source).

    python tests/data/grading/make_demo.py

Plain Python, no training: it exercises the grading machinery, not the course. Four test cells
(20 + 30 + 30 + 20 = 100 points) and a data file
(``squares.txt``) that nbgrader must copy, visible and hidden asserts, and one correct answer that
warns on stderr (the case nbgrader would otherwise score 0).
"""

from __future__ import annotations

from pathlib import Path

import nbformat

NAME = "hw0_demo"
HERE = Path(__file__).resolve().parent


def nbgrader(grade_id: str, *, solution=False, grade=False, points=None) -> dict:
    """nbgrader cell metadata (schema 3): answer, test, or locked read-only cell."""
    meta = {"grade": grade, "grade_id": grade_id, "locked": not solution, "schema_version": 3,
            "solution": solution, "task": False}
    if points is not None:
        meta["points"] = points
    return {"nbgrader": meta}


def markdown(grade_id: str, text: str):
    cell = nbformat.v4.new_markdown_cell(text, metadata=nbgrader(grade_id))
    cell.id = grade_id
    return cell


def code(grade_id: str, source: str, **kind):
    cell = nbformat.v4.new_code_cell(source, metadata=nbgrader(grade_id, **kind))
    cell.id = grade_id
    return cell


CELLS = [
    markdown("intro", """\
# Homework 0: a demo (fixture for the grading tests)

Covers nothing from the lessons: it only exercises `course check` / `course grade`.
Fill in the `YOUR CODE HERE` cells, then run `course check hw0_demo.ipynb` before submitting.

| task | points |
| --- | --- |
| 1. `squares` | 20 |
| 2. `masked_mean` | 30 + 30 |
| 3. `safe_ratio` | 20 |

Total: 100 points. Do not import anything beyond the standard library."""),
    code("setup", """\
import math
import random
import statistics
import warnings
from pathlib import Path

random.seed(0)
SQUARES = [int(word) for word in Path("squares.txt").read_text().split()]  # 0 1 4 9 16"""),
    markdown("task_squares", "## 1. Squares\n\nReturn the squares of `0, 1, ..., n - 1`; "
             "raise `ValueError` for a negative `n`."),
    code("squares", '''\
def squares(n):
    """The squares 0, 1, 4, ... of the first n whole numbers."""
    ### BEGIN SOLUTION
    if n < 0:
        raise ValueError(f"n must be at least 0, got {n}")
    return [i * i for i in range(n)]
    ### END SOLUTION''', solution=True),
    code("test_squares", """\
# Test: squares of the first n numbers
assert squares(3) == [0, 1, 4], f"expected [0, 1, 4], got {squares(3)}"
assert squares(5) == SQUARES, f"expected {SQUARES}, got {squares(5)}"
### BEGIN HIDDEN TESTS
assert squares(0) == [], f"expected [] for n=0, got {squares(0)}"
assert squares(7)[-1] == 36, f"expected 36 last for n=7, got {squares(7)[-1]}"
try:
    squares(-4)
except ValueError:
    pass
else:
    raise AssertionError("expected ValueError for n=-4, got no error")
### END HIDDEN TESTS""", grade=True, points=20),
    markdown("task_masked_mean", "## 2. Masked mean\n\nThe mean of the first `valid_len` "
             "values (the rest is padding). Raise `ValueError` unless "
             "`1 <= valid_len <= len(values)`."),
    code("masked_mean", '''\
def masked_mean(values, valid_len):
    """Mean of the first valid_len entries of values (the rest is padding)."""
    ### BEGIN SOLUTION
    if not 1 <= valid_len <= len(values):
        raise ValueError(f"valid_len must be in 1..{len(values)}, got {valid_len}")
    return sum(values[:valid_len]) / valid_len
    ### END SOLUTION''', solution=True),
    code("test_masked_mean", """\
# Test: mean over the valid entries only
got = masked_mean([1.0, 3.0, 0.0, 0.0], 2)
assert got == 2.0, f"expected 2.0, got {got}"
### BEGIN HIDDEN TESTS
random.seed(1)
for trial in range(20):
    values = [random.uniform(-5, 5) for _ in range(random.randint(1, 9))]
    valid_len = random.randint(1, len(values))
    want = statistics.fmean(values[:valid_len])
    got = masked_mean(values + [99.0] * 3, valid_len)
    assert math.isclose(got, want), f"trial {trial}: expected {want}, got {got}"
### END HIDDEN TESTS""", grade=True, points=30),
    code("test_masked_mean_edges", """\
# Test: masked_mean rejects impossible lengths
try:
    masked_mean([1.0, 2.0], 3)
except ValueError:
    pass
else:
    raise AssertionError("expected ValueError for valid_len=3 > 2 values, got no error")
### BEGIN HIDDEN TESTS
for bad_len in (0, -1):
    try:
        masked_mean([4.0, 2.0], bad_len)
    except ValueError:
        continue
    raise AssertionError(f"expected ValueError for valid_len={bad_len}, got no error")
### END HIDDEN TESTS""", grade=True, points=30),
    markdown("task_safe_ratio", "## 3. Safe ratio\n\n`a / b`, but for `b == 0` return "
             "`math.inf` and warn with a `RuntimeWarning`."),
    code("safe_ratio", '''\
def safe_ratio(a, b):
    """a / b, or inf with a RuntimeWarning when b is 0."""
    ### BEGIN SOLUTION
    if b == 0:
        warnings.warn("division by zero, returning inf", RuntimeWarning, stacklevel=2)
        return math.inf
    return a / b
    ### END SOLUTION''', solution=True),
    code("test_safe_ratio", """\
# Test: ratio, and inf (with a warning) for a zero divisor
assert safe_ratio(6, 3) == 2, f"expected 2, got {safe_ratio(6, 3)}"
assert safe_ratio(1, 0) == math.inf, f"expected inf, got {safe_ratio(1, 0)}"
### BEGIN HIDDEN TESTS
assert safe_ratio(-7, 0) == math.inf, f"expected inf for -7/0, got {safe_ratio(-7, 0)}"
assert safe_ratio(1, 4) == 0.25, f"expected 0.25, got {safe_ratio(1, 4)}"
### END HIDDEN TESTS""", grade=True, points=20),
]


def build() -> nbformat.NotebookNode:
    """The fixture notebook (stored without outputs)."""
    notebook = nbformat.v4.new_notebook(cells=CELLS)
    notebook.metadata = {
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python",
                       "name": "python3"},
        "language_info": {"name": "python"},
    }
    return notebook


if __name__ == "__main__":
    out = HERE / NAME / f"{NAME}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(build(), out)
    print(f"wrote {out}")
