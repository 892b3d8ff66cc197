"""``FastRunner``: the decoders' ``Runner`` (``course_lib.decoding``), the same results faster.

# R decoder rows in a step · S sentences · W live hypotheses per sentence
# V target vocabulary size · V' = V rounded up to a multiple of 16 · D decoder width

``greedy_decode(..., fast=True)``, ``beam_search(..., fast=True)`` and ``sample_decode(...,
fast=True)`` run the model through a ``FastRunner``. What it changes, and why:

- **Reused buffers.** Each step's logits and log-probabilities (R, V) are written into two
  buffers kept from step to step. On CPU a fresh tensor of many megabytes at every step comes
  from new pages of the operating system, and touching them can cost as much as the matrix
  product that fills them.
- **A padded output layer.** The output layer's weight (V, D) gets zero rows up to V' columns
  and its bias -inf there, so the extra logits are -inf: they never win an argmax, get
  probability 0, and leave the log-softmax of the real tokens as it is. With whole 64-byte
  rows of 16 floats, CPU kernels stop handling a ragged end in every row: the (1,000 x 256) x
  (256 x V) product took 18 ms for the 3,356 tokens of the French vocabulary and 14 ms for
  3,360 on this course's machine (``docs/results.md``). The decoders see only the first V
  columns; beam search's ``extend`` adds the live scores in place on the whole padded rows.
- **The Transformer** runs through ``course_lib.fast.transformer``: beams share their
  sentence's memory, each attention's projections are one stacked matrix product, and short
  sources use the matrix-product attention kernel, in the encoder too.

A model that overrides ``decode`` (lesson 01's counting model) is run through its ``decode``,
as the plain ``Runner`` does.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from course_lib.decoding import Runner
from course_lib.fast import transformer as fast_transformer
from course_lib.models.base import DecoderState, EncoderDecoder
from course_lib.models.transformer import Transformer

__all__ = ["FastRunner", "padded_output"]


def padded_output(output: nn.Linear, multiple: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """The output layer's weight (V', D) and bias (V',), V rounded up to V' = a multiple of 16;
    the extra rows have zero weights and bias -inf."""
    weight, bias = output.weight, output.bias  # (V, D), (V,) or None
    V, D = weight.shape
    extra = -V % multiple
    if bias is None:
        bias = weight.new_zeros(V)
    if extra == 0:
        return weight, bias
    return (torch.cat([weight, weight.new_zeros(extra, D)]),
            torch.cat([bias, bias.new_full((extra,), float("-inf"))]))


class FastRunner(Runner):
    """Runs an ``EncoderDecoder`` for the decoders with buffers, a padded output layer, and the
    Transformer's shared-memory beams (see the module's doc)."""

    def __init__(self, model: nn.Module):
        super().__init__(model)
        # Only a model that keeps the interface's decode (the output layer on
        # decode_features), not one whose class or instance overrides it, can be run around it.
        self.buffered = (isinstance(model, EncoderDecoder)
                         and getattr(model.decode, "__func__", None) is EncoderDecoder.decode)
        self.transformer = self.buffered and isinstance(model, Transformer)
        if self.buffered:
            self.weight, self.bias = padded_output(model.output)  # (V', D), (V',)
            self.vocab_size = model.output.out_features  # V
        self.logits: torch.Tensor | None = None     # (rows, V') in the model's dtype
        self.log_probs: torch.Tensor | None = None  # (rows, V') float32

    def encode(self, src: torch.Tensor, src_valid_len: torch.Tensor):
        if not self.transformer:
            return self.model.encode(src, src_valid_len)
        self.fused = fast_transformer.FusedWeights.of(self.model)
        return fast_transformer.encode(self.model, self.fused, src, src_valid_len)

    def step(self, tokens: torch.Tensor, state) -> tuple[torch.Tensor, object]:
        """Log-probabilities (R, V), float32, a view of the first V columns of a buffer."""
        if not self.buffered:
            return super().step(tokens, state)
        if self.transformer:
            features, state = fast_transformer.decode_step(self.model, self.fused, tokens,
                                                           state)  # (R, D)
        else:
            features, state = self.model.decode_features(tokens.unsqueeze(1), state)
            features = features[:, -1]  # (R, D)
        R = features.shape[0]
        if features.dtype != self.weight.dtype:  # under autocast: its cast, a fresh tensor
            logits = F.linear(features, self.weight, self.bias)
        else:
            self.logits = _grown(self.logits, R, self.weight.shape[0], features)
            logits = torch.addmm(self.bias, features, self.weight.t(), out=self.logits[:R])
        logits = logits.float()  # the same tensor when it is float32 already
        self.log_probs = _grown(self.log_probs, R, logits.shape[1], logits)
        log_probs = torch.log_softmax(logits, dim=-1, out=self.log_probs[:R])
        return log_probs[:, :self.vocab_size], state

    def reorder(self, state, rows: torch.Tensor, beams: int = 1) -> DecoderState:
        if self.transformer:
            return fast_transformer.reorder(state, rows, beams)
        return state.reorder(rows)

    def extend(self, log_probs: torch.Tensor, live: torch.Tensor, n: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As ``Runner.extend``, on the whole padded rows of the buffer, in place."""
        if not self.buffered:
            return super().extend(log_probs, live, n)
        (S, W), V = live.shape, self.vocab_size
        padded = self.log_probs[:S * W]  # (S*W, V'): log_probs is its first V columns
        columns = padded.shape[1]
        scores = padded.view(S, W, columns).add_(live.unsqueeze(-1)).view(S, W * columns)
        top_scores, index = scores.topk(min(n, W * V), dim=1)  # (S, n)
        beam, token = index // columns, index % columns
        # A padding column (-inf) is picked only where fewer than n extensions are finite:
        # such a hypothesis is dead (log p = -inf) and never finishes, but it still feeds its
        # token to the model: give it a real one.
        return top_scores, beam, token.masked_fill_(token >= V, 0)


def _grown(buffer: torch.Tensor | None, rows: int, columns: int, like: torch.Tensor
           ) -> torch.Tensor:
    """``buffer`` if it holds ``rows`` rows of ``columns`` like ``like``, else a new one."""
    if (buffer is None or buffer.shape[0] < rows or buffer.shape[1] != columns
            or buffer.dtype != like.dtype or buffer.device != like.device):
        return like.new_empty(rows, columns)
    return buffer
