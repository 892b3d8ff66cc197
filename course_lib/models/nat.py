"""A non-autoregressive Transformer (NAT, Gu et al., 2018): predict the length, then all tokens.

# B batch · T_src source time · T positions of the target · H heads · D model width (d_model)
# V target vocabulary size · C length classes (0..max_len)

An autoregressive decoder emits y_1, then y_2 given y_1, and so on: T sequential steps. A NAT
decoder emits every target token in ONE parallel pass:

1. the encoder reads the source, as in the Transformer (``EncoderBlock``);
2. a **length predictor** classifies the target length L (C = max_len + 1 classes) from the
   mean of the encoder outputs over the S real source positions plus an embedding of S;
3. the decoder gets L input vectors that depend on the source only, never on target tokens:
   a **uniform copy** of the source embeddings (target position j copies source position
   floor(j · S / L), S the real source length; Gu et al.) or learned **position queries**;
   positional encodings are added to both;
4. decoder blocks use self-attention WITHOUT the causal mask (position t sees every target
   position before and after it, but none past L), cross-attention to the encoder, and a
   feed-forward network; the output layer gives all L distributions at once.

Training loss = token cross entropy at the L gold positions (with the gold length) + a weighted
cross entropy of the length classifier. Decoding = argmax at every position, with the predicted
length, a given length, or the best of the top-k lengths (all k decoded in the same pass).

Target length here counts words only: a NAT needs no ``<eos>``, since L says where to stop
(``nat_targets`` removes it from the course's batches). Masks follow ``course_lib.masking``:
bool, True = keep.

    from course_lib.models.nat import NATConfig, NATransformer, nat_decode, nat_loss
    model = NATransformer(NATConfig.tiny(src_vocab_size=40, tgt_vocab_size=40))
    loss, parts = nat_loss(model, batch)             # token CE + 0.1 * length CE
    result = nat_decode(model, src, src_valid_len)   # a DecodeResult, like greedy_decode's
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn
from torch.nn import functional as F

from course_lib.data.batching import Batch
from course_lib.losses import masked_cross_entropy
from course_lib.masking import padding_mask
from course_lib.models.base import check_source, inference
from course_lib.models.transformer import DecoderBlock, Encoder, TransformerConfig, add_norm
from course_lib.positional import SinusoidalPositionalEncoding
from course_lib.results import DecodeResult

__all__ = ["NATConfig", "NATEncoding", "NATDecoderBlock", "NATransformer",
           "nat_targets", "nat_loss", "nat_decode"]

_DECODER_INPUTS = ("copy", "position")


@dataclasses.dataclass
class NATConfig(TransformerConfig):
    """The sizes of a ``TransformerConfig`` (its blocks are the NAT's) and the NAT's own fields.

    ``max_len`` is the longest target length the length predictor can output. The NAT's
    positions are sinusoidal and its embeddings are neither shared nor tied; ``tiny`` gives a
    model that trains in seconds on CPU.
    """

    max_len: int = 32            # longest target length the length predictor can output
    max_src_len: int = 256       # longest source the positional encoding covers
    decoder_input: str = "copy"  # "copy": uniform copy of source embeddings; "position": queries

    def __post_init__(self):
        super().__post_init__()  # the Transformer's own checks (d_model divisible by num_heads)
        if self.max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {self.max_len}")
        if self.decoder_input not in _DECODER_INPUTS:
            raise ValueError(f"decoder_input must be one of {_DECODER_INPUTS}, "
                             f"got {self.decoder_input!r}")
        if self.share_embeddings or self.tie_output or self.positional != "sinusoidal":
            raise ValueError("a NAT uses sinusoidal positions and embeddings of its own: leave "
                             "share_embeddings, tie_output and positional at their defaults")

    @classmethod
    def tiny(cls, src_vocab_size: int, tgt_vocab_size: int, **changes) -> NATConfig:
        """A model small enough for unit tests and CPU demos."""
        return super().tiny(src_vocab_size, tgt_vocab_size, **({"max_len": 16} | changes))


@dataclasses.dataclass
class NATEncoding:
    """What the encoder hands to the length predictor and the decoder."""

    memory: torch.Tensor          # (B, T_src, D) encoder output
    src_valid_len: torch.Tensor   # (B,) real source lengths
    src_embedded: torch.Tensor    # (B, T_src, D) source token embeddings (unscaled, no positions)
    length_logits: torch.Tensor   # (B, C) scores of target lengths 0..max_len

    def repeat(self, k: int) -> NATEncoding:
        """Each row k times in a row (row b*k + i is a copy of row b): k length candidates."""
        return NATEncoding(*(t.repeat_interleave(k, dim=0) for t in (
            self.memory, self.src_valid_len, self.src_embedded, self.length_logits)))


class NATDecoderBlock(DecoderBlock):
    """The Transformer's decoder block, its self-attention over ALL target positions (no causal
    mask): the same sublayers and parameters, another mask."""

    def forward(self, X: torch.Tensor, tgt_valid_len: torch.Tensor, memory: torch.Tensor,
                src_valid_len: torch.Tensor) -> torch.Tensor:
        """X (B, T, D) target positions, tgt_valid_len (B,) their real lengths, memory
        (B, T_src, D) with src_valid_len (B,); returns (B, T, D).

        Self-attention keeps every real target key (before or after the query): the only mask
        is padding, so positions past tgt_valid_len influence nothing.
        """
        X = add_norm(X, lambda h: self.self_attention(h, h, h, tgt_valid_len), self.norm1,
                      self.dropout, self.norm_first)
        X = add_norm(X, lambda h: self.cross_attention(h, memory, memory, src_valid_len),
                      self.norm2, self.dropout, self.norm_first)
        return add_norm(X, self.ffn, self.norm3, self.dropout, self.norm_first)


class NATransformer(nn.Module):
    """Encoder, length predictor, and a decoder that emits all target tokens in parallel."""

    def __init__(self, config: NATConfig):
        super().__init__()
        c = self.config = config
        self.src_embedding = nn.Embedding(c.src_vocab_size, c.d_model)
        self.src_positional = SinusoidalPositionalEncoding(c.d_model, c.dropout, c.max_src_len)
        self.tgt_positional = SinusoidalPositionalEncoding(c.d_model, c.dropout, c.max_len)
        self.encoder = Encoder(c)  # the Transformer's encoder
        # A mean cannot count, so the source length joins the pooled encoder output.
        self.source_length_embedding = nn.Embedding(c.max_src_len + 1, c.d_model)
        self.length_predictor = nn.Linear(c.d_model, c.max_len + 1)  # D -> C
        # "position" decoder inputs: one learned query vector per target position.
        self.position_queries = (nn.Embedding(c.max_len, c.d_model)
                                 if c.decoder_input == "position" else None)
        self.decoder_blocks = nn.ModuleList(NATDecoderBlock(c)
                                            for _ in range(c.num_layers))
        # Pre-LN leaves the residual stream un-normalised, so the stack ends with a LayerNorm.
        self.decoder_norm = nn.LayerNorm(c.d_model) if c.norm_first else nn.Identity()
        self.output = nn.Linear(c.d_model, c.tgt_vocab_size)

    # --- encoder and length predictor ---------------------------------------------------------

    def encode(self, src: torch.Tensor, src_valid_len: torch.Tensor) -> NATEncoding:
        """Run the encoder on src (B, T_src) with lengths (B,) and score the target lengths."""
        check_source(src, src_valid_len, min_length=1)  # an empty source has no mean
        embedded = self.src_embedding(src)  # (B, T_src, D)
        X = self.src_positional(embedded * math.sqrt(self.config.d_model))
        memory = self.encoder(X, src_valid_len)  # (B, T_src, D)
        return NATEncoding(memory, src_valid_len, embedded,
                           self.predict_length(memory, src_valid_len))

    def predict_length(self, memory: torch.Tensor, src_valid_len: torch.Tensor) -> torch.Tensor:
        """Length logits (B, C) from the mean encoder output over real source positions."""
        keep = padding_mask(src_valid_len, memory.shape[1]).unsqueeze(-1)  # (B, T_src, 1)
        pooled = (memory * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1)  # (B, D)
        pooled = pooled + self.source_length_embedding(src_valid_len)  # (B, D)
        return self.length_predictor(pooled)  # (B, C)

    # --- decoder ------------------------------------------------------------------------------

    def _check_lengths(self, tgt_valid_len: torch.Tensor, B: int,
                       num_positions: int | None) -> int:
        """Validate target lengths (B,); return the number of positions T to decode."""
        if tgt_valid_len.shape != (B,):
            raise ValueError(f"tgt_valid_len must be (B,) = ({B},), "
                             f"got {tuple(tgt_valid_len.shape)}")
        longest = int(tgt_valid_len.max()) if B else 0
        if B and (int(tgt_valid_len.min()) < 0 or longest > self.config.max_len):
            raise ValueError(f"target lengths must lie in 0..max_len = 0..{self.config.max_len}, "
                             f"got {tgt_valid_len.tolist()}")
        if num_positions is None:
            return max(longest, 1)
        if not max(longest, 1) <= num_positions <= self.config.max_len:
            raise ValueError(f"num_positions must lie in {max(longest, 1)}..{self.config.max_len}"
                             f" (the longest target .. max_len), got {num_positions}")
        return num_positions

    def decoder_inputs(self, encoding: NATEncoding, tgt_valid_len: torch.Tensor,
                       num_positions: int) -> torch.Tensor:
        """Decoder input vectors (B, T, D): made from the source and the lengths alone."""
        B, T = tgt_valid_len.shape[0], num_positions
        if self.position_queries is not None:
            X = self.position_queries.weight[:T].unsqueeze(0).expand(B, -1, -1)  # (B, T, D)
        else:  # uniform copy: target position j reads source position floor(j * S / L).
            # Unscaled embeddings (entries ~ +-1, like the positional encoding), so that
            # neighbours copying the same source token still differ clearly by position.
            S = encoding.src_valid_len.unsqueeze(1)  # (B, 1)
            L = tgt_valid_len.clamp(min=1).unsqueeze(1)  # (B, 1)
            j = torch.arange(T, device=S.device).unsqueeze(0)  # (1, T)
            source_index = torch.minimum(j * S // L, S - 1)  # (B, T); past L: the last one
            D = encoding.src_embedded.shape[-1]
            X = encoding.src_embedded.gather(1, source_index.unsqueeze(-1).expand(B, T, D))
        return self.tgt_positional(X)  # (B, T, D)

    def decode_features(self, X: torch.Tensor, encoding: NATEncoding,
                        tgt_valid_len: torch.Tensor) -> torch.Tensor:
        """Final decoder states (B, T, D) of decoder inputs X (B, T, D), all in one pass."""
        if X.dim() != 3 or X.shape[0] != encoding.memory.shape[0] \
                or X.shape[2] != self.config.d_model:
            raise ValueError(f"X must be (B, T, D) = ({encoding.memory.shape[0]}, T, "
                             f"{self.config.d_model}), got {tuple(X.shape)}")
        for block in self.decoder_blocks:
            X = block(X, tgt_valid_len, encoding.memory, encoding.src_valid_len)
        return self.decoder_norm(X)

    def decode(self, encoding: NATEncoding, tgt_valid_len: torch.Tensor,
               num_positions: int | None = None) -> torch.Tensor:
        """Token logits (B, T, V) for target lengths (B,): every position in one pass.

        T = ``num_positions`` (default: the longest length); positions past a sentence's
        length are padding and their logits mean nothing.
        """
        T = self._check_lengths(tgt_valid_len, encoding.memory.shape[0], num_positions)
        X = self.decoder_inputs(encoding, tgt_valid_len, T)  # (B, T, D)
        return self.output(self.decode_features(X, encoding, tgt_valid_len))  # (B, T, V)

    def forward(self, src: torch.Tensor, src_valid_len: torch.Tensor,
                tgt_valid_len: torch.Tensor, num_positions: int | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token logits (B, T, V) given the (gold) target lengths (B,), and length logits (B, C)."""
        encoding = self.encode(src, src_valid_len)
        return self.decode(encoding, tgt_valid_len, num_positions), encoding.length_logits


# --- training ---------------------------------------------------------------------------------

def nat_targets(tgt: torch.Tensor, tgt_valid_len: torch.Tensor,
                eos: int = 2, pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The course's targets (``<eos>`` at the end) as NAT targets: (words (B, T), lengths (B,)).

    ``<eos>`` becomes padding and the length counts the words before it; a truncated target
    (no ``<eos>``) keeps all its ``tgt_valid_len`` tokens.
    """
    if tgt.dim() != 2 or tgt_valid_len.shape != tgt.shape[:1]:
        raise ValueError(f"need tgt (B, T) and tgt_valid_len (B,), got {tuple(tgt.shape)} and "
                         f"{tuple(tgt_valid_len.shape)}")
    words = padding_mask(tgt_valid_len, tgt.shape[1]) & (tgt != eos)  # (B, T)
    return tgt.masked_fill(~words, pad), words.sum(dim=1)


def nat_loss(model: NATransformer, batch: Batch, *, length_weight: float = 0.1,
             label_smoothing: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Token cross entropy (gold lengths, mean over real tokens) + length_weight * length CE.

    Returns the loss to minimise and its parts as floats: ``token_loss``, ``length_loss``,
    ``token_accuracy``, ``length_accuracy``.
    """
    targets, lengths = nat_targets(batch.tgt, batch.tgt_valid_len)  # (B, T), (B,)
    if int(lengths.max()) > model.config.max_len:
        raise ValueError(f"a target has {int(lengths.max())} words but the model's max_len is "
                         f"{model.config.max_len}; build the model with a larger max_len")
    T = max(int(lengths.max()), 1)
    logits, length_logits = model(batch.src, batch.src_valid_len, lengths, T)  # (B, T, V)
    targets = targets[:, :T]
    token_loss = masked_cross_entropy(logits, targets, lengths, label_smoothing=label_smoothing)
    length_loss = F.cross_entropy(length_logits, lengths)
    with torch.no_grad():
        keep = padding_mask(lengths, T)
        correct = ((logits.argmax(dim=-1) == targets) & keep).sum()
        parts = {"token_loss": float(token_loss), "length_loss": float(length_loss),
                 "token_accuracy": float(correct) / max(int(keep.sum()), 1),
                 "length_accuracy": float((length_logits.argmax(dim=-1) == lengths).float()
                                          .mean())}
    return token_loss + length_weight * length_loss, parts


# --- decoding ---------------------------------------------------------------------------------

def nat_decode(model: NATransformer, src: torch.Tensor, src_valid_len: torch.Tensor, *,
               lengths: torch.Tensor | None = None, length_candidates: int = 1,
               banned: tuple[int, ...] = (0, 1, 2), pad: int = 0) -> DecodeResult:
    """Argmax at every position in ONE decoder pass; returns a ``DecodeResult``.

    Args:
        lengths: (B,) target lengths to use; default: predicted by the model.
        length_candidates: with predicted lengths, decode the k most likely lengths (>= 1 each)
            side by side in the same pass (B*k rows) and keep, per sentence, the candidate with
            the highest mean token log-probability (length-candidate rescoring).
        banned: token ids never emitted (default ``<pad>``, ``<bos>``, ``<eos>``: a NAT target
            holds words only).
    ``scores`` holds the mean token log-probability of each chosen output, ``log_probs`` the sum.
    """
    if isinstance(length_candidates, bool) or not isinstance(length_candidates, int) \
            or length_candidates < 1:
        raise ValueError(f"length_candidates must be an integer >= 1, got {length_candidates!r}")
    if lengths is not None and length_candidates != 1:
        raise ValueError("give either lengths or length_candidates > 1, not both")
    with inference(model):
        encoding = model.encode(src, src_valid_len)
        B, k = src.shape[0], length_candidates
        if lengths is None:
            scores = encoding.length_logits.clone()  # (B, C)
            scores[:, 0] = float("-inf")  # an empty output is never a translation
            k = min(k, scores.shape[1] - 1)
            candidates = scores.topk(k, dim=1).indices.reshape(-1)  # (B*k,) row b*k + i
            encoding = encoding.repeat(k) if k > 1 else encoding
        else:
            candidates, k = lengths.to(src.device), 1
        logits = model.decode(encoding, candidates).float()  # (B*k, T, V): the one pass
        if banned:
            logits[..., list(banned)] = float("-inf")
        log_p, tokens = logits.log_softmax(dim=-1).max(dim=-1)  # (B*k, T) each
        keep = padding_mask(candidates, tokens.shape[1])  # (B*k, T)
        log_probs = (log_p * keep).sum(dim=1)  # (B*k,)
        mean_log_p = log_probs / candidates.clamp(min=1)  # (B*k,)
        best = mean_log_p.view(B, k).argmax(dim=1) + torch.arange(B, device=src.device) * k
        tokens = tokens[best].masked_fill(~keep[best], pad)  # (B, T)
        return DecodeResult(tokens=tokens, lengths=candidates[best],
                            log_probs=log_probs[best], scores=mean_log_p[best])
