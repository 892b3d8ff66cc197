"""A translation corpus ready for training: tokens, vocabularies, tensors and loaders.

    from course_lib.data.generated import numbers_dataset
    from course_lib.data.translation import TranslationData

    data = TranslationData(numbers_dataset(0, 9999), num_steps=16, batch_size=64)
    for batch in data.loader("train"):
        ...  # batch.src, batch.src_valid_len, batch.dec_input, batch.tgt, batch.tgt_valid_len

Vocabularies are built from the training split only, so valid/test words unseen in training
become ``<unk>`` exactly as they would for a deployed model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from course_lib.data.batching import Batch, BatchLoader, encode_pairs
from course_lib.data.splits import PairSplits
from course_lib.data.text import tokenize
from course_lib.data.vocab import Vocab

__all__ = ["TranslationData"]

_SPLITS = ("train", "valid", "test")


class TranslationData:
    """Tokenised splits, source and target vocabularies, and minibatch loaders.

    Args:
        splits: the corpus (e.g. from ``numbers_dataset``, ``dates_dataset`` or
            ``fra_eng_dataset``).
        num_steps: padded length of every sequence (int, or a (source, target) pair).
        batch_size: sequences per training minibatch.
        min_freq: tokens seen fewer times in training map to ``<unk>``.
        bucket: group training sentences of similar length (less padding, faster epochs).
        seed: fixes the shuffling of the training loader.
        src_vocab, tgt_vocab: reuse existing vocabularies (e.g. from a checkpoint).
    """

    def __init__(self, splits: PairSplits, *, num_steps: int | tuple[int, int] = 12,
                 batch_size: int = 64, min_freq: int = 1, bucket: bool = False, seed: int = 0,
                 src_vocab: Vocab | None = None, tgt_vocab: Vocab | None = None):
        if not splits.train:
            raise ValueError(f"{splits!r} has an empty training split")
        self.splits = splits
        self.num_steps = num_steps
        self.batch_size = batch_size
        self.bucket = bucket
        self.seed = seed
        self.tokens = {name: [(self.tokenize(src), self.tokenize(tgt))
                              for src, tgt in getattr(splits, name)]
                       for name in _SPLITS}
        self.src_vocab = src_vocab or Vocab((s for s, _ in self.tokens["train"]),
                                            min_freq=min_freq)
        self.tgt_vocab = tgt_vocab or Vocab((t for _, t in self.tokens["train"]),
                                            min_freq=min_freq)
        self.tensors = {name: encode_pairs(pairs, self.src_vocab, self.tgt_vocab, num_steps)
                        for name, pairs in self.tokens.items() if pairs}

    def tokenize(self, sentence: str) -> list[str]:
        """Tokens of a raw sentence, the way this corpus is tokenised."""
        return tokenize(sentence, split_hyphens=self.splits.split_hyphens)

    def loader(self, split: str = "train", *, shuffle: bool | None = None,
               batch_size: int | None = None, bucket: bool | None = None) -> BatchLoader:
        """Minibatches of a split; the training split is shuffled by default, others are not."""
        if split not in self.tensors:
            raise ValueError(f"split must be one of {sorted(self.tensors)}, got {split!r}")
        is_train = split == "train"
        return BatchLoader(self.tensors[split], batch_size or self.batch_size,
                           shuffle=is_train if shuffle is None else shuffle,
                           bucket=(self.bucket and is_train) if bucket is None else bucket,
                           seed=self.seed)

    def encode_sources(self, sentences: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(src, src_valid_len) tensors for raw source sentences, ready for a model's encoder."""
        pairs = [(self.tokenize(s), []) for s in sentences]
        batch: Batch = encode_pairs(pairs, self.src_vocab, self.tgt_vocab, self.num_steps)
        return batch.src, batch.src_valid_len

    def decode_targets(self, ids: torch.Tensor) -> list[str]:
        """Sentences (tokens joined by spaces) from rows of target ids; stops at ``<eos>``."""
        if ids.dim() != 2:
            raise ValueError(f"ids must be (B, T), got shape {tuple(ids.shape)}")
        return [" ".join(self.tgt_vocab.decode(row.tolist())) for row in ids]

    def references(self, split: str = "test") -> list[str]:
        """Target sentences of a split, tokenised and joined by spaces, for BLEU."""
        return [" ".join(tgt) for _, tgt in self.tokens[split]]

    def num_truncated(self, split: str = "train") -> int:
        """How many pairs of a split lost tokens to ``num_steps`` (source or target too long)."""
        src_steps, tgt_steps = ((self.num_steps, self.num_steps)
                                if isinstance(self.num_steps, int) else self.num_steps)
        return sum(len(s) + 1 > src_steps or len(t) + 1 > tgt_steps
                   for s, t in self.tokens[split])

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self.tokens.items())
        return (f"TranslationData({self.splits.name}: {sizes}; src_vocab={len(self.src_vocab)}, "
                f"tgt_vocab={len(self.tgt_vocab)}, num_steps={self.num_steps})")
