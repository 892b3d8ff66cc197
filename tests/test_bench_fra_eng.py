"""The fra-eng quality benchmark's scoring and recipes (its runs are in test_benchmarks)."""

import importlib.util
import sys
from pathlib import Path

import pytest

from course_lib.data.fra_eng import benchmark_splits, load_fra_eng_pairs
from course_lib.data.text import tokenize

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("bench_fra_eng", BENCHMARKS / "bench_fra_eng.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_fra_eng"] = module  # dataclasses look their module up while defined
    spec.loader.exec_module(module)
    return module


def test_detokenise_undoes_the_space_d2l_puts_before_full_stops_and_commas(bench):
    assert bench.detokenise("oui , je suis malade .") == "oui, je suis malade."
    assert bench.detokenise("qui es-tu ?") == "qui es-tu ?"  # French keeps this space
    assert bench.detokenise("va !") == "va !"


def test_references_score_100_both_ways_on_the_real_test_set(bench, fra_txt):
    """Scoring the references themselves: (a) exactly 100; (b), after the d2l preprocessing
    and back, still 100 to within rounding: the detokenised text tokenises as the raw one."""
    test = benchmark_splits(load_fra_eng_pairs(fra_txt)).test
    hypotheses = [" ".join(tokenize(french)) for _, french in test]
    scores = bench.score(hypotheses, test)
    assert scores["bleu_a"] == pytest.approx(100.0)
    assert scores["bleu_b"] > 99.0
    assert "tok:none" in scores["signature_a"] and "tok:13a" in scores["signature_b"]
    assert "case:lc" in scores["signature_b"]
    worse = bench.score(hypotheses[1:] + hypotheses[:1], test)  # every sentence misplaced
    assert worse["bleu_a"] < 10 and worse["bleu_b"] < 10


def test_every_ablation_changes_one_thing_of_the_course_recipe(bench):
    base = bench.RECIPES["course-transformer"]
    for name, recipe in bench.RECIPES.items():
        if name.startswith("ablate-"):
            changed = [field for field in ("label_smoothing", "warmup_steps", "bucket",
                                           "beam_size", "sizes", "lr", "train_pairs")
                       if getattr(recipe, field) != getattr(base, field)]
            assert len(changed) == 1, (name, changed)


def test_unknown_recipe_is_refused_by_name(bench):
    with pytest.raises(SystemExit, match="unknown recipe 'nope'"):
        bench.parse_runs(["nope:0"])
    runs = bench.parse_runs(["d2l-gru", "course-transformer:0,2"])
    assert [(r.name, s) for r, s in runs] == [("d2l-gru", 0), ("course-transformer", 0),
                                              ("course-transformer", 2)]
