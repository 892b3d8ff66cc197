"""The one interface every encoder-decoder of the course implements.

One training loop (``course_lib.training``) and one set of decoders (``course_lib.decoding``)
serve the GRU, Bahdanau and Transformer models alike because each of them offers:

- ``forward(src, src_valid_len, dec_input) -> logits`` (B, T_tgt, V): teacher forcing, all
  target positions at once;
- ``encode(src, src_valid_len) -> DecoderState``: run the encoder once and return everything
  the decoder needs to start;
- ``decode(dec_input, state) -> (logits, state)``: feed the next ``T`` decoder tokens
  (B, T) and get their logits (B, T, V) and the updated state. Decoding token by token with
  ``decode`` gives the same logits as ``forward`` on the whole sequence.

Subclasses implement ``encode`` and ``decode_features`` (the decoder's last hidden states,
(B, T, D)); ``decode`` applies the shared ``output`` layer (D -> V) to them. Keeping the two
apart lets training compute logits only where the target is real, not at padding
(``course_lib.training.sequence_loss``), which saves much of the work when V is large.

A ``DecoderState`` holds tensors whose batch dimension can be reordered, so beam search can
keep, drop and duplicate hypotheses with ``state.reorder(index)``.

Notation: B batch · T time · V vocabulary size.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["DecoderState", "EncoderDecoder", "inference"]


@dataclasses.dataclass
class DecoderState:
    """What a decoder carries from one step to the next; subclasses add their own fields.

    ``batch_dims`` maps a field name to the dimension that indexes the batch in it (default 0;
    e.g. 1 for a GRU hidden state of shape (num_layers, B, H)). Fields that are lists or tuples
    of tensors (per-layer caches) are reordered element by element; None is left alone.
    ``per_source`` names the fields that depend on the source sentence only (encoder outputs,
    lengths, projected memory): all beams of one sentence hold the same rows there.

    ``shares_sources`` is True for a state whose model reads the per-source fields with one row
    per source sentence even when the decoder runs several rows per sentence, as beam search's
    hypotheses do (in consecutive rows). Such a state has an int field ``beams``, the decoder
    rows per sentence (1 after ``encode``), and beam search never copies the per-source fields
    into every beam's row.
    """

    per_source: ClassVar[tuple[str, ...]] = ()
    shares_sources: ClassVar[bool] = False

    def batch_dim(self, name: str) -> int:
        return getattr(self, "batch_dims", {}).get(name, 0)

    def reorder(self, index: torch.Tensor, *, keep: Iterable[str] = (),
                only: Iterable[str] | None = None) -> DecoderState:
        """A new state whose row i is this state's row ``index[i]`` (beam search bookkeeping).

        Fields named in ``keep`` are left as they are; given ``only``, only the fields it names
        are reordered. Beam search keeps ``per_source`` when ``index`` only moves rows among
        the beams of the same sentence: those fields would come out identical, and copying them
        (the encoder memory, every layer's projected keys and values) at every step is a good
        part of a step's time. In a state with ``beams`` > 1 the per-source fields have fewer
        rows than the others, so they are reordered apart: ``keep=per_source`` for the decoder
        rows, ``only=per_source`` (with sentence indices) for them.
        """
        keep, only = set(keep), None if only is None else set(only)
        names = [field.name for field in dataclasses.fields(self)
                 if field.name != "batch_dims" and field.name not in keep
                 and (only is None or field.name in only)]
        if getattr(self, "beams", 1) > 1:
            per_source = [name for name in names if name in self.per_source]
            if per_source and len(per_source) < len(names):
                raise ValueError(
                    f"this state has {self.beams} decoder rows per source sentence, so its "
                    f"per-source fields {per_source} have fewer rows than the others: reorder "
                    "them apart (keep=state.per_source, then only=state.per_source)")
        changes = {name: _select(getattr(self, name), index, self.batch_dim(name))
                   for name in names}
        return dataclasses.replace(self, **changes)


def _select(value: Any, index: torch.Tensor, dim: int) -> Any:
    if isinstance(value, torch.Tensor):
        return value.index_select(dim, index)
    if isinstance(value, list | tuple):
        return type(value)(_select(v, index, dim) for v in value)
    if isinstance(value, dict):
        return {k: _select(v, index, dim) for k, v in value.items()}
    return value  # ints, None, configuration


class EncoderDecoder(nn.Module):
    """Base class: subclasses implement ``encode`` and ``decode_features`` and set ``output``
    (an ``nn.Linear`` from the decoder's width to the target vocabulary)."""

    output: nn.Linear

    def encode(self, src: torch.Tensor, src_valid_len: torch.Tensor) -> DecoderState:
        raise NotImplementedError

    def decode_features(self, dec_input: torch.Tensor,
                        state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        """Decoder hidden states (B, T, D) for dec_input (B, T), and the state after them."""
        raise NotImplementedError

    def decode(self, dec_input: torch.Tensor, state: DecoderState,
               **options: Any) -> tuple[torch.Tensor, DecoderState]:
        """Logits (B, T, V) for the next decoder tokens dec_input (B, T), and the new state.

        ``options`` go to ``decode_features`` (the Transformer's ``use_cache``).
        """
        features, state = self.decode_features(dec_input, state, **options)
        return self.output(features), state

    def next_token_logits(self, dec_input: torch.Tensor, state: DecoderState, *,
                          out: torch.Tensor | None = None,
                          output: tuple[torch.Tensor, torch.Tensor | None] | None = None,
                          ) -> tuple[torch.Tensor, DecoderState]:
        """Logits (B, V) for the token after dec_input (B, T), and the new state.

        The same numbers as ``decode(dec_input, state)[0][:, -1]``, the output layer run on
        the last position only and, given ``out`` (B, V) of the logits' dtype, written there.
        Decoders pass one buffer for all their steps: on CPU a fresh tensor of many megabytes
        at every step comes from new pages of the operating system, and touching them can cost
        as much as the matrix product that fills them. ``output`` = (weight (V', D), bias (V',)
        or None) stands in for the output layer's own; the decoders pass one padded to more
        columns (``course_lib.decoding``), and the logits (and ``out``) then have V' columns.
        """
        features, state = self.decode_features(dec_input, state)
        last = features[:, -1]  # (B, D)
        weight, bias = (self.output.weight, self.output.bias) if output is None else output
        if out is None or out.dtype != last.dtype:  # e.g. under autocast: a fresh tensor
            return F.linear(last, weight, bias), state
        if bias is None:
            return torch.mm(last, weight.t(), out=out), state
        return torch.addmm(bias, last, weight.t(), out=out), state  # weight.t(): (D, V)

    def features(self, src: torch.Tensor, src_valid_len: torch.Tensor,
                 dec_input: torch.Tensor) -> torch.Tensor:
        """Decoder hidden states (B, T_tgt, D) for every target position (teacher forcing)."""
        _check_batch(src, src_valid_len, dec_input)
        features, _ = self.decode_features(dec_input, self.encode(src, src_valid_len))
        return features

    def forward(self, src: torch.Tensor, src_valid_len: torch.Tensor,
                dec_input: torch.Tensor) -> torch.Tensor:
        """Logits (B, T_tgt, V) for every target position, given the whole decoder input."""
        return self.output(self.features(src, src_valid_len, dec_input))


def _check_batch(src: torch.Tensor, src_valid_len: torch.Tensor,
                 dec_input: torch.Tensor) -> None:
    """ValueError naming expected and actual shapes for the usual mistakes."""
    if src.dim() != 2:
        raise ValueError(f"src must be (B, T_src) token ids, got shape {tuple(src.shape)}")
    if dec_input.dim() != 2:
        raise ValueError(f"dec_input must be (B, T_tgt) token ids, got {tuple(dec_input.shape)}")
    if src_valid_len.shape != src.shape[:1]:
        raise ValueError(f"src_valid_len must be (B,) = ({src.shape[0]},), "
                         f"got {tuple(src_valid_len.shape)}")
    if dec_input.shape[0] != src.shape[0]:
        raise ValueError(f"src and dec_input batch sizes differ: {src.shape[0]} vs "
                         f"{dec_input.shape[0]}")


@contextlib.contextmanager
def inference(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) without autograd; the model's previous mode is restored after.

    ``torch.inference_mode`` rather than ``no_grad``: it also skips autograd's version
    bookkeeping, which makes token-by-token decoding about a fifth faster on CPU. Tensors made
    inside cannot enter a later backward pass; decoders and ``evaluate`` return plain results.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)
