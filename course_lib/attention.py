"""Attention: scaled dot-product, additive (Bahdanau), multi-head, and a key/value cache.

# B batch · T time (T_q queries, T_k keys) · H heads · D model width · D_v value width

Masks follow ``course_lib.masking``: ``torch.bool``, True = keep. A module keeps its last
attention weights in ``attention_weights`` so that lessons can plot them::

    from course_lib.attention import MultiHeadAttention
    from course_lib.masking import causal_mask
    mha = MultiHeadAttention(d_model=32, num_heads=4)
    Y = mha(X, X, X, mask=causal_mask(X.shape[1]))  # (B, T, 32)
    mha.attention_weights                           # (B, 4, T, T)

Positional encodings are in ``course_lib.positional`` (re-exported here).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn
from torch.nn import functional as F

from course_lib.masking import attention_mask, combine_masks, masked_softmax, to_sdpa_mask

# Positional encodings live in their own module (lesson 10); lessons and homework that
# import them from here keep working.
from course_lib.positional import (
    LearnedPositionalEncoding,
    SinusoidalPositionalEncoding,
    sinusoidal_table,
)

__all__ = [
    "scaled_dot_product",
    "DotProductAttention",
    "AdditiveAttention",
    "KVCache",
    "MultiHeadAttention",
    "copy_weights_from_torch",
    "copy_weights_to_torch",
    "sinusoidal_table",
    "SinusoidalPositionalEncoding",
    "LearnedPositionalEncoding",
]


# ---------------------------------------------------------------------------------------------
# Shape checks: fail early with a message that names the expected and the actual shapes.

def _check_qkv(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
               ranks: tuple[int, ...] = (3,)) -> None:
    """Reject queries, keys and values whose ranks, batch sizes or key/value lengths disagree."""
    expected = " or ".join({3: "(B, T_q, D)", 4: "(B, H, T_q, D)"}[r] for r in ranks)
    if queries.dim() not in ranks:
        raise ValueError(f"queries must have shape {expected}, got {tuple(queries.shape)}")
    for name, t in (("keys", keys), ("values", values)):
        if t.dim() != queries.dim():
            raise ValueError(f"{name} must have the rank of queries {tuple(queries.shape)}, "
                             f"got {tuple(t.shape)}")
    if keys.shape[:-2] != queries.shape[:-2] or values.shape[:-2] != queries.shape[:-2]:
        raise ValueError(
            f"queries, keys and values must agree in their leading dims (B[, H]) = "
            f"{tuple(queries.shape[:-2])}, got queries "
            f"{tuple(queries.shape)}, keys {tuple(keys.shape)}, values {tuple(values.shape)}")
    if keys.shape[-2] != values.shape[-2]:
        raise ValueError(f"keys and values must have the same length T_k, got keys "
                         f"{tuple(keys.shape)} and values {tuple(values.shape)}")


def _check_width(name: str, t: torch.Tensor, width: int, expected: str) -> None:
    """Reject a tensor whose last dimension is not ``width``."""
    if t.shape[-1] != width:
        raise ValueError(f"{name} must have shape {expected} with last dim {width}, "
                         f"got {tuple(t.shape)}")


def _check_mask(mask: torch.Tensor, shape: tuple[int, ...], expected: str, hint: str = "") -> None:
    """Reject a keep-mask that is not bool or does not broadcast to ``shape``."""
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be torch.bool (True = keep), got {mask.dtype}")
    pairs = zip(reversed(mask.shape), reversed(shape), strict=False)
    if mask.dim() > len(shape) or any(m not in (1, s) for m, s in pairs):
        raise ValueError(f"mask must broadcast to {expected} = {shape}, got {tuple(mask.shape)}"
                         + hint)


def _valid_lens_mask(valid_lens: torch.Tensor, batch_size: int, num_queries: int,
                     num_keys: int) -> torch.Tensor:
    """Keep-mask (B, T_q, T_k) from valid lengths (B,) or (B, T_q), checking the batch size."""
    if valid_lens.dim() not in (1, 2) or valid_lens.shape[0] != batch_size:
        raise ValueError(f"valid_lens must have shape (B,) or (B, T_q) with B = {batch_size}, "
                         f"got {tuple(valid_lens.shape)}")
    return attention_mask(valid_lens, num_queries, num_keys)


# ---------------------------------------------------------------------------------------------
# Scoring functions: how much each query cares about each key.

def scaled_dot_product(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       mask: torch.Tensor | None = None, dropout: nn.Module | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T / sqrt(d)) v: the core of every dot-product attention. Returns (out, weights).

    Args:
        q: (..., T_q, d) queries. k: (..., T_k, d) keys. v: (..., T_k, d_v) values.
        mask: keep-mask broadcastable to (..., T_q, T_k); masked keys get exactly zero weight.
        dropout: applied to the weights that mix the values; the returned weights are before it.
    """
    # Dividing by sqrt(d) keeps the scores' variance near 1 whatever d, so softmax stays soft.
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., T_q, T_k)
    weights = masked_softmax(scores, mask=mask)
    mixing = weights if dropout is None else dropout(weights)
    return mixing @ v, weights  # (..., T_q, d_v), (..., T_q, T_k)


class _Attention(nn.Module):
    """What every attention module keeps: dropout on the weights, and the last weights."""

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.attention_weights: torch.Tensor | None = None  # for plots, (B, [H,] T_q, T_k)


class DotProductAttention(_Attention):
    """Scaled dot-product attention without parameters: queries and keys must share a width."""

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                valid_lens: torch.Tensor | None = None, *,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mix the values by query-key similarity; returns (B, T_q, D_v) or (B, H, T_q, D_v).

        Args:
            queries: (B, T_q, D), or (B, H, T_q, D) for multi-head use.
            keys: (B, T_k, D) or (B, H, T_k, D).
            values: (B, T_k, D_v) or (B, H, T_k, D_v).
            valid_lens: (B,) or (B, T_q) number of keys each query may see (d2l's semantics).
            mask: keep-mask broadcastable (torch's rules) to the scores (..., T_q, T_k).
        """
        _check_qkv(queries, keys, values, ranks=(3, 4))
        _check_width("keys", keys, queries.shape[-1], "(..., T_k, D) like queries")
        scores_shape = (*queries.shape[:-1], keys.shape[-2])  # (B, [H,] T_q, T_k)
        if mask is not None:
            _check_mask(mask, scores_shape, "the scores (..., T_q, T_k)")
        if valid_lens is not None:
            B, T_q, T_k = queries.shape[0], queries.shape[-2], keys.shape[-2]
            lens_mask = _valid_lens_mask(valid_lens, B, T_q, T_k)  # (B, T_q, T_k)
            if queries.dim() == 4:
                lens_mask = lens_mask.unsqueeze(1)  # (B, 1, T_q, T_k): the same for every head
            mask = combine_masks(mask, lens_mask)
        out, self.attention_weights = scaled_dot_product(queries, keys, values, mask,
                                                         self.dropout)
        return out


class AdditiveAttention(_Attention):
    """Bahdanau's attention: a one-hidden-layer MLP scores each (query, key) pair.

    Queries and keys may have different widths, ``query_size`` and ``key_size`` (both default to
    ``num_hiddens``, as in d2l's Bahdanau decoder): each is projected to ``num_hiddens`` first.
    """

    def __init__(self, num_hiddens: int, dropout: float = 0.0, *, query_size: int | None = None,
                 key_size: int | None = None):
        super().__init__(dropout)
        self.query_size = num_hiddens if query_size is None else query_size
        self.key_size = num_hiddens if key_size is None else key_size
        self.W_q = nn.Linear(self.query_size, num_hiddens, bias=False)
        self.W_k = nn.Linear(self.key_size, num_hiddens, bias=False)
        self.w_v = nn.Linear(num_hiddens, 1, bias=False)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                valid_lens: torch.Tensor | None = None, *,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mix the values by the MLP's scores; returns (B, T_q, D_v).

        Args:
            queries: (B, T_q, query_size). keys: (B, T_k, key_size). values: (B, T_k, D_v).
            valid_lens: (B,) or (B, T_q) number of keys each query may see (d2l's semantics).
            mask: keep-mask broadcastable to (B, T_q, T_k).
        """
        _check_qkv(queries, keys, values)
        _check_width("queries", queries, self.query_size, "(B, T_q, query_size)")
        _check_width("keys", keys, self.key_size, "(B, T_k, key_size)")
        (B, T_q, _), T_k = queries.shape, keys.shape[1]
        if mask is not None:
            _check_mask(mask, (B, T_q, T_k), "(B, T_q, T_k)")
        if valid_lens is not None:
            mask = combine_masks(mask, _valid_lens_mask(valid_lens, B, T_q, T_k))
        # Broadcast every query against every key: (B, T_q, 1, h) + (B, 1, T_k, h).
        features = torch.tanh(self.W_q(queries).unsqueeze(2) + self.W_k(keys).unsqueeze(1))
        scores = self.w_v(features).squeeze(-1)  # (B, T_q, T_k, 1) -> (B, T_q, T_k)
        self.attention_weights = masked_softmax(scores, mask=mask)
        return self.dropout(self.attention_weights) @ values  # (B, T_q, D_v)


# ---------------------------------------------------------------------------------------------
# Multi-head attention: H scaled dot-products side by side on D/H-wide slices.

@dataclasses.dataclass
class KVCache:
    """Projected keys and values (B, H, T, D/H) that one attention layer keeps between decoding
    steps, so that each step projects only its new tokens.

    Self-attention appends the new positions' keys and values at every step. Cross-attention
    reads the encoder memory, which never changes: with ``frozen=True`` the memory is
    projected once, at the first step, and the same keys and values serve every later step.
    """

    keys: torch.Tensor | None = None    # (B, H, T_past, D/H)
    values: torch.Tensor | None = None  # (B, H, T_past, D/H)
    frozen: bool = False

    @property
    def length(self) -> int:
        """Number of positions cached so far, T_past."""
        return 0 if self.keys is None else self.keys.shape[2]

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the new positions' k, v (B, H, T_new, D/H); return all keys and values so far."""
        if self.keys is not None:  # torch.cat makes new tensors: older copies stay valid
            k = torch.cat([self.keys, k], dim=2)  # (B, H, T_past + T_new, D/H)
            v = torch.cat([self.values, v], dim=2)
        self.keys, self.values = k, v
        return k, v


class MultiHeadAttention(nn.Module):
    """H attention heads in parallel, each on its own D/H-wide slice of projected q, k and v.

    With ``use_sdpa=True`` the core runs in the fused ``F.scaled_dot_product_attention``
    (faster, the same numbers to rounding); it keeps no weights: ``attention_weights`` is None.
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 use_sdpa: bool = False):
        super().__init__()
        if num_heads <= 0 or d_model % num_heads:
            raise ValueError(f"d_model must be divisible by num_heads, got d_model={d_model}, "
                             f"num_heads={num_heads}")
        self.d_model, self.num_heads, self.use_sdpa = d_model, num_heads, use_sdpa
        self.W_q = nn.Linear(d_model, d_model, bias=bias)
        self.W_k = nn.Linear(d_model, d_model, bias=bias)
        self.W_v = nn.Linear(d_model, d_model, bias=bias)
        self.W_o = nn.Linear(d_model, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.attention_weights: torch.Tensor | None = None

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                valid_lens: torch.Tensor | None = None, *, mask: torch.Tensor | None = None,
                cache: KVCache | None = None, need_weights: bool = True) -> torch.Tensor:
        """Attend from queries to keys (self-attention: all three the same); returns (B, T_q, D).

        Args:
            queries: (B, T_q, D). keys: (B, T_k, D). values: (B, T_k, D).
            valid_lens: (B,) or (B, T_q) number of keys each query may see (d2l's semantics).
            mask: keep-mask (T_q, T_k) (e.g. ``causal_mask``), (B, T_q, T_k), or anything
                broadcastable to (B, H, T_q, T_k), e.g. key padding as (B, 1, 1, T_k).
            cache: keys and values of earlier decoding steps (``KVCache``). The queries then
                attend to T_k = T_past + T_new keys, and masks and lengths count all of them.
            need_weights: keep (B, H, T_q, T_k) weights in ``attention_weights``.
        """
        _check_qkv(queries, keys, values)
        for name, t in (("queries", queries), ("keys", keys), ("values", values)):
            _check_width(name, t, self.d_model, "(B, T, d_model)")
        q = self.split_heads(self.W_q(queries))  # (B, H, T_q, D/H)
        if cache is not None and cache.frozen and cache.keys is not None:
            k, v = cache.keys, cache.values  # the memory, projected at an earlier step
        else:
            k = self.split_heads(self.W_k(keys))  # (B, H, T_k, D/H)
            v = self.split_heads(self.W_v(values))  # (B, H, T_k, D/H)
            if cache is not None:
                k, v = cache.update(k, v)  # (B, H, T_past + T_k, D/H)
        (B, H, T_q, d_head), T_k = q.shape, k.shape[2]
        keep = self._keep_mask(valid_lens, mask, B, T_q, T_k)  # broadcasts to (B, H, T_q, T_k)
        if self.use_sdpa:
            p = self.dropout.p if self.training else 0.0
            attn_mask = None if keep is None else to_sdpa_mask(keep)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
            self.attention_weights = None
        else:
            out, weights = scaled_dot_product(q, k, v, keep, self.dropout)  # (B, H, T_q, D/H)
            self.attention_weights = weights if need_weights else None
        out = out.transpose(1, 2).reshape(B, T_q, H * d_head)  # (B, T_q, H, D/H) -> (B, T_q, D)
        return self.W_o(out)

    def split_heads(self, X: torch.Tensor) -> torch.Tensor:
        """(B, T, D) projected inputs -> (B, H, T, D/H): each head gets its own slice."""
        B, T, D = X.shape
        return X.view(B, T, self.num_heads, D // self.num_heads).transpose(1, 2)

    def _keep_mask(self, valid_lens: torch.Tensor | None, mask: torch.Tensor | None,
                   B: int, T_q: int, T_k: int) -> torch.Tensor | None:
        """One keep-mask broadcastable to (B, H, T_q, T_k) from valid_lens and mask."""
        if mask is not None:
            if mask.dim() == 3:  # (B, T_q, T_k): the same for every head
                _check_mask(mask, (B, T_q, T_k), "(B, T_q, T_k)")
                mask = mask.unsqueeze(1)  # (B, 1, T_q, T_k)
            else:  # (T_q, T_k) or (B, H, T_q, T_k), broadcasting
                hint = " (key padding (B, T_k) goes in as mask[:, None, :] or valid_lens)"
                _check_mask(mask, (B, self.num_heads, T_q, T_k), "(B, H, T_q, T_k)",
                            hint if mask.dim() == 2 else "")
        if valid_lens is not None:
            lens_mask = _valid_lens_mask(valid_lens, B, T_q, T_k)  # (B, T_q, T_k)
            mask = combine_masks(mask, lens_mask.unsqueeze(1))  # (B, 1, T_q, T_k)
        return mask


def _check_same_layout(ours: MultiHeadAttention, theirs: nn.MultiheadAttention) -> None:
    """Reject a torch.nn.MultiheadAttention whose weights have no place in ours."""
    if (theirs.embed_dim, theirs.num_heads) != (ours.d_model, ours.num_heads):
        raise ValueError(
            f"embed dim and heads must match: ours d_model={ours.d_model}, "
            f"num_heads={ours.num_heads}; torch's embed_dim={theirs.embed_dim}, "
            f"num_heads={theirs.num_heads}")
    if not theirs._qkv_same_embed_dim:
        raise ValueError(f"torch's kdim and vdim must equal embed_dim={theirs.embed_dim}, "
                         f"got kdim={theirs.kdim}, vdim={theirs.vdim}")
    if theirs.bias_k is not None or theirs.add_zero_attn:
        raise ValueError("torch's add_bias_kv and add_zero_attn have no counterpart in ours")
    ours_bias, theirs_bias = ours.W_q.bias is not None, theirs.in_proj_bias is not None
    if ours_bias != theirs_bias:
        raise ValueError(f"bias must match: ours bias={ours_bias}, torch's bias={theirs_bias}")


@torch.no_grad()
def copy_weights_from_torch(ours: MultiHeadAttention,
                            theirs: nn.MultiheadAttention) -> MultiHeadAttention:
    """Load torch's weights into ours; torch stacks W_q, W_k, W_v into one ``in_proj_weight``."""
    _check_same_layout(ours, theirs)
    projections = (ours.W_q, ours.W_k, ours.W_v)
    for linear, weight in zip(projections, theirs.in_proj_weight.chunk(3), strict=True):
        linear.weight.copy_(weight)
    ours.W_o.weight.copy_(theirs.out_proj.weight)
    if theirs.in_proj_bias is not None:
        for linear, bias in zip(projections, theirs.in_proj_bias.chunk(3), strict=True):
            linear.bias.copy_(bias)
        ours.W_o.bias.copy_(theirs.out_proj.bias)
    return ours


@torch.no_grad()
def copy_weights_to_torch(ours: MultiHeadAttention,
                          theirs: nn.MultiheadAttention) -> nn.MultiheadAttention:
    """Load our weights into torch's ``nn.MultiheadAttention`` (the inverse of the above)."""
    _check_same_layout(ours, theirs)
    projections = (ours.W_q, ours.W_k, ours.W_v)
    theirs.in_proj_weight.copy_(torch.cat([linear.weight for linear in projections]))
    theirs.out_proj.weight.copy_(ours.W_o.weight)
    if theirs.in_proj_bias is not None:
        theirs.in_proj_bias.copy_(torch.cat([linear.bias for linear in projections]))
        theirs.out_proj.bias.copy_(ours.W_o.bias)
    return theirs
