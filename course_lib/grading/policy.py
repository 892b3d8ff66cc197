"""What each assignment forbids a student's code to use, from ``grading_policy.toml`` at the top
of the course folder, and how a dotted name is matched against it.

The policy is the one statement of the "do not call the reference implementation" rule: the
integrity checks (``code_checks.py``) find these names in a submission's source, and the
homeworks' hidden tests make the same names raise while the student's code runs
(``no_reference.py``).
"""

from __future__ import annotations

import functools
import importlib
import tomllib
import types
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MISSING", "POLICY_FILE", "Policy", "forbidden_entry", "load_policy", "lookup"]

POLICY_FILE = "grading_policy.toml"


@dataclass(frozen=True)
class Policy:
    """What one assignment forbids: dotted paths (``torch.nn.MultiheadAttention``,
    ``course_lib.attention``) and the sentence a student is shown."""

    forbidden: tuple[str, ...] = ()
    reason: str = "the assignment asks you to write this yourself"


def load_policy(root: Path, assignment: str) -> Policy:
    """The assignment's entry of ``<root>/grading_policy.toml`` (an empty policy if none)."""
    path = Path(root) / POLICY_FILE
    if not path.is_file():
        return Policy()
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8")).get(assignment, {})
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path} is not valid TOML: {error}") from error
    forbidden = table.get("forbidden", [])
    if not isinstance(forbidden, list) or not all(isinstance(f, str) for f in forbidden):
        raise ValueError(f"{path}: [{assignment}] forbidden must be a list of dotted names, "
                         f"got {forbidden!r}")
    return Policy(tuple(forbidden), table.get("reason", Policy.reason))


def forbidden_entry(path: str | None, policy: Policy) -> str | None:
    """The policy entry ``path`` falls under: by name, or by the object it imports to
    (``torch.nn.modules.activation.MultiheadAttention`` is ``torch.nn.MultiheadAttention``;
    a class re-exported elsewhere still belongs to its defining module)."""
    if not path:
        return None
    for entry in policy.forbidden:
        if path == entry or path.startswith(entry + "."):
            return entry
    target = lookup(path)
    if target is MISSING:
        return None
    module = getattr(target, "__module__", None) or ""
    for entry in policy.forbidden:
        wanted = lookup(entry, import_submodules=True)
        if wanted is not MISSING and target is wanted:
            return entry
        if isinstance(wanted, types.ModuleType) and (module == entry
                                                     or module.startswith(entry + ".")):
            return entry
    return None


MISSING = object()
TRUSTED_ROOTS = {"torch", "numpy", "course_lib", "sacrebleu", "scipy", "math", "nltk"}


@functools.lru_cache(maxsize=4096)
def lookup(path: str, import_submodules: bool = False) -> object:
    """The object a dotted path names in the grader's process, for trusted libraries only:
    ``MISSING`` when it cannot be found. A path from student code imports nothing but its
    top-level package and is followed by attribute access alone (importing a student-chosen
    submodule, such as some package's ``__main__``, would run it here); ``import_submodules``
    is for the policy's own entries."""
    parts = path.split(".")
    if parts[0] not in TRUSTED_ROOTS or any(part.startswith("__") for part in parts):
        return MISSING
    cuts = range(len(parts), 0, -1) if import_submodules else (1,)
    for cut in cuts:
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except Exception:  # noqa: BLE001 - not a module (or not installed): try shorter
            continue
        for attribute in parts[cut:]:
            target = getattr(target, attribute, MISSING)
            if target is MISSING:
                return MISSING
        return target
    return MISSING
