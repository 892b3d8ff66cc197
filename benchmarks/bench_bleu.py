"""Time course_lib's corpus BLEU, fast and plain, against sacreBLEU's, and check all agree.

What it measures: wall-clock seconds of one ``course_lib.fast.bleu.corpus_bleu(hyps, refs)``
call (the fast layer), one ``course_lib.bleu.corpus_bleu(hyps, refs)`` call (the plain version
the lessons teach: its time beside the fast one's is the price of readability) and one
``sacrebleu.corpus_bleu(hyps, [refs])`` call (13a tokenisation, exp smoothing, one
reference per sentence) on 100,000 generated sentence pairs (5,000 with ``--quick``). The
pairs look like real text: 3 to 30 words drawn from a Zipf-distributed vocabulary of about
3,000 made-up words, with commas, sentence-final punctuation, quotes, brackets, numbers such
as ``3.5``, ``1,000`` and ``1990-2000``; each reference keeps part of its hypothesis and
changes the rest. The three implementations run in turn (the order reverses every other
repeat), ``--repeats`` times each; the table shows the median seconds, pairs per second, and
the speed ratios: sacreBLEU's median over each of ours (above 1 means ours is faster), and the
plain one's over the fast one's. All scores must agree to 1e-9, or the script exits with
status 1. Pure Python: no GPU, no threads.

    python benchmarks/bench_bleu.py                 # 100,000 pairs, 5 repeats
    python benchmarks/bench_bleu.py --quick         # 5,000 pairs, 2 repeats
    python benchmarks/bench_bleu.py --pairs 20000 --repeats 3 --csv /tmp/bleu.csv
"""

from __future__ import annotations

import argparse
import csv
import gc
import itertools
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import sacrebleu

from course_lib import bleu
from course_lib.fast import bleu as fast_bleu

DEFAULT_CSV = Path(__file__).resolve().parent / "results" / "bleu.csv"
TOLERANCE = 1e-9


def make_vocabulary(rng: random.Random, size: int = 3000) -> list[str]:
    """Return `size` distinct made-up words, short ones first (they get the high Zipf ranks)."""
    consonants, vowels = "bcdfghjklmnprstvwz", "aeiou"
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < size:
        syllables = min(1 + int(rng.expovariate(1.0) * (1 + len(words) / 600)), 5)
        word = "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(syllables))
        if rng.random() < 0.3:
            word += rng.choice(consonants)
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def make_number(rng: random.Random) -> str:
    """Return a number as text might write it: 7, 3.5, 1,000, 1990-2000 or 25%."""
    kind = rng.random()
    if kind < 0.4:
        return str(rng.randint(0, 100))
    if kind < 0.6:
        return f"{rng.randint(0, 99)}.{rng.randint(0, 9)}"
    if kind < 0.75:
        return f"{rng.randint(1, 999)},{rng.randint(0, 999):03d}"
    if kind < 0.9:
        start = rng.randint(1900, 2020)
        return f"{start}-{start + rng.randint(1, 10)}"
    return f"{rng.randint(1, 99)}%"


class SentenceMaker:
    """Draw words by Zipf's law (rank r has weight 1 / r) and dress them up as sentences."""

    def __init__(self, rng: random.Random, vocabulary: list[str]):
        self.rng = rng
        self.vocabulary = vocabulary
        self.cum_weights = list(
            itertools.accumulate(1.0 / r for r in range(1, len(vocabulary) + 1))
        )

    def words(self, k: int) -> list[str]:
        """Return k words drawn by Zipf's law, a number now and then."""
        words = self.rng.choices(self.vocabulary, cum_weights=self.cum_weights, k=k)
        for i in range(k):
            if self.rng.random() < 0.03:
                words[i] = make_number(self.rng)
        return words

    def sentence(self, words: list[str]) -> str:
        """Capitalise, punctuate and join words into a sentence."""
        rng = self.rng
        words = list(words)
        words[0] = words[0].capitalize()
        for i in range(len(words) - 1):
            if rng.random() < 0.08:
                words[i] += ","
        if len(words) > 4 and rng.random() < 0.05:
            i = rng.randrange(len(words) - 2)
            words[i] = "(" + words[i]
            words[i + 1] += ")"
        if rng.random() < 0.05:
            words[0] = '"' + words[0]
            words[-1] += '"'
        end = rng.choices([".", "?", "!", "", "..."], weights=[80, 8, 4, 6, 2])[0]
        return " ".join(words) + end

    def pair(self) -> tuple[str, str]:
        """Return a (hypothesis, reference) pair whose words partly overlap."""
        rng = self.rng
        base = self.words(rng.randint(3, 30))
        reference: list[str] = []
        for word in base:
            roll = rng.random()
            if roll < 0.6:
                reference.append(word)  # kept
            elif roll < 0.85:
                reference.extend(self.words(1))  # replaced
            elif roll < 0.93:
                reference.extend(self.words(2))  # replaced by two words
            # else: dropped
        reference = reference or self.words(1)
        return self.sentence(base), self.sentence(reference)


def make_corpus(pairs: int, seed: int = 2024) -> tuple[list[str], list[str]]:
    """Return `pairs` deterministic (hypotheses, references)."""
    rng = random.Random(seed)
    maker = SentenceMaker(rng, make_vocabulary(rng))
    hypotheses, references = zip(*(maker.pair() for _ in range(pairs)), strict=True)
    return list(hypotheses), list(references)


def time_call(function: Callable[[], float]) -> tuple[float, float]:
    """Return (seconds, score) of one call, with the garbage collector run beforehand."""
    gc.collect()
    start = time.perf_counter()
    score = function()
    return time.perf_counter() - start, score


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return 0 if the scores agree, 1 if not."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5,000 pairs, 2 repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs of each (5)")
    parser.add_argument("--pairs", type=int, default=None, help="sentence pairs (100,000)")
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help=f"({DEFAULT_CSV})")
    args = parser.parse_args(argv)
    pairs = args.pairs or (5_000 if args.quick else 100_000)
    repeats = args.repeats or (2 if args.quick else 5)

    hypotheses, references = make_corpus(pairs)
    contenders: dict[str, Callable[[], float]] = {
        "course_lib.fast": lambda: fast_bleu.corpus_bleu(hypotheses, references),
        "course_lib (plain)": lambda: bleu.corpus_bleu(hypotheses, references),
        "sacrebleu": lambda: sacrebleu.corpus_bleu(hypotheses, [references]).score,
    }
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    scores: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            elapsed, score = time_call(contenders[name])
            seconds[name].append(elapsed)
            scores[name].append(score)

    theirs = scores["sacrebleu"][0]
    worst = max(abs(score - theirs) for runs in scores.values() for score in runs)
    agree = worst <= TOLERANCE
    median = {name: statistics.median(times) for name, times in seconds.items()}

    print(
        f"BLEU on {pairs:,} sentence pairs, {repeats} repeats, Python {platform.python_version()}"
    )
    print(f"{'implementation':<20}{'median s':>10}{'pairs/s':>12}{'BLEU':>20}"
          f"{'sacrebleu / it':>16}")
    for name in names:
        rate, ratio = pairs / median[name], median["sacrebleu"] / median[name]
        print(f"{name:<20}{median[name]:>10.3f}{rate:>12,.0f}{scores[name][0]:>20.12f}"
              f"{ratio:>16.2f}")
    price = median["course_lib (plain)"] / median["course_lib.fast"]
    print(f"the price of readability: the plain version takes {price:.2f}x the fast one's time")
    verdict = "yes" if agree else "NO"
    print(f"scores agree to {TOLERANCE:g}: {verdict} (largest |diff| = {worst:.3g})")

    args.csv.parent.mkdir(parents=True, exist_ok=True)
    with args.csv.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["implementation", "pairs", "repeats", "median_s", "pairs_per_s", "bleu", "ratio"]
        )
        for name in names:
            writer.writerow(
                [
                    name,
                    pairs,
                    repeats,
                    f"{median[name]:.6f}",
                    f"{pairs / median[name]:.1f}",
                    repr(scores[name][0]),
                    f"{median['sacrebleu'] / median[name]:.4f}",
                ]
            )
    print(f"wrote {args.csv}")
    if not agree:
        print("ERROR: course_lib (fast or plain) and sacrebleu disagree", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
