"""Dropout with the same behaviour as ``torch.nn.Dropout`` and a cheaper mask on CPU.

In training, dropout zeroes each entry with probability p and scales the others by 1 / (1 - p),
so every entry keeps its expected value; in eval mode it is the identity. ``nn.Dropout`` draws
its mask on CPU with ``bernoulli_``, which is slow there: for a (128, 10, 256) activation it took
2.7 ms on this course's machine, against 0.02 ms for multiplying the same tensor. Drawing one
float32 uniform per entry and keeping the entries where it is >= p is the same distribution
(P(keep) = 1 - p, to within the uniform's 2^-24 steps) and took 1.1 ms. A Transformer training
step calls dropout about twenty times, and the course's Transformer trains about 13% faster
with this class (``docs/results.md``). The price: autograd keeps the float mask for the backward
pass, 4 bytes per entry where torch keeps 1. On other devices and dtypes, and in place, torch's
own kernel runs.

    from course_lib.fast.dropout import CheapDropout, use_cheap_dropout
    drop = CheapDropout(0.1)   # a drop-in nn.Dropout: same argument, same state, same modes
    use_cheap_dropout(model)   # every nn.Dropout of a model becomes a CheapDropout
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["CheapDropout", "use_cheap_dropout"]


class CheapDropout(nn.Dropout):
    """``nn.Dropout(p)``, its CPU mask drawn as ``uniform[0, 1) >= p`` (see the module doc)."""

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return X
        if (self.p == 1.0 or self.inplace or X.device.type != "cpu"
                or X.dtype != torch.float32):  # half-precision uniforms step too coarsely
            return super().forward(X)
        keep = torch.rand_like(X)  # (same shape as X) uniform in [0, 1)
        keep.ge_(self.p).mul_(1.0 / (1.0 - self.p))  # 1 / (1 - p) where kept, 0 where dropped
        return X * keep


def use_cheap_dropout(model: nn.Module) -> nn.Module:
    """Replace every ``nn.Dropout`` in ``model`` by a ``CheapDropout`` of the same p; return it.

    Only the mask's random draws change: the parameters, the state dict and the modes stay.
    """
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Dropout:
                cheap = CheapDropout(child.p, child.inplace)
                cheap.train(child.training)
                setattr(module, name, cheap)
    return model
