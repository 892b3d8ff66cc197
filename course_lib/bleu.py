"""BLEU, the way this course teaches it and the way it reports it.

Two flavours live here:

* :func:`d2l_bleu` is the classroom formula of *Dive into Deep Learning* (its seq2seq section),

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
4. :func:`closest_ref_length` picks the reference length a hypothesis is compared with, and
   :func:`brevity_penalty` punishes hypotheses shorter than their references;
5. :func:`bleu_from_stats` turns the summed counts into a score: the geometric mean of the
   n-gram precisions times the brevity penalty.

:func:`corpus_bleu_stats` is those pieces in a loop over the sentences, and returns all the
numbers at once as a :class:`BleuStats`. Corpus BLEU sums the counts over all sentences
*before* dividing: it is not the average of sentence BLEU scores.

The options (smoothing, tokenisation, ...) are sacreBLEU's, gathered in :class:`BleuOptions`.
``course_lib.fast.bleu`` computes the same numbers faster, for benchmarks and large corpora;
the tests prove the two equal.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

__all__ = ["SMOOTH_METHODS", "TOKENIZERS", "BleuOptions", "BleuStats", "bleu_from_stats",
           "brevity_penalty", "clipped_matches", "clipped_precision", "closest_ref_length",
           "corpus_bleu", "corpus_bleu_stats", "d2l_bleu", "ngram_counts", "sentence_bleu",
           "tokenize_13a"]

# Smoothing methods and their default smoothing values (Chen & Cherry, 2014):
# "none" adds nothing, "floor" gives a zero precision the count `smooth_value` (0.1) instead,
# "add-k" adds `smooth_value` (1) to the counts of every order above 1, and "exp" (mteval's
# method) gives the k-th order that has no match the count 1 / 2**k.
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
        # Order n enters with the exponent 1 / 2**n.
        score *= math.pow(num_matches / (len_pred - n + 1), math.pow(0.5, n))
    return score


# --------------------------------------------------------------------------------------------
# Tokenisation: mteval-v13a, as sacreBLEU implements it
# --------------------------------------------------------------------------------------------

# mteval-v13a's rules, in sacreBLEU's order. sacreBLEU runs four regular expressions over every
# line; the same steps are written here so that each is skipped when it cannot change the
# line, and done with plain string methods where that gives the same tokens.

# Step 1: each of these ASCII symbols becomes a token of its own ("(" -> " ( "). sacreBLEU's
# class [\{-\~\[-\` -\&\(-\+\:-\@\/] also holds the space (" " -> "   "); leaving spaces
# alone only changes how many spaces separate two tokens, and no later step matches two
# spaces in a row, so each finds the same matches and the final split gives the same tokens.
_SYMBOLS = '!"#$%&()*+/:;<=>?@[\\]^_`{|}~'
_SYMBOL = re.compile(f"[{re.escape(_SYMBOLS)}]")
_PAD_SYMBOLS = str.maketrans({symbol: f" {symbol} " for symbol in _SYMBOLS})
# Step 2 splits off a period or comma that follows a non-digit, and step 3 one that precedes
# a non-digit, so only one between two digits stays put: "3.5" and "1,000" remain numbers.
_PERIOD_COMMA_AFTER_NON_DIGIT = re.compile(r"([^0-9])([\.,])")
_PERIOD_COMMA_BEFORE_NON_DIGIT = re.compile(r"([\.,])([^0-9])")
# Step 4: a dash after a digit becomes a token: "1-2" -> "1 - 2". sacreBLEU writes this as
# ([0-9])(-) -> "\1 \2 "; a match can never overlap another, so a lookbehind does the same.
_DASH_AFTER_DIGIT = re.compile(r"(?<=[0-9])-")
_DIGIT = re.compile(r"[0-9]")


def _tokens_13a(line: str) -> list[str]:
    """Split a line into tokens with mteval-v13a's rules (the list behind tokenize_13a)."""
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        line = line.replace("&quot;", '"').replace("&amp;", "&")
        line = line.replace("&lt;", "<").replace("&gt;", ">")
    if _SYMBOL.search(line):
        line = line.translate(_PAD_SYMBOLS)
    has_digit = _DIGIT.search(line) is not None
    if "." in line or "," in line:
        if has_digit:
            # The padding gives a period or comma at either end a neighbour, as in sacreBLEU.
            line = _PERIOD_COMMA_AFTER_NON_DIGIT.sub(r"\1 \2 ", f" {line} ")
            line = _PERIOD_COMMA_BEFORE_NON_DIGIT.sub(r" \1 \2", line)
        else:
            # Without digits, steps 2 and 3 together split off every period and comma (one in
            # a run like "..." that step 2 skips is preceded by a space and step 3 takes it).
            line = line.replace(".", " . ").replace(",", " , ")
    if has_digit and "-" in line:
        line = _DASH_AFTER_DIGIT.sub(" - ", line)
    return line.split()


def tokenize_13a(line: str) -> str:
    """Tokenise a line like mteval-v13a.pl (sacreBLEU's default) and join tokens with spaces."""
    if not isinstance(line, str):
        raise TypeError(f"tokenize_13a expects a str, got {type(line).__name__}")
    return " ".join(_tokens_13a(line))


# --------------------------------------------------------------------------------------------
# The pieces of BLEU
# --------------------------------------------------------------------------------------------


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
# Options, input checks and tokenisation of whole sentences
# --------------------------------------------------------------------------------------------


def _check_smooth(smooth: str) -> None:
    """Raise ValueError unless smooth names a known smoothing method."""
    if smooth not in _SMOOTH_DEFAULTS:
        raise ValueError(f"smooth must be one of {SMOOTH_METHODS}, got {smooth!r}")


@dataclass(frozen=True)
class BleuOptions:
    """How corpus and sentence BLEU are computed: sacreBLEU's options, with its defaults."""

    max_order: int = 4  # the longest n-grams counted
    smooth: str = "exp"  # one of SMOOTH_METHODS
    smooth_value: float | None = None  # for "floor" and "add-k"; None: the method's default
    tokenize: str = "13a"  # "13a" (mteval-v13a) or "none" (split on whitespace)
    lowercase: bool = False  # lowercase hypotheses and references before tokenising
    effective_order: bool = False  # leave out orders the hypotheses have no n-grams of

    def __post_init__(self) -> None:
        """Raise a clear error for an unknown option value."""
        _check_smooth(self.smooth)
        value = self.smooth_value
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise TypeError(f"smooth_value must be a number or None, got {value!r}")
        if self.tokenize not in TOKENIZERS:
            raise ValueError(f"tokenize must be one of {TOKENIZERS}, got {self.tokenize!r}")
        if isinstance(self.max_order, bool) or not isinstance(self.max_order, int):
            raise TypeError(f"max_order must be an int, got {self.max_order!r}")
        if self.max_order < 1:
            raise ValueError(f"max_order must be at least 1, got {self.max_order}")


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


def _check_sentence(hypothesis: str, references: list[str]) -> None:
    """Check the input of sentence_bleu: a string and a non-empty list of strings."""
    if not isinstance(hypothesis, str):
        raise TypeError(f"hypothesis must be a str, got {type(hypothesis).__name__}")
    if isinstance(references, str) or not isinstance(references, Sequence):
        raise TypeError("references must be a list of reference strings, e.g. ['a reference']")
    if not references:
        raise ValueError("references is empty: sentence_bleu needs at least one reference")


def _tokens(line: str, options: BleuOptions) -> list[str]:
    """Lowercase (if asked), drop trailing whitespace, then tokenise, as sacreBLEU does."""
    line = (line.lower() if options.lowercase else line).rstrip()
    return _tokens_13a(line) if options.tokenize == "13a" else line.split()


def _tokenized_pairs(
    hypotheses: Sequence[str],
    references: Sequence[str] | Sequence[Sequence[str]],
    options: BleuOptions,
) -> Iterator[tuple[list[str], list[list[str]]]]:
    """Check the inputs; yield (hypothesis tokens, list of reference tokens) per sentence."""
    ref_lists = _reference_lists(hypotheses, references)
    for hypothesis, refs in zip(hypotheses, ref_lists, strict=True):
        yield _tokens(hypothesis, options), [_tokens(ref, options) for ref in refs]


# --------------------------------------------------------------------------------------------
# Corpus and sentence BLEU
# --------------------------------------------------------------------------------------------


def corpus_bleu_stats(
    hypotheses: list[str], references: list[str] | list[list[str]], **options
) -> BleuStats:
    """Compute corpus BLEU and the counts behind it; options as for corpus_bleu."""
    settings = BleuOptions(**options)
    max_order = settings.max_order
    counts, totals = [0] * max_order, [0] * max_order  # summed over the corpus, per order
    hyp_len = ref_len = 0
    for hyp, refs in _tokenized_pairs(hypotheses, references, settings):
        for n in range(1, max_order + 1):
            matches, total = clipped_matches(hyp, refs, n)
            counts[n - 1] += matches
            totals[n - 1] += total
        hyp_len += len(hyp)
        ref_len += closest_ref_length(len(hyp), [len(ref) for ref in refs])
    return bleu_from_stats(counts, totals, hyp_len, ref_len, smooth=settings.smooth,
                           smooth_value=settings.smooth_value,
                           effective_order=settings.effective_order)


def corpus_bleu(hypotheses: list[str], references: list[str] | list[list[str]], **options) -> float:
    """Return corpus BLEU (0-100) of hypotheses against one reference or a list of them each.

    options: any field of BleuOptions (max_order=4, smooth="exp", smooth_value=None,
    tokenize="13a", lowercase=False, effective_order=False), as keywords.
    """
    return corpus_bleu_stats(hypotheses, references, **options).score


def sentence_bleu(hypothesis: str, references: list[str], **options) -> float:
    """Return BLEU (0-100) of one sentence against its references, as sacrebleu.sentence_bleu.

    options: as for corpus_bleu, except that effective_order is True unless given.
    """
    _check_sentence(hypothesis, references)
    options.setdefault("effective_order", True)
    return corpus_bleu([hypothesis], [references], **options)
