"""The Transformer encoder-decoder (Vaswani et al., 2017), with a key/value cache for decoding.

# B batch · T time (T_src source, T_new new decoder tokens, T_past earlier ones) · H heads
# D model width (d_model) · V vocabulary size

One concept per class: ``FeedForward``, ``EncoderBlock``, ``DecoderBlock``, ``Transformer``.
Masks follow ``course_lib.masking`` (bool, True = keep)::

    from course_lib.models.transformer import Transformer, TransformerConfig
    model = Transformer(TransformerConfig.tiny(src_vocab_size=20, tgt_vocab_size=20))
    logits = model(src, src_valid_len, dec_input)       # (B, T_tgt, V): teacher forcing
    state = model.encode(src, src_valid_len)
    logits, state = model.decode(bos_column, state)     # (B, 1, V): one step, cached

THE KEY/VALUE CACHE. Decoding token by token, position t's self-attention needs the keys and
values of positions 0..t. Those of earlier positions never change (the mask is causal), so each
``DecoderBlock`` keeps its projected keys and values, (B, H, T_past, D/H), in the state and
projects only the new tokens. We cache projected K/V rather than the block inputs because that
is what "KV cache" means in every production decoder, and it saves the W_k/W_v projections of
all earlier positions at every step as well as their queries, FFN and cross-attention. The keys
and values of the encoder memory for cross-attention never change during decoding, so they are
projected once, at the first step, and kept in the state too. Both caches go through
``MultiHeadAttention.split_heads`` and ``.attend``, the same code as ``forward``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from course_lib.attention import (
    LearnedPositionalEncoding,
    MultiHeadAttention,
    SinusoidalPositionalEncoding,
)
from course_lib.dropout import Dropout
from course_lib.masking import causal_mask, padding_mask
from course_lib.models.base import DecoderState, EncoderDecoder

__all__ = ["TransformerConfig", "FeedForward", "add_norm", "EncoderBlock", "DecoderBlock",
           "TransformerState", "Transformer", "count_parameters"]

KVCache = tuple[torch.Tensor, torch.Tensor]  # keys, values: each (B, H, T_past, D/H)


@dataclasses.dataclass
class TransformerConfig:
    """Sizes and switches of a Transformer; ``tiny`` gives a model that trains in seconds on CPU."""

    src_vocab_size: int
    tgt_vocab_size: int
    d_model: int = 128           # width of every token representation
    num_heads: int = 4           # d_model must be divisible by num_heads
    num_layers: int = 2          # blocks in the encoder, and in the decoder
    d_ff: int = 256              # hidden width of the position-wise feed-forward network
    dropout: float = 0.1         # after attention, FFN, and embeddings + positions
    norm_first: bool = False     # False: post-LN as in the paper; True: pre-LN + final norms
    share_embeddings: bool = False  # one embedding for source and target (equal vocab sizes)
    tie_output: bool = False     # the output projection reuses the target embedding's weight
    positional: str = "sinusoidal"  # "sinusoidal", "learned", or "none" (order-blind)
    max_len: int = 256           # longest sequence the positional encoding covers
    use_sdpa: bool = False       # fused F.scaled_dot_product_attention (no weights to plot)

    def __post_init__(self):
        if self.num_heads <= 0 or self.d_model % self.num_heads:
            raise ValueError(f"d_model must be divisible by num_heads, got d_model="
                             f"{self.d_model}, num_heads={self.num_heads}")
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ValueError(f"share_embeddings needs equal vocabulary sizes, got "
                             f"src_vocab_size={self.src_vocab_size}, "
                             f"tgt_vocab_size={self.tgt_vocab_size}")
        if self.positional not in ("sinusoidal", "learned", "none"):
            raise ValueError(f"positional must be 'sinusoidal', 'learned' or 'none', "
                             f"got {self.positional!r}")

    @classmethod
    def tiny(cls, src_vocab_size: int, tgt_vocab_size: int, **changes) -> TransformerConfig:
        """A model small enough for unit tests and CPU demos."""
        sizes = dict(d_model=32, num_heads=2, num_layers=2, d_ff=64, dropout=0.0, max_len=64)
        return cls(src_vocab_size, tgt_vocab_size, **(sizes | changes))


class FeedForward(nn.Module):
    """The same two-layer MLP applied to every position on its own: D -> d_ff -> D."""

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0):
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.dropout = Dropout(dropout)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.dropout(F.relu(self.linear1(X))))  # (B, T, D)


def add_norm(X: torch.Tensor, sublayer, norm: nn.LayerNorm, dropout: nn.Module,
              norm_first: bool) -> torch.Tensor:
    """Residual connection: post-LN norm(X + f(X)), or pre-LN X + f(norm(X))."""
    if norm_first:
        return X + dropout(sublayer(norm(X)))
    return norm(X + dropout(sublayer(X)))


class EncoderBlock(nn.Module):
    """Self-attention over the source, then a feed-forward network; each with add & norm."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        c = config
        self.norm_first = c.norm_first
        self.self_attention = MultiHeadAttention(c.d_model, c.num_heads, c.dropout,
                                                 use_sdpa=c.use_sdpa)
        self.ffn = FeedForward(c.d_model, c.d_ff, c.dropout)
        self.norm1, self.norm2 = nn.LayerNorm(c.d_model), nn.LayerNorm(c.d_model)
        self.dropout = Dropout(c.dropout)

    def forward(self, X: torch.Tensor, valid_lens: torch.Tensor | None = None) -> torch.Tensor:
        """X (B, T_src, D), valid_lens (B,) real source lengths; returns (B, T_src, D)."""
        X = add_norm(X, lambda h: self.self_attention(h, h, h, valid_lens), self.norm1,
                      self.dropout, self.norm_first)
        return add_norm(X, self.ffn, self.norm2, self.dropout, self.norm_first)


class DecoderBlock(nn.Module):
    """Causal self-attention, cross-attention to the encoder memory, feed-forward network."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        c = config
        self.norm_first = c.norm_first
        self.self_attention = MultiHeadAttention(c.d_model, c.num_heads, c.dropout,
                                                 use_sdpa=c.use_sdpa)
        self.cross_attention = MultiHeadAttention(c.d_model, c.num_heads, c.dropout,
                                                  use_sdpa=c.use_sdpa)
        self.ffn = FeedForward(c.d_model, c.d_ff, c.dropout)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(c.d_model) for _ in range(3))
        self.dropout = Dropout(c.dropout)

    def forward(self, X: torch.Tensor, memory: torch.Tensor, src_valid_len: torch.Tensor | None,
                past: KVCache | None = None, use_cache: bool = False,
                memory_kv: KVCache | None = None, beams: int = 1,
                ) -> tuple[torch.Tensor, KVCache | None, KVCache | None]:
        """Run the new decoder positions; returns (B, T_new, D) and the block's updated caches.

        Args:
            X: (B, T_new, D) the new positions. memory: (B, T_src, D) encoder output, or
                (B / beams, T_src, D): see ``beams``.
            src_valid_len: (B,) real source lengths (or (B / beams,)): cross-attention ignores
                source padding.
            past: self-attention keys and values (B, H, T_past, D/H) of earlier positions.
            use_cache: attend through ``past`` and return the grown cache, and project the
                memory's keys/values once (``memory_kv``); else plain causal self-attention
                over X alone (teacher forcing, uncached decoding).
            memory_kv: cross-attention keys and values (B / beams, H, T_src, D/H) from an
                earlier step.
            beams: rows of X per row of memory: rows s*beams .. s*beams + beams - 1 of X (beam
                search's hypotheses of sentence s) all read memory row s.
        Returns (output, self-attention cache, memory keys/values); the caches are None
        without ``use_cache``.
        """
        if memory.shape[0] * beams != X.shape[0]:
            raise ValueError(f"X must have beams = {beams} rows per memory row: expected "
                             f"{memory.shape[0] * beams} rows, got X {tuple(X.shape)}")
        new_cache = None

        def self_attend(h: torch.Tensor) -> torch.Tensor:
            nonlocal new_cache
            if not use_cache:
                return self.self_attention(h, h, h, mask=causal_mask(h.shape[1], device=h.device))
            mha = self.self_attention
            q, k, v = (mha.split_heads(W(h)) for W in (mha.W_q, mha.W_k, mha.W_v))
            if past is not None:  # torch.cat makes new tensors: the old state stays valid
                k = torch.cat([past[0], k], dim=2)  # (B, H, T_past + T_new, D/H)
                v = torch.cat([past[1], v], dim=2)
            new_cache = (k, v)
            # One new token may see every position so far: no mask needed (the same numbers).
            keep = (None if h.shape[1] == 1
                    else causal_mask(h.shape[1], k.shape[2], device=h.device))  # (T_new, T_all)
            return mha.attend(q, k, v, keep)

        def cross_attend(h: torch.Tensor) -> torch.Tensor:
            nonlocal memory_kv
            if not use_cache:
                if beams == 1:
                    return self.cross_attention(h, memory, memory, src_valid_len)
                rows = [None if t is None else t.repeat_interleave(beams, dim=0)
                        for t in (memory, src_valid_len)]  # a memory row per row of h
                return self.cross_attention(h, rows[0], rows[0], rows[1])
            mha = self.cross_attention
            if memory_kv is None:
                memory_kv = (mha.split_heads(mha.W_k(memory)), mha.split_heads(mha.W_v(memory)))
            keep = padding_mask(src_valid_len, memory.shape[1])[:, None, None, :]  # (S,1,1,T_src)
            q = mha.split_heads(mha.W_q(h))  # (B, H, T_new, D/H)
            if beams == 1:
                return mha.attend(q, *memory_kv, keep)
            # The beams of sentence s are beams more queries on its one memory row:
            # (S*beams, H, T_new, D/H) -> (S, H, beams*T_new, D/H), query w*T_new + t.
            (B, H, T_new, d_head), S = q.shape, q.shape[0] // beams
            q = q.view(S, beams, H, T_new, d_head).transpose(1, 2).reshape(S, H, -1, d_head)
            out = mha.attend(q, *memory_kv, keep)  # (S, beams*T_new, D)
            if mha.attention_weights is not None:  # back to one row per hypothesis
                mha.attention_weights = (mha.attention_weights.view(S, H, beams, T_new, -1)
                                         .transpose(1, 2).reshape(B, H, T_new, -1))
            return out.view(B, T_new, -1)

        X = add_norm(X, self_attend, self.norm1, self.dropout, self.norm_first)
        X = add_norm(X, cross_attend, self.norm2, self.dropout, self.norm_first)
        X = add_norm(X, self.ffn, self.norm3, self.dropout, self.norm_first)
        return X, new_cache, (memory_kv if use_cache else None)


class _NoPositionalEncoding(nn.Module):
    """Dropout only: without positions, self-attention cannot tell word order (lesson 10)."""

    def __init__(self, d_model: int, dropout: float = 0.0, max_len: int = 0):
        super().__init__()
        self.dropout = Dropout(dropout)

    def forward(self, X: torch.Tensor, offset: int = 0) -> torch.Tensor:
        return self.dropout(X)


_POSITIONAL = {"sinusoidal": SinusoidalPositionalEncoding, "learned": LearnedPositionalEncoding,
               "none": _NoPositionalEncoding}


@dataclasses.dataclass
class TransformerState(DecoderState):
    """What ``Transformer.decode`` carries from step to step (``offset`` is not reordered).

    B counts decoder rows and S source rows. After ``encode`` they are equal (``beams`` = 1).
    Beam search runs ``beams`` hypotheses of each sentence in consecutive decoder rows, and
    they share their sentence's one row of the per-source fields: its cross-attention reads
    that memory with ``beams`` queries at once, rather than from ``beams`` copies of it, which
    would have to be copied again every time the hypotheses are reordered.
    """

    memory: torch.Tensor                # (S, T_src, D) encoder output
    src_valid_len: torch.Tensor         # (S,)
    cache: list[KVCache | None]         # per decoder layer: (keys, values) (B, H, T_past, D/H)
    memory_kv: list[KVCache | None]     # per decoder layer: memory keys, values (S, H, T_src, D/H)
    past_tokens: torch.Tensor           # (B, T_past) decoder tokens so far (uncached decoding)
    offset: int = 0                     # number of positions decoded so far, T_past
    beams: int = 1                      # decoder rows per source row (beam search), see above
    per_source: ClassVar[tuple[str, ...]] = ("memory", "src_valid_len", "memory_kv")
    shares_sources: ClassVar[bool] = True


class Transformer(EncoderDecoder):
    """Encoder and decoder stacks of Transformer blocks behind the course's model interface."""

    def __init__(self, config: TransformerConfig, use_cache: bool = True):
        super().__init__()
        c = self.config = config
        self.use_cache = use_cache  # default of decode(..., use_cache=None)
        self.src_embedding = nn.Embedding(c.src_vocab_size, c.d_model)
        self.tgt_embedding = (self.src_embedding if c.share_embeddings
                              else nn.Embedding(c.tgt_vocab_size, c.d_model))
        self.src_positional = _POSITIONAL[c.positional](c.d_model, c.dropout, c.max_len)
        self.tgt_positional = _POSITIONAL[c.positional](c.d_model, c.dropout, c.max_len)
        self.encoder_blocks = nn.ModuleList(EncoderBlock(c) for _ in range(c.num_layers))
        self.decoder_blocks = nn.ModuleList(DecoderBlock(c) for _ in range(c.num_layers))
        # Pre-LN leaves the residual stream un-normalised, so each stack ends with a LayerNorm.
        self.encoder_norm = nn.LayerNorm(c.d_model) if c.norm_first else nn.Identity()
        self.decoder_norm = nn.LayerNorm(c.d_model) if c.norm_first else nn.Identity()
        self.output = nn.Linear(c.d_model, c.tgt_vocab_size)
        if c.tie_output:
            self.output.weight = self.tgt_embedding.weight  # (V_tgt, D) serves both
            # nn.Embedding starts at N(0, 1): as output rows that gives logits of size
            # sqrt(D) ~ 16 and a near one-hot softmax at step 0. N(0, 1/D), as in Vaswani et
            # al.'s tied models, keeps the logits near 1; the input side is scaled by sqrt(D).
            nn.init.normal_(self.tgt_embedding.weight, std=c.d_model ** -0.5)

    def _embed(self, tokens: torch.Tensor, embedding: nn.Embedding, positional: nn.Module,
               offset: int = 0) -> torch.Tensor:
        # Scale by sqrt(D): embeddings start near unit size per entry, positions add +-1 each.
        X = embedding(tokens) * math.sqrt(self.config.d_model)  # (B, T, D)
        return positional(X, offset)

    def encode(self, src: torch.Tensor, src_valid_len: torch.Tensor) -> TransformerState:
        """Run the encoder on src (B, T_src) with lengths (B,); the state starts empty."""
        if src.dim() != 2:
            raise ValueError(f"src must be (B, T_src) token ids, got shape {tuple(src.shape)}")
        if src_valid_len.shape != src.shape[:1]:
            raise ValueError(f"src_valid_len must be (B,) = ({src.shape[0]},), "
                             f"got {tuple(src_valid_len.shape)}")
        X = self._embed(src, self.src_embedding, self.src_positional)  # (B, T_src, D)
        for block in self.encoder_blocks:
            X = block(X, src_valid_len)
        memory = self.encoder_norm(X)
        empty = src.new_zeros(src.shape[0], 0)  # (B, 0): no decoder token yet
        layers = len(self.decoder_blocks)
        return TransformerState(memory, src_valid_len, [None] * layers, [None] * layers, empty)

    def decode_features(self, dec_input: torch.Tensor, state: TransformerState,
                        use_cache: bool | None = None) -> tuple[torch.Tensor, TransformerState]:
        """Final hidden states (B, T_new, D) of the new decoder tokens dec_input (B, T_new).

        With the cache only the new tokens run, attending to earlier positions through the
        cached keys/values; without it all tokens so far run again and the new ones' logits
        are returned. Both give the same numbers. ``use_cache`` overrides ``self.use_cache``
        for this call (``decode(dec_input, state, use_cache=False)`` passes it on). ``state``
        itself is never modified.
        """
        use_cache = self.use_cache if use_cache is None else use_cache
        B = state.memory.shape[0] * state.beams  # decoder rows
        if dec_input.dim() != 2 or dec_input.shape[0] != B:
            raise ValueError(f"dec_input must be (B, T_new) token ids with B = {B}, "
                             f"got shape {tuple(dec_input.shape)}")
        if use_cache and state.offset > 0 and state.cache[0] is None:
            raise ValueError("this state was decoded without the cache: go on with "
                             "use_cache=False (or start again from encode)")
        T_new = dec_input.shape[1]
        tokens = torch.cat([state.past_tokens, dec_input], dim=1)  # (B, T_past + T_new)
        if use_cache:
            X = self._embed(dec_input, self.tgt_embedding, self.tgt_positional, state.offset)
        else:
            X = self._embed(tokens, self.tgt_embedding, self.tgt_positional)
        cache, memory_kv = [], []
        for block, past, kv in zip(self.decoder_blocks, state.cache, state.memory_kv, strict=True):
            X, layer_cache, layer_kv = block(X, state.memory, state.src_valid_len, past,
                                             use_cache, kv, state.beams)
            cache.append(layer_cache)
            memory_kv.append(layer_kv)
        features = self.decoder_norm(X[:, -T_new:])  # (B, T_new, D)
        new_state = dataclasses.replace(state, cache=cache, memory_kv=memory_kv,
                                        past_tokens=tokens, offset=state.offset + T_new)
        return features, new_state

    def encoder_attention_weights(self) -> list[torch.Tensor | None]:
        """Per encoder layer, the last self-attention weights (B, H, T_src, T_src)."""
        return [block.self_attention.attention_weights for block in self.encoder_blocks]

    def decoder_self_attention_weights(self) -> list[torch.Tensor | None]:
        """Per decoder layer, the last self-attention weights (B, H, T_new, T_past + T_new)."""
        return [block.self_attention.attention_weights for block in self.decoder_blocks]

    def cross_attention_weights(self) -> list[torch.Tensor | None]:
        """Per decoder layer, the last cross-attention weights (B, H, T_new, T_src)."""
        return [block.cross_attention.attention_weights for block in self.decoder_blocks]


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters; a shared (tied) weight counts once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
