"""Training inside a caller's ``torch.autocast``: every step must see the weights it trains.

Issue 23's bf16 collapse: ``with torch.autocast("cpu", dtype=torch.bfloat16): train_epoch(...)``
trained a 64-wide Transformer to losses 3.22, 3.21, 6.56 where fp32 gave 1.45, 0.50, 0.33. The
cause is no 16-bit number going wrong but torch's autocast cache: inside one autocast context, the
bfloat16 copy of a weight made at its first use is reused until the outermost context exits,
while the optimizer changes the float32 weight in place. Every forward of the epoch ran on the
weights of its first step; the gradients kept pointing the same way and Adam moved the real
weights blindly (a linear weight by 122% of its norm in one epoch, against 44% in fp32).
"""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from course_lib.data.generated import numbers_dataset
from course_lib.data.translation import TranslationData
from course_lib.models.transformer import Transformer, TransformerConfig
from course_lib.training import set_seed, train_epoch


def bf16_autocast() -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16)


def test_autocast_reuses_a_weights_16_bit_copy_until_the_cache_is_cleared():
    """The torch behaviour behind the collapse, and the call that undoes it."""
    torch.manual_seed(0)
    linear, X = torch.nn.Linear(8, 8), torch.randn(4, 8)
    with bf16_autocast():
        before = linear(X)  # casts weight and bias to bf16 and caches the copies
        with torch.no_grad():
            linear.weight.add_(1.0)  # what optimizer.step() does: an in-place update
        assert torch.equal(linear(X), before)  # the cached copy: the update is invisible
        torch.clear_autocast_cache()
        after = linear(X)
    expected = F.linear(X.bfloat16(), linear.weight.bfloat16(), linear.bias.bfloat16())
    assert torch.equal(after, expected)
    assert not torch.allclose(after, before)


@pytest.fixture(scope="module")
def data():
    return TranslationData(numbers_dataset(0, 999, seed=0), num_steps=12, batch_size=32)


def train(data, outer_autocast: bool, precision: str) -> tuple[Transformer, float]:
    """A tiny Transformer after 12 Adam steps, one per batch; returns it and the mean loss."""
    set_seed(0)
    model = Transformer(TransformerConfig.tiny(len(data.src_vocab), len(data.tgt_vocab)))
    batches = list(data.loader("train"))[:12]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    if outer_autocast:
        with bf16_autocast():  # one context around every step, as issue 23's script had it
            result = train_epoch(model, batches, optimizer, precision=precision)
    else:
        result = train_epoch(model, batches, optimizer, precision=precision)
    return model, result["loss"]


def test_train_epoch_inside_a_callers_autocast_trains_on_the_current_weights(data):
    """One outer autocast around the epoch gives exactly the steps of per-batch autocast."""
    reference, reference_loss = train(data, outer_autocast=False, precision="bf16")
    model, loss = train(data, outer_autocast=True, precision="fp32")
    _, fp32_loss = train(data, outer_autocast=False, precision="fp32")
    assert loss == pytest.approx(fp32_loss, rel=0.05), (
        f"mean loss under an outer bf16 autocast {loss:.3f}, fp32 {fp32_loss:.3f}")
    assert loss == pytest.approx(reference_loss, rel=1e-6)
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=lambda m, name=name: f"{name}: {m}")
