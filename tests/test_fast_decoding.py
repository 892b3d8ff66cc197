"""The fast layer (course_lib.fast) gives the teaching core's results: the same tokens, lengths,
scores and hypotheses for greedy, beam search (several widths, length penalties, dead
hypotheses) and seeded sampling, on random models of every architecture; and its pieces (the
padded output layer, beams sharing memory, the attention kernel choice, reused buffers) each
do what they claim.

Notation: B batch · S sentences · K beams · V vocabulary size.
"""

import pytest
import torch
from torch.nn import functional as F

from course_lib.decoding import beam_search, greedy_decode, sample_decode
from course_lib.fast import transformer as fast_transformer
from course_lib.fast.decoding import FastRunner, padded_output
from course_lib.models.rnn import Seq2SeqBahdanau, Seq2SeqGRU
from course_lib.models.transformer import Transformer, TransformerConfig

SRC_V, TGT_V, EOS, PAD = 11, 13, 2, 0
VALID = torch.tensor([7, 3, 1, 5, 2, 6, 4, 7])
B, T_SRC, MAX_LEN = len(VALID), 7, 9


class _Biased(Seq2SeqGRU):
    """Overrides ``decode`` (as lesson 01's counting model does): run through it, not around."""

    def decode(self, dec_input, state):
        logits, state = super().decode(dec_input, state)
        return logits + torch.linspace(0, 1, logits.shape[-1]), state


# name: (builder, output-weight scale, <eos> bias). Random models are nearly uniform; a larger
# output layer and a push towards <eos> make sentences stop at different steps (checked below).
ARCHITECTURES = {
    "gru": (lambda v: Seq2SeqGRU(SRC_V, v, embed_size=8, num_hiddens=16), 5.0, 1.0),
    "bahdanau": (lambda v: Seq2SeqBahdanau(SRC_V, v, embed_size=8, num_hiddens=16), 3.0, 1.0),
    "overrides_decode": (lambda v: _Biased(SRC_V, v, embed_size=8, num_hiddens=16), 5.0, 1.0),
    "transformer": (lambda v: Transformer(TransformerConfig.tiny(SRC_V, v)), 3.0, 2.0),
    "transformer_pre_ln_sdpa": (lambda v: Transformer(TransformerConfig.tiny(
        SRC_V, v, norm_first=True, use_sdpa=True, num_heads=4)), 3.0, 1.0),
    "transformer_tied": (lambda v: Transformer(TransformerConfig.tiny(
        SRC_V, v, tie_output=True, positional="learned")), 1.0, 3.0),
    "transformer_no_cache": (lambda v: Transformer(TransformerConfig.tiny(SRC_V, v),
                                                   use_cache=False), 3.0, 2.0),
}
NAMES = list(ARCHITECTURES)


def make(name, vocab=TGT_V, seed=0):
    """A random model whose sentences end at different steps."""
    build, scale, eos_bias = ARCHITECTURES[name]
    torch.manual_seed(seed)
    model = build(vocab).eval()
    with torch.no_grad():
        model.output.weight.mul_(scale)
        model.output.bias[EOS] += eos_bias
    return model


def make_source(seed=1):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, SRC_V, (B, T_SRC), generator=g)
    return src.masked_fill(torch.arange(T_SRC) >= VALID[:, None], PAD), VALID.clone()


def assert_same(core, fast):
    """The same outputs: tokens and lengths exactly, log-probabilities and scores to 1e-5."""
    assert torch.equal(core.tokens, fast.tokens)
    assert torch.equal(core.lengths, fast.lengths)
    torch.testing.assert_close(core.log_probs, fast.log_probs, rtol=0, atol=1e-5)
    torch.testing.assert_close(core.scores, fast.scores, rtol=0, atol=1e-5)
    if core.hypotheses is not None:
        for ours, theirs in zip(core.hypotheses, fast.hypotheses, strict=True):
            assert [h.tokens for h in ours] == [h.tokens for h in theirs]
            assert [h.score for h in ours] == pytest.approx([h.score for h in theirs], abs=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_greedy_fast_equals_core(name):
    model, (src, valid) = make(name), make_source()
    core = greedy_decode(model, src, valid, max_len=MAX_LEN)
    assert core.lengths.unique().numel() >= 2, "sentences should end at different steps"
    assert_same(core, greedy_decode(model, src, valid, max_len=MAX_LEN, fast=True))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("beam_size", "length_penalty", "return_all"),
                         [(1, 0.0, False), (2, 0.6, True), (4, 0.0, False), (4, 1.0, True),
                          (7, 1.5, False)])
def test_beam_search_fast_equals_core(name, beam_size, length_penalty, return_all):
    model, (src, valid) = make(name), make_source()
    kwargs = dict(beam_size=beam_size, max_len=MAX_LEN, length_penalty=length_penalty,
                  return_all=return_all)
    assert_same(beam_search(model, src, valid, **kwargs),
                beam_search(model, src, valid, fast=True, **kwargs))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("temperature", "top_k"), [(1.0, None), (0.7, 5), (1.6, None)])
def test_seeded_sampling_fast_equals_core(name, temperature, top_k):
    model, (src, valid) = make(name), make_source()
    results = [sample_decode(model, src, valid, max_len=MAX_LEN, temperature=temperature,
                             top_k=top_k, generator=torch.Generator().manual_seed(5), fast=fast)
               for fast in (False, True)]
    assert_same(*results)


@pytest.mark.parametrize("name", ["gru", "transformer", "transformer_pre_ln_sdpa"])
def test_dead_hypotheses_tie_with_padding_columns_and_change_nothing(name):
    """5 tokens of which 3 are impossible (logit -inf): beam search keeps dead hypotheses
    (log p = -inf) whose extensions tie with the 11 padding columns of the fast output layer.
    The results are the core's, and no padding id is ever fed to the model."""
    model, (src, valid) = make(name, vocab=5), make_source()
    with torch.no_grad():
        model.output.bias[[PAD, 1, 3]] = float("-inf")  # only <eos> and token 4 are possible
    embedding = model.tgt_embedding if isinstance(model, Transformer) else model.embedding
    fed = []
    embedding.register_forward_hook(lambda module, args, out: fed.append(int(args[0].max())))
    kwargs = dict(beam_size=4, max_len=MAX_LEN, return_all=True)
    core = beam_search(model, src, valid, **kwargs)
    fast = beam_search(model, src, valid, fast=True, **kwargs)
    assert_same(core, fast)
    assert set(fast.tokens.unique().tolist()) <= {PAD, EOS, 4}
    assert max(fed) < 5, "a padding column's id reached the model"


def test_padded_output_layer_has_minus_infinity_columns():
    model = make("gru")
    weight, bias = padded_output(model.output)  # V = 13 -> 16 columns
    assert weight.shape == (16, 16) and bias.shape == (16,)
    assert torch.equal(weight[:TGT_V], model.output.weight) and (weight[TGT_V:] == 0).all()
    assert torch.equal(bias[:TGT_V], model.output.bias) and bias[TGT_V:].isneginf().all()
    model.output.bias = None
    assert (padded_output(model.output)[1][:TGT_V] == 0).all()
    already = torch.nn.Linear(4, 32)
    assert padded_output(already)[0] is already.weight  # nothing to pad: the layer's own


def test_fast_steps_reuse_their_buffers():
    model, (src, valid) = make("transformer"), make_source()
    runner = FastRunner(model)
    pointers = []
    with torch.inference_mode():
        state = runner.encode(src, valid)
        token = torch.full((B,), 1)
        for _ in range(3):
            log_p, state = runner.step(token, state)
            pointers.append(log_p.data_ptr())
            token = log_p.argmax(dim=-1)
        log_p, _ = runner.step(token[:3], fast_transformer.reorder(state, torch.arange(3), 1))
    assert len(set(pointers + [log_p.data_ptr()])) == 1  # fewer rows: the same buffer
    assert log_p.shape == (3, TGT_V)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("use_sdpa", [False, True])
def test_beams_sharing_memory_step_like_copied_memory(norm_first, use_sdpa):
    """The fast state (one memory row per sentence, K decoder rows each) gives the same next
    token log-probabilities as the core's state with the memory copied into every row: over
    several steps, with hypotheses reordered within their sentence, after a sentence leaves
    and the width changes."""
    torch.manual_seed(0)
    config = TransformerConfig.tiny(SRC_V, TGT_V, norm_first=norm_first, use_sdpa=use_sdpa,
                                    num_heads=4)
    model = Transformer(config).eval()
    src, valid = make_source()
    K, g = 3, torch.Generator().manual_seed(0)
    core, fast = FastRunner(model), FastRunner(model)
    core.transformer = False  # the generic path: the model's own decode on copied rows
    with torch.inference_mode():
        rows = torch.arange(B).repeat_interleave(K)
        copied = core.encode(src, valid).reorder(rows)
        shared = fast_transformer.reorder(fast.encode(src, valid), rows, K)
        assert shared.memory.shape[0] == B and copied.memory.shape[0] == B * K
        S, width = B, K
        for step in range(5):
            tokens = torch.randint(3, TGT_V, (S * width,), generator=g)
            expected, copied = core.step(tokens, copied)
            expected = expected.clone()  # the runners' buffers are reused
            log_p, shared = fast.step(tokens, shared)
            torch.testing.assert_close(log_p, expected, rtol=0, atol=1e-5)
            if step == 2:  # sentence 1 leaves, 2 beams each from now on
                going = torch.tensor([s for s in range(S) if s != 1])
                parents = going.repeat_interleave(2) * width + torch.tensor([2, 0] * len(going))
                S, width = len(going), 2
            else:  # hypotheses move within their sentence
                parents = (torch.arange(S).repeat_interleave(width) * width
                           + torch.randint(0, width, (S * width,), generator=g))
            copied = copied.reorder(parents)
            shared = fast_transformer.reorder(shared, parents, width)
    assert shared.memory.shape[0] == B - 1 and shared.memory_kv[0][0].shape[0] == B - 1


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize(("T_src", "fused"), [(7, False), (40, True)])
def test_the_fast_encoder_gives_the_cores_memory_with_the_kernel_that_pays(
        T_src, fused, norm_first, monkeypatch):
    """The fast encoder (stacked projections) gives the core's memory. Over at most 32 keys on
    CPU the fused kernel costs more than two matrix products, so a model built with use_sdpa
    uses it only over longer sources."""
    torch.manual_seed(0)
    config = TransformerConfig.tiny(SRC_V, TGT_V, use_sdpa=True, norm_first=norm_first)
    model = Transformer(config).eval()
    src, valid = torch.randint(3, SRC_V, (3, T_src)), torch.tensor([T_src, 3, 1])
    calls, sdpa = [], F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention",
                        lambda *args, **kwargs: calls.append(1) or sdpa(*args, **kwargs))
    with torch.inference_mode():
        expected = model.encode(src, valid).memory
        calls.clear()
        state = FastRunner(model).encode(src, valid)
    assert bool(calls) == fused
    torch.testing.assert_close(state.memory, expected, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="src_valid_len"):
        FastRunner(model).encode(src, valid[:2])


def test_stacked_projections_are_the_three_projections():
    torch.manual_seed(0)
    model = Transformer(TransformerConfig.tiny(SRC_V, TGT_V, num_heads=4)).eval()
    mha = model.decoder.blocks[1].self_attention
    X = torch.randn(2, 5, 32)
    with torch.no_grad():
        stacked = fast_transformer.Projections.of(mha, "W_q", "W_k", "W_v")(X)
        for ours, W in zip(stacked, (mha.W_q, mha.W_k, mha.W_v), strict=True):
            torch.testing.assert_close(ours, mha.split_heads(W(X)), rtol=0, atol=1e-6)
