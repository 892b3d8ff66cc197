"""Corpus and sentence BLEU against sacreBLEU, for both implementations: the plain one the
lessons teach (course_lib.bleu) and the fast one beside it (course_lib.fast.bleu). Every test
here runs on each (the `implementation` fixture); test_fast_bleu.py checks that the two give
identical statistics, and test_bleu_pieces.py tests the pieces (13a, clipping, d2l's formula).

The parity tests draw thousands of random corpora from seeded generators built to hit the
corners: empty hypotheses, several references of different lengths, orders with no match,
unicode, the punctuation and digits 13a treats specially, and every option. Each chunk of
cases records what it covered; the last test checks the totals, so a generator that quietly
stopped covering a corner fails it (for each implementation).
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict

import pytest
import sacrebleu
from sacrebleu.metrics import BLEU

from course_lib import bleu
from course_lib.fast import bleu as fast_bleu

TOLERANCE = 1e-9
IMPLEMENTATIONS = {"plain": bleu, "fast": fast_bleu}

# What the parity tests covered, per implementation, summed over the chunks that ran.
COVERED: defaultdict[str, Counter] = defaultdict(Counter)
CHUNKS_RUN: set[str] = set()
CORPUS_CHUNKS = 8
CORPUS_CASES_PER_CHUNK = 250
SENTENCE_CHUNKS = 4
SENTENCE_CASES_PER_CHUNK = 300


@pytest.fixture(params=list(IMPLEMENTATIONS))
def implementation(request):
    """The module under test: course_lib.bleu ("plain") or course_lib.fast.bleu ("fast")."""
    return IMPLEMENTATIONS[request.param]


# --------------------------------------------------------------------------------------------
# Random text that exercises BLEU and 13a
# --------------------------------------------------------------------------------------------

WORDS = [
    "the", "The", "THE", "cat", "Cat", "sat", "on", "mat", "a", "dog", "il", "est", "calme",
    "court", "été", "Über", "naïve", "ÉCOLE", "中文", "猫", "😀", "İstanbul", "ß",
    "3.5", "a,b", "1-2", "1,000", "U.S.", "e-mail", "don't", "x.", "-", "--", "...",
    "&amp;", "&quot;hi&quot;", "&lt;b&gt;", "<skipped>", "(", ")", "[a]", "50%", "$3",
    "/", "?", "!", ".", ",", ":", ";", "'", '"', "9.", ".5", "2-", "-3", "a.b", "1.2.3",
]  # fmt: skip
SEPARATORS = [" "] * 12 + ["", "  ", "\t", "\xa0", " \n", "-\n"]


def random_words(rng: random.Random, k: int) -> list[str]:
    """Return k words, mostly from the first few (so n-grams repeat and match)."""
    top = rng.choice([6, 15, len(WORDS)])
    return [rng.choice(WORDS[:top]) for _ in range(k)]


def join_words(rng: random.Random, words: list[str]) -> str:
    """Join words with mostly single spaces, sometimes other whitespace or none."""
    if not words:
        return rng.choice(["", "", " ", "  "])
    text = words[0]
    for word in words[1:]:
        text += (rng.choice(SEPARATORS) if rng.random() < 0.2 else " ") + word
    if rng.random() < 0.15:
        text += rng.choice([" ", "  ", "\t", "\xa0", " \n", "\n", "-\n"])  # trailing whitespace
    if rng.random() < 0.05:
        text = " " + text
    return text


def random_reference(rng: random.Random, hyp_words: list[str]) -> str:
    """Return a reference that copies, edits, shortens or ignores the hypothesis words."""
    kind = rng.random()
    if kind < 0.15:
        words = random_words(rng, rng.randint(0, 12))  # unrelated
    elif kind < 0.25:
        words = list(hyp_words)  # identical words
    else:
        words = [
            w if rng.random() < 0.7 else rng.choice(WORDS) for w in hyp_words if rng.random() < 0.9
        ]
        if rng.random() < 0.4:
            words += random_words(rng, rng.randint(1, 6))  # longer than the hypothesis
    if words and rng.random() < 0.1:
        words = [w.upper() if rng.random() < 0.5 else w for w in words]
    return join_words(rng, words)


def random_segment(rng: random.Random, max_refs: int) -> tuple[str, list[str]]:
    """Return a hypothesis and 1..max_refs references."""
    length = rng.choice([0, 1, 2, 3, rng.randint(4, 12), rng.randint(10, 25)])
    hyp_words = random_words(rng, length)
    refs = [random_reference(rng, hyp_words) for _ in range(rng.randint(1, max_refs))]
    return join_words(rng, hyp_words), refs


def random_options(rng: random.Random) -> dict:
    """Return random corpus_bleu options (course_lib names)."""
    smooth = rng.choice(bleu.SMOOTH_METHODS)
    smooth_value = None
    if smooth in ("floor", "add-k") and rng.random() < 0.5:
        smooth_value = rng.choice([0.01, 0.1, 0.5, 1, 2, 0.3])
    return {
        "max_order": rng.choice([1, 2, 3, 4, 4, 4, 5]),
        "smooth": smooth,
        "smooth_value": smooth_value,
        "tokenize": rng.choice(["13a", "13a", "none"]),
        "lowercase": rng.random() < 0.3,
        "effective_order": rng.random() < 0.5,
    }


def sacrebleu_metric(options: dict) -> BLEU:
    """Return sacreBLEU's BLEU with the same options."""
    return BLEU(
        lowercase=options["lowercase"],
        tokenize=options["tokenize"],
        smooth_method=options["smooth"],
        smooth_value=options["smooth_value"],
        max_ngram_order=options["max_order"],
        effective_order=options["effective_order"],
    )


def reference_streams(references: list[list[str]]) -> list[list[str | None]]:
    """Turn per-hypothesis reference lists into sacreBLEU's streams, padding with None."""
    width = max(len(refs) for refs in references)
    return [[refs[j] if j < len(refs) else None for refs in references] for j in range(width)]


def note_coverage(
    covered: Counter, options: dict, stats: bleu.BleuStats, references: list[list[str]]
) -> None:
    """Record in `covered` which options and corners one parity case touched."""
    for name in ("smooth", "tokenize", "lowercase", "effective_order", "max_order"):
        covered[f"{name}={options[name]}"] += 1
    if options["smooth_value"] is not None:
        covered["custom smooth_value"] += 1
    if len({len(refs) for refs in references}) > 1:
        covered["different reference counts"] += 1
    if 0 in stats.counts[: sum(1 for t in stats.totals if t)]:
        covered["an order with no match"] += 1
    if stats.score == 0.0:
        covered["score 0"] += 1
    elif stats.score == pytest.approx(100.0):
        covered["score 100"] += 1
    else:
        covered["score strictly between"] += 1
    if stats.hyp_len < stats.ref_len:
        covered["hypotheses shorter"] += 1
    elif stats.hyp_len > stats.ref_len:
        covered["hypotheses longer"] += 1


# --------------------------------------------------------------------------------------------
# Parity with sacreBLEU
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", range(CORPUS_CHUNKS))
def test_corpus_bleu_matches_sacrebleu(chunk, implementation):
    covered = COVERED[implementation.__name__]
    rng = random.Random(1000 + chunk)
    cases = 0
    for case in range(CORPUS_CASES_PER_CHUNK):
        options = random_options(rng)
        segments = [random_segment(rng, max_refs=4) for _ in range(rng.randint(1, 6))]
        hypotheses = [hyp for hyp, _ in segments]
        references = [refs for _, refs in segments]
        if case % 3 == 0 and all(len(refs) == 1 for refs in references):
            references = [refs[0] for refs in references]  # one plain string per hypothesis
            expected = sacrebleu_metric(options).corpus_score(hypotheses, [references])
        else:
            expected = sacrebleu_metric(options).corpus_score(
                hypotheses, reference_streams(references)
            )
        if options["max_order"] == 4:  # the convenience function takes no max_ngram_order
            convenience = sacrebleu.corpus_bleu(
                hypotheses,
                reference_streams([[r] if isinstance(r, str) else r for r in references]),
                smooth_method=options["smooth"],
                smooth_value=options["smooth_value"],
                tokenize=options["tokenize"],
                lowercase=options["lowercase"],
                use_effective_order=options["effective_order"],
            )
            assert convenience.score == expected.score

        score = implementation.corpus_bleu(hypotheses, references, **options)
        stats = implementation.corpus_bleu_stats(hypotheses, references, **options)
        context = f"seed {1000 + chunk} case {case}: {options} {hypotheses!r} {references!r}"
        assert isinstance(score, float), context
        assert score == pytest.approx(expected.score, abs=TOLERANCE, rel=0), context
        assert stats.score == score, context
        assert (stats.hyp_len, stats.ref_len) == (expected.sys_len, expected.ref_len), context
        assert stats.brevity_penalty == pytest.approx(expected.bp, abs=TOLERANCE), context
        assert list(stats.precisions) == pytest.approx(expected.precisions, abs=TOLERANCE)
        if options["smooth"] != "add-k":  # sacreBLEU reports add-k's counts after adding k
            assert list(stats.counts) == expected.counts, context
            assert list(stats.totals) == expected.totals, context
        covered["exact"] += score == expected.score
        note_coverage(
            covered, options, stats, [[r] if isinstance(r, str) else r for r in references]
        )
        covered["corpus cases"] += 1
        covered["empty hypothesis"] += any(not h.strip() for h in hypotheses)
        covered["several references"] += any(len(r) > 1 for r in references if isinstance(r, list))
        cases += 1
    assert cases == CORPUS_CASES_PER_CHUNK
    CHUNKS_RUN.add(f"corpus-{chunk}-{implementation.__name__}")


@pytest.mark.parametrize("chunk", range(SENTENCE_CHUNKS))
def test_sentence_bleu_matches_sacrebleu(chunk, implementation):
    covered = COVERED[implementation.__name__]
    rng = random.Random(2000 + chunk)
    for case in range(SENTENCE_CASES_PER_CHUNK):
        options = random_options(rng)
        hypothesis, references = random_segment(rng, max_refs=3)
        if options["max_order"] == 4:
            expected = sacrebleu.sentence_bleu(
                hypothesis,
                references,
                smooth_method=options["smooth"],
                smooth_value=options["smooth_value"],
                tokenize=options["tokenize"],
                lowercase=options["lowercase"],
                use_effective_order=options["effective_order"],
            ).score
        else:
            expected = sacrebleu_metric(options).sentence_score(hypothesis, references).score
        score = implementation.sentence_bleu(hypothesis, references, **options)
        context = f"seed {2000 + chunk} case {case}: {options} {hypothesis!r} {references!r}"
        assert score == pytest.approx(expected, abs=TOLERANCE, rel=0), context
        covered["exact"] += score == expected
        covered["sentence cases"] += 1
    CHUNKS_RUN.add(f"sentence-{chunk}-{implementation.__name__}")


def test_sentence_bleu_defaults_match_sacrebleu_defaults(implementation):
    rng = random.Random(7)
    for _ in range(200):
        hypothesis, references = random_segment(rng, max_refs=3)
        expected = sacrebleu.sentence_bleu(hypothesis, references).score  # effective order on
        score = implementation.sentence_bleu(hypothesis, references)
        assert score == pytest.approx(expected, abs=TOLERANCE)


def test_corpus_bleu_on_longer_corpora_matches_sacrebleu(implementation):
    rng = random.Random(3)
    for size in (50, 400):
        segments = [random_segment(rng, max_refs=2) for _ in range(size)]
        hypotheses = [hyp for hyp, _ in segments]
        references = [refs for _, refs in segments]
        expected = sacrebleu.corpus_bleu(hypotheses, reference_streams(references)).score
        score = implementation.corpus_bleu(hypotheses, references)
        assert score == pytest.approx(expected, abs=TOLERANCE)


def test_trailing_whitespace_is_stripped_before_tokenising(implementation):
    # sacreBLEU strips first: "b-\n" keeps its dash, where 13a alone would drop "-\n".
    hypotheses, references = ["a b-\n", "c d- \n"], ["a b-", "c d"]
    expected = sacrebleu.corpus_bleu(hypotheses, [references], use_effective_order=True)
    stats = implementation.corpus_bleu_stats(hypotheses, references, effective_order=True)
    assert stats.score == pytest.approx(expected.score, abs=TOLERANCE)
    assert stats.hyp_len == expected.sys_len == 4


def test_repeated_lines_are_scored_like_sacrebleu(implementation):
    # Lines that repeat, or differ only by case or trailing whitespace, each count in full.
    hypotheses = ["Thank you .", "thank you .", "Thank you . ", "Thank you ."] * 3
    references = ["Thank you .", "Thank you!", "thank you .", "Thanks ."] * 3
    for lowercase in (False, True):
        expected = sacrebleu.corpus_bleu(hypotheses, [references], lowercase=lowercase).score
        score = implementation.corpus_bleu(hypotheses, references, lowercase=lowercase)
        assert score == pytest.approx(expected, abs=TOLERANCE)


def test_sacrebleu_worked_example(implementation):
    hyp, ref = "il court .", "il est calme ."
    # Precisions 2/3, 0/2 and 0/1 with exp smoothing become 66.7, 25 and 25; a 3-token
    # hypothesis has no 4-gram, so sentence BLEU (effective order) uses three orders.
    expected = sacrebleu.sentence_bleu(hyp, [ref]).score
    assert expected == pytest.approx(24.840753130578644, abs=1e-12)
    assert implementation.sentence_bleu(hyp, [ref]) == pytest.approx(expected, abs=1e-12)
    score = implementation.corpus_bleu([hyp], [ref], effective_order=True)
    assert score == pytest.approx(24.8407531306)
    stats = implementation.corpus_bleu_stats([hyp], [ref], effective_order=True)
    assert stats.counts == (2, 0, 0, 0) and stats.totals == (3, 2, 1, 0)
    assert stats.precisions == pytest.approx((200 / 3, 25.0, 25.0, 0.0))
    assert stats.brevity_penalty == pytest.approx(math.exp(1 - 4 / 3))
    assert (stats.hyp_len, stats.ref_len) == (3, 4)
    # Corpus BLEU without effective order counts the empty 4-gram order as precision 0.
    assert sacrebleu.corpus_bleu([hyp], [[ref]]).score == 0.0
    assert implementation.corpus_bleu([hyp], [ref]) == 0.0


def test_identical_and_disjoint_corpora(implementation):
    assert implementation.corpus_bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == (
        pytest.approx(100.0)
    )
    assert implementation.corpus_bleu(["a b c d e"], ["f g h i j"]) == 0.0
    assert implementation.corpus_bleu([""], ["a reference"]) == 0.0


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hypotheses", "references", "options", "error", "message"),
    [
        ([], [], {}, ValueError, "hypotheses is empty"),
        (["a", "b"], ["a"], {}, ValueError, "2 hypotheses but 1 references"),
        (["a"], ["a", "b"], {}, ValueError, "1 hypotheses but 2 references"),
        (["a", None], ["a", "b"], {}, TypeError, "hypothesis 1 must be a str"),
        (["a", 3], ["a", "b"], {}, TypeError, "hypothesis 1 must be a str"),
        ("a b", ["a b"], {}, TypeError, "hypotheses must be a list"),
        (["a"], "a", {}, TypeError, "references must be a list"),
        (["a", "b"], [["a"], []], {}, ValueError, "hypothesis 1 has an empty list"),
        (["a"], [["a", None]], {}, TypeError, "must be strings"),
        (["a"], [5], {}, TypeError, r"references\[0\] must be a str or a list"),
        (["a"], ["a"], {"smooth": "laplace"}, ValueError, "smooth must be one of"),
        (["a"], ["a"], {"tokenize": "intl"}, ValueError, "tokenize must be one of"),
        (["a"], ["a"], {"max_order": 0}, ValueError, "max_order must be at least 1"),
        (["a"], ["a"], {"max_order": -2}, ValueError, "max_order must be at least 1"),
        (["a"], ["a"], {"max_order": 2.0}, TypeError, "max_order must be an int"),
        (["a"], ["a"], {"smooth_value": "1"}, TypeError, "smooth_value must be a number"),
    ],
)
def test_corpus_bleu_rejects_bad_input(
    hypotheses, references, options, error, message, implementation
):
    with pytest.raises(error, match=message):
        implementation.corpus_bleu(hypotheses, references, **options)
    with pytest.raises(error, match=message):
        implementation.corpus_bleu_stats(hypotheses, references, **options)


def test_sentence_bleu_rejects_bad_input(implementation):
    with pytest.raises(TypeError, match="hypothesis must be a str"):
        implementation.sentence_bleu(None, ["a"])
    with pytest.raises(TypeError, match="list of reference strings"):
        implementation.sentence_bleu("a", "a")
    with pytest.raises(ValueError, match="references is empty"):
        implementation.sentence_bleu("a", [])
    with pytest.raises(ValueError, match="smooth must be one of"):
        implementation.sentence_bleu("a", ["a"], smooth="exponential")


# --------------------------------------------------------------------------------------------
# Keep this last: it checks what the parity tests above covered.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [module.__name__ for module in IMPLEMENTATIONS.values()])
def test_parity_cases_covered_every_corner(name):
    expected_chunks = {f"corpus-{i}-{name}" for i in range(CORPUS_CHUNKS)}
    expected_chunks |= {f"sentence-{i}-{name}" for i in range(SENTENCE_CHUNKS)}
    if not expected_chunks <= CHUNKS_RUN:
        pytest.skip("the parity tests did not all run in this session (deselected?)")
    covered = COVERED[name]
    corpus_cases = CORPUS_CHUNKS * CORPUS_CASES_PER_CHUNK
    sentence_cases = SENTENCE_CHUNKS * SENTENCE_CASES_PER_CHUNK
    print(f"\n{name} parity cases: {covered['corpus cases']} corpora, {covered['sentence cases']} "
          f"sentences, {covered['exact']} bit-for-bit equal")  # fmt: skip
    assert covered["corpus cases"] == corpus_cases >= 2000
    assert covered["sentence cases"] == sentence_cases >= 1200
    # Every option value and every corner was hit many times.
    corners = [
        *(f"smooth={s}" for s in bleu.SMOOTH_METHODS),
        *(f"max_order={n}" for n in range(1, 6)),
        "tokenize=13a", "tokenize=none", "lowercase=True", "lowercase=False",
        "effective_order=True", "effective_order=False", "custom smooth_value",
        "different reference counts", "several references", "empty hypothesis",
        "an order with no match", "score 0", "score 100", "score strictly between",
        "hypotheses shorter", "hypotheses longer",
    ]  # fmt: skip
    rare = {corner: covered[corner] for corner in corners if covered[corner] < 20}
    assert not rare, f"parity cases rarely or never covered: {rare}"
    # The implementation mirrors sacreBLEU's arithmetic, so nearly all agree to the last bit.
    assert covered["exact"] >= 0.99 * (corpus_cases + sentence_cases)
