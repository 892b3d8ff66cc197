"""Masks: the one convention the whole course uses, and conversions to what torch expects.

THE CONVENTION: a mask is a ``torch.bool`` tensor in which **True means keep**: this position is
real data, may be attended to, and counts in the loss. False means padding or future: ignore it.

That is the convention of d2l's ``sequence_mask`` and of the boolean ``attn_mask`` of
``torch.nn.functional.scaled_dot_product_attention``. Other APIs disagree, and that
disagreement is where bugs come from, so convert at the edge, never in the middle:

===============================================  ========================  =====================
torch API                                        expects                   convert with
===============================================  ========================  =====================
``F.scaled_dot_product_attention(attn_mask=)``   bool, True = attend       ``to_sdpa_mask``
``nn.MultiheadAttention(key_padding_mask=)``     bool, True = **ignore**   ``to_key_padding_mask``
``nn.MultiheadAttention(attn_mask=)``            bool, True = **ignore**   ``to_torch_attn_mask``
``nn.Transformer*(src_mask=, tgt_mask=)``        float, 0 or -inf          ``to_additive_mask``
===============================================  ========================  =====================

Notation: B batch · T time (T_q queries, T_k keys) · H heads.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

__all__ = [
    "sequence_mask",
    "padding_mask",
    "causal_mask",
    "attention_mask",
    "combine_masks",
    "masked_softmax",
    "to_sdpa_mask",
    "to_key_padding_mask",
    "to_torch_attn_mask",
    "to_additive_mask",
]


def _check_valid_lens(valid_lens: torch.Tensor, what: str = "valid_lens") -> None:
    """Reject valid lengths that are not integers or are negative."""
    if not isinstance(valid_lens, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(valid_lens).__name__}")
    if valid_lens.is_floating_point() and not torch.equal(valid_lens, valid_lens.round()):
        raise ValueError(f"{what} must hold whole numbers, got {valid_lens.tolist()}")
    if valid_lens.numel() and bool((valid_lens < 0).any()):
        raise ValueError(f"{what} must be >= 0, got {valid_lens.tolist()}")


def padding_mask(valid_lens: torch.Tensor, max_len: int) -> torch.Tensor:
    """Keep-mask of shape ``(*valid_lens.shape, max_len)``: True for the first valid_len positions.

    Example: ``padding_mask(torch.tensor([1, 3]), 4)`` gives
    ``[[True, False, False, False], [True, True, True, False]]``.
    """
    _check_valid_lens(valid_lens)
    if max_len < 0:
        raise ValueError(f"max_len must be >= 0, got {max_len}")
    positions = torch.arange(max_len, device=valid_lens.device)
    return positions < valid_lens.unsqueeze(-1)


def sequence_mask(X: torch.Tensor, valid_len: torch.Tensor, value: float = 0) -> torch.Tensor:
    """Set entries past each sequence's valid length to ``value`` (d2l's ``sequence_mask``).

    Args:
        X: (B, T, ...) entries along dimension 1 are time steps.
        valid_len: (B,) number of real steps of each sequence.
    Returns a new tensor; unlike d2l's version, ``X`` itself is left untouched.
    """
    if X.dim() < 2:
        raise ValueError(f"X must have shape (B, T, ...), got {tuple(X.shape)}")
    if valid_len.shape != X.shape[:1]:
        raise ValueError(
            f"valid_len must have shape (B,) = ({X.shape[0]},), got {tuple(valid_len.shape)}")
    keep = padding_mask(valid_len, X.shape[1])  # (B, T)
    keep = keep.reshape(keep.shape + (1,) * (X.dim() - 2))  # (B, T, 1, ...)
    return X.masked_fill(~keep, value)


def causal_mask(num_queries: int, num_keys: int | None = None,
                device: torch.device | str | None = None) -> torch.Tensor:
    """Keep-mask (T_q, T_k) letting query i see keys up to its own position, never later ones.

    When ``num_keys > num_queries`` (decoding with a key/value cache), the queries are the last
    ``num_queries`` positions of the sequence, so query i sits at position ``num_keys -
    num_queries + i``.
    """
    num_keys = num_queries if num_keys is None else num_keys
    if num_queries < 0 or num_keys < num_queries:
        raise ValueError(
            f"need 0 <= num_queries <= num_keys, got num_queries={num_queries}, "
            f"num_keys={num_keys}")
    offset = num_keys - num_queries
    return torch.ones(num_queries, num_keys, dtype=torch.bool, device=device).tril(offset)


def attention_mask(valid_lens: torch.Tensor, num_queries: int, num_keys: int) -> torch.Tensor:
    """Keep-mask (B, T_q, T_k) over keys from valid lengths of shape (B,) or (B, T_q).

    A (B,) length applies to every query of that example (padding in the keys); a (B, T_q)
    length gives each query its own limit, as in d2l's ``masked_softmax``.
    """
    if valid_lens.dim() == 1:
        keep = padding_mask(valid_lens, num_keys)  # (B, T_k)
        return keep.unsqueeze(1).expand(-1, num_queries, -1)  # (B, T_q, T_k)
    if valid_lens.dim() == 2:
        if valid_lens.shape[1] != num_queries:
            raise ValueError(
                f"valid_lens of shape (B, T_q) must have T_q = {num_queries}, "
                f"got shape {tuple(valid_lens.shape)}")
        return padding_mask(valid_lens, num_keys)  # (B, T_q, T_k)
    raise ValueError(f"valid_lens must have shape (B,) or (B, T_q), got {tuple(valid_lens.shape)}")


def combine_masks(*masks: torch.Tensor | None) -> torch.Tensor | None:
    """Keep a position only where every mask keeps it (logical AND, broadcasting); skip Nones."""
    present = [m for m in masks if m is not None]
    for mask in present:
        if mask.dtype != torch.bool:
            raise TypeError(f"masks must be torch.bool (True = keep), got {mask.dtype}")
    if not present:
        return None
    combined = present[0]
    for mask in present[1:]:
        try:
            combined = combined & mask
        except RuntimeError as error:
            raise ValueError(
                f"masks of shapes {tuple(combined.shape)} and {tuple(mask.shape)} "
                "do not broadcast") from error
    return combined


def masked_softmax(X: torch.Tensor, valid_lens: torch.Tensor | None = None, *,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax over the last axis that gives exactly zero weight to masked keys.

    Args:
        X: (B, T_q, T_k) attention scores; with ``mask=`` any shape (..., T_k).
        valid_lens: (B,) or (B, T_q) number of keys each query may see (d2l's semantics).
        mask: keep-mask broadcastable to X (True = keep), instead of or as well as valid_lens.
    A row with no key to keep gets all-zero weights: not NaN (what ``-inf`` gives) and not
    uniform weights over padding (what d2l's ``-1e6`` trick gives when ``valid_len`` is 0).
    """
    if valid_lens is not None:
        if X.dim() != 3:
            raise ValueError(f"with valid_lens, X must be (B, T_q, T_k), got {tuple(X.shape)}")
        if valid_lens.shape[0] != X.shape[0]:
            raise ValueError(
                f"valid_lens must have batch size {X.shape[0]} (X is {tuple(X.shape)}), "
                f"got shape {tuple(valid_lens.shape)}")
        mask = combine_masks(mask, attention_mask(valid_lens, X.shape[1], X.shape[2]))
    if mask is None:
        return F.softmax(X, dim=-1)
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be torch.bool (True = keep), got {mask.dtype}")
    try:
        broadcast = torch.broadcast_shapes(mask.shape, X.shape)
    except RuntimeError:
        broadcast = None
    if broadcast != X.shape:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to scores of "
                         f"shape {tuple(X.shape)}")
    # The most negative finite number, not -inf: a fully masked row then softmaxes to finite
    # (uniform) values instead of NaN, and the final masked_fill turns them into zeros.
    dropped = ~mask  # as small as the mask: masked_fill broadcasts it over X
    scores = X.masked_fill(dropped, torch.finfo(X.dtype).min)
    return F.softmax(scores, dim=-1).masked_fill(dropped, 0.0)


def to_sdpa_mask(keep: torch.Tensor) -> torch.Tensor:
    """Mask for ``F.scaled_dot_product_attention(attn_mask=...)``: bool, True = attend (ours)."""
    return keep


def to_key_padding_mask(keep: torch.Tensor) -> torch.Tensor:
    """Mask for ``nn.MultiheadAttention(key_padding_mask=...)``: bool (B, T_k), True = ignore."""
    if keep.dim() != 2:
        raise ValueError(f"a key padding mask has shape (B, T_k), got {tuple(keep.shape)}")
    return ~keep


def to_torch_attn_mask(keep: torch.Tensor) -> torch.Tensor:
    """Mask for ``nn.MultiheadAttention(attn_mask=...)`` / ``nn.Transformer``: True = ignore."""
    return ~keep


def to_additive_mask(keep: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Float mask to add to scores: 0 where kept, -inf where masked (``nn.Transformer`` style)."""
    additive = torch.zeros(keep.shape, dtype=dtype, device=keep.device)
    return additive.masked_fill(~keep, float("-inf"))
