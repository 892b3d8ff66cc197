"""From token lists to padded tensors and minibatches.

Every sequence gets ``<eos>`` appended, then is truncated or padded to ``num_steps``:
an over-long sentence is cut (and loses its ``<eos>``, as in d2l), never carried into the next
one. ``valid_len`` keeps each sequence's real length so padding can be ignored later.

A minibatch is a ``Batch`` of five tensors (B batch · T time):

- ``src``            (B, T_src) source ids ending in ``<eos>``, then ``<pad>``
- ``src_valid_len``  (B,)       real source lengths (``<eos>`` included)
- ``dec_input``      (B, T_tgt) ``<bos>`` followed by the target shifted right (teacher forcing)
- ``tgt``            (B, T_tgt) target ids ending in ``<eos>``, then ``<pad>``
- ``tgt_valid_len``  (B,)       real target lengths; also the real length of ``dec_input``
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch

from course_lib.data.vocab import Vocab

__all__ = ["Batch", "truncate_pad", "encode_pairs", "BatchLoader"]


class Batch(NamedTuple):
    """Source, source lengths, decoder input, target, target lengths (see module docstring)."""

    src: torch.Tensor
    src_valid_len: torch.Tensor
    dec_input: torch.Tensor
    tgt: torch.Tensor
    tgt_valid_len: torch.Tensor

    @property
    def num_sequences(self) -> int:
        """Number of sequences B (``len(batch)`` is 5, the number of fields, as for any tuple)."""
        return self.src.shape[0]

    def select(self, index: torch.Tensor | slice) -> Batch:
        """The sequences at ``index``, padding cut to the longest selected one."""
        src_valid_len, tgt_valid_len = self.src_valid_len[index], self.tgt_valid_len[index]
        t_src = max(int(src_valid_len.max()), 1) if len(src_valid_len) else 1
        t_tgt = max(int(tgt_valid_len.max()), 1) if len(tgt_valid_len) else 1
        return Batch(self.src[index, :t_src], src_valid_len,
                     self.dec_input[index, :t_tgt], self.tgt[index, :t_tgt], tgt_valid_len)

    @property
    def num_target_tokens(self) -> int:
        """Number of real (non-padding) target tokens: what a tokens/s figure counts."""
        return int(self.tgt_valid_len.sum())


def truncate_pad(ids: Sequence[int], num_steps: int, pad_id: int) -> list[int]:
    """Cut ``ids`` to ``num_steps`` or pad it with ``pad_id`` up to ``num_steps``."""
    if len(ids) >= num_steps:
        return list(ids[:num_steps])
    return list(ids) + [pad_id] * (num_steps - len(ids))


def _to_tensor(sequences: list[list[int]], num_steps: int, pad_id: int,
               ) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [truncate_pad(s, num_steps, pad_id) for s in sequences]
    lengths = [min(len(s), num_steps) for s in sequences]
    return (torch.tensor(rows, dtype=torch.long).reshape(len(rows), num_steps),
            torch.tensor(lengths, dtype=torch.long))


def encode_pairs(pairs: Sequence[tuple[Sequence[str], Sequence[str]]], src_vocab: Vocab,
                 tgt_vocab: Vocab, num_steps: int | tuple[int, int]) -> Batch:
    """Turn tokenised (source, target) pairs into one ``Batch`` holding all of them.

    Args:
        pairs: (source tokens, target tokens) without ``<bos>``/``<eos>``.
        num_steps: padded length of source and target, or a (source, target) pair of lengths.
            At least 2, so a target holds at least one token and ``<eos>``.
    Unknown tokens become ``<unk>`` (see ``Vocab``).
    """
    src_steps, tgt_steps = (num_steps, num_steps) if isinstance(num_steps, int) else num_steps
    if min(src_steps, tgt_steps) < 2:
        raise ValueError(f"num_steps must be at least 2 (a token and <eos>), got {num_steps}")
    if len(pairs) == 0:
        raise ValueError("encode_pairs got no pairs")
    srcs, tgts = [], []
    for src, tgt in pairs:
        if isinstance(src, str) or isinstance(tgt, str):
            raise TypeError("encode_pairs expects tokenised pairs (lists of tokens), got a str")
        srcs.append(src_vocab.encode(src) + [src_vocab.eos])
        tgts.append(tgt_vocab.encode(tgt) + [tgt_vocab.eos])
    src, src_valid_len = _to_tensor(srcs, src_steps, src_vocab.pad)
    tgt, tgt_valid_len = _to_tensor(tgts, tgt_steps, tgt_vocab.pad)
    bos = torch.full((len(pairs), 1), tgt_vocab.bos, dtype=torch.long)
    dec_input = torch.cat([bos, tgt[:, :-1]], dim=1)  # (N, T_tgt): <bos>, y_1, ..., y_{T-1}
    # dec_input's real length equals the target's: <bos> stands where the target has <eos>.
    return Batch(src, src_valid_len, dec_input, tgt, tgt_valid_len)


class BatchLoader:
    """Iterate over minibatches of a ``Batch``, optionally shuffled and bucketed by length.

    Args:
        data: all sequences of a split, as made by ``encode_pairs``.
        batch_size: sequences per minibatch.
        shuffle: new random order every epoch (deterministic for ``seed``).
        bucket: group sequences of similar length into the same minibatch, so there is less
            padding to compute on. Sequences are sorted by length within pools of
            ``pool_batches`` minibatches, then the minibatches are shuffled.
        trim: cut each minibatch's padding to its longest sequence (default: on when bucketing;
            off reproduces d2l's fixed ``num_steps`` shapes).
        drop_last: leave out a last, smaller minibatch.
    """

    def __init__(self, data: Batch, batch_size: int, *, shuffle: bool = False,
                 bucket: bool = False, trim: bool | None = None, seed: int = 0,
                 drop_last: bool = False, pool_batches: int = 50):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.data = data
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.bucket = bucket
        self.trim = bucket if trim is None else trim
        self.seed = seed
        self.drop_last = drop_last
        self.pool_batches = pool_batches
        self.epoch = 0

    def __len__(self) -> int:
        n = self.data.num_sequences
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _batch_indices(self, generator: torch.Generator) -> list[torch.Tensor]:
        n = self.data.num_sequences
        order = (torch.randperm(n, generator=generator) if self.shuffle or self.bucket
                 else torch.arange(n))
        if self.bucket:
            # Sort by (source length, target length) inside each pool, stable for ties.
            lengths = self.data.src_valid_len * (self.data.tgt.shape[1] + 1) \
                + self.data.tgt_valid_len
            pool = self.batch_size * self.pool_batches
            order = torch.cat([chunk[torch.argsort(lengths[chunk], stable=True)]
                               for chunk in order.split(pool)])
        batches = list(order.split(self.batch_size))
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.bucket and self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator)]
        return batches

    def __iter__(self) -> Iterator[Batch]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        self.epoch += 1
        for index in self._batch_indices(generator):
            if self.trim:
                yield self.data.select(index)
            else:
                yield Batch(*(field[index] for field in self.data))

    def padding_fraction(self) -> float:
        """Share of source and target positions that would be padding in one epoch."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        real = padded = 0
        for index in self._batch_indices(generator):
            src_len, tgt_len = self.data.src_valid_len[index], self.data.tgt_valid_len[index]
            t_src = int(src_len.max()) if self.trim else self.data.src.shape[1]
            t_tgt = int(tgt_len.max()) if self.trim else self.data.tgt.shape[1]
            real += int(src_len.sum() + tgt_len.sum())
            padded += len(index) * (t_src + t_tgt)
        return 1.0 - real / padded if padded else 0.0
