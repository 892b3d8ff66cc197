"""Vocabulary: reserved ids, min_freq, deterministic order, round trips, bad input."""

import pytest
import torch

from course_lib.data.vocab import RESERVED_TOKENS, Vocab

SENTENCES = [["il", "court", "."], ["il", "est", "calme", "."], ["elle", "court", "."]]


def test_reserved_tokens_have_fixed_ids():
    vocab = Vocab(SENTENCES)
    assert vocab.idx_to_token[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert (vocab.pad, vocab.bos, vocab.eos, vocab.unk) == (0, 1, 2, 3)
    assert [vocab[t] for t in RESERVED_TOKENS] == [0, 1, 2, 3]


def test_order_is_by_frequency_then_alphabetical():
    vocab = Vocab(SENTENCES)
    assert vocab.idx_to_token[4:] == [".", "court", "il", "calme", "elle", "est"]
    assert Vocab(list(reversed(SENTENCES))) == vocab  # input order does not matter


def test_min_freq_maps_rare_tokens_to_unk():
    vocab = Vocab(SENTENCES, min_freq=2)
    assert vocab.idx_to_token[4:] == [".", "court", "il"]
    assert vocab["calme"] == vocab.unk
    assert vocab[["il", "est"]] == [vocab["il"], vocab.unk]


def test_token_id_round_trip():
    vocab = Vocab(SENTENCES)
    for sentence in SENTENCES:
        assert vocab.to_tokens(vocab.encode(sentence)) == sentence
        assert vocab.to_tokens(torch.tensor(vocab.encode(sentence))) == sentence
    assert vocab.to_tokens(torch.tensor(5)) == "court"


def test_unknown_tokens_become_unk_or_raise_when_strict():
    vocab = Vocab(SENTENCES)
    assert vocab.encode(["il", "nage"]) == [vocab["il"], vocab.unk]
    with pytest.raises(KeyError, match="nage"):
        vocab.encode(["il", "nage"], strict=True)
    assert "nage" not in vocab and "il" in vocab


def test_decode_stops_at_eos_and_drops_special_tokens():
    vocab = Vocab(SENTENCES)
    ids = [vocab.bos, vocab["il"], vocab["court"], vocab.eos, vocab["calme"], vocab.pad]
    assert vocab.decode(ids) == ["il", "court"]
    assert vocab.decode(ids, stop_at_eos=False) == ["il", "court", "calme"]
    assert vocab.decode(ids, skip_special=False) == ["<bos>", "il", "court"]


def test_bad_input_is_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="empty corpus"):
        Vocab([])
    with pytest.raises(ValueError, match="empty corpus"):
        Vocab([[], []])
    with pytest.raises(TypeError, match="tokenised sentences"):
        Vocab(["il court ."])
    with pytest.raises(ValueError, match="min_freq"):
        Vocab(SENTENCES, min_freq=0)
    with pytest.raises(IndexError, match="outside this vocabulary of size 10"):
        Vocab(SENTENCES).to_tokens(10)
    with pytest.raises(TypeError, match="list of tokens"):
        Vocab(SENTENCES).encode("il court")


def test_save_and_load(tmp_path):
    vocab = Vocab(SENTENCES, extra_reserved=["<mask>"])
    assert vocab["<mask>"] == 4
    vocab.save(tmp_path / "vocab.json")
    assert Vocab.load(tmp_path / "vocab.json") == vocab
    with pytest.raises(ValueError, match="must start with"):
        Vocab.from_tokens(["a", "b"])
