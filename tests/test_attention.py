"""Attention and positional encodings, against torch's MultiheadAttention and SDPA, d2l, and
properties (masked keys get zero weight, rows sum to 1, permutation equivariance, causality)."""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from course_lib.attention import (
    AdditiveAttention,
    DotProductAttention,
    KVCache,
    LearnedPositionalEncoding,
    MultiHeadAttention,
    SinusoidalPositionalEncoding,
    copy_weights_from_torch,
    copy_weights_to_torch,
    scaled_dot_product,
    sinusoidal_table,
)
from course_lib.masking import (
    causal_mask,
    combine_masks,
    padding_mask,
    to_key_padding_mask,
    to_torch_attn_mask,
)

B, D, H = 2, 8, 2


def close(actual, expected, atol=1e-5):
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol)


# --- MultiHeadAttention against torch.nn.MultiheadAttention ----------------------------------

CASES = {  # name: (T_q, T_k, key valid lengths or None, causal)
    "self": (5, 5, None, False),
    "cross": (3, 6, None, False),
    "key_padding": (5, 5, [5, 3], False),
    "cross_key_padding": (3, 6, [6, 2], False),
    "causal": (5, 5, None, True),
    "causal_and_key_padding": (5, 5, [5, 3], True),
}


def _torch_and_ours(bias, copy_direction="from_torch"):
    torch.manual_seed(0)
    theirs = nn.MultiheadAttention(D, H, bias=bias, batch_first=True).eval()
    ours = MultiHeadAttention(D, H, bias=bias).eval()
    if bias:  # torch zero-initialises its biases; make them count
        with torch.no_grad():
            theirs.in_proj_bias.normal_()
            theirs.out_proj.bias.normal_()
    if copy_direction == "from_torch":
        copy_weights_from_torch(ours, theirs)
    else:
        copy_weights_to_torch(ours, theirs)
    return theirs, ours


@pytest.mark.parametrize("copy_direction", ["from_torch", "to_torch"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", list(CASES))
def test_multi_head_attention_matches_torch(case, bias, copy_direction):
    T_q, T_k, lens, causal = CASES[case]
    theirs, ours = _torch_and_ours(bias, copy_direction)
    queries, keys, values = torch.randn(B, T_q, D), torch.randn(B, T_k, D), torch.randn(B, T_k, D)
    if T_q == T_k:
        keys = values = queries  # self-attention
    keys_keep = None if lens is None else padding_mask(torch.tensor(lens), T_k)  # (B, T_k)
    causal_keep = causal_mask(T_q, T_k) if causal else None  # (T_q, T_k)

    torch_kwargs = {}
    if keys_keep is not None:
        torch_kwargs["key_padding_mask"] = to_key_padding_mask(keys_keep)
    if causal_keep is not None:
        torch_kwargs["attn_mask"] = to_torch_attn_mask(causal_keep)
    expected, expected_avg = theirs(queries, keys, values, average_attn_weights=True,
                                    **torch_kwargs)
    _, expected_per_head = theirs(queries, keys, values, average_attn_weights=False,
                                  **torch_kwargs)

    keys_4d = None if keys_keep is None else keys_keep[:, None, None, :]  # (B, 1, 1, T_k)
    out = ours(queries, keys, values, mask=combine_masks(keys_4d, causal_keep))
    assert out.shape == (B, T_q, D)
    assert ours.attention_weights.shape == (B, H, T_q, T_k)
    close(out, expected)
    close(ours.attention_weights, expected_per_head)
    close(ours.attention_weights.mean(dim=1), expected_avg)
    if lens is not None:  # the same padding, given d2l's way as valid lengths
        out_lens = ours(queries, keys, values, torch.tensor(lens), mask=causal_keep)
        close(out_lens, expected)


def test_copy_weights_round_trip_and_mismatches_are_errors():
    theirs, ours = _torch_and_ours(bias=True)
    twin = MultiHeadAttention(D, H)
    copy_weights_to_torch(ours, theirs)
    copy_weights_from_torch(twin, theirs)
    for a, b in zip(ours.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"ours d_model=8, num_heads=2; torch's embed_dim=8, "
                                         r"num_heads=4"):
        copy_weights_from_torch(ours, nn.MultiheadAttention(D, 4))
    with pytest.raises(ValueError, match=r"d_model=8.*embed_dim=16"):
        copy_weights_to_torch(ours, nn.MultiheadAttention(16, H))
    with pytest.raises(ValueError, match=r"ours bias=True, torch's bias=False"):
        copy_weights_from_torch(ours, nn.MultiheadAttention(D, H, bias=False))
    with pytest.raises(ValueError, match=r"kdim=4, vdim=8"):
        copy_weights_from_torch(ours, nn.MultiheadAttention(D, H, kdim=4))


# --- The core against F.scaled_dot_product_attention ------------------------------------------

@pytest.mark.parametrize("masked", [False, True])
def test_core_matches_torch_sdpa(masked):
    torch.manual_seed(0)
    q, k, v = torch.randn(B, H, 4, 6), torch.randn(B, H, 7, 6), torch.randn(B, H, 7, 5)
    keep = None
    if masked:
        keep = combine_masks(padding_mask(torch.tensor([7, 3]), 7)[:, None, None, :],
                             causal_mask(4, 7))  # (B, 1, 4, 7)
    out, weights = scaled_dot_product(q, k, v, keep)
    close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=keep), atol=1e-6)
    assert weights.shape == (B, H, 4, 7)
    # DotProductAttention on 4-D inputs is the same core
    close(DotProductAttention()(q, k, v, mask=keep), out, atol=0)


@pytest.mark.parametrize("lens", [torch.tensor([4, 1]), torch.tensor([[1, 2, 3], [4, 4, 2]])])
def test_dot_product_attention_on_heads_applies_valid_lens_to_every_head(lens):
    torch.manual_seed(0)
    q, k, v = torch.randn(B, H, 3, 6), torch.randn(B, H, 4, 6), torch.randn(B, H, 4, 5)
    attention = DotProductAttention()
    out = attention(q, k, v, lens)  # (B, H, 3, 5)
    for h in range(H):  # each head alone, as 3-D attention with the same lengths
        close(out[:, h], DotProductAttention()(q[:, h], k[:, h], v[:, h], lens), atol=1e-6)
    assert attention.attention_weights.shape == (B, H, 3, 4)


@pytest.mark.parametrize("masked", [False, True])
def test_use_sdpa_gives_the_same_outputs(masked):
    torch.manual_seed(0)
    slow = MultiHeadAttention(D, H).eval()
    fast = MultiHeadAttention(D, H, use_sdpa=True).eval()
    fast.load_state_dict(slow.state_dict())
    X = torch.randn(B, 5, D)
    lens = torch.tensor([5, 2]) if masked else None
    mask = causal_mask(5) if masked else None
    close(fast(X, X, X, lens, mask=mask), slow(X, X, X, lens, mask=mask), atol=1e-6)
    assert fast.attention_weights is None
    slow(X, X, X, need_weights=False)
    assert slow.attention_weights is None


# --- Parity with d2l's classroom versions -----------------------------------------------------

VALID_LENS = {"per_example": torch.tensor([2, 5]), "per_query": torch.tensor([[1, 3, 5],
                                                                               [2, 2, 4]])}


@pytest.mark.parametrize("lens", list(VALID_LENS))
def test_dot_product_attention_matches_d2l(d2l, lens):
    torch.manual_seed(0)
    queries, keys, values = torch.randn(B, 3, 6), torch.randn(B, 5, 6), torch.randn(B, 5, 4)
    ours, theirs = DotProductAttention(0.0).eval(), d2l.DotProductAttention(0.0).eval()
    valid_lens = VALID_LENS[lens]
    close(ours(queries, keys, values, valid_lens), theirs(queries, keys, values, valid_lens))
    close(ours.attention_weights, theirs.attention_weights)


@pytest.mark.parametrize("lens", list(VALID_LENS))
def test_additive_attention_matches_d2l(d2l, lens):
    torch.manual_seed(0)
    queries, keys, values = torch.randn(B, 3, 7), torch.randn(B, 5, 6), torch.randn(B, 5, 4)
    ours = AdditiveAttention(9, 0.0, query_size=7, key_size=6).eval()
    theirs = d2l.AdditiveAttention(9, 0.0).eval()
    valid_lens = VALID_LENS[lens]
    theirs(queries, keys, values, valid_lens)  # materialise the LazyLinear layers
    with torch.no_grad():
        for name in ("W_q", "W_k", "w_v"):
            getattr(theirs, name).weight.copy_(getattr(ours, name).weight)
    close(ours(queries, keys, values, valid_lens), theirs(queries, keys, values, valid_lens))
    close(ours.attention_weights, theirs.attention_weights)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("lens", list(VALID_LENS))
def test_multi_head_attention_matches_d2l(d2l, lens, bias):
    torch.manual_seed(0)
    queries, keys = torch.randn(B, 3, D), torch.randn(B, 5, D)
    ours = MultiHeadAttention(D, H, 0.0, bias=bias).eval()
    theirs = d2l.MultiHeadAttention(D, H, 0.0, bias=bias).eval()
    valid_lens = VALID_LENS[lens]
    theirs(queries, keys, keys, valid_lens)  # materialise the LazyLinear layers
    with torch.no_grad():
        for name in ("W_q", "W_k", "W_v", "W_o"):
            getattr(theirs, name).weight.copy_(getattr(ours, name).weight)
            if bias:
                getattr(theirs, name).bias.copy_(getattr(ours, name).bias)
    close(ours(queries, keys, keys, valid_lens), theirs(queries, keys, keys, valid_lens))
    # d2l keeps the weights of its inner DotProductAttention with heads folded into the batch
    close(ours.attention_weights, theirs.attention.attention_weights.reshape(B, H, 3, 5))


# --- Masked softmax inside attention ------------------------------------------------------

def _attention_modules():
    torch.manual_seed(0)
    return {"dot": DotProductAttention(), "additive": AdditiveAttention(D),
            "multi_head": MultiHeadAttention(D, H)}


@pytest.mark.parametrize("kind", ["dot", "additive", "multi_head"])
def test_masked_keys_get_zero_weight_and_an_empty_row_gives_no_nan(kind):
    attention = _attention_modules()[kind]
    queries = torch.randn(B, 3, D, requires_grad=True)
    keys = torch.randn(B, 4, D, requires_grad=True)
    valid_lens = torch.tensor([0, 2])  # example 0 may see no key at all
    out = attention(queries, keys, keys, valid_lens)
    weights = attention.attention_weights
    if kind == "multi_head":
        weights = weights.reshape(B * H, 3, 4)[::H]  # head 0 of each example
    assert torch.equal(weights[1, :, 2:], torch.zeros(3, 2))  # exactly zero, not 1e-30
    close(weights[1].sum(-1), torch.ones(3), atol=1e-6)
    assert torch.equal(weights[0], torch.zeros(3, 4))  # not uniform (d2l), not NaN (-inf)
    assert torch.isfinite(out).all()
    if kind != "multi_head":  # W_o's bias is all a multi-head output can be here
        assert torch.equal(out[0], torch.zeros(3, D))
    out.square().sum().backward()
    assert torch.isfinite(queries.grad).all() and torch.isfinite(keys.grad).all()
    assert torch.equal(queries.grad[0], torch.zeros(3, D))


def test_a_causal_output_ignores_future_tokens():
    torch.manual_seed(0)
    mha = MultiHeadAttention(D, H).eval()
    X = torch.randn(B, 6, D)
    changed = X.clone()
    changed[:, 4:] = torch.randn(B, 2, D)
    out, out_changed = (mha(x, x, x, mask=causal_mask(6)) for x in (X, changed))
    assert torch.equal(out[:, :4], out_changed[:, :4])
    assert not torch.allclose(out[:, 4:], out_changed[:, 4:])
    assert torch.equal(mha.attention_weights.triu(1), torch.zeros(B, H, 6, 6))


# --- Order: attention is blind to it, positional encodings are not --------------------------

def test_self_attention_is_permutation_equivariant_only_without_positions():
    torch.manual_seed(0)
    mha = MultiHeadAttention(D, H).eval()
    encode = SinusoidalPositionalEncoding(D).eval()
    X, perm = torch.randn(B, 6, D), torch.tensor([3, 0, 5, 1, 4, 2])
    close(mha(X[:, perm], X[:, perm], X[:, perm]), mha(X, X, X)[:, perm])
    Z, Z_perm = encode(X), encode(X[:, perm])
    assert not torch.allclose(mha(Z_perm, Z_perm, Z_perm), mha(Z, Z, Z)[:, perm], atol=1e-3)


@pytest.mark.parametrize("d_model", [8, 32])
def test_sinusoidal_table_equals_d2l(d2l, d_model):
    ours = SinusoidalPositionalEncoding(d_model, max_len=1000)
    assert ours.P.shape == (1, 1000, d_model)
    close(ours.P, d2l.PositionalEncoding(d_model, 0).P, atol=1e-6)
    assert "P" not in ours.state_dict()  # a non-persistent buffer: rebuilt, never saved


def test_odd_width_alternates_sine_and_cosine():
    table = sinusoidal_table(50, 7)  # d2l's version fails here: 4 sines but only 3 cosines
    assert table.shape == (50, 7)
    def entry(pos, j):  # 2i = j - j % 2
        return (math.sin if j % 2 == 0 else math.cos)(pos / 10000 ** ((j - j % 2) / 7))

    expected = torch.tensor([[entry(pos, j) for j in range(7)] for pos in range(50)])
    close(table, expected, atol=1e-5)
    X = torch.zeros(1, 3, 7)
    close(SinusoidalPositionalEncoding(7)(X), table[None, :3], atol=0)


@pytest.mark.parametrize("cls", [SinusoidalPositionalEncoding, LearnedPositionalEncoding])
def test_offset_encodes_later_positions_for_incremental_decoding(cls):
    torch.manual_seed(0)
    encode = cls(D, max_len=10).eval()
    X = torch.randn(B, 6, D)
    whole = encode(X)
    steps = torch.cat([encode(X[:, t:t + 1], offset=t) for t in range(6)], dim=1)
    close(steps, whole, atol=0)
    close(encode(X[:, :2], offset=4), X[:, :2] + (whole - X)[:, 4:6], atol=1e-6)
    encode(torch.randn(B, 4, D), offset=6)  # exactly reaching max_len is fine
    with pytest.raises(ValueError, match=r"6\.\.11 must lie in 0\.\.max_len = 0\.\.10"):
        encode(torch.randn(B, 5, D), offset=6)
    with pytest.raises(ValueError, match=r"\(B, T, d_model\) with d_model=8, got \(2, 5, 4\)"):
        encode(torch.randn(B, 5, 4))


# --- Errors and gradients -----------------------------------------------------------------

def test_bad_shapes_name_expected_and_actual():
    mha, X = MultiHeadAttention(D, H), torch.randn(B, 5, D)
    with pytest.raises(ValueError, match=r"d_model=10, num_heads=4"):
        MultiHeadAttention(10, 4)
    with pytest.raises(ValueError, match=r"queries must have shape \(B, T_q, D\), got \(5, 8\)"):
        mha(X[0], X, X)
    with pytest.raises(ValueError, match=r"\(B\[, H\]\) = \(2,\), got .*keys \(3, 5, 8\)"):
        mha(X, torch.randn(3, 5, D), torch.randn(3, 5, D))
    with pytest.raises(ValueError, match=r"same length T_k, got keys \(2, 5, 8\) and values "
                                         r"\(2, 4, 8\)"):
        mha(X, X, X[:, :4])
    with pytest.raises(ValueError, match=r"last dim 8, got \(2, 5, 6\)"):
        mha(X, torch.randn(B, 5, 6), X)
    with pytest.raises(ValueError, match=r"\(B, H, T_q, T_k\) = \(2, 2, 5, 5\), got \(2, 4\)"):
        mha(X, X, X, mask=torch.ones(B, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"got \(2, 5\) \(key padding \(B, T_k\) goes in as"):
        mha(X, X, X, mask=torch.ones(B, 5, dtype=torch.bool))  # B != T_q would not broadcast
    with pytest.raises(ValueError, match=r"\(B, T_q, T_k\) = \(2, 5, 5\), got \(2, 5, 4\)"):
        mha(X, X, X, mask=torch.ones(B, 5, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"valid_lens must have shape \(B,\) or \(B, T_q\) "
                                         r"with B = 2, got \(3,\)"):
        mha(X, X, X, torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError, match="torch.bool"):
        mha(X, X, X, mask=torch.ones(5, 5))
    with pytest.raises(ValueError, match=r"keys must have shape \(\.\.\., T_k, D\) like queries "
                                         r"with last dim 8, got \(2, 5, 4\)"):
        DotProductAttention()(X, torch.randn(B, 5, 4), X)
    with pytest.raises(ValueError, match=r"queries must have shape \(B, T_q, query_size\) "
                                         r"with last dim 3, got \(2, 5, 8\)"):
        AdditiveAttention(D, query_size=3)(X, X, X)


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    X = torch.randn(B, 5, D)
    for module in (MultiHeadAttention(D, H, dropout=0.1), AdditiveAttention(D, dropout=0.1),
                   LearnedPositionalEncoding(D, dropout=0.1, max_len=5)):
        out = module(X) if isinstance(module, LearnedPositionalEncoding) else module(X, X, X)
        out.square().sum().backward()
        for name, param in module.named_parameters():
            assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_dropout_acts_in_training_only():
    torch.manual_seed(0)
    mha, X = MultiHeadAttention(D, H, dropout=0.5), torch.randn(B, 5, D)
    assert not torch.equal(mha(X, X, X), mha(X, X, X))
    close(mha.attention_weights.sum(-1), torch.ones(B, H, 5), atol=1e-6)  # kept before dropout
    mha.eval()
    assert torch.equal(mha(X, X, X), mha(X, X, X))


@pytest.mark.parametrize("grad", [True, False])
def test_use_sdpa_calls_the_fused_kernel_with_the_same_outputs(grad, monkeypatch):
    """use_sdpa=True runs F.scaled_dot_product_attention (the kernel choice for speed lives in
    course_lib.fast) and gives the plain path's outputs, without weights."""
    torch.manual_seed(0)
    slow = MultiHeadAttention(D, H).eval()
    fused = MultiHeadAttention(D, H, use_sdpa=True).eval()
    fused.load_state_dict(slow.state_dict())
    calls, sdpa = [], F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention",
                        lambda *args, **kwargs: calls.append(1) or sdpa(*args, **kwargs))
    queries, keys = torch.randn(B, 5, D), torch.randn(B, 7, D)
    lens = torch.tensor([7, 2])
    with torch.set_grad_enabled(grad):
        out = fused(queries, keys, keys, lens)
    assert calls == [1]
    close(out, slow(queries, keys, keys, lens), atol=1e-6)
    assert fused.attention_weights is None


@pytest.mark.parametrize("use_sdpa", [False, True])
def test_kv_cache_step_by_step_equals_causal_attention_over_everything(use_sdpa):
    """Self-attention fed one position at a time through a KVCache, or two then three, gives
    what causal attention over the whole sequence gives; the cache holds every position."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(D, H, use_sdpa=use_sdpa).eval()
    X = torch.randn(B, 5, D)
    with torch.no_grad():
        whole = mha(X, X, X, mask=causal_mask(5))
        for chunks in ([1] * 5, [2, 3]):
            cache, outputs, start = KVCache(), [], 0
            for size in chunks:
                new = X[:, start:start + size]
                outputs.append(mha(new, new, new, cache=cache,
                                   mask=causal_mask(size, start + size)))
                start += size
            close(torch.cat(outputs, dim=1), whole, atol=1e-6)
            assert cache.length == 5 and cache.keys.shape == (B, H, 5, D // H)


def test_frozen_kv_cache_projects_the_memory_once():
    torch.manual_seed(0)
    mha = MultiHeadAttention(D, H).eval()
    memory, lens = torch.randn(B, 6, D), torch.tensor([6, 3])
    cache, calls = KVCache(frozen=True), []
    mha.W_k.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        for _ in range(3):
            query = torch.randn(B, 1, D)
            close(mha(query, memory, memory, lens, cache=cache), mha(query, memory, memory, lens),
                  atol=1e-6)
    assert len(calls) == 1 + 3 and cache.length == 6  # once for the cache, once per plain call
