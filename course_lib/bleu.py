"""BLEU, the way this course teaches it and the way it reports it.

Two flavours live here:

* :func:`d2l_bleu` is the classroom formula of *Dive into Deep Learning* (section 10.7),

      exp(min(0, 1 - len_label / len_pred)) * prod_{n=1..k} p_n ** (1 / 2**n),

  for one predicted sentence against one label, split on single spaces. It gives the same
  float as ``d2l.bleu`` on every input.

* :func:`corpus_bleu` and :func:`sentence_bleu` are the BLEU that papers report: the score of
  sacreBLEU (Post, 2018), with the same tokenisation (``13a``), the same smoothing methods
  and the same arithmetic, so the two agree to the last bit.

Corpus BLEU is built from a few pieces, each a public function, so that a lesson can show
them one at a time:

1. :func:`tokenize_13a` splits a sentence into tokens the way mteval-v13a.pl does;
2. :func:`ngram_counts` counts the n-grams of a token list;
3. :func:`clipped_matches` counts hypothesis n-grams found in the references, each n-gram
   credited at most as often as it occurs in a single reference ("clipping");
4. :func:`brevity_penalty` punishes hypotheses shorter than their references;
5. :func:`bleu_from_stats` turns the summed counts into a score: the geometric mean of the
   n-gram precisions times the brevity penalty.

:func:`corpus_bleu_stats` returns all of these numbers at once as a :class:`BleuStats`.

Corpus BLEU sums the counts over all sentences *before* dividing: it is not the average of
sentence BLEU scores.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = [
    "SMOOTH_METHODS",
    "TOKENIZERS",
    "BleuStats",
    "bleu_from_stats",
    "brevity_penalty",
    "clipped_matches",
    "clipped_precision",
    "closest_ref_length",
    "corpus_bleu",
    "corpus_bleu_stats",
    "d2l_bleu",
    "ngram_counts",
    "sentence_bleu",
    "tokenize_13a",
]

# Smoothing methods and their default smoothing values (Chen & Cherry, 2014):
# "none" adds nothing, "floor" gives a zero precision the count `smooth_value` (0.1) instead,
# "add-k" adds `smooth_value` (1) to the counts of every order above 1, and "exp" (mteval's
# method) gives the k-th order with no match the count 1 / 2**k.
_SMOOTH_DEFAULTS: dict[str, float | None] = {"none": None, "floor": 0.1, "add-k": 1, "exp": None}
SMOOTH_METHODS: tuple[str, ...] = tuple(_SMOOTH_DEFAULTS)
TOKENIZERS: tuple[str, ...] = ("13a", "none")

# sacreBLEU's stand-in for log(0): a very negative number, so that exp(mean) underflows to 0.
LOG_OF_ZERO = -9999999999


# --------------------------------------------------------------------------------------------
# The classroom formula of Dive into Deep Learning
# --------------------------------------------------------------------------------------------


def d2l_bleu(pred_seq: str, label_seq: str, k: int) -> float:
    """Score one prediction against one label with d2l's BLEU formula (n-grams up to k)."""
    pred_tokens, label_tokens = pred_seq.split(" "), label_seq.split(" ")
    len_pred, len_label = len(pred_tokens), len(label_tokens)
    # Brevity penalty: 1 unless the prediction is shorter than the label.
    score = math.exp(min(0, 1 - len_label / len_pred))
    for n in range(1, min(k, len_pred) + 1):
        pred_ngrams = ngram_counts(pred_tokens, n)
        label_ngrams = ngram_counts(label_tokens, n)
        # `&` keeps each n-gram with the smaller of its two counts: the clipped matches.
        num_matches = sum((pred_ngrams & label_ngrams).values())
        # Longer n-grams get more weight: p_n ** (1 / 2**n) is closer to 1 for a larger n.
        score *= math.pow(num_matches / (len_pred - n + 1), math.pow(0.5, n))
    return score


# --------------------------------------------------------------------------------------------
# Tokenisation: mteval-v13a, as sacreBLEU implements it
# --------------------------------------------------------------------------------------------

# Each of these ASCII characters becomes a token of its own: " ( " for "(", and so on. They are
# the characters of sacreBLEU's class [\{-\~\[-\` -\&\(-\+\:-\@\/] except the space, which that
# regex also pads (" " -> "   "). Leaving spaces alone changes only how many spaces separate
# two tokens: none of the later steps matches two spaces in a row, so each sees the same
# matches, and the final split on whitespace gives the same tokens.
_SYMBOLS = '!"#$%&()*+/:;<=>?@[\\]^_`{|}~'
_PAD_SYMBOLS = str.maketrans({symbol: f" {symbol} " for symbol in _SYMBOLS})
# A period or comma is split off unless it is preceded by a digit ...
_PERIOD_COMMA_AFTER_NON_DIGIT = re.compile(r"([^0-9])([\.,])")
# ... or followed by one, so "3.5" and "1,000" stay whole numbers,
_PERIOD_COMMA_BEFORE_NON_DIGIT = re.compile(r"([\.,])([^0-9])")
# and a dash is split off after a digit: "1-2" becomes "1 - 2".
_DASH_AFTER_DIGIT = re.compile(r"([0-9])(-)")
# A line with none of these characters comes out of the steps above as it went in, apart
# from whitespace; "<skipped>", "-\n" and the HTML entities all contain one of them too.
_CHARACTERS_13A_TOUCHES = frozenset(_SYMBOLS + ".,-")


def _tokens_13a(line: str) -> list[str]:
    """Split a line into tokens with mteval-v13a's rules (the list behind tokenize_13a)."""
    if _CHARACTERS_13A_TOUCHES.isdisjoint(line):
        return line.split()  # fast path: only whitespace to normalise ("\n" is whitespace)
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        line = line.replace("&quot;", '"').replace("&amp;", "&")
        line = line.replace("&lt;", "<").replace("&gt;", ">")
    line = f" {line} ".translate(_PAD_SYMBOLS)
    if "." in line or "," in line:  # the two regexes can only match a period or a comma
        line = _PERIOD_COMMA_AFTER_NON_DIGIT.sub(r"\1 \2 ", line)
        line = _PERIOD_COMMA_BEFORE_NON_DIGIT.sub(r" \1 \2", line)
    if "-" in line:
        line = _DASH_AFTER_DIGIT.sub(r"\1 \2 ", line)
    return line.split()


def tokenize_13a(line: str) -> str:
    """Tokenise a line like mteval-v13a.pl (sacreBLEU's default) and join tokens with spaces."""
    if not isinstance(line, str):
        raise TypeError(f"tokenize_13a expects a str, got {type(line).__name__}")
    return " ".join(_tokens_13a(line))


# --------------------------------------------------------------------------------------------
# The pieces of BLEU
# --------------------------------------------------------------------------------------------


def _ngrams(tokens: list[str], n: int) -> list:
    """List the n-grams of a token list in order (plain tokens for n = 1, else tuples)."""
    if n == 1:
        return tokens
    # zip(tokens, tokens[1:], tokens[2:]) yields the trigrams, and so on.
    return list(zip(*(tokens[i:] for i in range(n)), strict=False))


def ngram_counts(tokens: list[str], n: int) -> Counter:
    """Count the n-grams (as tuples of n tokens) of a token list."""
    if n < 1:
        raise ValueError(f"n-gram order must be at least 1, got {n}")
    return Counter(zip(*(tokens[i:] for i in range(n)), strict=False))


def clipped_matches(
    hyp_tokens: list[str], ref_tokens_list: Sequence[list[str]], n: int
) -> tuple[int, int]:
    """Return (hypothesis n-grams found in the references, clipped; all hypothesis n-grams)."""
    if not ref_tokens_list:
        raise ValueError("clipped_matches needs at least one reference")
    hyp_counts = ngram_counts(hyp_tokens, n)
    # An n-gram may be credited as often as it occurs in the reference that has it most often.
    max_ref_counts: Counter = Counter()
    for ref_tokens in ref_tokens_list:
        max_ref_counts |= ngram_counts(ref_tokens, n)
    matches = sum((hyp_counts & max_ref_counts).values())
    return matches, sum(hyp_counts.values())


def clipped_precision(hyp_tokens: list[str], ref_tokens_list: Sequence[list[str]], n: int) -> float:
    """Return the clipped n-gram precision of one hypothesis (0.0 if it has no n-grams)."""
    matches, total = clipped_matches(hyp_tokens, ref_tokens_list, n)
    return matches / total if total else 0.0


def brevity_penalty(hyp_len: int, ref_len: int) -> float:
    """Return exp(1 - ref_len / hyp_len) for a short hypothesis, 0.0 if it is empty, else 1.0."""
    if hyp_len < ref_len:
        return math.exp(1 - ref_len / hyp_len) if hyp_len > 0 else 0.0
    return 1.0


def closest_ref_length(hyp_len: int, ref_lens: Sequence[int]) -> int:
    """Return the reference length closest to hyp_len, the shorter one on a tie."""
    return min(ref_lens, key=lambda ref_len: (abs(hyp_len - ref_len), ref_len))


def _log(x: float) -> float:
    """Return log(x), with sacreBLEU's LOG_OF_ZERO standing in for log(0)."""
    return LOG_OF_ZERO if x == 0.0 else math.log(x)


@dataclass(frozen=True)
class BleuStats:
    """A BLEU score (0-100) with the numbers it was computed from."""

    score: float
    precisions: tuple[float, ...]  # n-gram precisions in percent (smoothed), n = 1..max_order
    brevity_penalty: float
    hyp_len: int  # hypothesis tokens, summed over the corpus
    ref_len: int  # closest reference lengths, summed over the corpus
    counts: tuple[int, ...]  # clipped n-gram matches per order (before any smoothing)
    totals: tuple[int, ...]  # hypothesis n-grams per order


def bleu_from_stats(
    counts: Sequence[int],
    totals: Sequence[int],
    hyp_len: int,
    ref_len: int,
    *,
    smooth: str = "exp",
    smooth_value: float | None = None,
    effective_order: bool = False,
) -> BleuStats:
    """Turn summed match counts, n-gram totals and lengths into a BLEU score (sacreBLEU's way)."""
    _check_smooth(smooth)
    max_order = len(counts)
    if max_order < 1 or len(totals) != max_order:
        raise ValueError("counts and totals must be non-empty and of the same length")
    bp = brevity_penalty(hyp_len, ref_len)
    precisions = [0.0] * max_order
    result = BleuStats(0.0, tuple(precisions), bp, hyp_len, ref_len, tuple(counts), tuple(totals))
    if not any(counts):  # no n-gram of any order matched: the score is 0
        return result
    if smooth_value is None:
        smooth_value = _SMOOTH_DEFAULTS[smooth]

    exp_smoothing = 1.0
    orders_used = max_order
    for n in range(1, max_order + 1):
        correct, total = counts[n - 1], totals[n - 1]
        if smooth == "add-k" and n > 1:
            correct += smooth_value
            total += smooth_value
        if total == 0:  # the hypotheses have no n-grams this long (nor longer)
            break
        if effective_order:  # leave out the orders the hypotheses are too short for
            orders_used = n
        if correct == 0:
            if smooth == "exp":
                exp_smoothing *= 2
                precisions[n - 1] = 100.0 / (exp_smoothing * total)
            elif smooth == "floor":
                precisions[n - 1] = 100.0 * smooth_value / total
        else:
            precisions[n - 1] = 100.0 * correct / total

    # Geometric mean of the precisions, times the brevity penalty.
    log_mean = sum([_log(p) for p in precisions[:orders_used]]) / orders_used
    score = bp * math.exp(log_mean)
    return BleuStats(score, tuple(precisions), bp, hyp_len, ref_len, tuple(counts), tuple(totals))


# --------------------------------------------------------------------------------------------
# Corpus and sentence BLEU
# --------------------------------------------------------------------------------------------


def _check_smooth(smooth: str) -> None:
    """Raise ValueError unless smooth names a known smoothing method."""
    if smooth not in _SMOOTH_DEFAULTS:
        raise ValueError(f"smooth must be one of {SMOOTH_METHODS}, got {smooth!r}")


def _check_options(smooth: str, smooth_value: float | None, tokenize: str, max_order: int) -> None:
    """Raise a clear error for an unknown option value."""
    _check_smooth(smooth)
    if smooth_value is not None and (
        isinstance(smooth_value, bool) or not isinstance(smooth_value, int | float)
    ):
        raise TypeError(f"smooth_value must be a number or None, got {smooth_value!r}")
    if tokenize not in TOKENIZERS:
        raise ValueError(f"tokenize must be one of {TOKENIZERS}, got {tokenize!r}")
    if isinstance(max_order, bool) or not isinstance(max_order, int):
        raise TypeError(f"max_order must be an int, got {max_order!r}")
    if max_order < 1:
        raise ValueError(f"max_order must be at least 1, got {max_order}")


def _reference_lists(
    hypotheses: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]]
) -> list[Sequence[str]]:
    """Check the inputs and return, for each hypothesis, the list of its reference strings."""
    if isinstance(hypotheses, str) or not isinstance(hypotheses, Sequence):
        raise TypeError("hypotheses must be a list of strings, one per sentence")
    if isinstance(references, str) or not isinstance(references, Sequence):
        raise TypeError("references must be a list: a string or a list of strings per hypothesis")
    if not hypotheses:
        raise ValueError("hypotheses is empty: BLEU needs at least one hypothesis")
    if len(hypotheses) != len(references):
        raise ValueError(
            f"got {len(hypotheses)} hypotheses but {len(references)} references: "
            "references needs one entry (a string or a list of strings) per hypothesis"
        )
    for i, hypothesis in enumerate(hypotheses):
        if not isinstance(hypothesis, str):
            raise TypeError(f"hypothesis {i} must be a str, got {type(hypothesis).__name__}")
    ref_lists: list[Sequence[str]] = []
    for i, refs in enumerate(references):
        if isinstance(refs, str):
            ref_lists.append((refs,))
            continue
        if not isinstance(refs, Sequence):
            raise TypeError(
                f"references[{i}] must be a str or a list of str, got {type(refs).__name__}"
            )
        if not refs:
            raise ValueError(f"hypothesis {i} has an empty list of references")
        for ref in refs:
            if not isinstance(ref, str):
                raise TypeError(
                    f"the references of hypothesis {i} must be strings, got {type(ref).__name__}"
                )
        ref_lists.append(refs)
    return ref_lists


def _repeat_count(ngram, ngram_lists: Sequence[list]) -> int:
    """Return how often the n-gram occurs in the list that has it most often."""
    return max(ngrams.count(ngram) for ngrams in ngram_lists)


def _add_segment_stats(
    hyp: list[str], refs: list[list[str]], max_order: int, counts: list[int], totals: list[int]
) -> int:
    """Add one sentence's clipped matches and n-gram totals in place; return its ref length.

    This is clipped_matches for every order at once, made fast with sets: if neither the
    hypothesis nor the references repeat an n-gram, the clipped matches are simply the n-grams
    they share. Only repeats on both sides need counting.
    """
    hyp_len = len(hyp)
    ref_lens = [len(ref) for ref in refs]
    top_order = min(max_order, hyp_len)
    for n in range(1, top_order + 1):
        totals[n - 1] += hyp_len - n + 1
    if len(refs) == 1 and hyp == refs[0]:  # a perfect hypothesis matches every n-gram
        for n in range(1, top_order + 1):
            counts[n - 1] += hyp_len - n + 1
        return hyp_len

    # hyp_shifts[i] is hyp[i:], so that zip(*hyp_shifts[:n]) yields the n-grams of hyp.
    hyp_shifts = [hyp[i:] for i in range(top_order)]
    ref_shifts = [[ref[i:] for i in range(top_order)] for ref in refs]
    for n in range(1, top_order + 1):
        hyp_ngrams = hyp_shifts[0] if n == 1 else list(zip(*hyp_shifts[:n], strict=False))
        ref_ngram_lists = [
            shifts[0] if n == 1 else list(zip(*shifts[:n], strict=False)) for shifts in ref_shifts
        ]
        hyp_set = set(hyp_ngrams)
        ref_sets = [set(ngrams) for ngrams in ref_ngram_lists]
        shared = (
            hyp_set.intersection(*ref_sets)
            if len(ref_sets) == 1
            else hyp_set.intersection(set().union(*ref_sets))
        )
        matches = len(shared)
        if matches == 0:
            break  # an n-gram can only match if its first n - 1 tokens do, so none longer can
        hyp_repeats = len(hyp_set) < len(hyp_ngrams)
        ref_repeats = any(
            len(s) < len(ngrams) for s, ngrams in zip(ref_sets, ref_ngram_lists, strict=True)
        )
        if hyp_repeats and ref_repeats:  # clip: credit each shared n-gram min(hyp, ref) times
            for ngram in shared:
                matches += min(hyp_ngrams.count(ngram), _repeat_count(ngram, ref_ngram_lists)) - 1
        counts[n - 1] += matches
    if len(refs) == 1:
        return ref_lens[0]
    return closest_ref_length(hyp_len, ref_lens)


def corpus_bleu_stats(
    hypotheses: list[str],
    references: list[str] | list[list[str]],
    *,
    max_order: int = 4,
    smooth: str = "exp",
    smooth_value: float | None = None,
    tokenize: str = "13a",
    lowercase: bool = False,
    effective_order: bool = False,
) -> BleuStats:
    """Compute corpus BLEU and the counts behind it; same options as corpus_bleu."""
    _check_options(smooth, smooth_value, tokenize, max_order)
    ref_lists = _reference_lists(hypotheses, references)
    split: Callable[[str], list[str]] = _tokens_13a if tokenize == "13a" else str.split

    # Corpora repeat lines ("Thank you ."), so each distinct line is tokenised once.
    cache: dict[str, list[str]] = {}

    def tokens_of(line: str) -> list[str]:
        tokens = cache.get(line)
        if tokens is None:
            # Lowercase first, then drop trailing whitespace, then tokenise, as sacreBLEU does.
            text = line.lower() if lowercase else line
            tokens = cache[line] = split(text.rstrip())
        return tokens

    counts = [0] * max_order
    totals = [0] * max_order
    hyp_len = ref_len = 0
    for hypothesis, refs in zip(hypotheses, ref_lists, strict=True):
        hyp = tokens_of(hypothesis)
        hyp_len += len(hyp)
        ref_len += _add_segment_stats(
            hyp, [tokens_of(ref) for ref in refs], max_order, counts, totals
        )
    return bleu_from_stats(
        counts,
        totals,
        hyp_len,
        ref_len,
        smooth=smooth,
        smooth_value=smooth_value,
        effective_order=effective_order,
    )


def corpus_bleu(
    hypotheses: list[str],
    references: list[str] | list[list[str]],
    *,
    max_order: int = 4,
    smooth: str = "exp",
    smooth_value: float | None = None,
    tokenize: str = "13a",
    lowercase: bool = False,
    effective_order: bool = False,
) -> float:
    """Return corpus BLEU (0-100) of hypotheses against one reference or a list of them each."""
    return corpus_bleu_stats(
        hypotheses,
        references,
        max_order=max_order,
        smooth=smooth,
        smooth_value=smooth_value,
        tokenize=tokenize,
        lowercase=lowercase,
        effective_order=effective_order,
    ).score


def sentence_bleu(
    hypothesis: str,
    references: list[str],
    *,
    max_order: int = 4,
    smooth: str = "exp",
    smooth_value: float | None = None,
    tokenize: str = "13a",
    lowercase: bool = False,
    effective_order: bool = True,
) -> float:
    """Return BLEU (0-100) of one sentence against its references, as sacrebleu.sentence_bleu."""
    if not isinstance(hypothesis, str):
        raise TypeError(f"hypothesis must be a str, got {type(hypothesis).__name__}")
    if isinstance(references, str) or not isinstance(references, Sequence):
        raise TypeError("references must be a list of reference strings, e.g. ['a reference']")
    return corpus_bleu(
        [hypothesis],
        [references],
        max_order=max_order,
        smooth=smooth,
        smooth_value=smooth_value,
        tokenize=tokenize,
        lowercase=lowercase,
        effective_order=effective_order,
    )
