"""The course's ``Transformer`` run faster for decoding: its encoder, and one decoder step.

# B decoder rows · S source sentences · W beams per sentence (B = S * W) · H heads
# T_src source time · T_past decoded positions · D model width · d = D / H

The teaching core (``course_lib.models.transformer``) runs a decoding step through its blocks
with a ``KVCache`` per attention layer, and beam search keeps one copy of every sentence's
encoder memory (and of its projected keys and values) per hypothesis, copying them again each
time it reorders hypotheses. Here the same weights run the same arithmetic with:

- **shared memory**: the W hypotheses of a sentence sit in consecutive decoder rows and read
  their sentence's one row of memory. Cross-attention runs them as W more queries of that row:
  (S*W, H, 1, d) queries become (S, H, W, d), so nothing is copied, and the memory's rows are
  only reordered when a sentence leaves the batch;
- **stacked projections**: W_q, W_k and W_v of a self-attention (W_k and W_v of a
  cross-attention) as one matrix, so one product makes all three (``Projections``);
- **no mask for one new token**: at a step of one token every key so far is visible;
- **the matrix-product kernel for few keys**: ``F.scaled_dot_product_attention``'s fused CPU
  kernel pays a fixed cost per (sentence, head) that two batched matrix products do not: for
  several queries over at most 32 keys (an encoder, beam search's cross-attention) the
  products win; for one query (a greedy step) or more keys the fused kernel does
  (``fused_kernel_pays``, ``docs/results.md``). Only a model built with ``use_sdpa`` uses it.

Dropout is left out: decoding runs in eval mode. ``tests/test_fast_decoding.py`` checks that the
tokens and scores are the core's.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch.nn import functional as F

from course_lib.attention import MultiHeadAttention, scaled_dot_product
from course_lib.masking import padding_mask, to_sdpa_mask
from course_lib.models.base import check_source
from course_lib.models.transformer import Transformer

__all__ = ["SharedBeamState", "Projections", "FusedWeights", "encode", "decode_step",
           "reorder"]

_MATMUL_MAX_KEYS = 32  # over more keys than this the fused CPU kernel is as fast or faster

KV = tuple[torch.Tensor, torch.Tensor]  # keys, values: each (rows, H, T, d)


@dataclasses.dataclass
class SharedBeamState:
    """The decoding state of a ``Transformer`` whose W beams per sentence share its memory."""

    memory: torch.Tensor                 # (S, T_src, D) encoder output
    src_valid_len: torch.Tensor          # (S,)
    memory_kv: list[KV | None]           # per block: the memory's keys/values (S, H, T_src, d)
    self_kv: list[KV | None]             # per block: keys/values so far (B, H, T_past, d)
    beams: int = 1                       # W, decoder rows per sentence

    @property
    def offset(self) -> int:
        """T_past, the positions decoded so far (the length of the self-attention cache)."""
        return 0 if self.self_kv[0] is None else self.self_kv[0][0].shape[2]


@dataclasses.dataclass
class Projections:
    """Several projections of one attention module side by side (their weights stacked), so
    that one matrix product makes all of them: W_q, W_k, W_v of self-attention, or W_k, W_v of
    cross-attention."""

    weight: torch.Tensor  # (n*D, D)
    bias: torch.Tensor    # (n*D,)
    num_heads: int

    @classmethod
    def of(cls, mha: MultiHeadAttention, *names: str) -> Projections:
        linears = [getattr(mha, name) for name in names]
        biases = [lin.bias if lin.bias is not None else lin.weight.new_zeros(lin.out_features)
                  for lin in linears]
        return cls(torch.cat([lin.weight for lin in linears]), torch.cat(biases), mha.num_heads)

    def __call__(self, X: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """X (B, T, D) -> n tensors (B, H, T, d), split into heads."""
        B, T, _ = X.shape
        Y = F.linear(X, self.weight, self.bias)  # (B, T, n*D)
        d = self.weight.shape[1] // self.num_heads
        return Y.view(B, T, -1, self.num_heads, d).permute(2, 0, 3, 1, 4).unbind(0)


@dataclasses.dataclass
class FusedWeights:
    """The stacked projections of every block of a ``Transformer``, made once per decoding."""

    encoder_qkv: list[Projections]
    decoder_qkv: list[Projections]
    memory_kv: list[Projections]

    @classmethod
    def of(cls, model: Transformer) -> FusedWeights:
        qkv = ("W_q", "W_k", "W_v")
        return cls([Projections.of(b.self_attention, *qkv) for b in model.encoder.blocks],
                   [Projections.of(b.self_attention, *qkv) for b in model.decoder.blocks],
                   [Projections.of(b.cross_attention, "W_k", "W_v")
                    for b in model.decoder.blocks])


def encode(model: Transformer, fused: FusedWeights, src: torch.Tensor,
           src_valid_len: torch.Tensor) -> SharedBeamState:
    """The encoder of ``model`` on src (S, T_src): its blocks' arithmetic, with stacked
    projections and the kernel ``fused_kernel_pays`` picks; the fast state to decode from."""
    check_source(src, src_valid_len)
    X = model.src_positional(model.src_embedding(src) * math.sqrt(model.config.d_model))
    keep = padding_mask(src_valid_len, src.shape[1])[:, None, None, :]  # (S, 1, 1, T_src)
    for block, qkv in zip(model.encoder.blocks, fused.encoder_qkv, strict=True):
        pre, norm1, norm2 = block.norm_first, block.norm1, block.norm2
        out = _attend(block.self_attention, *qkv(norm1(X) if pre else X), keep)
        X = X + out if pre else norm1(X + out)
        out = block.ffn(norm2(X) if pre else X)
        X = X + out if pre else norm2(X + out)
    layers = len(model.decoder.blocks)
    return SharedBeamState(model.encoder.norm(X), src_valid_len, [None] * layers,
                           [None] * layers)


def fused_kernel_pays(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether the fused kernel beats two matrix products for queries q over keys k (..., T, d):
    off the CPU, for one query (a greedy step), or over more than 32 keys."""
    return q.device.type != "cpu" or q.shape[-2] == 1 or k.shape[-2] > _MATMUL_MAX_KEYS


def _attend(mha: MultiHeadAttention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            keep: torch.Tensor | None) -> torch.Tensor:
    """Heads q (N, H, T_q, d) over k, v (N, H, T_k, d), merged and projected: (N, T_q, D)."""
    N, H, T_q, d = q.shape
    if mha.use_sdpa and fused_kernel_pays(q, k):
        attn_mask = None if keep is None else to_sdpa_mask(keep)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    else:
        out, _ = scaled_dot_product(q, k, v, keep)  # (N, H, T_q, d)
    return mha.W_o(out.transpose(1, 2).reshape(N, T_q, H * d))


def _self_attention(mha: MultiHeadAttention, qkv: Projections, X: torch.Tensor,
                    past: KV | None) -> tuple[torch.Tensor, KV]:
    """One new position X (B, 1, D) over itself and the cached ones; returns (B, 1, D), cache."""
    q, k, v = qkv(X)  # (B, H, 1, d) each
    if past is not None:
        k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # (B, H, T, d)
    return _attend(mha, q, k, v, None), (k, v)  # one new token sees every position so far


def _cross_attention(mha: MultiHeadAttention, kv: Projections, X: torch.Tensor,
                     memory: torch.Tensor, src_valid_len: torch.Tensor, memory_kv: KV | None,
                     beams: int) -> tuple[torch.Tensor, KV]:
    """Rows X (S*W, 1, D) reading their sentence's memory row (S, T_src, D) as W queries."""
    if memory_kv is None:  # the first step projects the memory, once
        memory_kv = kv(memory)  # keys, values (S, H, T_src, d)
    keep = padding_mask(src_valid_len, memory.shape[1])[:, None, None, :]  # (S, 1, 1, T_src)
    q = mha.split_heads(mha.W_q(X))  # (S*W, H, 1, d)
    (B, H, _, d), S = q.shape, memory.shape[0]
    q = q.view(S, beams, H, d).transpose(1, 2)  # (S, H, W, d): query w is beam w
    out = _attend(mha, q, *memory_kv, keep)  # (S, W, D)
    return out.reshape(B, 1, -1), memory_kv


def decode_step(model: Transformer, fused: FusedWeights, tokens: torch.Tensor,
                state: SharedBeamState) -> tuple[torch.Tensor, SharedBeamState]:
    """Final hidden states (B, D) of one new token per row, tokens (B,); the state after it."""
    X = model.embed_target(tokens.unsqueeze(1), offset=state.offset)  # (B, 1, D)
    self_kv, memory_kv = [], []
    for i, block in enumerate(model.decoder.blocks):
        norm1, norm2, norm3 = block.norm1, block.norm2, block.norm3
        pre = block.norm_first
        out, kv = _self_attention(block.self_attention, fused.decoder_qkv[i],
                                  norm1(X) if pre else X, state.self_kv[i])
        X = X + out if pre else norm1(X + out)
        out, mkv = _cross_attention(block.cross_attention, fused.memory_kv[i],
                                    norm2(X) if pre else X, state.memory, state.src_valid_len,
                                    state.memory_kv[i], state.beams)
        X = X + out if pre else norm2(X + out)
        out = block.ffn(norm3(X) if pre else X)
        X = X + out if pre else norm3(X + out)
        self_kv.append(kv)
        memory_kv.append(mkv)
    features = model.decoder.norm(X[:, -1])  # (B, D)
    return features, dataclasses.replace(state, self_kv=self_kv, memory_kv=memory_kv)


def reorder(state: SharedBeamState, rows: torch.Tensor, beams: int) -> SharedBeamState:
    """Keep decoder rows ``rows`` (S'*beams,), grouped by sentence, ``beams`` per sentence.

    The rows of one sentence all continue hypotheses of the same sentence, so the sentences
    kept are those of every ``beams``-th row; the memory is reordered only when one leaves.
    """
    sentences = rows[::beams] // state.beams  # (S',)
    self_kv = [None if kv is None else (kv[0].index_select(0, rows), kv[1].index_select(0, rows))
               for kv in state.self_kv]
    state = dataclasses.replace(state, self_kv=self_kv, beams=beams)
    if sentences.shape[0] == state.memory.shape[0]:  # every sentence stays, in its place
        return state
    memory_kv = [None if kv is None else (kv[0].index_select(0, sentences),
                                          kv[1].index_select(0, sentences))
                 for kv in state.memory_kv]
    return dataclasses.replace(state, memory=state.memory.index_select(0, sentences),
                               src_valid_len=state.src_valid_len.index_select(0, sentences),
                               memory_kv=memory_kv)
