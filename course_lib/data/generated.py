"""Corpora generated offline by well-kept libraries: small, exact, and with real structure.

- numbers: integers written in English words -> French words (num2words). French counts in
  twenties (97 = ``quatre-vingt-dix-sept``, "four twenty ten seven"), so the model must learn
  real reordering and composition, not a word-for-word lookup.
- dates: English long dates -> French long dates (babel's CLDR data), which moves the day in
  front of the month (``march 3 , 2025`` -> ``3 mars 2025``), or -> ISO dates (``2025 - 03 - 03``).

Sentences come out already normalised and tokenised the course's way (lowercase, a space
before punctuation, hyphens as separate tokens), joined by single spaces, so the strings are
both model input and BLEU references.
"""

from __future__ import annotations

import datetime as dt
import random
from functools import lru_cache

from babel.dates import format_date
from num2words import num2words

from course_lib.data.splits import PairSplits, split_pairs
from course_lib.data.text import tokenize

__all__ = ["number_pair", "numbers_dataset", "date_pair", "dates_dataset"]


def _normalise(sentence: str) -> str:
    return " ".join(tokenize(sentence, split_hyphens=True))


def _sample(population_size: int, num_examples: int | None, rng: random.Random) -> list[int]:
    """Indices 0..population_size-1: all of them, or ``num_examples`` drawn without replacement."""
    if num_examples is None:
        return list(range(population_size))
    if not 1 <= num_examples <= population_size:
        raise ValueError(
            f"num_examples must be between 1 and {population_size} (the size of the range), "
            f"got {num_examples}")
    return sorted(rng.sample(range(population_size), num_examples))


@lru_cache(maxsize=1 << 17)
def number_pair(n: int) -> tuple[str, str]:
    """(English words, French words) for an integer, e.g. 97 -> ('ninety - seven', ...)."""
    return _normalise(num2words(n, lang="en")), _normalise(num2words(n, lang="fr"))


def numbers_dataset(low: int = 0, high: int = 9_999, *, num_examples: int | None = None,
                    seed: int = 0, valid_fraction: float = 0.1,
                    test_fraction: float = 0.1) -> PairSplits:
    """English -> French number words for integers in ``[low, high]`` (inclusive).

    Args:
        num_examples: draw this many distinct integers from the range (default: all of them).
        seed: fixes the sample and the split.
    """
    if not 0 <= low <= high:
        raise ValueError(f"need 0 <= low <= high, got low={low}, high={high}")
    rng = random.Random(seed)
    numbers = [low + i for i in _sample(high - low + 1, num_examples, rng)]
    pairs = [number_pair(n) for n in numbers]
    return split_pairs(pairs, valid_fraction=valid_fraction, test_fraction=test_fraction,
                       seed=seed, name="numbers", split_hyphens=True,
                       info={"low": low, "high": high, "num_examples": len(pairs)})


_DATE_TARGETS = ("fr", "iso")
_DATE_STYLES = ("long", "full")


def date_pair(day: dt.date, target: str = "fr", style: str = "long") -> tuple[str, str]:
    """(English date, French or ISO date) in CLDR's long form (``style="full"`` adds weekdays)."""
    if target not in _DATE_TARGETS:
        raise ValueError(f"target must be one of {_DATE_TARGETS}, got {target!r}")
    if style not in _DATE_STYLES:
        raise ValueError(f"style must be one of {_DATE_STYLES}, got {style!r}")
    source = format_date(day, format=style, locale="en")
    target_text = day.isoformat() if target == "iso" else format_date(day, format=style,
                                                                        locale="fr")
    return _normalise(source), _normalise(target_text)


def dates_dataset(start: dt.date = dt.date(1950, 1, 1), end: dt.date = dt.date(2049, 12, 31),
                  *, target: str = "fr", style: str = "long", num_examples: int | None = 20_000,
                  seed: int = 0, valid_fraction: float = 0.1,
                  test_fraction: float = 0.1) -> PairSplits:
    """English long dates -> French long dates (or ISO dates) for days in ``[start, end]``.

    Args:
        num_examples: draw this many distinct days from the range (None: every day).
        seed: fixes the sample and the split.
    """
    if start > end:
        raise ValueError(f"need start <= end, got start={start}, end={end}")
    rng = random.Random(seed)
    offsets = _sample((end - start).days + 1, num_examples, rng)
    pairs = [date_pair(start + dt.timedelta(days=k), target, style) for k in offsets]
    return split_pairs(pairs, valid_fraction=valid_fraction, test_fraction=test_fraction,
                       seed=seed, name=f"dates-{target}", split_hyphens=True,
                       info={"start": start.isoformat(), "end": end.isoformat(),
                             "target": target, "style": style, "num_examples": len(pairs)})
