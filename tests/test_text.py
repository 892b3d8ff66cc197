"""Preprocessing and tokenisation (the d2l comparison on the real corpus is in test_fra_eng.py)."""

import pytest

from course_lib.data.text import parse_pairs, preprocess, tokenize


def test_preprocess_matches_d2l_on_tricky_text(d2l):
    samples = ["Go.", "Hi!Hi!", "Wait, what?!", "Va\u202f!", "Attends\xa0!", ".Start", "A.B,C",
               "ÇA VA ?", "", "  double  spaces . ", "l'été!"]
    for text in samples:
        assert preprocess(text) == d2l.preprocess_nmt(text), text
    assert preprocess("\n".join(samples)) == d2l.preprocess_nmt("\n".join(samples))


def test_tokenize():
    assert tokenize("Va\u202f!") == ["va", "!"]
    assert tokenize("I'm OK.") == ["i'm", "ok", "."]
    assert tokenize("quatre-vingt-dix") == ["quatre-vingt-dix"]
    assert tokenize("quatre-vingt-dix", split_hyphens=True) == ["quatre", "-", "vingt", "-", "dix"]
    assert tokenize("1950-01-02", split_hyphens=True) == ["1950", "-", "01", "-", "02"]


def test_parse_pairs_reports_the_bad_line():
    assert parse_pairs("Go.\tVa !\n\nHi.\tSalut.\n") == [("Go.", "Va !"), ("Hi.", "Salut.")]
    with pytest.raises(ValueError, match=r"line 2 has no tab"):
        parse_pairs("Go.\tVa !\nHi. Salut.\n")
    with pytest.raises(ValueError, match=r"line 1 has 3 tab-separated fields"):
        parse_pairs("Go.\tVa !\tCC-BY\n")
    with pytest.raises(ValueError, match=r"line 1 has an empty side"):
        parse_pairs("Go.\t \n")
    assert parse_pairs("Go.\tVa !\nbroken\n", on_bad_line="skip") == [("Go.", "Va !")]
    with pytest.raises(ValueError, match="empty"):
        parse_pairs("")
    with pytest.raises(ValueError, match="empty"):
        parse_pairs("broken\n", on_bad_line="skip")
    with pytest.raises(ValueError, match="on_bad_line"):
        parse_pairs("a\tb", on_bad_line="ignore")
