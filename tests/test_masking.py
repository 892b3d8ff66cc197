"""Masks and masked softmax, against d2l, torch's attention functions and hand computations."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from course_lib.masking import (
    attention_mask,
    causal_mask,
    combine_masks,
    masked_softmax,
    padding_mask,
    sequence_mask,
    to_additive_mask,
    to_key_padding_mask,
    to_sdpa_mask,
    to_torch_attn_mask,
)


def test_padding_mask_keeps_the_first_valid_len_positions():
    mask = padding_mask(torch.tensor([1, 3, 0]), 4)
    assert mask.dtype == torch.bool
    assert mask.tolist() == [[True, False, False, False],
                             [True, True, True, False],
                             [False, False, False, False]]


@pytest.mark.parametrize("shape", [(3, 5), (3, 5, 2), (3, 5, 2, 4)])
def test_sequence_mask_equals_d2l_and_leaves_input_alone(d2l, shape):
    torch.manual_seed(0)
    X = torch.randn(shape)
    original = X.clone()
    valid_len = torch.tensor([0, 2, 5])
    ours = sequence_mask(X, valid_len, value=-7.0)
    expected = d2l.sequence_mask(X.clone(), valid_len, value=-7.0)
    assert torch.equal(ours, expected)
    assert torch.equal(X, original)  # d2l's version writes into X; ours must not


def test_sequence_mask_rejects_wrong_valid_len_shape():
    with pytest.raises(ValueError, match=r"valid_len must have shape \(B,\) = \(3,\), got \(2,\)"):
        sequence_mask(torch.zeros(3, 4), torch.tensor([1, 2]))


def test_negative_valid_lens_are_an_error():
    with pytest.raises(ValueError, match=">= 0"):
        padding_mask(torch.tensor([2, -1]), 3)


def test_causal_mask_is_lower_triangular_and_matches_sdpa_is_causal():
    assert torch.equal(causal_mask(4), torch.tril(torch.ones(4, 4, dtype=torch.bool)))
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8) for _ in range(3))  # (B, H, T, D)
    ours = F.scaled_dot_product_attention(q, k, v, attn_mask=to_sdpa_mask(causal_mask(5)))
    reference = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)


def test_causal_mask_with_cache_lets_new_queries_see_all_earlier_keys():
    mask = causal_mask(2, 5)  # the last two positions of a length-5 sequence
    assert mask.tolist() == [[True, True, True, True, False],
                             [True, True, True, True, True]]
    assert torch.equal(causal_mask(5)[-2:], mask)
    with pytest.raises(ValueError, match="num_queries <= num_keys"):
        causal_mask(3, 2)


def test_attention_mask_from_1d_and_2d_valid_lens():
    per_example = attention_mask(torch.tensor([2, 3]), num_queries=2, num_keys=4)
    assert per_example.shape == (2, 2, 4)
    assert per_example[0].tolist() == [[True, True, False, False]] * 2
    per_query = attention_mask(torch.tensor([[1, 2], [3, 4]]), num_queries=2, num_keys=4)
    assert per_query[1].tolist() == [[True, True, True, False], [True, True, True, True]]
    with pytest.raises(ValueError, match=r"T_q = 3"):
        attention_mask(torch.tensor([[1, 2], [3, 4]]), num_queries=3, num_keys=4)


def test_combine_masks_is_an_and_that_skips_none():
    pad = padding_mask(torch.tensor([3]), 4)[:, None, :]  # (1, 1, 4)
    combined = combine_masks(pad, None, causal_mask(4))  # (1, 4, 4)
    assert combined.shape == (1, 4, 4)
    assert combined[0].tolist() == [[True, False, False, False],
                                    [True, True, False, False],
                                    [True, True, True, False],
                                    [True, True, True, False]]
    assert combine_masks(None, None) is None
    with pytest.raises(TypeError, match="torch.bool"):
        combine_masks(torch.ones(2, 2))
    with pytest.raises(ValueError, match="do not broadcast"):
        combine_masks(torch.ones(2, 3, dtype=torch.bool), torch.ones(4, 3, dtype=torch.bool))


@pytest.mark.parametrize("valid_lens", [torch.tensor([2, 3]), torch.tensor([[1, 3], [2, 4]])])
def test_masked_softmax_equals_d2l_when_every_row_has_a_key(d2l, valid_lens):
    torch.manual_seed(0)
    X = torch.randn(2, 2, 4)
    torch.testing.assert_close(masked_softmax(X, valid_lens),
                               d2l.masked_softmax(X, valid_lens), rtol=0, atol=1e-7)


def test_masked_softmax_without_lengths_is_plain_softmax(d2l):
    X = torch.randn(2, 3, 4)
    torch.testing.assert_close(masked_softmax(X), F.softmax(X, dim=-1))


def test_fully_masked_row_gives_zeros_not_nan_and_not_uniform(d2l):
    X = torch.randn(2, 2, 4, requires_grad=True)
    valid_lens = torch.tensor([0, 2])
    weights = masked_softmax(X, valid_lens)
    assert torch.equal(weights[0], torch.zeros(2, 4))
    torch.testing.assert_close(weights[1].sum(-1), torch.ones(2))
    assert torch.equal(weights[1, :, 2:], torch.zeros(2, 2))  # masked keys get exactly 0
    # d2l's -1e6 trick spreads the weight uniformly over padding instead:
    assert torch.allclose(d2l.masked_softmax(X.detach(), valid_lens)[0], torch.full((2, 4), 0.25))
    # and the naive -inf version gives NaN:
    naive = F.softmax(X.masked_fill(~attention_mask(valid_lens, 2, 4), float("-inf")), dim=-1)
    assert torch.isnan(naive[0]).all()
    (weights * torch.randn_like(weights)).sum().backward()
    assert torch.isfinite(X.grad).all()
    assert torch.equal(X.grad[0], torch.zeros(2, 4))


def test_masked_softmax_with_an_explicit_mask_on_4d_scores():
    X = torch.randn(2, 3, 4, 4)  # (B, H, T_q, T_k)
    keep = combine_masks(padding_mask(torch.tensor([4, 2]), 4)[:, None, None, :], causal_mask(4))
    weights = masked_softmax(X, mask=keep)
    assert torch.equal(weights[~keep.expand_as(X)], torch.zeros(int((~keep.expand_as(X)).sum())))
    row_sums = weights.sum(-1)
    torch.testing.assert_close(row_sums, torch.ones_like(row_sums))


def test_masked_softmax_bad_shapes_name_expected_and_actual():
    with pytest.raises(ValueError, match=r"batch size 2 .*got shape \(3,\)"):
        masked_softmax(torch.randn(2, 3, 4), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"\(B, T_q, T_k\), got \(2, 4\)"):
        masked_softmax(torch.randn(2, 4), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"mask of shape \(3, 4\) does not broadcast"):
        masked_softmax(torch.randn(2, 2, 4), mask=torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="torch.bool"):
        masked_softmax(torch.randn(2, 2, 4), mask=torch.ones(2, 4))


def test_conversions_agree_with_nn_multihead_attention():
    """Our keep-masks, converted at the edge, mean the same thing to torch's MultiheadAttention
    as they do to a hand-written attention using masked_softmax."""
    torch.manual_seed(0)
    B, T, D, H = 2, 5, 8, 2
    mha = nn.MultiheadAttention(D, H, batch_first=True).eval()
    x = torch.randn(B, T, D)
    keys_keep = padding_mask(torch.tensor([5, 3]), T)  # (B, T_k)
    keep = combine_masks(keys_keep[:, None, :], causal_mask(T))  # (B, T_q, T_k)

    out_torch, weights_torch = mha(x, x, x, key_padding_mask=to_key_padding_mask(keys_keep),
                                   attn_mask=to_torch_attn_mask(causal_mask(T)),
                                   average_attn_weights=False)
    out_additive, _ = mha(x, x, x, attn_mask=to_additive_mask(keep).repeat_interleave(H, dim=0))

    w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
    b_q, b_k, b_v = mha.in_proj_bias.chunk(3)

    def heads(t):  # (B, T, D) -> (B, H, T, D/H)
        return t.view(B, T, H, D // H).transpose(1, 2)

    q, k, v = heads(x @ w_q.T + b_q), heads(x @ w_k.T + b_k), heads(x @ w_v.T + b_v)
    scores = q @ k.transpose(-2, -1) / (D // H) ** 0.5  # (B, H, T, T)
    weights = masked_softmax(scores, mask=keep[:, None])
    out = (weights @ v).transpose(1, 2).reshape(B, T, D) @ mha.out_proj.weight.T \
        + mha.out_proj.bias
    torch.testing.assert_close(weights, weights_torch, rtol=0, atol=1e-6)
    torch.testing.assert_close(out, out_torch, rtol=0, atol=1e-5)
    torch.testing.assert_close(out_additive, out_torch, rtol=0, atol=1e-5)


def test_key_padding_mask_conversion_checks_rank():
    with pytest.raises(ValueError, match=r"\(B, T_k\)"):
        to_key_padding_mask(torch.ones(2, 3, 4, dtype=torch.bool))
