"""What decoders return: ``DecodeResult`` (one output per source sentence) and ``Hypothesis``.

The autoregressive decoders (``course_lib.decoding``) and the non-autoregressive model's decoder
(``course_lib.models.nat``) both return a ``DecodeResult``, so they live here, below both.

Notation: B batch · T time.
"""

from __future__ import annotations

import dataclasses

import torch

from course_lib.data.vocab import Vocab

__all__ = ["Hypothesis", "DecodeResult"]


@dataclasses.dataclass
class Hypothesis:
    """One finished beam-search hypothesis."""

    tokens: list[int]  # output ids, ending in <eos> unless max_len cut it
    log_prob: float    # sum of the model's log-probabilities of these tokens
    score: float       # log_prob / len(tokens) ** length_penalty: what beam search ranks by


@dataclasses.dataclass
class DecodeResult:
    """Output of a decoder: one sequence per source sentence."""

    tokens: torch.Tensor     # (B, T) long, T <= max_len; <pad> after each sequence's end
    lengths: torch.Tensor    # (B,) long: tokens per sequence, <eos> included when produced
    log_probs: torch.Tensor  # (B,) float: sum of log p(token) over those tokens, <eos> included
    scores: torch.Tensor     # (B,) float: what the decoder ranked by (log_probs unless normalised)
    hypotheses: list[list[Hypothesis]] | None = None  # beam_search(return_all=True): best first

    def to_sentences(self, vocab: Vocab) -> list[str]:
        """Tokens joined by spaces, stopping at ``<eos>`` (special tokens left out)."""
        return [" ".join(vocab.decode(row[:n].tolist()))
                for row, n in zip(self.tokens, self.lengths.tolist(), strict=True)]
