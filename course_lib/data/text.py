"""Text preprocessing and tokenisation for translation pairs, matching d2l's fra-eng pipeline.

d2l (``preprocess_nmt`` / ``MTFraEng._preprocess``) lowercases, turns the non-breaking spaces
U+00A0 and U+202F into plain spaces, and puts a space before ``, . ! ?`` when none is there;
tokens are then the non-empty pieces between spaces. ``tests/test_text.py`` checks that these
functions give d2l's tokens on the whole Tatoeba corpus.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["preprocess", "tokenize", "parse_pairs"]

_PUNCT_WITHOUT_SPACE = re.compile(r"(?<=[^ ])([,.!?])")  # d2l: char in ',.!?' and prev != ' '
_HYPHEN = re.compile(r"(?<=[^ ])-|-(?=[^ ])")


def preprocess(text: str) -> str:
    """Normalise text the way d2l does: nbsp to space, lowercase, a space before punctuation."""
    text = text.replace("\u202f", " ").replace("\xa0", " ").lower()
    return _PUNCT_WITHOUT_SPACE.sub(r" \1", text)


def tokenize(sentence: str, *, split_hyphens: bool = False) -> list[str]:
    """Split a sentence into tokens after ``preprocess``.

    With ``split_hyphens=True`` a hyphen becomes a token of its own (``vingt-trois`` becomes
    ``vingt - trois``), which keeps number words compositional in the generated datasets.
    """
    text = preprocess(sentence)
    if split_hyphens:
        text = _HYPHEN.sub(" - ", text)
    # Split on the plain space only, as d2l does: the corpus has other Unicode spaces (U+2009)
    # that d2l keeps inside tokens, and str.split() would split on them.
    return [token for token in text.split(" ") if token]


def parse_pairs(lines: str | Iterable[str], *, on_bad_line: str = "error",
                source: str = "corpus") -> list[tuple[str, str]]:
    """Read ``source<TAB>target`` lines into a list of raw (source, target) pairs.

    Blank lines are skipped. A line that does not have exactly two tab-separated fields, or whose
    source or target is empty, raises ``ValueError`` naming its line number
    (``on_bad_line="error"``) or is dropped (``"skip"``); nothing is ever split at a guessed place.
    An input with no pairs at all raises ``ValueError``.
    """
    if on_bad_line not in ("error", "skip"):
        raise ValueError(f"on_bad_line must be 'error' or 'skip', got {on_bad_line!r}")
    if isinstance(lines, str):
        lines = lines.split("\n")
    pairs: list[tuple[str, str]] = []
    for number, line in enumerate(lines, start=1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2 or not fields[0].strip() or not fields[1].strip():
            if on_bad_line == "skip":
                continue
            what = ("has no tab" if len(fields) == 1 else
                    f"has {len(fields)} tab-separated fields" if len(fields) > 2 else
                    "has an empty side")
            raise ValueError(
                f"{source}, line {number} {what}; expected 'source<TAB>target': {line[:80]!r}. "
                "Pass on_bad_line='skip' to drop such lines."
            )
        pairs.append((fields[0], fields[1]))
    if not pairs:
        raise ValueError(f"{source} holds no 'source<TAB>target' pairs (it is empty)")
    return pairs
