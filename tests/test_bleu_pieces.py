"""course_lib.bleu's pieces against independent references: sacreBLEU's 13a tokeniser and
its final arithmetic (BLEU.compute_bleu), d2l.bleu for the classroom formula, hand-worked
numbers for the n-gram counts, clipping and the brevity penalty. (Corpus and sentence BLEU
against sacreBLEU, for the plain and the fast implementation, are in test_bleu.py.)
"""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
from sacrebleu.metrics import BLEU
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

from course_lib import bleu

TOLERANCE = 1e-9


@pytest.fixture(scope="module")
def d2l_reference():
    """d2l.torch, whose bleu is the reference for d2l_bleu."""
    from course_lib.compat import load_d2l

    return load_d2l()


def test_bleu_from_stats_matches_sacrebleu_compute_bleu():
    rng = random.Random(5)
    for _ in range(1000):
        max_order = rng.randint(1, 5)
        totals = sorted((rng.randint(0, 30) for _ in range(max_order)), reverse=True)
        counts = [rng.choice([0, rng.randint(0, t)]) for t in totals]
        hyp_len, ref_len = totals[0], rng.randint(0, 40)
        smooth = rng.choice(bleu.SMOOTH_METHODS)
        smooth_value = rng.choice([None, 0.2, 1, 3])
        effective = rng.random() < 0.5
        expected = BLEU.compute_bleu(
            list(counts), list(totals), hyp_len, ref_len, smooth, smooth_value, effective,
            max_order,
        )  # fmt: skip
        stats = bleu.bleu_from_stats(
            counts,
            totals,
            hyp_len,
            ref_len,
            smooth=smooth,
            smooth_value=smooth_value,
            effective_order=effective,
        )
        assert stats.score == pytest.approx(expected.score, abs=TOLERANCE, rel=0)
        assert stats.brevity_penalty == expected.bp


# --------------------------------------------------------------------------------------------
# 13a tokenisation
# --------------------------------------------------------------------------------------------

TOKENIZER_PIECES = [
    *"ab1290.,-.,-&;<>()\"'/!?%$#:@[]{}|~^_`+=*\\ \t\n",
    *["&amp;", "&quot;", "&lt;", "&gt;", "&amp", "<skipped>", "-\n", " . ", "...", ",,"],
    *["é", "中", "😀", "\xa0", "٣", "\u2028", "A", "3.5", "1,000", "1-2", "a,b", "x."],
]


def test_tokenize_13a_matches_sacrebleu_on_generated_strings():
    reference = Tokenizer13a()
    rng = random.Random(13)
    for _ in range(20_000):
        line = "".join(rng.choice(TOKENIZER_PIECES) for _ in range(rng.randint(0, 20)))
        assert bleu.tokenize_13a(line) == reference(line), repr(line)


def test_tokenize_13a_matches_sacrebleu_on_every_character_in_context():
    reference = Tokenizer13a()
    characters = [chr(c) for c in [*range(0x300), *range(0x2000, 0x2070), 0x3000, 0xFEFF]]
    for c in characters:
        for line in (c, f"a{c}b", f"1{c}2", f"{c}.{c}", f"3{c}-4"):
            assert bleu.tokenize_13a(line) == reference(line), repr(line)


def test_tokenize_13a_examples():
    assert bleu.tokenize_13a("Hello, world!") == "Hello , world !"
    assert bleu.tokenize_13a("It costs $3.50, not 1,000.") == "It costs $ 3.50 , not 1,000 ."
    assert bleu.tokenize_13a("pages 1-2 &amp; 3") == "pages 1 - 2 & 3"
    assert bleu.tokenize_13a("e-mail (U.S.)") == "e-mail ( U . S . )"
    assert bleu.tokenize_13a("a..5") == "a . .5"  # 13a's regexes skip every other dot
    assert bleu.tokenize_13a("  spaced   out  ") == "spaced out"
    assert bleu.tokenize_13a("") == ""


# --------------------------------------------------------------------------------------------
# d2l's classroom BLEU
# --------------------------------------------------------------------------------------------


def test_d2l_bleu_equals_d2l_exactly(d2l_reference):
    rng = random.Random(17)
    words = ["il", "est", "calme", "court", ".", "!", "va", "je", "suis", "", "riche"]
    cases = 0
    for _ in range(5000):
        pred = rng.choice([" ", "  "]).join(rng.choice(words) for _ in range(rng.randint(0, 9)))
        label = " ".join(rng.choice(words) for _ in range(rng.randint(0, 9)))
        if rng.random() < 0.1:
            label = pred
        if rng.random() < 0.05:
            pred = pred + " "
        k = rng.choice([1, 2, 3, 4, 4, rng.randint(5, 12)])
        assert bleu.d2l_bleu(pred, label, k) == d2l_reference.bleu(pred, label, k), (
            pred,
            label,
            k,
        )
        cases += 1
    assert cases == 5000


def test_d2l_bleu_worked_examples(d2l_reference):
    # No bigram of "il court ." is in the label, and k = 2 multiplies by p_2 ** (1/4) = 0.
    assert bleu.d2l_bleu("il court .", "il est calme .", 2) == 0
    assert d2l_reference.bleu("il court .", "il est calme .", 2) == 0
    # The book's examples: a perfect "va !" and "il est riche ." for "il est calme .":
    # p_1 = 3/4 and p_2 = 1/3 (only "il est" matches), no brevity penalty.
    assert bleu.d2l_bleu("va !", "va !", 2) == 1.0
    assert bleu.d2l_bleu("j'ai perdu .", "j'ai perdu .", 2) == 1.0
    expected = (3 / 4) ** 0.5 * (1 / 3) ** 0.25
    assert bleu.d2l_bleu("il est riche .", "il est calme .", 2) == pytest.approx(expected)
    assert bleu.d2l_bleu("il est riche .", "il est calme .", 2) == pytest.approx(0.658, abs=5e-4)
    # A short prediction: brevity penalty exp(1 - 4/3), p_1 = 2/3.
    expected_short = math.exp(1 - 4 / 3) * (2 / 3) ** 0.5
    assert bleu.d2l_bleu("il court .", "il est calme .", 1) == pytest.approx(expected_short)



# --------------------------------------------------------------------------------------------
# The pieces
# --------------------------------------------------------------------------------------------


def test_ngram_counts():
    tokens = ["a", "b", "a", "b"]
    assert bleu.ngram_counts(tokens, 1) == Counter({("a",): 2, ("b",): 2})
    assert bleu.ngram_counts(tokens, 2) == Counter({("a", "b"): 2, ("b", "a"): 1})
    assert bleu.ngram_counts(tokens, 4) == Counter({("a", "b", "a", "b"): 1})
    assert bleu.ngram_counts(tokens, 5) == Counter()
    assert bleu.ngram_counts([], 1) == Counter()
    with pytest.raises(ValueError, match="at least 1"):
        bleu.ngram_counts(tokens, 0)


def test_clipped_matches_and_precision():
    hyp = "the the the the".split()
    ref = "the cat is on the mat".split()
    assert bleu.clipped_matches(hyp, [ref], 1) == (2, 4)  # "the" occurs twice in the reference
    assert bleu.clipped_precision(hyp, [ref], 1) == 0.5
    # Clipping takes the count of the reference with the most, not the sum over references.
    assert bleu.clipped_matches(hyp, [ref, "the the the".split()], 1) == (3, 4)
    assert bleu.clipped_matches(hyp, [ref, ref], 1) == (2, 4)
    assert bleu.clipped_matches(hyp, [ref], 2) == (0, 3)
    assert bleu.clipped_matches("the cat".split(), [ref], 2) == (1, 1)
    assert bleu.clipped_precision(["the"], [ref], 2) == 0.0  # no bigrams at all
    with pytest.raises(ValueError, match="at least one reference"):
        bleu.clipped_matches(hyp, [], 1)


def test_brevity_penalty():
    assert bleu.brevity_penalty(5, 5) == 1.0
    assert bleu.brevity_penalty(6, 5) == 1.0
    assert bleu.brevity_penalty(4, 5) == pytest.approx(math.exp(1 - 5 / 4))
    assert bleu.brevity_penalty(1, 2) == pytest.approx(math.exp(-1))
    assert bleu.brevity_penalty(0, 5) == 0.0
    assert bleu.brevity_penalty(0, 0) == 1.0  # nothing to be short of


def test_closest_ref_length():
    assert bleu.closest_ref_length(5, [3, 7]) == 3  # a tie goes to the shorter
    assert bleu.closest_ref_length(5, [7, 3]) == 3
    assert bleu.closest_ref_length(5, [4, 6, 9]) == 4
    assert bleu.closest_ref_length(5, [9, 6]) == 6
    assert bleu.closest_ref_length(0, [2, 1]) == 1


def test_bleu_stats_is_frozen():
    stats = bleu.corpus_bleu_stats(["a b c d"], ["a b c d"])
    assert stats.score == pytest.approx(100.0)
    assert stats.counts == stats.totals == (4, 3, 2, 1)
    with pytest.raises(AttributeError):
        stats.score = 0.0



def test_bleu_options_defaults_and_checks():
    assert bleu.BleuOptions() == bleu.BleuOptions(
        max_order=4, smooth="exp", smooth_value=None, tokenize="13a", lowercase=False,
        effective_order=False,
    )  # fmt: skip
    with pytest.raises(TypeError, match="unexpected keyword"):
        bleu.corpus_bleu(["a"], ["a"], smoth="exp")
    with pytest.raises(TypeError, match="smooth_value must be a number"):
        bleu.BleuOptions(smooth_value=True)
    with pytest.raises(TypeError, match="max_order must be an int"):
        bleu.BleuOptions(max_order=True)


def test_pieces_reject_bad_input():
    with pytest.raises(TypeError, match="expects a str"):
        bleu.tokenize_13a(None)
    with pytest.raises(ValueError, match="smooth must be one of"):
        bleu.bleu_from_stats([1], [1], 1, 1, smooth="nope")
    with pytest.raises(ValueError, match="same length"):
        bleu.bleu_from_stats([1, 0], [1], 1, 1)
