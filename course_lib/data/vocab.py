"""Vocabulary: token <-> id maps with reserved tokens at fixed ids.

The reserved tokens always come first, so every vocabulary of the course agrees on them:
``<pad>`` = 0, ``<bos>`` = 1, ``<eos>`` = 2, ``<unk>`` = 3. The other tokens follow by
decreasing frequency, ties broken alphabetically, so the same corpus always gives the same ids.
A token seen fewer than ``min_freq`` times is left out and maps to ``<unk>``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["Vocab", "PAD", "BOS", "EOS", "UNK", "RESERVED_TOKENS"]

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
RESERVED_TOKENS = (PAD, BOS, EOS, UNK)


class Vocab:
    """Map tokens to ids and back; unknown tokens map to ``<unk>`` (or raise, with strict=True)."""

    def __init__(self, sentences: Iterable[Sequence[str]], *, min_freq: int = 1,
                 extra_reserved: Sequence[str] = ()):
        """Build from tokenised sentences (lists of tokens).

        Args:
            sentences: an iterable of token lists, e.g. ``[["go", "."], ["hi", "."]]``.
            min_freq: keep tokens seen at least this often (>= 1).
            extra_reserved: more tokens to reserve right after the four standard ones.
        """
        if min_freq < 1:
            raise ValueError(f"min_freq must be >= 1, got {min_freq}")
        counter: Counter[str] = Counter()
        for sentence in sentences:
            if isinstance(sentence, str):
                raise TypeError(
                    "Vocab expects tokenised sentences (lists of tokens), got a str: "
                    f"{sentence[:40]!r}. Tokenise first, e.g. with course_lib.data.text.tokenize.")
            counter.update(sentence)
        if not counter:
            raise ValueError("cannot build a vocabulary from an empty corpus (no tokens)")
        reserved = list(RESERVED_TOKENS) + [t for t in extra_reserved if t not in RESERVED_TOKENS]
        self.token_freqs: list[tuple[str, int]] = sorted(counter.items(),
                                                         key=lambda kv: (-kv[1], kv[0]))
        self.idx_to_token: list[str] = reserved + [
            token for token, freq in self.token_freqs
            if freq >= min_freq and token not in reserved]
        self.token_to_idx: dict[str, int] = {t: i for i, t in enumerate(self.idx_to_token)}
        self.min_freq = min_freq

    @classmethod
    def from_tokens(cls, idx_to_token: Sequence[str]) -> Vocab:
        """Rebuild a vocabulary from its id -> token list (e.g. loaded from a checkpoint)."""
        if list(idx_to_token[:len(RESERVED_TOKENS)]) != list(RESERVED_TOKENS):
            raise ValueError(
                f"a vocabulary must start with {list(RESERVED_TOKENS)}, "
                f"got {list(idx_to_token[:len(RESERVED_TOKENS)])}")
        if len(set(idx_to_token)) != len(idx_to_token):
            raise ValueError("a vocabulary must not list a token twice")
        vocab = cls.__new__(cls)
        vocab.token_freqs = []
        vocab.idx_to_token = list(idx_to_token)
        vocab.token_to_idx = {t: i for i, t in enumerate(vocab.idx_to_token)}
        vocab.min_freq = 1
        return vocab

    def __len__(self) -> int:
        return len(self.idx_to_token)

    def __contains__(self, token: str) -> bool:
        return token in self.token_to_idx

    def __getitem__(self, tokens: str | Sequence[str]) -> int | list[int]:
        """Id of a token, or list of ids of a list of tokens; unknown tokens give ``unk``."""
        if isinstance(tokens, str):
            return self.token_to_idx.get(tokens, self.unk)
        return [self.token_to_idx.get(t, self.unk) for t in tokens]

    def encode(self, tokens: Sequence[str], *, strict: bool = False) -> list[int]:
        """Ids of tokens; with ``strict=True`` an unknown token raises instead of becoming unk."""
        if isinstance(tokens, str):
            raise TypeError(f"encode expects a list of tokens, got a str: {tokens[:40]!r}")
        if strict:
            unknown = [t for t in tokens if t not in self.token_to_idx]
            if unknown:
                raise KeyError(f"tokens not in the vocabulary: {unknown[:10]}")
        return [self.token_to_idx.get(t, self.unk) for t in tokens]

    def to_tokens(self, ids: int | Iterable[int]) -> str | list[str]:
        """Token of an id, or tokens of a sequence of ids (a tensor works too)."""
        if isinstance(ids, int) or (hasattr(ids, "dim") and ids.dim() == 0):
            return self._token(int(ids))
        return [self._token(int(i)) for i in ids]

    def decode(self, ids: Iterable[int], *, stop_at_eos: bool = True,
               skip_special: bool = True) -> list[str]:
        """Tokens of a model output: stops at the first ``<eos>``, drops pad/bos/eos."""
        tokens = []
        for i in ids:
            i = int(i)
            if stop_at_eos and i == self.eos:
                break
            if skip_special and i in (self.pad, self.bos, self.eos):
                continue
            tokens.append(self._token(i))
        return tokens

    def _token(self, i: int) -> str:
        if not 0 <= i < len(self.idx_to_token):
            raise IndexError(f"id {i} is outside this vocabulary of size {len(self)}")
        return self.idx_to_token[i]

    pad = property(lambda self: 0, doc="Id of ``<pad>`` (always 0).")
    bos = property(lambda self: 1, doc="Id of ``<bos>`` (always 1).")
    eos = property(lambda self: 2, doc="Id of ``<eos>`` (always 2).")
    unk = property(lambda self: 3, doc="Id of ``<unk>`` (always 3).")

    def save(self, path: str | Path) -> None:
        """Write the id -> token list as JSON."""
        Path(path).write_text(json.dumps(self.idx_to_token, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        """Read a vocabulary written by ``save``."""
        return cls.from_tokens(json.loads(Path(path).read_text(encoding="utf-8")))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.idx_to_token == other.idx_to_token

    __hash__ = None  # mutable-looking container: not hashable

    def __repr__(self) -> str:
        shown = ", ".join(self.idx_to_token[4:10])
        return f"Vocab(size={len(self)}, min_freq={self.min_freq}, tokens=[{shown}, ...])"
