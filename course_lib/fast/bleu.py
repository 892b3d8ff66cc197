"""Corpus BLEU, fast: the numbers of ``course_lib.bleu``, counted with sets instead of Counters.

``course_lib.bleu.corpus_bleu_stats`` is the lesson's recipe in a loop: for every sentence and
every order n, count the hypothesis' n-grams and each reference's (``ngram_counts``), clip
(``clipped_matches``), and add up. This module gets the same clipped matches with less work:

- each *distinct* n-gram the hypothesis shares with a reference is one match, so a set
  intersection finds most of the matches without counting anything;
- an n-gram can earn more than one match only if it repeats in the hypothesis and in one
  reference; only then are its occurrences counted (``_repeat_bonus``);
- an n-gram can only match if its first n - 1 tokens do, so after an order with no match
  the longer orders are skipped;
- a sentence with a single reference (the usual case) skips the loops over references.

Tokenisation, input checks and the final score (``bleu_from_stats``) are ``course_lib.bleu``'s.
Same signatures as there; ``tests/test_fast_bleu.py`` checks that both give identical
statistics and scores, and ``tests/test_bleu.py`` runs the sacreBLEU parity tests on both.
``benchmarks/bench_bleu.py`` measures the two against sacreBLEU.
"""

from __future__ import annotations

from collections.abc import Sequence

from course_lib.bleu import (
    BleuOptions,
    BleuStats,
    _check_sentence,
    _tokenized_pairs,
    bleu_from_stats,
    closest_ref_length,
)

__all__ = ["corpus_bleu", "corpus_bleu_stats", "sentence_bleu"]


def _ngram_list(tokens: list[str], n: int) -> list:
    """List the n-grams of tokens in order: the tokens themselves for n = 1, else tuples."""
    return tokens if n == 1 else list(zip(*(tokens[i:] for i in range(n)), strict=False))


def _repeat_bonus(hyp: list[str], refs: list[list[str]], n: int, shared: set) -> int:
    """Return the matches beyond one per shared n-gram: those repeated on both sides."""
    hyp_ngrams = _ngram_list(hyp, n)
    ref_ngram_lists = [_ngram_list(ref, n) for ref in refs]
    bonus = 0
    for ngram in shared:
        times = hyp_ngrams.count(ngram)
        if times > 1:
            most_in_one_ref = max(ref_ngrams.count(ngram) for ref_ngrams in ref_ngram_lists)
            bonus += min(times, most_in_one_ref) - 1
    return bonus


def _add_sentence_counts(
    hyp: list[str], refs: list[list[str]], max_order: int, counts: list[int], totals: list[int]
) -> None:
    """Add one sentence's clipped matches and n-gram totals, per order, to counts and totals."""
    hyp_len = len(hyp)
    top_order = min(max_order, hyp_len)
    for n in range(1, top_order + 1):
        totals[n - 1] += hyp_len - n + 1
    # hyp_shifts[i] is hyp[i:], so that zip(*hyp_shifts[:n]) yields the n-grams of hyp.
    hyp_shifts = [hyp[i:] for i in range(top_order)]
    single_ref = len(refs) == 1
    if single_ref:  # the common case, kept free of the loops over references
        ref = refs[0]
        ref_len = len(ref)
        ref_shifts = [ref[i:] for i in range(top_order)]
    else:
        ref_shifts_list = [[ref[i:] for i in range(top_order)] for ref in refs]

    for n in range(1, top_order + 1):
        hyp_set = set(hyp) if n == 1 else set(zip(*hyp_shifts[:n], strict=False))
        if single_ref:
            ref_set = set(ref) if n == 1 else set(zip(*ref_shifts[:n], strict=False))
            ref_repeats = len(ref_set) < ref_len - n + 1
        else:
            ref_sets = [
                set(ref) if n == 1 else set(zip(*shifts[:n], strict=False))
                for ref, shifts in zip(refs, ref_shifts_list, strict=True)
            ]
            ref_set = set().union(*ref_sets)  # n-grams found in any reference
            ref_repeats = any(
                len(ngrams) < len(ref) - n + 1 for ngrams, ref in zip(ref_sets, refs, strict=True)
            )
        shared = hyp_set & ref_set
        matches = len(shared)
        if matches == 0:
            break  # an n-gram can only match if its first n - 1 tokens do, so none longer can
        if ref_repeats and len(hyp_set) < hyp_len - n + 1:
            matches += _repeat_bonus(hyp, refs, n, shared)
        counts[n - 1] += matches


def _reference_length(hyp: list[str], refs: list[list[str]]) -> int:
    """The reference length a hypothesis is compared with (closest_ref_length, one ref quick)."""
    if len(refs) == 1:
        return len(refs[0])
    return closest_ref_length(len(hyp), [len(ref) for ref in refs])


def corpus_bleu_stats(
    hypotheses: list[str], references: list[str] | list[list[str]], **options
) -> BleuStats:
    """Compute what course_lib.bleu.corpus_bleu_stats computes, faster; the same options."""
    settings = BleuOptions(**options)
    counts, totals = [0] * settings.max_order, [0] * settings.max_order
    hyp_len = ref_len = 0
    # Sentence by sentence, so that only one sentence's tokens are alive at a time: holding the
    # whole corpus's token lists made the garbage collector's passes cost 15% more time.
    for hyp, refs in _tokenized_pairs(hypotheses, references, settings):
        _add_sentence_counts(hyp, refs, settings.max_order, counts, totals)
        hyp_len += len(hyp)
        ref_len += _reference_length(hyp, refs)
    return bleu_from_stats(counts, totals, hyp_len, ref_len, smooth=settings.smooth,
                           smooth_value=settings.smooth_value,
                           effective_order=settings.effective_order)


def corpus_bleu(hypotheses: list[str], references: list[str] | list[list[str]], **options) -> float:
    """Return course_lib.bleu.corpus_bleu's score (0-100), computed faster; the same options."""
    return corpus_bleu_stats(hypotheses, references, **options).score


def sentence_bleu(hypothesis: str, references: Sequence[str], **options) -> float:
    """Return course_lib.bleu.sentence_bleu's score (0-100), computed faster."""
    _check_sentence(hypothesis, references)
    options.setdefault("effective_order", True)
    return corpus_bleu([hypothesis], [references], **options)
