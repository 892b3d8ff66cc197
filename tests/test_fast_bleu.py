"""The fast BLEU (course_lib.fast.bleu) gives exactly the plain one's numbers (course_lib.bleu).

Both are also checked against sacreBLEU in test_bleu.py; here the two are compared with each
other, to the last bit, on random corpora built to reach the fast path's shortcuts: n-grams
repeated in the hypothesis and in a reference (where sets alone undercount), several
references, orders with no match (where the fast path stops counting), and every option.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
from test_bleu import random_options, random_segment

from course_lib import bleu
from course_lib.fast import bleu as fast_bleu

REPETITIVE = ["a", "b", "a b", "a b a", "b a b", "c", "a a", "."]


def repetitive_text(rng: random.Random) -> str:
    """Words from a tiny vocabulary, often repeated, so that bigrams and trigrams repeat too."""
    return " ".join(rng.choice(REPETITIVE) for _ in range(rng.randint(0, 10)))


def repeats_on_both_sides(hypothesis: str, references: list[str]) -> bool:
    """Whether some n-gram (n = 2 or 3) occurs twice in the hypothesis and in one reference."""
    hyp_tokens = hypothesis.split()
    for n in (2, 3):
        hyp_repeated = {g for g, c in bleu.ngram_counts(hyp_tokens, n).items() if c > 1}
        for ref in references:
            ref_counts = bleu.ngram_counts(ref.split(), n)
            if any(ref_counts[g] > 1 for g in hyp_repeated):
                return True
    return False


@pytest.mark.parametrize("seed", range(6))
def test_fast_corpus_bleu_stats_equal_the_plain_ones(seed):
    rng = random.Random(4000 + seed)
    covered: Counter = Counter()
    for case in range(200):
        options = random_options(rng)
        options["max_order"] = rng.choice([options["max_order"], 6])
        if rng.random() < 0.5:  # repetitive text: the fast path's repeat bonus matters
            segments = [
                (repetitive_text(rng), [repetitive_text(rng) for _ in range(rng.randint(1, 3))])
                for _ in range(rng.randint(1, 6))
            ]
        else:
            segments = [random_segment(rng, max_refs=4) for _ in range(rng.randint(1, 6))]
        hypotheses = [hyp for hyp, _ in segments]
        references = [refs for _, refs in segments]
        plain = bleu.corpus_bleu_stats(hypotheses, references, **options)
        fast = fast_bleu.corpus_bleu_stats(hypotheses, references, **options)
        context = f"seed {4000 + seed} case {case}: {options} {hypotheses!r} {references!r}"
        assert fast == plain, context  # every field, the floats bit for bit
        assert fast_bleu.corpus_bleu(hypotheses, references, **options) == plain.score, context
        covered["repeats on both sides"] += any(map(repeats_on_both_sides, hypotheses, references))
        covered["several references"] += any(len(refs) > 1 for refs in references)
        covered["an order with n-grams but no match"] += any(
            total and not count for count, total in zip(plain.counts, plain.totals, strict=True)
        )
        covered["score strictly between"] += 0 < plain.score < 100
    # The generators reached the corners this test exists for.
    assert min(covered.values()) >= 10 and len(covered) == 4, covered


def test_a_match_after_an_order_with_none_cannot_happen():
    # The fast path stops at the first order with no match; the plain one counts every order.
    # This is why that is safe: a matching n-gram's first n - 1 tokens match too.
    rng = random.Random(5)
    for _ in range(500):
        hypothesis, references = random_segment(rng, max_refs=3)
        stats = bleu.corpus_bleu_stats([hypothesis], [references], max_order=6)
        first_zero = next((n for n, count in enumerate(stats.counts) if count == 0), 6)
        assert not any(stats.counts[first_zero:]), (hypothesis, references)


def test_fast_sentence_bleu_equals_the_plain_one():
    rng = random.Random(21)
    for _ in range(300):
        options = random_options(rng)
        if rng.random() < 0.5:
            del options["effective_order"]  # sentence BLEU's own default, True
        hypothesis, references = random_segment(rng, max_refs=3)
        plain = bleu.sentence_bleu(hypothesis, references, **options)
        assert fast_bleu.sentence_bleu(hypothesis, references, **options) == plain


def test_repeated_ngrams_are_clipped_like_the_lesson_says():
    # Bigrams: "a b" is 3 times in the hypothesis and at most twice in one reference, "b a"
    # twice and at most once: 2 + 1 = 3 matches, where the two distinct shared bigrams (the
    # sets' count) would give 2 and no clipping 5.
    hypotheses, references = ["a b a b a b"], [["a b a b c", "a b"]]
    for module in (bleu, fast_bleu):
        stats = module.corpus_bleu_stats(hypotheses, references, max_order=3)
        assert stats.counts == (4, 3, 2), module.__name__
        assert stats.totals == (6, 5, 4)
        assert stats.ref_len == 5  # the closest reference length (5 beats 2 for 6 tokens)


def test_fast_bleu_rejects_bad_input_like_the_plain_one():
    bad_calls = [
        ([], [], {}),
        (["a", "b"], ["a"], {}),
        (["a"], [["a", None]], {}),
        (["a"], ["a"], {"smooth": "laplace"}),
        (["a"], ["a"], {"max_order": 2.0}),
        (["a"], ["a"], {"smoth": "exp"}),
    ]
    for hypotheses, references, options in bad_calls:
        with pytest.raises((TypeError, ValueError)) as plain_error:
            bleu.corpus_bleu(hypotheses, references, **options)
        with pytest.raises(plain_error.type, match=str(plain_error.value)[:20]):
            fast_bleu.corpus_bleu(hypotheses, references, **options)
    with pytest.raises(ValueError, match="references is empty"):
        fast_bleu.sentence_bleu("a", [])
