"""The non-autoregressive Transformer: shapes, errors, what its decoder sees, training, decoding.

Notation: B batch · T target positions · D model width · V vocabulary size · C length classes.
"""

from __future__ import annotations

import functools

import pytest
import torch

from course_lib.data.batching import BatchLoader, encode_pairs
from course_lib.data.vocab import Vocab
from course_lib.models.nat import (
    NATConfig,
    NATransformer,
    nat_decode,
    nat_loss,
    nat_targets,
)
from course_lib.models.transformer import Encoder
from course_lib.training import evaluate, train_epoch

V_SRC, V_TGT, MAX_LEN = 13, 11, 8
MODES = pytest.mark.parametrize("decoder_input", ["copy", "position"])


def assert_close(actual, expected, atol=1e-5):
    """Same shape and equal up to atol (torch.testing.assert_close costs seconds to import)."""
    assert actual.shape == expected.shape, f"shapes {actual.shape} vs {expected.shape}"
    difference = (actual - expected).abs().max().item() if actual.numel() else 0.0
    assert difference <= atol, f"largest difference {difference:.2e} > {atol}"


def make_model(seed=0, **changes) -> NATransformer:
    torch.manual_seed(seed)
    return NATransformer(NATConfig.tiny(V_SRC, V_TGT, max_len=MAX_LEN, **changes)).eval()


def make_inputs(B=4, T_src=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, V_SRC, (B, T_src), generator=g)
    src_valid_len = torch.tensor([7, 3, 5, 1][:B])
    return src, src_valid_len


# --- Shapes and errors -------------------------------------------------------------------------

@MODES
def test_shapes(decoder_input):
    model = make_model(decoder_input=decoder_input)
    src, src_valid_len = make_inputs()
    lengths = torch.tensor([5, 2, 0, 3])
    logits, length_logits = model(src, src_valid_len, lengths)
    assert logits.shape == (4, 5, V_TGT)  # T = the longest length
    assert length_logits.shape == (4, MAX_LEN + 1)
    assert model(src, src_valid_len, lengths, num_positions=7)[0].shape == (4, 7, V_TGT)
    encoding = model.encode(src, src_valid_len)
    assert encoding.memory.shape == (4, 7, 32)
    assert model.decoder_inputs(encoding, lengths, 6).shape == (4, 6, 32)


def test_uniform_copy_reads_source_positions_in_order():
    """Target position j copies source position floor(j * S / L): spread evenly, in order."""
    model = make_model()
    src, src_valid_len = make_inputs()
    encoding = model.encode(src, src_valid_len)
    lengths = torch.tensor([3, 6, 5, 2])
    X = model.decoder_inputs(encoding, lengths, 6)
    positions = model.tgt_positional.P[0, :6]  # (6, D): added to the copies
    expected_index = {0: [0, 2, 4], 1: [0, 0, 1, 1, 2, 2], 2: [0, 1, 2, 3, 4], 3: [0, 0]}
    for b, index in expected_index.items():
        copied = encoding.src_embedded[b, index]  # (L, D)
        assert_close(X[b, :len(index)], copied + positions[:len(index)])


@pytest.mark.parametrize(("call", "message"), [
    (lambda m, s, v: m(s[0], v, torch.tensor([2])), r"src must be \(B, T_src\)"),
    (lambda m, s, v: m(s, v[:2], torch.tensor([2, 2, 2, 2])), r"src_valid_len must be \(B,\)"),
    (lambda m, s, v: m(s, torch.tensor([7, 0, 5, 1]), torch.tensor([2, 2, 2, 2])),
     r"src_valid_len must lie in 1..T_src = 1..7, got \[7, 0, 5, 1\]"),
    (lambda m, s, v: m(s, v, torch.tensor([2, 2])), r"tgt_valid_len must be \(B,\) = \(4,\)"),
    (lambda m, s, v: m(s, v, torch.tensor([2, 9, 2, 2])), r"0..max_len = 0..8, got \[2, 9"),
    (lambda m, s, v: m(s, v, torch.tensor([2, -1, 2, 2])), r"0..max_len"),
    (lambda m, s, v: m(s, v, torch.tensor([2, 5, 2, 2]), num_positions=4),
     r"num_positions must lie in 5..8"),
])
def test_bad_input_raises_value_error_naming_shapes(call, message):
    model = make_model()
    src, src_valid_len = make_inputs()
    with pytest.raises(ValueError, match=message):
        call(model, src, src_valid_len)


def test_config_and_decode_arguments_are_checked():
    with pytest.raises(ValueError, match="d_model=30, num_heads=4"):
        NATConfig(10, 10, d_model=30, num_heads=4)
    with pytest.raises(ValueError, match="decoder_input must be one of"):
        NATConfig(10, 10, decoder_input="noise")
    with pytest.raises(ValueError, match="max_len must be >= 1"):
        NATConfig(10, 10, max_len=0)
    model = make_model()
    src, src_valid_len = make_inputs()
    with pytest.raises(ValueError, match="length_candidates must be an integer >= 1, got 0"):
        nat_decode(model, src, src_valid_len, length_candidates=0)
    with pytest.raises(ValueError, match="not both"):
        nat_decode(model, src, src_valid_len, lengths=torch.tensor([1, 2, 3, 4]),
                   length_candidates=2)
    encoding = model.encode(src, src_valid_len)
    with pytest.raises(ValueError, match=r"X must be \(B, T, D\) = \(4, T, 32\), got \(4, 3, 8\)"):
        model.decode_features(torch.zeros(4, 3, 8), encoding, torch.tensor([3, 3, 3, 3]))


# --- What the decoder sees ---------------------------------------------------------------------

def decoded(decoder_input, lengths, T):
    """(model, encoding, decoder inputs X (B, T, D), decoder features of X) for lengths."""
    model = make_model(decoder_input=decoder_input)
    encoding = model.encode(*make_inputs())
    X = model.decoder_inputs(encoding, lengths, T)
    return model, encoding, X, model.decode_features(X, encoding, lengths)


@MODES
def test_decoder_is_not_causal(decoder_input):
    """Changing a LATER decoder input changes the output at an earlier position (the opposite
    of the Transformer decoder's causal property)."""
    lengths = torch.tensor([6, 6, 6, 6])
    model, encoding, X, before = decoded(decoder_input, lengths, 6)
    X_changed = X.clone()
    X_changed[:, 4] += torch.randn(4, 32, generator=torch.Generator().manual_seed(0))
    after = model.decode_features(X_changed, encoding, lengths)
    for t in range(4):  # every earlier position moves
        assert (after[:, t] - before[:, t]).abs().max() > 1e-3, f"position {t} ignored t=4"


@MODES
def test_decoder_ignores_positions_past_the_length(decoder_input):
    lengths = torch.tensor([3, 5, 2, 4])
    model, encoding, X, before = decoded(decoder_input, lengths, 8)
    keep = torch.arange(8) < lengths[:, None]  # (B, 8)
    noise = torch.randn(X.shape, generator=torch.Generator().manual_seed(0)) * 10
    after = model.decode_features(torch.where(keep[..., None], X, noise), encoding, lengths)
    assert_close(after[keep], before[keep])
    # More padding positions change nothing at the real ones either.
    logits_5 = model.decode(encoding, lengths)
    logits_8 = model.decode(encoding, lengths, num_positions=8)
    assert_close(logits_8[:, :5][keep[:, :5]], logits_5[keep[:, :5]])


def test_source_padding_is_ignored():
    model = make_model()
    src, src_valid_len = make_inputs()
    lengths = torch.tensor([4, 4, 4, 4])
    logits, length_logits = model(src, src_valid_len, lengths)
    changed = src.clone()
    changed[1, 3:] = 4  # example 1 has 3 real source tokens
    logits_2, length_logits_2 = model(changed, src_valid_len, lengths)
    assert_close(logits_2, logits)
    assert_close(length_logits_2, length_logits)


# --- Training ----------------------------------------------------------------------------------

def small_corpus():
    """8 pairs whose target words and lengths depend on the source (not a copy)."""
    pairs = [("a b", "x"), ("a c d", "y y z"), ("b b b", "z x"), ("c", "x y z w"),
             ("d a", "w"), ("c c", "y x"), ("a", "z z z"), ("b d c a", "w w x")]
    tokens = [(s.split(), t.split()) for s, t in pairs]
    src_vocab = Vocab([s for s, _ in tokens])
    tgt_vocab = Vocab([t for _, t in tokens])
    return encode_pairs(tokens, src_vocab, tgt_vocab, num_steps=6), len(src_vocab), len(tgt_vocab)


def test_nat_targets_remove_eos():
    batch, _, _ = small_corpus()
    targets, lengths = nat_targets(batch.tgt, batch.tgt_valid_len)
    assert lengths.tolist() == [1, 3, 2, 4, 1, 2, 3, 3]
    assert not bool((targets == 2).any())  # no <eos> left
    assert torch.equal(targets[:, :4][targets[:, :4] != 0], batch.tgt[(batch.tgt > 2)])
    truncated = torch.tensor([[5, 6, 7]])  # a target cut by num_steps has no <eos>
    assert nat_targets(truncated, torch.tensor([3]))[1].tolist() == [3]


def test_length_predictor_and_model_overfit_a_small_batch():
    batch, v_src, v_tgt = small_corpus()
    torch.manual_seed(0)
    model = NATransformer(NATConfig.tiny(v_src, v_tgt, max_len=6, num_layers=1))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = BatchLoader(batch, batch_size=8)
    loss_fn = functools.partial(nat_loss, length_weight=1.0)
    for _ in range(300):  # about 90 steps are needed; stop once both losses are tiny
        stats = train_epoch(model, loader, optimizer, loss_fn=loss_fn)
        if stats["length_loss"] < 0.05 and stats["token_loss"] < 0.05:
            break
    assert stats["length_loss"] < 0.05 and stats["token_loss"] < 0.05, stats
    final = evaluate(model, loader, loss_fn=nat_loss)
    assert final["length_accuracy"] == 1.0 and final["token_accuracy"] == 1.0
    # Decoding with the predicted lengths reproduces every training target.
    result = nat_decode(model, batch.src, batch.src_valid_len)
    targets, lengths = nat_targets(batch.tgt, batch.tgt_valid_len)
    assert result.lengths.tolist() == lengths.tolist()
    assert torch.equal(result.tokens, targets[:, :result.tokens.shape[1]])


def test_train_epoch_reports_the_loss_functions_parts_and_refuses_default_loss_options():
    batch, v_src, v_tgt = small_corpus()
    torch.manual_seed(0)
    model = NATransformer(NATConfig.tiny(v_src, v_tgt, max_len=6))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the model stays as it is
    loader = BatchLoader(batch, batch_size=4)  # two batches
    expected = [nat_loss(model, b)[1] for b in loader]
    stats = train_epoch(model, loader, optimizer, loss_fn=nat_loss, clip_grad=None)
    for name in ("token_loss", "length_loss", "token_accuracy"):
        mean = sum(parts[name] for parts in expected) / 2
        assert stats[name] == pytest.approx(mean, rel=1e-5), name
    assert stats["batches"] == 2 and stats["tokens"] == batch.num_target_tokens
    with pytest.raises(ValueError, match="give them to the loss function"):
        train_epoch(model, loader, optimizer, loss_fn=nat_loss, label_smoothing=0.1)


def test_the_nat_encoder_is_the_transformers_encoder():
    torch.manual_seed(0)
    model = NATransformer(NATConfig.tiny(V_SRC, V_TGT, norm_first=True)).eval()
    assert type(model.encoder) is Encoder
    src, src_valid_len = torch.randint(3, V_SRC, (3, 6)), torch.tensor([6, 2, 4])
    X = model.src_positional(model.src_embedding(src) * model.config.d_model ** 0.5)
    with torch.no_grad():
        assert_close(model.encode(src, src_valid_len).memory, model.encoder(X, src_valid_len))


def test_loss_is_token_ce_plus_weighted_length_ce():
    batch, v_src, v_tgt = small_corpus()
    torch.manual_seed(0)
    model = NATransformer(NATConfig.tiny(v_src, v_tgt, max_len=6))
    loss_0, parts = nat_loss(model, batch, length_weight=0.0)
    loss_1, _ = nat_loss(model, batch, length_weight=1.0)
    assert loss_0.item() == pytest.approx(parts["token_loss"], rel=1e-6)
    assert (loss_1 - loss_0).item() == pytest.approx(parts["length_loss"], rel=1e-5)
    # An independent reference for the token part: plain cross entropy over real words.
    targets, lengths = nat_targets(batch.tgt, batch.tgt_valid_len)
    logits, _ = model(batch.src, batch.src_valid_len, lengths)
    keep = torch.arange(logits.shape[1]) < lengths[:, None]
    reference = torch.nn.functional.cross_entropy(logits[keep], targets[:, :4][keep])
    assert parts["token_loss"] == pytest.approx(reference.item(), rel=1e-5)
    model.config.max_len = 2  # a target longer than the model can predict
    with pytest.raises(ValueError, match="4 words but the model's max_len is 2"):
        nat_loss(model, batch)


# --- Decoding ----------------------------------------------------------------------------------

def count_calls(modules):
    """Attach forward hooks counting calls; returns the list of counters."""
    counts = [0] * len(modules)

    def hook(i):
        def record(module, args, output):
            counts[i] += 1
        return record

    for i, module in enumerate(modules):
        module.register_forward_hook(hook(i))
    return counts


@pytest.mark.parametrize("length_candidates", [1, 3])
def test_decoding_is_one_forward_pass(length_candidates):
    model = make_model()
    src, src_valid_len = make_inputs()
    encoder = count_calls(list(model.encoder.blocks))
    decoder = count_calls(list(model.decoder_blocks))
    output = count_calls([model.output])
    result = nat_decode(model, src, src_valid_len, length_candidates=length_candidates)
    assert encoder == [1, 1] and decoder == [1, 1] and output == [1]
    assert result.tokens.shape[0] == 4 and (result.lengths >= 1).all()


def test_decoding_uses_given_or_predicted_lengths_and_bans_special_tokens():
    model = make_model()
    src, src_valid_len = make_inputs()
    given = torch.tensor([2, 5, 1, 3])
    result = nat_decode(model, src, src_valid_len, lengths=given)
    assert result.lengths.tolist() == given.tolist()
    assert result.tokens.shape == (4, 5)
    keep = torch.arange(5) < given[:, None]
    assert bool((result.tokens[keep] > 2).all())  # no <pad>, <bos>, <eos> inside
    assert bool((result.tokens[~keep] == 0).all())  # padding after each length
    predicted = model.encode(src, src_valid_len).length_logits[:, 1:].argmax(dim=1) + 1
    assert nat_decode(model, src, src_valid_len).lengths.tolist() == predicted.tolist()


def test_length_candidates_pick_the_best_mean_log_probability():
    model = make_model()
    src, src_valid_len = make_inputs()
    best = nat_decode(model, src, src_valid_len, length_candidates=3)
    encoding = model.encode(src, src_valid_len)
    scores = encoding.length_logits.clone()
    scores[:, 0] = float("-inf")
    top3 = scores.topk(3, dim=1).indices  # (B, 3)
    for b in range(4):  # brute force: decode each candidate length on its own
        means = []
        for length in top3[b].tolist():
            one = nat_decode(model, src[b:b + 1], src_valid_len[b:b + 1],
                             lengths=torch.tensor([length]))
            means.append(one.scores.item())
        assert best.lengths[b].item() == top3[b, max(range(3), key=means.__getitem__)].item()
        assert best.scores[b].item() == pytest.approx(max(means), abs=1e-5)


def test_decoding_is_deterministic():
    src, src_valid_len = make_inputs()
    first = nat_decode(make_model(seed=3), src, src_valid_len, length_candidates=2)
    again = nat_decode(make_model(seed=3), src, src_valid_len, length_candidates=2)
    assert torch.equal(first.tokens, again.tokens)
    assert torch.equal(first.scores, again.scores)
    model = make_model(seed=3)
    model.train()  # decoding switches to eval mode (no dropout) and back
    assert torch.equal(nat_decode(model, src, src_valid_len, length_candidates=2).tokens,
                       first.tokens)
    assert model.training
