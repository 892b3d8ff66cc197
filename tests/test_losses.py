"""Masked cross entropy: averaged over real tokens, unlike d2l's MaskedSoftmaxCELoss."""

import pytest
import torch
from torch.nn import functional as F

from course_lib.losses import MaskedCrossEntropyLoss, masked_cross_entropy


def padded_batch(seed=0, B=4, T=6, V=11):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=generator)
    targets = torch.randint(0, V, (B, T), generator=generator)
    valid_lens = torch.tensor([6, 1, 3, 4])[:B]
    return logits, targets, valid_lens


def real_positions(valid_lens, T):
    return torch.arange(T)[None, :] < valid_lens[:, None]


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_equals_cross_entropy_over_real_tokens_only(smoothing):
    logits, targets, valid_lens = padded_batch()
    keep = real_positions(valid_lens, targets.shape[1])
    reference = F.cross_entropy(logits[keep], targets[keep], label_smoothing=smoothing)
    ours = masked_cross_entropy(logits, targets, valid_lens, label_smoothing=smoothing)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)
    module = MaskedCrossEntropyLoss(label_smoothing=smoothing)
    torch.testing.assert_close(module(logits, targets, valid_lens), reference, rtol=0, atol=1e-6)


def test_label_smoothing_by_hand():
    logits, targets, valid_lens = padded_batch()
    eps, V = 0.1, logits.shape[-1]
    keep = real_positions(valid_lens, targets.shape[1])
    log_probs = F.log_softmax(logits[keep], dim=-1)
    smoothed = torch.full_like(log_probs, eps / V)
    smoothed[torch.arange(len(smoothed)), targets[keep]] += 1 - eps
    by_hand = -(smoothed * log_probs).sum(-1).mean()
    ours = masked_cross_entropy(logits, targets, valid_lens, label_smoothing=eps)
    torch.testing.assert_close(ours, by_hand, rtol=0, atol=1e-6)


def test_differs_from_d2l_which_averages_over_padding(d2l):
    """d2l-en issue 2076: d2l divides each sequence's real-token loss by num_steps."""
    logits, targets, valid_lens = padded_batch()
    B, T = targets.shape
    d2l_per_sequence = d2l.MaskedSoftmaxCELoss()(logits, targets, valid_lens)  # (B,)
    per_token = masked_cross_entropy(logits, targets, valid_lens, reduction="none")
    # What d2l computes, rebuilt from our per-token losses: sum over real tokens / T.
    torch.testing.assert_close(d2l_per_sequence, per_token.sum(1) / T, rtol=0, atol=1e-6)
    ours = masked_cross_entropy(logits, targets, valid_lens)
    d2l_mean = d2l_per_sequence.mean()
    # On this batch (14 real tokens of 24 positions) d2l reports a loss about 40% too small.
    fraction_real = valid_lens.sum() / (B * T)
    assert fraction_real == pytest.approx(14 / 24)
    assert d2l_mean < 0.8 * ours
    # Without padding the two agree.
    full = torch.full((B,), T)
    torch.testing.assert_close(d2l.MaskedSoftmaxCELoss()(logits, targets, full).mean(),
                               masked_cross_entropy(logits, targets, full), rtol=0, atol=1e-6)


def test_loss_does_not_depend_on_sentence_length_mix():
    """The same tokens give the same loss whatever the padding around them."""
    logits, targets, valid_lens = padded_batch()
    padded_logits = torch.cat([logits, torch.randn(4, 5, logits.shape[-1])], dim=1)
    padded_targets = torch.cat([targets, torch.zeros(4, 5, dtype=torch.long)], dim=1)
    torch.testing.assert_close(masked_cross_entropy(padded_logits, padded_targets, valid_lens),
                               masked_cross_entropy(logits, targets, valid_lens))


def test_padding_gets_no_gradient_and_any_padding_id_is_accepted():
    logits, targets, valid_lens = padded_batch()
    targets = targets.clone()
    targets[1, 1:] = -100  # garbage ids in the padding must not matter
    logits.requires_grad_(True)
    masked_cross_entropy(logits, targets, valid_lens).backward()
    keep = real_positions(valid_lens, targets.shape[1])
    assert torch.equal(logits.grad[~keep], torch.zeros_like(logits.grad[~keep]))
    assert logits.grad[keep].abs().sum() > 0


def test_reductions_and_empty_batch():
    logits, targets, valid_lens = padded_batch()
    none = masked_cross_entropy(logits, targets, valid_lens, reduction="none")
    assert none.shape == targets.shape
    torch.testing.assert_close(masked_cross_entropy(logits, targets, valid_lens, reduction="sum"),
                               none.sum())
    empty = masked_cross_entropy(logits, targets, torch.zeros(4, dtype=torch.long))
    assert empty.item() == 0.0


def test_bad_shapes_name_expected_and_actual():
    logits, targets, valid_lens = padded_batch()
    with pytest.raises(ValueError, match=r"targets must be \(B, T\) = \(4, 6\).*got \(4, 5\)"):
        masked_cross_entropy(logits, targets[:, :5], valid_lens)
    with pytest.raises(ValueError, match=r"valid_lens must be \(B,\) = \(4,\), got \(3,\)"):
        masked_cross_entropy(logits, targets, valid_lens[:3])
    with pytest.raises(ValueError, match=r"logits must be \(B, T, V\)"):
        masked_cross_entropy(logits[0], targets, valid_lens)
    with pytest.raises(ValueError, match="label_smoothing"):
        masked_cross_entropy(logits, targets, valid_lens, label_smoothing=1.0)
    with pytest.raises(ValueError, match="reduction"):
        masked_cross_entropy(logits, targets, valid_lens, reduction="avg")
