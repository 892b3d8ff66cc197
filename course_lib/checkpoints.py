"""Checkpoints: save a model (and optimizer) with plain-data extras, atomically; load them back.

    save_checkpoint("best.pt", model, optimizer, extra={"epoch": 3, "src_vocab": tokens})
    extra = load_checkpoint("best.pt", model, optimizer)

Files load with ``torch.load(weights_only=True)``: no pickled code is ever run.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["save_checkpoint", "read_checkpoint", "load_checkpoint"]


def save_checkpoint(path: str | Path, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None = None, *,
                    extra: dict | None = None) -> None:
    """Save model (and optimizer) state and ``extra`` atomically: all of it or nothing.

    ``extra`` holds plain data: numbers, strings, lists, dicts, tensors (dataclasses become
    dicts). The file is written to a temporary name beside ``path``, then renamed over it, so an
    interrupted save never leaves a truncated checkpoint behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) and not isinstance(v, type)
             else v for k, v in (extra or {}).items()}  # plain data loads with weights_only

    payload = {"model": model.state_dict(), "model_class": type(model).__name__,
               "optimizer": optimizer.state_dict() if optimizer is not None else None,
               "extra": extra}
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)
        raise


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The whole checkpoint (``model``, ``optimizer``, ``extra``), e.g. to rebuild the model."""
    return torch.load(path, map_location="cpu", weights_only=True)


def load_checkpoint(path: str | Path, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """Load a ``save_checkpoint`` file into ``model`` (and ``optimizer``); returns its ``extra``.

    Raises ValueError naming every parameter whose shape or name differs from the model's.
    """
    checkpoint = read_checkpoint(path)
    saved, own = checkpoint["model"], model.state_dict()
    problems = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                for k, v in saved.items() if k in own and v.shape != own[k].shape]
    problems += [f"{k}: missing from the checkpoint" for k in own if k not in saved]
    problems += [f"{k}: not in the model" for k in saved if k not in own]
    if problems:
        raise ValueError(f"checkpoint {path} (a {checkpoint.get('model_class')}) does not fit "
                         f"this {type(model).__name__}; was it built with the same config?\n  "
                         + "\n  ".join(problems[:10])
                         + (f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""))
    model.load_state_dict(saved)
    if optimizer is not None and checkpoint["optimizer"] is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
    return checkpoint["extra"]
