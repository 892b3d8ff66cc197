"""Where tensors live and in which precision: the device, moving batches, mixed precision.

# B batch · T time

    from course_lib.devices import autocast, pick_device, to_device
    device = pick_device()               # cuda, then mps, then cpu; COURSE_DEVICE=cpu overrides
    model.to(device)
    batch = to_device(batch, device)     # tensors already there are not copied
    with autocast(device, "bf16"):       # matrix products in bfloat16, the rest as torch decides
        loss = ...

MIXED PRECISION. The weights, their gradients and the optimizer's state stay in float32. Inside
``torch.autocast`` matrix products (linear layers, attention scores) run in a 16-bit format,
about twice as fast on CPUs with bf16 units and several times faster on GPU tensor cores, while
the operations that need range or accuracy run in float32: torch keeps a list per device (on
CUDA softmax, log-softmax, layer norm and the losses; on CPU a shorter one, where softmax
stays 16-bit). The 16-bit copy of each weight is made once per autocast context and reused:
``train_epoch`` drops the copies before every step, which the weights change
(``torch.clear_autocast_cache``). Two 16-bit formats:

- ``"bf16"`` (bfloat16) keeps float32's 8 exponent bits, so its range (up to 3e38) is float32's
  and only the precision is coarser (8 bits of mantissa: 3 significant digits). No scaling
  is needed.
- ``"fp16"`` (float16) has 10 mantissa bits but only 5 exponent bits: numbers above 65,504
  overflow to inf and gradients below about 6e-8 underflow to 0. Training multiplies the loss
  by a large factor before ``backward`` and divides the gradients by it before the step
  (``torch.amp.GradScaler``, ``grad_scaler`` below), skipping any step whose gradients
  overflowed and lowering the factor then.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, TypeVar

import torch
from torch import nn

__all__ = ["PRECISIONS", "pick_device", "model_device", "to_device", "check_precision",
           "autocast", "grad_scaler", "check_fp32_weights"]

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

T = TypeVar("T")


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def pick_device(name: str | torch.device | None = None) -> torch.device:
    """The device to run on: ``name`` if given, else ``$COURSE_DEVICE``, else the best there is
    (``cuda``, then Apple's ``mps``, then ``cpu``). A device that is not there is an error."""
    name = name if name is not None else (os.environ.get("COURSE_DEVICE") or None)
    if name is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"not a device: {name!r} (expected 'cpu', 'cuda', 'cuda:1', 'mps', "
                         "...)") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for (COURSE_DEVICE or an argument), but "
                         "this torch sees no CUDA GPU; use 'cpu'")
    if device.type == "mps" and not _mps_available():
        raise ValueError(f"device {name!r} was asked for, but Apple's MPS is not available here")
    return device


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's parameters (cpu for a model without any)."""
    parameter = next(model.parameters(), None)
    return torch.device("cpu") if parameter is None else parameter.device


def to_device(batch: T, device: torch.device | str) -> T:
    """``batch`` (a tensor, or a tuple/NamedTuple of tensors such as ``Batch``) on ``device``.

    ``Tensor.to`` returns the tensor itself when it is already there: nothing is copied. On
    CUDA the copy from (pinned) CPU memory may overlap with work already queued.
    """
    if isinstance(batch, torch.Tensor):
        # Without blocking only towards a GPU: a copy to the CPU must be complete before use.
        return batch.to(device, non_blocking=torch.device(device).type == "cuda")
    if isinstance(batch, tuple):
        moved = [to_device(item, device) for item in batch]
        if all(new is old for new, old in zip(moved, batch, strict=True)):
            return batch
        return type(batch)(*moved) if hasattr(batch, "_fields") else type(batch)(moved)
    return batch


def check_precision(precision: str) -> torch.dtype | None:
    """The autocast dtype of ``precision`` (None for fp32); ValueError naming the choices."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


def autocast(device: torch.device | str, precision: str = "fp32"
             ) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` for ``precision`` on ``device``'s type; fp32: no autocast at all."""
    dtype = check_precision(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def grad_scaler(device: torch.device | str, precision: str) -> torch.amp.GradScaler | None:
    """A loss scaler for fp16 training (see the module's doc); None for fp32 and bf16."""
    if check_precision(precision) is not torch.float16:
        return None
    return torch.amp.GradScaler(torch.device(device).type)


def check_fp32_weights(model: nn.Module) -> None:
    """ValueError if the model's floating-point weights are not float32. Mixed precision keeps
    them so: in 16-bit weights Adam's small updates round away (1 + 1e-3 is 1 in bf16)."""
    wrong = sorted({str(p.dtype) for p in model.parameters()
                    if p.is_floating_point() and p.dtype != torch.float32})
    if wrong:
        raise ValueError(f"the model's weights are {', '.join(wrong)}: keep them float32 and "
                         "train with precision='bf16' or 'fp16' (autocast) instead")
