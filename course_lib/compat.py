"""Load Dive into Deep Learning's ``d2l.torch`` as a reference implementation.

``d2l.torch`` imports torchvision at the top, although nothing this course compares against
needs it. Where torchvision is installed and works, it is used as it is. Where it is missing or
broken (the PyPI wheel is CUDA-linked and fails to import on CPU-only machines), a stand-in
module takes its place for as long as the process runs; touching any of its attributes raises
an ``ImportError`` that says why, so nothing fails silently.

    from course_lib.compat import load_d2l
    d2l = load_d2l()
    d2l.bleu("il court .", "il est calme .", k=2)
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import types

__all__ = ["load_d2l", "torchvision_is_stand_in"]

_STAND_IN_FLAG = "__course_lib_stand_in__"


class _StandInModule(types.ModuleType):
    """A module whose every attribute lookup explains that torchvision is unavailable."""

    def __init__(self, name: str, reason: str):
        super().__init__(name)
        self.__spec__ = importlib.machinery.ModuleSpec(name, loader=None)
        self.__path__ = []  # a package, so `import torchvision.transforms` also resolves
        setattr(self, _STAND_IN_FLAG, True)
        self._reason = reason

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise ImportError(
            f"{self.__name__}.{attr} is not available: torchvision could not be imported "
            f"({self._reason}). course_lib loaded d2l with a stand-in for torchvision, which is "
            "enough for d2l's text and attention code but not for its image code."
        )


def _install_torchvision_stand_in(reason: str) -> None:
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]  # drop a half-imported real package
    root = _StandInModule("torchvision", reason)
    sys.modules["torchvision"] = root
    for sub in ("transforms", "datasets", "io", "models", "utils"):
        module = _StandInModule(f"torchvision.{sub}", reason)
        sys.modules[module.__name__] = module
        # Set in __dict__ so `from torchvision import transforms` finds the submodule.
        root.__dict__[sub] = module


def torchvision_is_stand_in() -> bool:
    """True when ``torchvision`` in this process is course_lib's stand-in, not the real one."""
    module = sys.modules.get("torchvision")
    return module is not None and module.__dict__.get(_STAND_IN_FLAG, False)


def load_d2l() -> types.ModuleType:
    """Return the ``d2l.torch`` module, standing in for torchvision only if the real one fails."""
    if "d2l.torch" in sys.modules:
        return sys.modules["d2l.torch"]
    if "torchvision" not in sys.modules:
        try:
            importlib.import_module("torchvision")
        except Exception as error:  # ImportError, or OSError/RuntimeError from a CUDA-linked build
            _install_torchvision_stand_in(f"{type(error).__name__}: {error}")
    try:
        return importlib.import_module("d2l.torch")
    except ModuleNotFoundError as error:
        if error.name and error.name.split(".")[0] == "d2l":
            raise ModuleNotFoundError(
                "d2l is not installed. It is installed without its hard pins by "
                "`python3 bootstrap.py` (pip install --no-deps d2l==1.0.3).",
                name="d2l",
            ) from error
        raise
