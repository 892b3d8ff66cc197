"""The Transformer encoder-decoder (Vaswani et al., 2017), written to be read.

# B batch · T time (T_src source, T_new new decoder tokens, T_past earlier ones) · H heads
# D model width (d_model) · V vocabulary size · N blocks per stack (num_layers)

    source tokens (B, T_src) -> src_embedding + src_positional -> Encoder -> memory (B, T_src, D)
    target tokens (B, T_new) -> tgt_embedding + tgt_positional -> Decoder (reads memory)
                             -> output (D -> V) -> logits (B, T_new, V)

    Encoder: N x EncoderBlock = self-attention, feed-forward
    Decoder: N x DecoderBlock = causal self-attention, cross-attention to memory, feed-forward

Every sublayer is wrapped in "add & norm" (``add_norm``): a residual connection and a
LayerNorm, after the sum (post-LN, the paper) or before the sublayer (pre-LN). Masks follow
``course_lib.masking`` (bool, True = keep)::

    from course_lib.models.transformer import Transformer, TransformerConfig
    model = Transformer(TransformerConfig.tiny(src_vocab_size=20, tgt_vocab_size=20))
    logits = model(src, src_valid_len, dec_input)       # (B, T_tgt, V): teacher forcing
    state = model.encode(src, src_valid_len)
    logits, state = model.decode(bos_column, state)     # (B, 1, V): one step, cached

THE KEY/VALUE CACHE. Decoding token by token, position t's self-attention needs the keys and
values of positions 0..t. Those of earlier positions never change (the mask is causal), so each
decoder block's self-attention keeps them in a ``KVCache`` and projects only the new tokens.
The encoder memory never changes either: cross-attention projects its keys and values once,
at the first step, into a frozen ``KVCache``. The caches travel in the decoding state, one
pair per block, and go into the attention modules as an argument (``course_lib.attention``).
``Transformer(config, use_cache=False)`` decodes without them, running every earlier token
again at each step: the same numbers, more work (lesson 12 measures it).

Faster decoding of this same model (beams sharing their sentence's memory, buffers, a padded
output layer) is in ``course_lib.fast``, tested equal to this file.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from course_lib.attention import KVCache, MultiHeadAttention
from course_lib.masking import causal_mask
from course_lib.models.base import DecoderState, EncoderDecoder, check_source
from course_lib.positional import LearnedPositionalEncoding, SinusoidalPositionalEncoding

__all__ = ["TransformerConfig", "FeedForward", "add_norm", "EncoderBlock", "DecoderBlock",
           "Encoder", "Decoder", "TransformerState", "Transformer", "count_parameters"]


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
        self.dropout = nn.Dropout(dropout)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.dropout(F.relu(self.linear1(X))))  # (B, T, D)


def add_norm(X: torch.Tensor, sublayer: Callable[[torch.Tensor], torch.Tensor],
             norm: nn.LayerNorm, dropout: nn.Module, norm_first: bool) -> torch.Tensor:
    """Residual connection: post-LN norm(X + f(X)), or pre-LN X + f(norm(X))."""
    if norm_first:
        return X + dropout(sublayer(norm(X)))
    return norm(X + dropout(sublayer(X)))


def _attention(config: TransformerConfig) -> MultiHeadAttention:
    """A multi-head attention sublayer of the config's sizes."""
    return MultiHeadAttention(config.d_model, config.num_heads, config.dropout,
                              use_sdpa=config.use_sdpa)


class EncoderBlock(nn.Module):
    """Self-attention over the source, then a feed-forward network; each with add & norm."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        c = config
        self.norm_first = c.norm_first
        self.self_attention = _attention(c)
        self.ffn = FeedForward(c.d_model, c.d_ff, c.dropout)
        self.norm1, self.norm2 = nn.LayerNorm(c.d_model), nn.LayerNorm(c.d_model)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, X: torch.Tensor, valid_lens: torch.Tensor | None = None) -> torch.Tensor:
        """X (B, T_src, D), valid_lens (B,) real source lengths; returns (B, T_src, D)."""
        X = add_norm(X, lambda h: self.self_attention(h, h, h, valid_lens), self.norm1,
                     self.dropout, self.norm_first)  # every token reads every real token
        return add_norm(X, self.ffn, self.norm2, self.dropout, self.norm_first)


class DecoderBlock(nn.Module):
    """Causal self-attention, cross-attention to the encoder memory, feed-forward network."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        c = config
        self.norm_first = c.norm_first
        self.self_attention = _attention(c)  # over the decoder's positions so far
        self.cross_attention = _attention(c)  # from the decoder's positions to the memory
        self.ffn = FeedForward(c.d_model, c.d_ff, c.dropout)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(c.d_model) for _ in range(3))
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, X: torch.Tensor, memory: torch.Tensor, src_valid_len: torch.Tensor | None,
                cache: KVCache | None = None, memory_cache: KVCache | None = None
                ) -> torch.Tensor:
        """Decoder positions X (B, T_new, D) reading memory (B, T_src, D); returns (B, T_new, D).

        Without a cache X holds every position (teacher forcing). With ``cache`` (the keys and
        values of T_past earlier positions) X holds only the new positions; ``cache`` and
        ``memory_cache`` are updated in place. ``src_valid_len`` (B,): source padding is ignored.
        """
        T_past = 0 if cache is None else cache.length
        keep = causal_mask(X.shape[1], T_past + X.shape[1], device=X.device)  # (T_new, T_all)
        X = add_norm(X, lambda h: self.self_attention(h, h, h, mask=keep, cache=cache),
                     self.norm1, self.dropout, self.norm_first)
        X = add_norm(X, lambda h: self.cross_attention(h, memory, memory, src_valid_len,
                                                       cache=memory_cache),
                     self.norm2, self.dropout, self.norm_first)
        return add_norm(X, self.ffn, self.norm3, self.dropout, self.norm_first)


class Encoder(nn.Module):
    """N encoder blocks, one after the other (pre-LN adds a final LayerNorm)."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.blocks = nn.ModuleList(EncoderBlock(config) for _ in range(config.num_layers))
        # Pre-LN leaves the residual stream un-normalised, so the stack ends with a LayerNorm.
        self.norm = nn.LayerNorm(config.d_model) if config.norm_first else nn.Identity()

    def forward(self, X: torch.Tensor, src_valid_len: torch.Tensor) -> torch.Tensor:
        """Embedded source X (B, T_src, D) -> memory (B, T_src, D)."""
        for block in self.blocks:
            X = block(X, src_valid_len)
        return self.norm(X)


class Decoder(nn.Module):
    """N decoder blocks, each reading the encoder memory (pre-LN adds a final LayerNorm)."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.blocks = nn.ModuleList(DecoderBlock(config) for _ in range(config.num_layers))
        self.norm = nn.LayerNorm(config.d_model) if config.norm_first else nn.Identity()

    def forward(self, X: torch.Tensor, memory: torch.Tensor, src_valid_len: torch.Tensor,
                caches: list[KVCache] | None = None,
                memory_caches: list[KVCache] | None = None) -> torch.Tensor:
        """Embedded decoder positions X (B, T_new, D) -> (B, T_new, D); caches: one per block."""
        for i, block in enumerate(self.blocks):
            cache = None if caches is None else caches[i]
            memory_cache = None if memory_caches is None else memory_caches[i]
            X = block(X, memory, src_valid_len, cache, memory_cache)
        return self.norm(X)


class _NoPositionalEncoding(nn.Module):
    """Dropout only: without positions, self-attention cannot tell word order (lesson 10)."""

    def __init__(self, d_model: int, dropout: float = 0.0, max_len: int = 0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)

    def forward(self, X: torch.Tensor, offset: int = 0) -> torch.Tensor:
        return self.dropout(X)


_POSITIONAL = {"sinusoidal": SinusoidalPositionalEncoding, "learned": LearnedPositionalEncoding,
               "none": _NoPositionalEncoding}


@dataclasses.dataclass
class TransformerState(DecoderState):
    """What ``Transformer.decode`` carries from one step to the next."""

    memory: torch.Tensor             # (B, T_src, D) encoder output
    src_valid_len: torch.Tensor      # (B,)
    past_tokens: torch.Tensor        # (B, T_past) decoder tokens fed so far
    caches: list[KVCache] | None     # per decoder block: self-attention keys/values so far
    memory_caches: list[KVCache] | None  # per decoder block: the memory's keys/values


class Transformer(EncoderDecoder):
    """Embeddings, an ``Encoder`` and a ``Decoder``, behind the course's model interface."""

    def __init__(self, config: TransformerConfig, use_cache: bool = True):
        super().__init__()
        c = self.config = config
        self.use_cache = use_cache  # decode with key/value caches (the same numbers, faster)
        self.src_embedding = nn.Embedding(c.src_vocab_size, c.d_model)
        self.tgt_embedding = (self.src_embedding if c.share_embeddings
                              else nn.Embedding(c.tgt_vocab_size, c.d_model))
        self.src_positional = _POSITIONAL[c.positional](c.d_model, c.dropout, c.max_len)
        self.tgt_positional = _POSITIONAL[c.positional](c.d_model, c.dropout, c.max_len)
        self.encoder = Encoder(c)
        self.decoder = Decoder(c)
        self.output = nn.Linear(c.d_model, c.tgt_vocab_size)
        if c.tie_output:
            self.output.weight = self.tgt_embedding.weight  # (V_tgt, D) serves both
            # nn.Embedding starts at N(0, 1): as output rows that gives logits of size
            # sqrt(D) ~ 16 and a near one-hot softmax at step 0. N(0, 1/D), as in Vaswani et
            # al.'s tied models, keeps the logits near 1; the input side is scaled by sqrt(D).
            nn.init.normal_(self.tgt_embedding.weight, std=c.d_model ** -0.5)

    def embed_target(self, tokens: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Decoder inputs (B, T, D) for target tokens (B, T) at positions offset.."""
        # Scale by sqrt(D): embeddings start near unit size per entry, positions add +-1 each.
        X = self.tgt_embedding(tokens) * math.sqrt(self.config.d_model)
        return self.tgt_positional(X, offset)

    def encode(self, src: torch.Tensor, src_valid_len: torch.Tensor) -> TransformerState:
        """Run the encoder on src (B, T_src) with lengths (B,); the state starts empty."""
        check_source(src, src_valid_len)
        X = self.src_embedding(src) * math.sqrt(self.config.d_model)  # (B, T_src, D)
        memory = self.encoder(self.src_positional(X), src_valid_len)
        N = len(self.decoder.blocks)
        caches = [KVCache() for _ in range(N)] if self.use_cache else None
        memory_caches = [KVCache(frozen=True) for _ in range(N)] if self.use_cache else None
        empty = src.new_zeros(src.shape[0], 0)  # (B, 0): no decoder token yet
        return TransformerState(memory, src_valid_len, empty, caches, memory_caches)

    def decode_features(self, dec_input: torch.Tensor, state: TransformerState
                        ) -> tuple[torch.Tensor, TransformerState]:
        """Final hidden states (B, T_new, D) of the new decoder tokens dec_input (B, T_new).

        With caches only the new tokens run; without, every token so far runs again and the
        new positions are kept. ``state`` itself is never modified.
        """
        B = state.memory.shape[0]
        if dec_input.dim() != 2 or dec_input.shape[0] != B:
            raise ValueError(f"dec_input must be (B, T_new) token ids with B = {B}, "
                             f"got shape {tuple(dec_input.shape)}")
        T_past = state.past_tokens.shape[1]
        tokens = torch.cat([state.past_tokens, dec_input], dim=1)  # (B, T_past + T_new)
        if state.caches is None:  # no cache: all positions again, keep the new ones
            X = self.decoder(self.embed_target(tokens), state.memory, state.src_valid_len)
            return X[:, T_past:], dataclasses.replace(state, past_tokens=tokens)
        # The blocks grow the caches in place: work on copies, so `state` stays as it was.
        caches = [dataclasses.replace(cache) for cache in state.caches]
        memory_caches = [dataclasses.replace(cache) for cache in state.memory_caches]
        X = self.decoder(self.embed_target(dec_input, offset=T_past), state.memory,
                         state.src_valid_len, caches, memory_caches)  # (B, T_new, D)
        return X, dataclasses.replace(state, past_tokens=tokens, caches=caches,
                                      memory_caches=memory_caches)

    def encoder_attention_weights(self) -> list[torch.Tensor | None]:
        """Per encoder layer, the last self-attention weights (B, H, T_src, T_src)."""
        return [block.self_attention.attention_weights for block in self.encoder.blocks]

    def decoder_self_attention_weights(self) -> list[torch.Tensor | None]:
        """Per decoder layer, the last self-attention weights (B, H, T_new, T_past + T_new)."""
        return [block.self_attention.attention_weights for block in self.decoder.blocks]

    def cross_attention_weights(self) -> list[torch.Tensor | None]:
        """Per decoder layer, the last cross-attention weights (B, H, T_new, T_src)."""
        return [block.cross_attention.attention_weights for block in self.decoder.blocks]


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters; a shared (tied) weight counts once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
