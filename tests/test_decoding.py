"""Greedy, beam search and sampling against independent references: a greedy decoder that
re-runs the full teacher-forced forward pass on the whole prefix, brute force over every output
sequence of a tiny vocabulary, teacher-forced re-scoring, one-sentence-at-a-time decoding, and
empirical token frequencies against softmax(logits / temperature).

Every test runs twice: with the plain ``Runner`` (the teaching core) and with ``fast=True``
(``course_lib.fast``), so both meet the same references. ``tests/test_fast_decoding.py`` checks
that the two give the same tokens and scores on the same inputs."""

import functools
import itertools
import math

import pytest
import torch

from course_lib import decoding
from course_lib.data.generated import numbers_dataset
from course_lib.data.translation import TranslationData
from course_lib.data.vocab import Vocab
from course_lib.decoding import DecodeResult
from course_lib.models.rnn import Seq2SeqBahdanau, Seq2SeqGRU
from course_lib.models.transformer import Transformer, TransformerConfig, TransformerState

# The decoders as the tests call them; the fixture below sets ``fast`` for every test.
greedy_decode = beam_search = sample_decode = translate = None

SRC_V, TGT_V, E, H = 11, 13, 8, 16
PAD, BOS, EOS = 0, 1, 2
MAX_LEN = 10
VALID = torch.tensor([7, 3, 1, 5, 2, 6])
B, T_SRC = len(VALID), 7

# name: (builder, output-weight scale, <eos> bias). Random models are nearly uniform; a larger
# output layer and a push towards <eos> make sentences stop at different steps (checked below).
MODELS = {
    "gru": (lambda v: Seq2SeqGRU(SRC_V, v, embed_size=E, num_hiddens=H), 5.0, 1.0),
    "bahdanau": (lambda v: Seq2SeqBahdanau(SRC_V, v, embed_size=E, num_hiddens=H), 3.0, 1.0),
    "transformer": (lambda v: Transformer(TransformerConfig.tiny(SRC_V, v)), 3.0, 2.0),
    "transformer_no_cache": (lambda v: Transformer(TransformerConfig.tiny(SRC_V, v),
                                                   use_cache=False), 3.0, 2.0),
}
NAMES = list(MODELS)


@pytest.fixture(autouse=True, params=[False, True], ids=["core", "fast"])
def fast(request, monkeypatch):
    """Run the test with the decoders' plain runner, then with the fast layer."""
    for name in ("greedy_decode", "beam_search", "sample_decode", "translate"):
        monkeypatch.setitem(globals(), name,
                            functools.partial(getattr(decoding, name), fast=request.param))
    return request.param


def close(actual, expected, atol=1e-5):
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol)


def make(name, tgt_vocab=TGT_V, seed=0):
    build, scale, eos_bias = MODELS[name]
    torch.manual_seed(seed)
    model = build(tgt_vocab).eval()
    output = model.output
    with torch.no_grad():
        output.weight.mul_(scale)
        output.bias[EOS] += eos_bias
    return model


def make_source(seed=1, valid=VALID):
    """Source ids (B, T_SRC) with padding past ``valid``."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, SRC_V, (len(valid), T_SRC), generator=g)
    return src.masked_fill(torch.arange(T_SRC) >= valid[:, None], PAD), valid.clone()


@torch.no_grad()
def teacher_forced_log_probs(model, src, src_valid_len, tokens, lengths):
    """(B,) sum of log p(token) over tokens[:length], from one full forward pass per batch."""
    dec_input = torch.cat([torch.full_like(tokens[:, :1], BOS), tokens[:, :-1]], dim=1)
    log_p = model(src, src_valid_len, dec_input).log_softmax(-1)  # (B, T, V)
    log_p = log_p.gather(2, tokens.unsqueeze(-1)).squeeze(-1)  # (B, T)
    real = torch.arange(tokens.shape[1]) < lengths[:, None]
    return (log_p * real).sum(dim=1)


@torch.no_grad()
def naive_greedy(model, src, src_valid_len, max_len):
    """Reference: one sentence at a time, the whole prefix through ``forward`` at every step."""
    outputs, scores = [], []
    for i in range(src.shape[0]):
        prefix, score = [BOS], 0.0
        for _ in range(max_len):
            logits = model(src[i:i + 1], src_valid_len[i:i + 1], torch.tensor([prefix]))
            log_p = logits[0, -1].log_softmax(-1)
            token = int(log_p.argmax())
            prefix.append(token)
            score += float(log_p[token])
            if token == EOS:
                break
        outputs.append(prefix[1:])
        scores.append(score)
    return outputs, torch.tensor(scores)


def rows(result):
    """The result's sequences as lists, cut at their lengths."""
    return [row[:n].tolist() for row, n in zip(result.tokens, result.lengths, strict=True)]


def check_well_formed(result, max_len):
    """<eos> only as a last token, <pad> after it, lengths within max_len."""
    assert result.tokens.dtype == torch.long and result.tokens.shape[1] <= max_len
    for row, n in zip(result.tokens.tolist(), result.lengths.tolist(), strict=True):
        assert 1 <= n <= max_len
        assert EOS not in row[:n - 1]
        assert row[n - 1] == EOS or n == max_len, f"{row} stops at {n} without <eos>"
        assert all(t == PAD for t in row[n:]), f"no padding after the end: {row}, length {n}"


@pytest.mark.parametrize("name", NAMES)
def test_greedy_matches_full_forward_reference(name):
    model, (src, valid) = make(name), make_source()
    result = greedy_decode(model, src, valid, max_len=MAX_LEN)
    expected, expected_scores = naive_greedy(model, src, valid, MAX_LEN)
    assert rows(result) == expected
    close(result.log_probs, expected_scores)
    close(result.scores, expected_scores)
    close(result.log_probs, teacher_forced_log_probs(model, src, valid, result.tokens,
                                                     result.lengths))
    check_well_formed(result, MAX_LEN)
    assert result.lengths.unique().numel() >= 3, "test models should stop at different steps"


@pytest.mark.parametrize("name", NAMES)
def test_beam_size_one_is_greedy(name):
    model, (src, valid) = make(name), make_source()
    greedy = greedy_decode(model, src, valid, max_len=MAX_LEN)
    beam = beam_search(model, src, valid, beam_size=1, max_len=MAX_LEN)
    assert torch.equal(beam.tokens, greedy.tokens)
    assert torch.equal(beam.lengths, greedy.lengths)
    close(beam.log_probs, greedy.log_probs)
    close(beam.scores, greedy.scores)


@pytest.mark.parametrize("name", ["gru", "transformer"])
@pytest.mark.parametrize("decoder", ["greedy", "beam"])
def test_decode_feeds_only_the_new_token(name, decoder, fast):
    if fast and name == "transformer":
        pytest.skip("the fast layer steps the Transformer itself (test_fast_decoding.py)")
    model, (src, valid) = make(name), make_source()
    calls, original = [], model.decode_features  # what decode runs

    def spy(dec_input, state):
        if isinstance(state, TransformerState):  # the key/value cache grows one step per call
            assert state.past_tokens.shape[1] == len(calls)
            assert all(cache.length == len(calls) for cache in state.caches)
        calls.append(tuple(dec_input.shape))
        return original(dec_input, state)

    model.decode_features = spy
    if decoder == "greedy":
        result = greedy_decode(model, src, valid, max_len=MAX_LEN)
        # Step t runs only the sentences still going (finished ones leave the batch), and the
        # loop stops when every sentence has stopped.
        running = [int((result.lengths > t).sum()) for t in range(int(result.lengths.max()))]
        assert calls == [(r, 1) for r in running]
        assert running[-1] < B  # this model's sentences do end at different steps
    else:
        beam_search(model, src, valid, beam_size=3, max_len=MAX_LEN)
        rows = [r for r, _ in calls]
        assert 1 <= len(calls) <= MAX_LEN and all(width == 1 for _, width in calls)
        # The first step runs one empty prefix per sentence; then K rows per live sentence.
        assert rows[0] == B and all(r % 3 == 0 for r in rows[1:])
        assert rows[1:] == sorted(rows[1:], reverse=True)  # finished sentences leave the batch


def _push_towards_five(logits):
    logits = logits.clone()
    logits[..., 5] += 100.0
    return logits


class _AlwaysFive(Seq2SeqGRU):
    """Overrides ``decode``: the decoders must go through it, not around it."""

    def decode(self, dec_input, state):
        logits, state = super().decode(dec_input, state)
        return _push_towards_five(logits), state


@pytest.mark.parametrize("decoder", [
    lambda m, s, v: greedy_decode(m, s, v, max_len=MAX_LEN),
    lambda m, s, v: beam_search(m, s, v, beam_size=3, max_len=MAX_LEN),
    lambda m, s, v: sample_decode(m, s, v, max_len=MAX_LEN, generator=torch.Generator()),
], ids=["greedy", "beam", "sample"])
def test_a_model_that_overrides_decode_is_decoded_through_it(decoder):
    torch.manual_seed(0)
    model = _AlwaysFive(SRC_V, TGT_V, embed_size=E, num_hiddens=H).eval()
    src, valid = make_source()
    result = decoder(model, src, valid)
    assert (result.tokens == 5).all() and (result.lengths == MAX_LEN).all()
    instance = make("gru")  # patched on the instance rather than the class: the same
    original = instance.decode

    def patched(dec_input, state):
        logits, state = original(dec_input, state)
        return _push_towards_five(logits), state

    instance.decode = patched
    assert (decoder(instance, src, valid).tokens == 5).all()


def all_sequences(vocab_size, max_len):
    """Every output: up to max_len - 1 non-<eos> tokens then <eos>, or max_len non-<eos> ones."""
    others = [t for t in range(vocab_size) if t != EOS]
    for length in range(1, max_len + 1):
        for body in itertools.product(others, repeat=length - 1):
            yield (*body, EOS)
    yield from itertools.product(others, repeat=max_len)


@pytest.mark.parametrize("name", ["gru", "bahdanau", "transformer"])
@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_wide_beam_equals_brute_force(name, length_penalty):
    vocab_size, max_len = 4, 3
    model = make(name, tgt_vocab=vocab_size)
    src, valid = make_source(valid=torch.tensor([7, 2, 4]))
    sequences = list(all_sequences(vocab_size, max_len))
    assert len(sequences) == 40
    result = beam_search(model, src, valid, beam_size=len(sequences), max_len=max_len,
                         length_penalty=length_penalty, return_all=True)
    for i in range(src.shape[0]):
        brute = {}
        for seq in sequences:
            tokens = torch.tensor([seq])
            log_p = float(teacher_forced_log_probs(model, src[i:i + 1], valid[i:i + 1], tokens,
                                                   torch.tensor([len(seq)]))[0])
            brute[seq] = (log_p, log_p / len(seq) ** length_penalty)
        best = max(brute, key=lambda s: brute[s][1])
        assert rows(result)[i] == list(best)
        assert result.scores[i].item() == pytest.approx(brute[best][1], abs=1e-5)
        assert result.log_probs[i].item() == pytest.approx(brute[best][0], abs=1e-5)
        found = {tuple(h.tokens): (h.log_prob, h.score) for h in result.hypotheses[i]}
        assert found.keys() == brute.keys()  # a wide enough beam finds every sequence
        for seq, (log_p, score) in found.items():
            assert (log_p, score) == pytest.approx(brute[seq], abs=1e-5)


@pytest.mark.parametrize("name", ["gru", "transformer"])
def test_length_normalisation_never_prefers_shorter_outputs(name):
    """Exhaustive search: the best of log p / len is at least as long as the best of log p."""
    model, (src, valid) = make(name, tgt_vocab=4), make_source()
    kwargs = dict(beam_size=40, max_len=3)
    raw = beam_search(model, src, valid, length_penalty=0.0, **kwargs)
    normalised = beam_search(model, src, valid, length_penalty=1.0, **kwargs)
    assert bool((normalised.lengths >= raw.lengths).all())
    assert bool((normalised.log_probs <= raw.log_probs + 1e-6).all())
    assert bool((normalised.lengths > raw.lengths).any()), "alpha should matter here"


@torch.no_grad()
def reference_beam(model, src, src_valid_len, beam_size, max_len, alpha):
    """Reference: one sentence, full forward passes, never stops early: every step the best K
    one-token extensions are ranked; <eos> ones among them finish, the best K others go on."""
    beams, finished = [([], 0.0)], []
    for _ in range(max_len):
        dec_input = torch.tensor([[BOS] + prefix for prefix, _ in beams])
        n = len(beams)
        log_p = model(src.expand(n, -1), src_valid_len.expand(n), dec_input)[:, -1]
        log_p = log_p.log_softmax(-1).tolist()
        candidates = sorted(((prefix + [t], score + row[t])
                             for (prefix, score), row in zip(beams, log_p, strict=True)
                             for t in range(len(row))), key=lambda c: -c[1])
        finished += [c for c in candidates[:beam_size] if c[0][-1] == EOS]
        beams = [c for c in candidates if c[0][-1] != EOS][:beam_size]
    finished += beams
    return sorted(finished, key=lambda c: -c[1] / len(c[0]) ** alpha)[:beam_size]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("beam_size", "alpha"), [(2, 0.0), (3, 0.6), (2, 1.5)])
def test_beam_matches_reference_without_early_stopping(name, beam_size, alpha):
    """Early stopping must never change the result: its bound on live hypotheses is exact."""
    model, (src, valid) = make(name), make_source()
    result = beam_search(model, src, valid, beam_size=beam_size, max_len=MAX_LEN,
                         length_penalty=alpha, return_all=True)
    for i, hypotheses in enumerate(result.hypotheses):
        expected = reference_beam(model, src[i:i + 1], valid[i:i + 1], beam_size, MAX_LEN, alpha)
        assert [h.tokens for h in hypotheses] == [tokens for tokens, _ in expected]
        close(torch.tensor([h.log_prob for h in hypotheses]),
              torch.tensor([log_p for _, log_p in expected]))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("beam_size", "alpha"), [(2, 0.0), (4, 0.0), (3, 0.6), (2, 1.5)])
def test_best_only_stops_sooner_with_the_same_answer(name, beam_size, alpha):
    """Without return_all a sentence stops once its best finished hypothesis is beyond reach:
    the same best as the reference without early stopping, from fewer decoder rows."""
    model, (src, valid) = make(name), make_source()
    decoded_rows, original = [], model.decode

    def counting(dec_input, state):
        decoded_rows.append(dec_input.shape[0])
        return original(dec_input, state)

    model.decode = counting
    best = beam_search(model, src, valid, beam_size=beam_size, max_len=MAX_LEN,
                       length_penalty=alpha)
    rows_best_only, decoded_rows[:] = sum(decoded_rows), []
    beam_search(model, src, valid, beam_size=beam_size, max_len=MAX_LEN, length_penalty=alpha,
                return_all=True)
    assert rows_best_only <= sum(decoded_rows)
    if alpha < 1:  # these random models end sentences early: the saving shows
        assert rows_best_only < sum(decoded_rows)
    for i in range(B):
        tokens, log_p = reference_beam(model, src[i:i + 1], valid[i:i + 1],
                                       beam_size, MAX_LEN, alpha)[0]
        assert rows(best)[i] == tokens
        close(best.log_probs[i], torch.tensor(log_p))
        close(best.scores[i], torch.tensor(log_p / len(tokens) ** alpha))


@pytest.mark.parametrize("name", NAMES)
def test_beam_hypotheses_sorted_and_rescored(name):
    model, (src, valid) = make(name), make_source()
    alpha, beam_size = 0.7, 4
    result = beam_search(model, src, valid, beam_size=beam_size, max_len=MAX_LEN,
                         length_penalty=alpha, return_all=True)
    check_well_formed(result, MAX_LEN)
    assert result.lengths.unique().numel() >= 2, "test models should stop at different steps"
    close(result.log_probs, teacher_forced_log_probs(model, src, valid, result.tokens,
                                                     result.lengths))
    close(result.scores, result.log_probs / result.lengths.float() ** alpha)
    for i, hypotheses in enumerate(result.hypotheses):
        assert 1 <= len(hypotheses) <= beam_size
        scores = [h.score for h in hypotheses]
        assert scores == sorted(scores, reverse=True)
        assert hypotheses[0].tokens == rows(result)[i]
        assert len({tuple(h.tokens) for h in hypotheses}) == len(hypotheses)  # no duplicates
        tokens = torch.tensor([h.tokens + [PAD] * (MAX_LEN - len(h.tokens)) for h in hypotheses])
        lengths = torch.tensor([len(h.tokens) for h in hypotheses])
        n = len(hypotheses)
        rescored = teacher_forced_log_probs(model, src[i:i + 1].expand(n, -1),
                                            valid[i:i + 1].expand(n), tokens, lengths)
        close(torch.tensor([h.log_prob for h in hypotheses]), rescored)
        close(torch.tensor(scores), rescored / lengths.float() ** alpha)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("decoder", ["greedy", "beam"])
def test_batch_equals_one_sentence_at_a_time(name, decoder):
    model, (src, valid) = make(name), make_source()

    def run(s, v):
        if decoder == "greedy":
            return greedy_decode(model, s, v, max_len=MAX_LEN)
        return beam_search(model, s, v, beam_size=3, max_len=MAX_LEN, length_penalty=0.5)

    batch = run(src, valid)
    for i in range(B):
        alone = run(src[i:i + 1], valid[i:i + 1])
        assert rows(alone) == [rows(batch)[i]]
        close(alone.scores, batch.scores[i:i + 1])
        close(alone.log_probs, batch.log_probs[i:i + 1])


@pytest.mark.parametrize("name", ["gru", "bahdanau", "transformer"])
def test_cold_sampling_and_top_1_are_greedy(name):
    model, (src, valid) = make(name), make_source()
    greedy = greedy_decode(model, src, valid, max_len=MAX_LEN)
    for kwargs in (dict(temperature=1e-7), dict(top_k=1, temperature=3.0)):
        sampled = sample_decode(model, src, valid, max_len=MAX_LEN,
                                generator=torch.Generator().manual_seed(0), **kwargs)
        assert torch.equal(sampled.tokens, greedy.tokens), kwargs
        close(sampled.log_probs, greedy.log_probs)


def test_sampling_is_reproducible_and_scored_by_the_model():
    model, (src, valid) = make("gru"), make_source()

    def draw(seed):
        return sample_decode(model, src, valid, max_len=MAX_LEN, temperature=1.5,
                             generator=torch.Generator().manual_seed(seed))

    first, again, other = draw(0), draw(0), draw(1)
    assert torch.equal(first.tokens, again.tokens) and torch.equal(first.lengths, again.lengths)
    assert not torch.equal(first.tokens, other.tokens)
    check_well_formed(first, MAX_LEN)
    # Scores are the model's own log-probabilities (temperature 1), not the tempered ones.
    close(first.log_probs, teacher_forced_log_probs(model, src, valid, first.tokens,
                                                    first.lengths))


def repeated_source(n):
    src, valid = make_source()
    return src[:1].expand(n, -1), valid[:1].expand(n)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_first_token_frequencies_follow_tempered_softmax(temperature):
    n = 4000
    model, (src, valid) = make("gru"), repeated_source(n)
    with torch.no_grad():
        logits = model.decode(torch.full((1, 1), BOS), model.encode(src[:1], valid[:1]))[0]
    expected = (logits[0, 0] / temperature).softmax(-1)  # (V,)
    result = sample_decode(model, src, valid, max_len=1, temperature=temperature,
                           generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(result.tokens[:, 0], minlength=TGT_V).double()
    mask = expected * n >= 5  # Pearson's chi-square over the well-populated tokens
    observed = torch.cat([counts[mask], counts[~mask].sum().view(1)])
    wanted = torch.cat([expected[mask], expected[~mask].sum().view(1)]).double() * n
    chi2 = float(((observed - wanted) ** 2 / wanted.clamp(min=1e-9)).sum())
    df = int(mask.sum())  # categories - 1
    assert chi2 < df + 6 * math.sqrt(2 * df), f"chi-square {chi2:.1f} with {df} dof"
    if temperature != 1.0:  # the test can tell temperatures apart
        untempered = logits[0, 0].softmax(-1).double() * n
        assert float(((counts - untempered) ** 2 / untempered).sum()) > 10 * (df + 1)


def test_top_k_samples_only_from_the_top_k():
    k, n, max_len = 3, 2000, 4
    model, (src, valid) = make("transformer"), repeated_source(n)
    result = sample_decode(model, src, valid, max_len=max_len, temperature=2.0, top_k=k,
                           generator=torch.Generator().manual_seed(0))
    tokens = result.tokens
    dec_input = torch.cat([torch.full_like(tokens[:, :1], BOS), tokens[:, :-1]], dim=1)
    with torch.no_grad():
        logits = model(src, valid, dec_input)  # (n, T, V)
    chosen = logits.gather(2, tokens.unsqueeze(-1))  # (n, T, 1)
    rank = (logits > chosen).sum(-1)  # (n, T): how many tokens the model preferred
    real = torch.arange(tokens.shape[1]) < result.lengths[:, None]
    assert int(rank[real].max()) < k
    assert int(rank[real].max()) == k - 1  # the k-th token is drawn too, with temperature 2
    # The first token follows the tempered softmax renormalised over the top k.
    top = (logits[0, 0] / 2.0).topk(k)
    expected = top.values.softmax(-1)
    freq = torch.stack([(tokens[:, 0] == t).double().mean() for t in top.indices])
    close(freq.float(), expected, atol=5 * math.sqrt(0.25 / n))


def test_decoders_restore_training_mode_and_switch_off_dropout():
    torch.manual_seed(0)
    model = Seq2SeqGRU(SRC_V, TGT_V, embed_size=E, num_hiddens=H, num_layers=2, dropout=0.5)
    src, valid = make_source()
    expected = greedy_decode(model.eval(), src, valid, max_len=MAX_LEN)
    model.train()
    for decode in (lambda: greedy_decode(model, src, valid, max_len=MAX_LEN),
                   lambda: beam_search(model, src, valid, beam_size=1, max_len=MAX_LEN)):
        result = decode()
        assert torch.equal(result.tokens, expected.tokens)
        close(result.log_probs, expected.log_probs)  # dropout would change these
        assert model.training and torch.is_grad_enabled()
        assert not result.log_probs.requires_grad


def test_to_sentences_stops_at_eos():
    vocab = Vocab([["a", "b", "c"]])  # <pad> <bos> <eos> <unk> a b c
    result = DecodeResult(tokens=torch.tensor([[4, 5, 2, 0], [6, 2, 0, 0], [4, 4, 4, 4]]),
                          lengths=torch.tensor([3, 2, 4]), log_probs=torch.zeros(3),
                          scores=torch.zeros(3))
    assert result.to_sentences(vocab) == ["a b", "c", "a a a a"]


def test_translate_matches_the_decoders():
    data = TranslationData(numbers_dataset(0, 40), num_steps=8, batch_size=8)
    torch.manual_seed(0)
    model = Seq2SeqBahdanau(len(data.src_vocab), len(data.tgt_vocab), embed_size=E,
                            num_hiddens=H)
    sentences = ["twenty - one", "seven", "thirty - three"]
    src, valid = data.encode_sources(sentences)
    greedy = greedy_decode(model, src, valid, max_len=8)
    beam = beam_search(model, src, valid, beam_size=3, max_len=8)
    assert translate(model, data, sentences) == data.decode_targets(greedy.tokens)
    assert translate(model, data, sentences, beam_size=3) == beam.to_sentences(data.tgt_vocab)
    short = greedy_decode(model, src, valid, max_len=1)
    assert translate(model, data, sentences, max_len=1) == short.to_sentences(data.tgt_vocab)
    assert translate(model, data, []) == []


BAD_ARGUMENTS = [
    ("greedy_decode", dict(max_len=0), "max_len"),
    ("beam_search", dict(max_len=5, beam_size=0), "beam_size"),
    ("beam_search", dict(max_len=0, beam_size=2), "max_len"),
    ("beam_search", dict(max_len=5, beam_size=2.0), "beam_size"),
    ("beam_search", dict(max_len=5, beam_size=2, length_penalty=-0.5), "length_penalty"),
    ("sample_decode", dict(max_len=5, temperature=0.0), "temperature"),
    ("sample_decode", dict(max_len=5, temperature=-1.0), "temperature"),
    ("sample_decode", dict(max_len=5, top_k=0), "top_k"),
    ("sample_decode", dict(max_len=-1), "max_len"),
]


@pytest.mark.parametrize(("decoder", "kwargs", "name"), BAD_ARGUMENTS)
def test_bad_arguments_raise_value_error_naming_them(decoder, kwargs, name):
    model, (src, valid) = make("gru"), make_source()
    with pytest.raises(ValueError, match=name):
        globals()[decoder](model, src, valid, **kwargs)


def test_malformed_source_raises_value_error():
    model, (src, valid) = make("gru"), make_source()
    with pytest.raises(ValueError, match="src_valid_len"):
        greedy_decode(model, src, valid[:2], max_len=3)
    with pytest.raises(ValueError, match="src"):
        beam_search(model, src[0], valid, beam_size=2, max_len=3)


def test_greedy_breaks_ties_towards_the_lower_token_id():
    # Logits that ignore the input and tie tokens 5 and 7: greedy must pick 5 (torch.argmax's
    # rule, the first maximum) at every step, whatever reduction picks the maximum.
    model = make("transformer")
    with torch.no_grad():
        model.output.weight.zero_()
        model.output.bias.fill_(-1.0)
        model.output.bias[[5, 7]] = 1.0
    src, valid = make_source()
    result = greedy_decode(model, src, valid, max_len=4)
    assert torch.equal(result.tokens, torch.full((B, 4), 5))
    expected = 4 * (1.0 - math.log(2 * math.e + (TGT_V - 2) / math.e))  # 4 x log p(5)
    close(result.log_probs, torch.full((B,), expected))


@pytest.mark.parametrize("name", ["gru", "transformer"])
def test_decoders_ignore_a_shift_of_every_logit(name):
    """Softmax ignores a constant added to every logit, so the decoders must too, even one of
    -20,000 that puts every real logit below any finite stand-in for the padding's -inf."""
    model, (src, valid) = make(name), make_source()
    plain = [greedy_decode(model, src, valid, max_len=MAX_LEN),
             beam_search(model, src, valid, beam_size=3, max_len=MAX_LEN)]
    with torch.no_grad():
        model.output.bias -= 20_000.0
    shifted = [greedy_decode(model, src, valid, max_len=MAX_LEN),
               beam_search(model, src, valid, beam_size=3, max_len=MAX_LEN)]
    for a, b in zip(plain, shifted, strict=True):
        assert torch.equal(a.tokens, b.tokens)
        close(a.log_probs, b.log_probs, atol=0.05)  # float32 logits near -20,000: steps of 0.002
