"""Padding, truncation, decoder inputs and minibatch loaders (against d2l's build_array_nmt)."""

import pytest
import torch

from course_lib.data.batching import Batch, BatchLoader, encode_pairs, truncate_pad
from course_lib.data.vocab import Vocab

PAIRS = [("go .".split(), "va !".split()),
         ("i lost .".split(), "j'ai perdu .".split()),
         ("he 's calm and happy today .".split(), "il est calme et heureux aujourd'hui .".split())]


def vocabs(pairs=PAIRS):
    return Vocab(s for s, _ in pairs), Vocab(t for _, t in pairs)


def test_truncate_pad():
    assert truncate_pad([5, 6, 7], 5, 0) == [5, 6, 7, 0, 0]
    assert truncate_pad([5, 6, 7], 2, 0) == [5, 6]
    assert truncate_pad([], 2, 0) == [0, 0]


def test_encode_pairs_matches_d2l_build_array_nmt(d2l):
    src_vocab, tgt_vocab = vocabs()
    batch = encode_pairs(PAIRS, src_vocab, tgt_vocab, num_steps=5)
    for side, vocab, ours, ours_len in [(0, src_vocab, batch.src, batch.src_valid_len),
                                        (1, tgt_vocab, batch.tgt, batch.tgt_valid_len)]:
        lines = [pair[side] for pair in PAIRS]
        expected, expected_len = d2l.build_array_nmt(lines, vocab, 5)
        assert torch.equal(ours, expected)
        assert torch.equal(ours_len, expected_len.long())


def test_sequences_end_in_eos_and_decoder_input_is_shifted_target():
    src_vocab, tgt_vocab = vocabs()
    batch = encode_pairs(PAIRS, src_vocab, tgt_vocab, num_steps=10)
    assert batch.src.shape == batch.tgt.shape == batch.dec_input.shape == (3, 10)
    assert batch.src_valid_len.tolist() == [3, 4, 8]
    assert batch.tgt_valid_len.tolist() == [3, 4, 8]
    for row, n in zip(batch.tgt, batch.tgt_valid_len, strict=True):
        assert row[n - 1] == tgt_vocab.eos and (row[n:] == tgt_vocab.pad).all()
    assert (batch.dec_input[:, 0] == tgt_vocab.bos).all()
    assert torch.equal(batch.dec_input[:, 1:], batch.tgt[:, :-1])
    assert tgt_vocab.to_tokens(batch.tgt[1, :4]) == ["j'ai", "perdu", ".", "<eos>"]
    assert batch.num_target_tokens == 15 and batch.num_sequences == 3


def test_overlong_sentences_are_cut_not_carried_over():
    src_vocab, tgt_vocab = vocabs()
    batch = encode_pairs(PAIRS, src_vocab, tgt_vocab, num_steps=4)
    assert src_vocab.to_tokens(batch.src[2]) == ["he", "'s", "calm", "and"]
    assert batch.src_valid_len[2] == 4
    # The next sentence starts from its own first token.
    assert src_vocab.to_tokens(batch.src[0, :3]) == ["go", ".", "<eos>"]


def test_separate_source_and_target_lengths():
    src_vocab, tgt_vocab = vocabs()
    batch = encode_pairs(PAIRS, src_vocab, tgt_vocab, num_steps=(6, 9))
    assert batch.src.shape == (3, 6) and batch.tgt.shape == (3, 9)


def test_bad_input():
    src_vocab, tgt_vocab = vocabs()
    with pytest.raises(ValueError, match="at least 2"):
        encode_pairs(PAIRS, src_vocab, tgt_vocab, num_steps=1)
    with pytest.raises(ValueError, match="no pairs"):
        encode_pairs([], src_vocab, tgt_vocab, num_steps=5)
    with pytest.raises(TypeError, match="tokenised"):
        encode_pairs([("go .", "va !")], src_vocab, tgt_vocab, num_steps=5)
    with pytest.raises(ValueError, match="batch_size"):
        BatchLoader(encode_pairs(PAIRS, src_vocab, tgt_vocab, 5), batch_size=0)


def many_pairs(n=203, seed=0):
    generator = torch.Generator().manual_seed(seed)
    words = [f"w{i}" for i in range(30)]
    pairs = []
    for _ in range(n):
        src_len = int(torch.randint(1, 14, (1,), generator=generator))
        tgt_len = src_len + int(torch.randint(0, 2, (1,), generator=generator))  # as in real data
        pick = torch.randint(0, 30, (src_len + tgt_len,), generator=generator).tolist()
        pairs.append(([words[i] for i in pick[:src_len]], [words[i] for i in pick[src_len:]]))
    return pairs


def rows(batch: Batch):
    """Each sequence as a tuple of its real ids (padding stripped), for set comparisons."""
    return sorted((tuple(batch.src[i, :batch.src_valid_len[i]].tolist()),
                   tuple(batch.tgt[i, :batch.tgt_valid_len[i]].tolist()),
                   tuple(batch.dec_input[i, :batch.tgt_valid_len[i]].tolist()))
                  for i in range(batch.num_sequences))


@pytest.mark.parametrize("shuffle,bucket", [(False, False), (True, False), (True, True),
                                            (False, True)])
def test_every_sequence_appears_once_per_epoch(shuffle, bucket):
    pairs = many_pairs()
    data = encode_pairs(pairs, *vocabs(pairs), num_steps=16)
    loader = BatchLoader(data, batch_size=16, shuffle=shuffle, bucket=bucket, seed=3)
    batches = list(loader)
    assert len(batches) == len(loader) == 13
    seen = [r for b in batches for r in rows(b)]
    assert sorted(seen) == rows(data)


def test_shuffling_is_deterministic_for_a_seed_and_changes_each_epoch():
    pairs = many_pairs()
    data = encode_pairs(pairs, *vocabs(pairs), num_steps=16)

    def first_batch(loader):
        return next(iter(loader)).src

    a, b = BatchLoader(data, 16, shuffle=True, seed=1), BatchLoader(data, 16, shuffle=True, seed=1)
    assert torch.equal(first_batch(a), first_batch(b))
    assert not torch.equal(first_batch(a), first_batch(a))  # epoch 2 differs from epoch 1
    assert not torch.equal(first_batch(BatchLoader(data, 16, shuffle=True, seed=2)),
                           first_batch(BatchLoader(data, 16, shuffle=True, seed=1)))


def test_bucketing_cuts_padding_and_trimmed_batches_keep_all_real_tokens():
    pairs = many_pairs(n=2000)
    data = encode_pairs(pairs, *vocabs(pairs), num_steps=16)
    plain = BatchLoader(data, 32, shuffle=True)
    bucketed = BatchLoader(data, 32, shuffle=True, bucket=True)
    assert plain.padding_fraction() > 0.4
    assert bucketed.padding_fraction() < 0.1
    for batch in bucketed:
        assert batch.src.shape[1] == batch.src_valid_len.max()
        assert batch.tgt.shape[1] == batch.tgt_valid_len.max()
    assert next(iter(plain)).src.shape[1] == 16  # untrimmed: d2l's fixed shapes


def test_drop_last():
    pairs = many_pairs()
    data = encode_pairs(pairs, *vocabs(pairs), num_steps=16)
    loader = BatchLoader(data, 16, drop_last=True)
    assert len(loader) == 12 and all(b.num_sequences == 16 for b in loader)
