"""Decoding the course's ``Transformer`` faster: one step of new tokens, with beams sharing memory.

# B decoder rows · S source sentences · W beams per sentence (B = S * W) · H heads
# T_src source time · T_past decoded positions · D model width · d = D / H

The teaching core (``course_lib.models.transformer``) runs one step through its blocks with a
``KVCache`` per attention layer, and beam search keeps one copy of every sentence's encoder
memory (and of its projected keys and values) per hypothesis, copying them again each time it
reorders hypotheses. Here the same weights run the same arithmetic with:

- **shared memory**: the W hypotheses of a sentence sit in consecutive decoder rows and read
  their sentence's one row of memory. Cross-attention runs them as W more queries of that row:
  (S*W, H, 1, d) queries become (S, H, W, d), so nothing is copied, and the memory's rows are
  only reordered when a sentence leaves the batch;
- **no mask for one new token**: at a step of one token every key so far is visible;
- **the matrix-product kernel for few keys**: ``F.scaled_dot_product_attention``'s fused CPU
  kernel pays a fixed cost per (sentence, head) that two batched matrix products do not; it
  wins only over more than 32 keys (``docs/results.md``). A model built with ``use_sdpa``
  uses the fused kernel there and on other devices.

Dropout is left out: decoding runs in eval mode. ``tests/test_fast_decoding.py`` checks that the
tokens and scores are the core's.
"""

from __future__ import annotations

import dataclasses

import torch
from torch.nn import functional as F

from course_lib.attention import MultiHeadAttention, scaled_dot_product
from course_lib.masking import padding_mask, to_sdpa_mask
from course_lib.models.transformer import Transformer, TransformerState

__all__ = ["SharedBeamState", "shared_state", "decode_step", "reorder"]

_MATMUL_MAX_KEYS = 32  # over more keys than this the fused CPU kernel is as fast or faster

KV = tuple[torch.Tensor, torch.Tensor]  # keys, values: each (rows, H, T, d)


@dataclasses.dataclass
class SharedBeamState:
    """The decoding state of a ``Transformer`` whose W beams per sentence share its memory."""

    memory: torch.Tensor                 # (S, T_src, D) encoder output
    src_valid_len: torch.Tensor          # (S,)
    memory_kv: list[KV | None]           # per block: the memory's keys/values (S, H, T_src, d)
    self_kv: list[KV | None]             # per block: keys/values so far (B, H, T_past, d)
    offset: int = 0                      # T_past, positions decoded so far
    beams: int = 1                       # W, decoder rows per sentence


def shared_state(model: Transformer, state: TransformerState) -> SharedBeamState:
    """The fast state of a freshly encoded ``TransformerState`` (no token decoded yet)."""
    layers = len(model.decoder.blocks)
    return SharedBeamState(state.memory, state.src_valid_len, [None] * layers, [None] * layers)


def _attend(mha: MultiHeadAttention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            keep: torch.Tensor | None) -> torch.Tensor:
    """Heads q (N, H, T_q, d) over k, v (N, H, T_k, d), merged and projected: (N, T_q, D)."""
    N, H, T_q, d = q.shape
    if mha.use_sdpa and (q.device.type != "cpu" or k.shape[2] > _MATMUL_MAX_KEYS):
        attn_mask = None if keep is None else to_sdpa_mask(keep)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    else:
        out, _ = scaled_dot_product(q, k, v, keep)  # (N, H, T_q, d)
    return mha.W_o(out.transpose(1, 2).reshape(N, T_q, H * d))


def _self_attention(mha: MultiHeadAttention, X: torch.Tensor, past: KV | None
                    ) -> tuple[torch.Tensor, KV]:
    """One new position X (B, 1, D) over itself and the cached ones; returns (B, 1, D), cache."""
    q, k, v = (mha.split_heads(W(X)) for W in (mha.W_q, mha.W_k, mha.W_v))  # (B, H, 1, d)
    if past is not None:
        k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # (B, H, T, d)
    return _attend(mha, q, k, v, None), (k, v)  # one new token sees every position so far


def _cross_attention(mha: MultiHeadAttention, X: torch.Tensor, memory: torch.Tensor,
                     src_valid_len: torch.Tensor, memory_kv: KV | None, beams: int
                     ) -> tuple[torch.Tensor, KV]:
    """Rows X (S*W, 1, D) reading their sentence's memory row (S, T_src, D) as W queries."""
    if memory_kv is None:  # the first step projects the memory, once
        memory_kv = (mha.split_heads(mha.W_k(memory)), mha.split_heads(mha.W_v(memory)))
    keep = padding_mask(src_valid_len, memory.shape[1])[:, None, None, :]  # (S, 1, 1, T_src)
    q = mha.split_heads(mha.W_q(X))  # (S*W, H, 1, d)
    (B, H, _, d), S = q.shape, memory.shape[0]
    q = q.view(S, beams, H, d).transpose(1, 2)  # (S, H, W, d): query w is beam w
    out = _attend(mha, q, *memory_kv, keep)  # (S, W, D)
    return out.reshape(B, 1, -1), memory_kv


def decode_step(model: Transformer, tokens: torch.Tensor, state: SharedBeamState
                ) -> tuple[torch.Tensor, SharedBeamState]:
    """Final hidden states (B, D) of one new token per row, tokens (B,); the state after it."""
    X = model.embed_target(tokens.unsqueeze(1), offset=state.offset)  # (B, 1, D)
    self_kv, memory_kv = [], []
    for i, block in enumerate(model.decoder.blocks):
        norm1, norm2, norm3 = block.norm1, block.norm2, block.norm3
        pre = block.norm_first
        out, kv = _self_attention(block.self_attention, norm1(X) if pre else X, state.self_kv[i])
        X = X + out if pre else norm1(X + out)
        out, mkv = _cross_attention(block.cross_attention, norm2(X) if pre else X, state.memory,
                                    state.src_valid_len, state.memory_kv[i], state.beams)
        X = X + out if pre else norm2(X + out)
        out = block.ffn(norm3(X) if pre else X)
        X = X + out if pre else norm3(X + out)
        self_kv.append(kv)
        memory_kv.append(mkv)
    features = model.decoder.norm(X[:, -1])  # (B, D)
    return features, dataclasses.replace(state, self_kv=self_kv, memory_kv=memory_kv,
                                         offset=state.offset + 1)


def reorder(state: SharedBeamState, rows: torch.Tensor, beams: int) -> SharedBeamState:
    """Keep decoder rows ``rows`` (S'*beams,), grouped by sentence, ``beams`` per sentence.

    The rows of one sentence all continue hypotheses of the same sentence, so the sentences
    kept are those of every ``beams``-th row; the memory is reordered only when one leaves.
    """
    sentences = rows[::beams] // state.beams  # (S',)
    self_kv = [None if kv is None else (kv[0][rows], kv[1][rows]) for kv in state.self_kv]
    state = dataclasses.replace(state, self_kv=self_kv, beams=beams)
    if sentences.shape[0] == state.memory.shape[0]:  # every sentence stays, in its place
        return state
    memory_kv = [None if kv is None else (kv[0][sentences], kv[1][sentences])
                 for kv in state.memory_kv]
    return dataclasses.replace(state, memory=state.memory[sentences],
                               src_valid_len=state.src_valid_len[sentences],
                               memory_kv=memory_kv)
