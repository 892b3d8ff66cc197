"""Cross entropy for padded sequence batches, averaged over real tokens only.

d2l's ``MaskedSoftmaxCELoss`` zeroes the loss at padded positions but then takes ``mean(dim=1)``
over all ``num_steps`` positions, padding included (d2l-en issue 2076). A batch of short
sentences then reports a smaller loss than the same tokens would in a batch of long ones, and
short sentences get less gradient than long ones. Here the sum over real tokens is divided by
the number of real tokens. ``tests/test_losses.py`` measures the difference on a padded batch.

Notation: B batch · T time · V vocabulary size.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from course_lib.masking import padding_mask

__all__ = ["masked_cross_entropy", "MaskedCrossEntropyLoss"]

_REDUCTIONS = ("mean", "sum", "none")


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, valid_lens: torch.Tensor,
                         *, label_smoothing: float = 0.0,
                         reduction: str = "mean") -> torch.Tensor:
    """Cross entropy that ignores padding, averaged over the real (non-padding) tokens.

    Args:
        logits: (B, T, V) unnormalised scores.
        targets: (B, T) token ids; positions at or after ``valid_lens`` are padding.
        valid_lens: (B,) number of real target tokens of each sequence.
        label_smoothing: in [0, 1): mass spread uniformly over the vocabulary, as in
            ``F.cross_entropy``.
        reduction: ``"mean"`` (per real token), ``"sum"`` (over real tokens), or ``"none"``
            ((B, T) losses with zeros at padding).
    Returns 0 (not NaN) with ``"mean"`` when the batch holds no real token.
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be (B, T, V), got shape {tuple(logits.shape)}")
    if targets.shape != logits.shape[:2]:
        raise ValueError(
            f"targets must be (B, T) = {tuple(logits.shape[:2])} to match logits "
            f"{tuple(logits.shape)}, got {tuple(targets.shape)}")
    if valid_lens.shape != logits.shape[:1]:
        raise ValueError(
            f"valid_lens must be (B,) = ({logits.shape[0]},), got {tuple(valid_lens.shape)}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    keep = padding_mask(valid_lens, logits.shape[1])  # (B, T)
    # Padding targets may hold any id (even out of range); point them at class 0 so the
    # per-token loss is finite, then zero it with the mask.
    safe_targets = targets.masked_fill(~keep, 0)
    per_token = F.cross_entropy(logits.transpose(1, 2), safe_targets,  # (B, V, T) vs (B, T)
                                reduction="none", label_smoothing=label_smoothing)
    per_token = per_token.masked_fill(~keep, 0.0)  # (B, T)
    if reduction == "none":
        return per_token
    total = per_token.sum()
    if reduction == "sum":
        return total
    return total / keep.sum().clamp(min=1)


class MaskedCrossEntropyLoss(nn.Module):
    """``masked_cross_entropy`` as a module: ``loss_fn(logits, targets, valid_lens)``."""

    def __init__(self, label_smoothing: float = 0.0, reduction: str = "mean"):
        super().__init__()
        self.label_smoothing = label_smoothing
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, targets: torch.Tensor,
                valid_lens: torch.Tensor) -> torch.Tensor:
        return masked_cross_entropy(logits, targets, valid_lens,
                                    label_smoothing=self.label_smoothing,
                                    reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}, reduction={self.reduction!r}"
