"""The no-reference rule while a check runs: what an assignment forbids raises if it is called.

``grading_policy.toml`` names, per assignment, the reference implementations a student's code
may not use (``policy.py``); ``course grade`` finds those names in a submission's source
(``code_checks.py``). The hidden tests compare an answer with the very reference it must not
call, so they also run the answer with everything the policy names made to raise
``ReferenceUsedError``. Every homework binds this helper to its assignment in its setup cell:

    from course_lib.grading.no_reference import ReferenceUsedError, forbid_references


    def no_reference_implementations():
        \"\"\"While this block runs, what hw4 may not call raises ReferenceUsedError.\"\"\"
        return forbid_references("hw4_multihead", globals())

and a hidden test runs the answer inside ``with no_reference_implementations(): ...``.

What a policy entry covers while the block runs, among the modules imported so far (what is
not loaded cannot have been called; importing it in an answer is what the static check flags):
- a function (``torch.layer_norm``) is replaced where it lives, and wherever the notebook's own
  names hold it (``from torch.nn.functional import layer_norm``);
- a class (``torch.nn.MultiheadAttention``) has each method defined in its body replaced
  (``__init__``, ``__call__`` and ``__getitem__`` too, other dunders not), so that objects made
  before the block raise as well;
- a module or package (``course_lib.bleu``, ``d2l``) has every function and class defined in it
  or in its submodules replaced so; names it merely imports from elsewhere are left alone.
Everything is put back when the block ends, also when it raises.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
import types
from collections.abc import Iterable, Iterator
from pathlib import Path

import course_lib
from course_lib.grading.policy import POLICY_FILE, load_policy

__all__ = ["ReferenceUsedError", "forbid", "forbid_references", "forbidden_targets"]

_CALLED_DUNDERS = {"__init__", "__call__", "__getitem__"}  # what using a class calls
_INHERITED = object()  # a forbidden method the class does not define itself: deleted after


class ReferenceUsedError(AssertionError):
    """Raised when an answer calls a reference implementation its assignment forbids."""


def course_folder() -> Path:
    """The course folder whose ``grading_policy.toml`` the homeworks follow: the checkout that
    course_lib is installed from (bootstrap.py installs it in editable mode)."""
    return Path(course_lib.__file__).resolve().parent.parent


def _loaded(path: str) -> object | None:
    """The object ``path`` names among the modules imported now, or None."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        target = sys.modules.get(".".join(parts[:cut]))
        if target is None:
            continue
        for attribute in parts[cut:]:
            target = getattr(target, attribute, None)
        return target
    return None


def _owner(path: str) -> object | None:
    """What holds the last part of ``path`` (a module or a class), if loaded."""
    return _loaded(path.rpartition(".")[0]) if "." in path else None


def _class_targets(cls: type) -> Iterator[tuple[object, str]]:
    for name, raw in vars(cls).items():
        function = raw.__func__ if isinstance(raw, staticmethod | classmethod) else raw
        called = not name.startswith("__") or name in _CALLED_DUNDERS
        if called and inspect.isfunction(function):
            yield cls, name


def _module_targets(package: str) -> Iterator[tuple[object, str]]:
    modules = [module for name, module in list(sys.modules.items())
               if isinstance(module, types.ModuleType)
               and (name == package or name.startswith(package + "."))]
    for module in modules:
        for name, value in list(vars(module).items()):
            if getattr(value, "__module__", None) != module.__name__:
                continue  # imported from elsewhere
            if inspect.isclass(value):
                yield from _class_targets(value)
            elif inspect.isfunction(value) or inspect.isbuiltin(value):
                yield module, name


def forbidden_targets(paths: Iterable[str]) -> list[tuple[object, str]]:
    """(owner, attribute) of each callable the dotted ``paths`` cover, among loaded modules."""
    targets: dict[tuple[int, str], tuple[object, str]] = {}
    for path in paths:
        target = _loaded(path)
        if isinstance(target, types.ModuleType):
            found = list(_module_targets(target.__name__))
        elif inspect.isclass(target):
            found = list(_class_targets(target))
        elif callable(target) and _owner(path) is not None:
            found = [(_owner(path), path.rpartition(".")[2])]
        else:
            found = []  # not loaded here, so not callable by the answer either
        for owner, name in found:
            targets.setdefault((id(owner), name), (owner, name))
    return list(targets.values())


def _label(owner: object) -> str:
    """``torch.nn.modules.activation.MultiheadAttention`` for a class, the name of a module."""
    if inspect.isclass(owner):
        return f"{owner.__module__}.{owner.__qualname__}"
    return getattr(owner, "__name__", repr(owner))


def _refusal(where: str, reason: str):
    def refuse(*args, **kwargs):
        raise ReferenceUsedError(f"your answer called {where}, a reference it is checked "
                                 f"against: {reason}")

    refuse.__name__ = refuse.__qualname__ = where.rpartition(".")[2]
    return refuse


@contextlib.contextmanager
def forbid(paths: Iterable[str], namespace: dict | None = None,
           reason: str = "write this part yourself") -> Iterator[None]:
    """Inside the block, every callable ``paths`` cover raises ReferenceUsedError, also through
    the names in ``namespace`` (a notebook's ``globals()``) that hold one of them."""
    swapped: list[tuple[object, str, object]] = []  # (holder, name, original), undone in reverse
    try:
        stand_ins: dict[int, object] = {}  # id of the original function -> its stand-in
        for owner, name in forbidden_targets(paths):
            raw = vars(owner).get(name, _INHERITED)
            stand_in = _refusal(f"{_label(owner)}.{name}", reason)
            swapped.append((owner, name, raw))
            setattr(owner, name, stand_in)
            stand_ins[id(getattr(raw, "__func__", raw))] = stand_in
        for name, value in list((namespace or {}).items()):
            if id(value) in stand_ins:
                swapped.append((namespace, name, value))
                namespace[name] = stand_ins[id(value)]
        yield
    finally:
        for holder, name, original in reversed(swapped):
            if isinstance(holder, dict):
                holder[name] = original
            elif original is _INHERITED:
                delattr(holder, name)
            else:
                setattr(holder, name, original)


def forbid_references(assignment: str, namespace: dict | None = None,
                      root: Path | None = None) -> contextlib.AbstractContextManager[None]:
    """``forbid`` for what ``<root>/grading_policy.toml`` forbids in ``assignment`` (root: the
    course folder). ValueError if the policy names nothing for it: a hidden test that checks
    nothing must not pass for that reason."""
    root = course_folder() if root is None else Path(root)
    policy = load_policy(root, assignment)
    if not policy.forbidden:
        raise ValueError(f"{root / POLICY_FILE} forbids nothing for {assignment}: no reference "
                         "implementation can be made to raise")
    return forbid(policy.forbidden, namespace, policy.reason)
