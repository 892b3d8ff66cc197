"""Train/valid/test splits that never share a source sentence.

If the same source sentence (after the d2l normalisation, so ``Go.`` and ``go .`` count as one)
sits in both the training and the test split, test BLEU rewards memorising. Pairs are therefore
grouped by normalised source before they are split, deterministically for a seed.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from course_lib.data.text import preprocess

__all__ = ["PairSplits", "split_pairs"]

Pair = tuple[str, str]


@dataclass(frozen=True)
class PairSplits:
    """A corpus as three lists of (source, target) sentence pairs."""

    train: list[Pair]
    valid: list[Pair]
    test: list[Pair]
    name: str = "corpus"
    info: dict = field(default_factory=dict)  # how it was made (ranges, seed, ...)
    split_hyphens: bool = False  # tokenise with hyphens as tokens (the generated corpora do)

    def __post_init__(self):
        for split in ("train", "valid", "test"):
            pairs = getattr(self, split)
            if pairs and not (isinstance(pairs[0], tuple | list) and len(pairs[0]) == 2):
                raise TypeError(f"PairSplits.{split} must hold (source, target) pairs")

    def __repr__(self) -> str:
        return (f"PairSplits(name={self.name!r}, train={len(self.train)}, "
                f"valid={len(self.valid)}, test={len(self.test)})")


def _source_key(source: str) -> str:
    return " ".join(preprocess(source).split())


def split_pairs(pairs: Sequence[Pair], *, valid_fraction: float = 0.1,
                test_fraction: float = 0.1, seed: int = 0, name: str = "corpus",
                info: dict | None = None, split_hyphens: bool = False) -> PairSplits:
    """Shuffle source groups with ``random.Random(seed)`` and cut them into train/valid/test.

    Fractions count distinct source sentences; every pair of a source goes to the same split.
    """
    if not (0 <= valid_fraction < 1 and 0 <= test_fraction < 1
            and valid_fraction + test_fraction < 1):
        raise ValueError(
            "need 0 <= valid_fraction, test_fraction and valid_fraction + test_fraction < 1, "
            f"got {valid_fraction} and {test_fraction}")
    if not pairs:
        raise ValueError("split_pairs got no pairs")
    groups: dict[str, list[Pair]] = {}
    for pair in pairs:
        groups.setdefault(_source_key(pair[0]), []).append(tuple(pair))
    keys = list(groups)  # first-seen order, so the result depends only on input and seed
    random.Random(seed).shuffle(keys)
    num_valid = round(len(keys) * valid_fraction)
    num_test = round(len(keys) * test_fraction)
    if len(keys) - num_valid - num_test < 1:
        raise ValueError(f"{len(keys)} distinct sources are too few to split")

    def gather(selected: list[str]) -> list[Pair]:
        return [pair for key in selected for pair in groups[key]]

    return PairSplits(train=gather(keys[num_valid + num_test:]),
                      valid=gather(keys[:num_valid]),
                      test=gather(keys[num_valid:num_valid + num_test]),
                      name=name, info={"seed": seed, **(info or {})},
                      split_hyphens=split_hyphens)
