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
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

__all__ = ["DecoderState", "EncoderDecoder", "check_source", "inference"]


@dataclasses.dataclass
class DecoderState:
    """What a decoder carries from one step to the next; subclasses add their own fields.

    ``batch_dims`` maps a field name to the dimension that indexes the batch in it (default 0;
    e.g. 1 for a GRU hidden state of shape (num_layers, B, H)). Fields that are lists or tuples
    (one cache per layer) or dataclasses (a ``KVCache``) are reordered piece by piece; ints,
    flags and None are left alone.
    """

    def batch_dim(self, name: str) -> int:
        return getattr(self, "batch_dims", {}).get(name, 0)

    def reorder(self, index: torch.Tensor) -> DecoderState:
        """A new state whose row i is this state's row ``index[i]`` (index: (B_new,) long).

        Greedy decoding drops finished sentences with it, and beam search keeps, drops and
        duplicates hypotheses.
        """
        changes = {field.name: _select(getattr(self, field.name), index, self.batch_dim(field.name))
                   for field in dataclasses.fields(self) if field.name != "batch_dims"}
        return dataclasses.replace(self, **changes)


def _select(value: Any, index: torch.Tensor, dim: int) -> Any:
    """``value`` with only the batch rows ``index`` (along ``dim``), whatever holds them."""
    if isinstance(value, torch.Tensor):
        return value.index_select(dim, index)
    if isinstance(value, list | tuple):
        return type(value)(_select(v, index, dim) for v in value)
    if isinstance(value, dict):
        return {k: _select(v, index, dim) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{field.name: _select(getattr(value, field.name),
                                                                 index, dim)
                                             for field in dataclasses.fields(value)})
    return value  # ints, flags, None, configuration


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

    def decode(self, dec_input: torch.Tensor,
               state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        """Logits (B, T, V) for the next decoder tokens dec_input (B, T), and the new state."""
        features, state = self.decode_features(dec_input, state)
        return self.output(features), state

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


def check_source(src: torch.Tensor, src_valid_len: torch.Tensor, min_length: int = 0) -> None:
    """ValueError naming expected and actual shapes for a malformed source batch: src must be
    (B, T_src) token ids with T_src >= 1, src_valid_len (B,) lengths in min_length..T_src."""
    if src.dim() != 2 or src.shape[1] == 0:
        raise ValueError(f"src must be (B, T_src) token ids with T_src >= 1, "
                         f"got shape {tuple(src.shape)}")
    if src_valid_len.shape != src.shape[:1]:
        raise ValueError(f"src_valid_len must be (B,) = ({src.shape[0]},), "
                         f"got {tuple(src_valid_len.shape)}")
    T_src = src.shape[1]
    if bool((src_valid_len > T_src).any()) or bool((src_valid_len < min_length).any()):
        raise ValueError(f"src_valid_len must lie in {min_length}..T_src = {min_length}.."
                         f"{T_src}, got {src_valid_len.tolist()}")


def _check_batch(src: torch.Tensor, src_valid_len: torch.Tensor,
                 dec_input: torch.Tensor) -> None:
    """ValueError naming expected and actual shapes for the usual mistakes."""
    check_source(src, src_valid_len)
    if dec_input.dim() != 2:
        raise ValueError(f"dec_input must be (B, T_tgt) token ids, got {tuple(dec_input.shape)}")
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
