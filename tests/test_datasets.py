"""Generated corpora (numbers, dates), splits, and TranslationData."""

import datetime as dt

import pytest
import torch
from babel.dates import format_date
from num2words import num2words

from course_lib.data.generated import date_pair, dates_dataset, number_pair, numbers_dataset
from course_lib.data.splits import PairSplits, split_pairs
from course_lib.data.text import preprocess
from course_lib.data.translation import TranslationData


def sources(pairs):
    return {" ".join(preprocess(s).split()) for s, _ in pairs}


def assert_disjoint(splits: PairSplits):
    train, valid, test = sources(splits.train), sources(splits.valid), sources(splits.test)
    assert not train & valid and not train & test and not valid & test


def test_number_pairs_are_num2words_tokenised():
    assert number_pair(97) == ("ninety - seven", "quatre - vingt - dix - sept")
    assert number_pair(1234) == ("one thousand , two hundred and thirty - four",
                                 "mille deux cent trente - quatre")
    for n in (0, 21, 80, 71, 100_000):
        en, fr = number_pair(n)
        assert en.replace(" - ", "-").replace(" ,", ",") == num2words(n, lang="en")
        assert fr.replace(" - ", "-") == num2words(n, lang="fr")


def test_numbers_dataset_is_deterministic_disjoint_and_configurable():
    a = numbers_dataset(0, 999, seed=1)
    assert a == numbers_dataset(0, 999, seed=1)
    assert a.train != numbers_dataset(0, 999, seed=2).train
    assert (len(a.train), len(a.valid), len(a.test)) == (800, 100, 100)
    assert_disjoint(a)
    sample = numbers_dataset(10_000, 99_999, num_examples=500, seed=0)
    assert len(sample.train) + len(sample.valid) + len(sample.test) == 500
    assert all(num2words(10_000, lang="en") != s for s, _ in sample.train)
    with pytest.raises(ValueError, match="low <= high"):
        numbers_dataset(10, 5)
    with pytest.raises(ValueError, match="between 1 and 10"):
        numbers_dataset(0, 9, num_examples=11)


def test_date_pairs_reorder_day_and_month():
    day = dt.date(2025, 3, 3)
    assert date_pair(day) == ("march 3 , 2025", "3 mars 2025")
    assert date_pair(day, target="iso") == ("march 3 , 2025", "2025 - 03 - 03")
    assert date_pair(day, style="full") == ("monday , march 3 , 2025", "lundi 3 mars 2025")
    assert date_pair(dt.date(1999, 8, 15))[1] == preprocess(
        format_date(dt.date(1999, 8, 15), "long", locale="fr"))
    with pytest.raises(ValueError, match="target"):
        date_pair(day, target="de")


def test_dates_dataset():
    splits = dates_dataset(num_examples=2000, seed=0)
    assert splits == dates_dataset(num_examples=2000, seed=0)
    assert len(splits.train) == 1600
    assert_disjoint(splits)
    iso = dates_dataset(dt.date(2000, 1, 1), dt.date(2000, 12, 31), target="iso",
                        num_examples=None)
    assert len(iso.train) + len(iso.valid) + len(iso.test) == 366
    for _, target in iso.train:
        dt.date.fromisoformat(target.replace(" ", ""))  # every target is a valid ISO date
    with pytest.raises(ValueError, match="start <= end"):
        dates_dataset(dt.date(2001, 1, 1), dt.date(2000, 1, 1))


def test_split_pairs_groups_repeated_sources():
    pairs = [("Go.", "Va !"), ("go .", "Marche."), ("Hi.", "Salut."), ("Run!", "Cours !"),
             ("Run!", "Courez !")] + [(f"s{i}", f"t{i}") for i in range(20)]
    for seed in range(20):
        splits = split_pairs(pairs, valid_fraction=0.2, test_fraction=0.2, seed=seed)
        assert_disjoint(splits)
        assert sorted(splits.train + splits.valid + splits.test) == sorted(pairs)
    with pytest.raises(ValueError, match="valid_fraction"):
        split_pairs(pairs, valid_fraction=0.6, test_fraction=0.5)
    with pytest.raises(ValueError, match="no pairs"):
        split_pairs([])


def test_translation_data_end_to_end():
    data = TranslationData(numbers_dataset(0, 1999, seed=0), num_steps=16, batch_size=32,
                           bucket=True)
    batch = next(iter(data.loader("train")))
    assert batch.src.shape[0] == 32 and batch.src.shape[1] <= 16
    # Vocabularies come from the training split only.
    train_tokens = {t for _, tgt in data.tokens["train"] for t in tgt}
    assert set(data.tgt_vocab.idx_to_token[4:]) == train_tokens
    # Decoding the targets gives back the references.
    test = data.tensors["test"]
    assert data.decode_targets(test.tgt) == data.references("test")
    src, src_valid_len = data.encode_sources(["Ninety-seven", "zzz"])
    assert data.src_vocab.to_tokens(src[0, :4]) == ["ninety", "-", "seven", "<eos>"]
    assert src[1, 0] == data.src_vocab.unk and src_valid_len.tolist() == [4, 2]
    assert data.num_truncated() == 0
    assert TranslationData(data.splits, num_steps=6).num_truncated() > 0
    with pytest.raises(ValueError, match="split must be one of"):
        data.loader("dev")
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        data.decode_targets(torch.tensor([1, 2]))
