"""Devices and mixed precision: batches follow the model, bf16/fp16 training matches fp32's
quality, masked attention stays finite in 16-bit floats, decoders agree across precisions.

Every test runs on the CPU (bf16 and fp16 autocast exist there) and, where torch sees one, on
a CUDA GPU: the same checks, parametrised by device.
"""

from __future__ import annotations

import copy

import pytest
import torch

from course_lib.attention import MultiHeadAttention
from course_lib.checkpoints import read_checkpoint
from course_lib.data.generated import numbers_dataset
from course_lib.data.translation import TranslationData
from course_lib.decoding import beam_search, greedy_decode
from course_lib.devices import autocast, check_precision, pick_device, to_device
from course_lib.masking import masked_softmax, padding_mask
from course_lib.models.transformer import Transformer, TransformerConfig
from course_lib.training import evaluate, fit, set_seed, train_epoch

DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(
               not torch.cuda.is_available(), reason="no CUDA GPU on this machine"))]


@pytest.fixture(scope="module")
def data():
    return TranslationData(numbers_dataset(0, 1_999, seed=0), num_steps=16, batch_size=64,
                           bucket=True, seed=0)


def new_model(data, seed=0, **changes):
    set_seed(seed)
    sizes = dict(d_model=64, num_heads=4, num_layers=2, d_ff=128, dropout=0.1, max_len=32)
    return Transformer(TransformerConfig(len(data.src_vocab), len(data.tgt_vocab),
                                         **(sizes | changes)))


def test_precision_names_are_checked():
    assert check_precision("fp32") is None and check_precision("bf16") is torch.bfloat16
    with pytest.raises(ValueError, match=r"precision must be one of \['fp32', 'bf16', 'fp16'\]"):
        check_precision("fp8")


def test_pick_device_follows_course_device(monkeypatch):
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    assert pick_device() == torch.device("cpu")
    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="not a device"):
        pick_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA GPU"):
            pick_device("cuda")


@pytest.mark.parametrize("device", DEVICES)
def test_to_device_copies_only_what_is_elsewhere(device, data):
    batch = next(iter(data.loader("train")))
    moved = to_device(batch, device)
    assert type(moved) is type(batch) and all(t.device.type == device for t in moved)
    assert to_device(moved, device) is moved  # already there: the same object, no copy


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fully_masked_rows_stay_finite_in_16_bit_floats(device, dtype):
    """The mask's fill value must exist in the scores' dtype: no NaN, no inf, and a row with
    no key to keep gets all-zero weights, in bf16 and fp16 as in fp32."""
    scores = torch.randn(3, 4, 5, device=device).to(dtype) * 30
    keep = padding_mask(torch.tensor([5, 2, 0], device=device), 5)[:, None, :]  # row 2: none
    weights = masked_softmax(scores, mask=keep)
    assert weights.dtype == dtype and bool(weights.isfinite().all())
    assert bool((weights[2] == 0).all())
    torch.testing.assert_close(weights[:2].float().sum(-1), torch.ones(2, 4, device=device),
                               atol=1e-2, rtol=0)
    mha = MultiHeadAttention(16, 4).to(device)
    X = torch.randn(3, 5, 16, device=device)
    with autocast(device, "bf16" if dtype is torch.bfloat16 else "fp16"):
        out = mha(X, X, X, torch.tensor([5, 2, 0], device=device))
        out.float().sum().backward()
    assert bool(out.isfinite().all())
    assert all(bool(p.grad.isfinite().all()) for p in mha.parameters())


def train_steps(model, data, precision, device, epochs=3, lr=3e-3):
    """Train on the same batches in the same order; return the validation loss (fp32)."""
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        train_epoch(model, data.loader("train"), optimizer, precision=precision)
    return evaluate(model, data.loader("valid"))["loss"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_matches_fp32(device, precision, data):
    """A tiny Transformer trained in bf16 or fp16 (with the loss scaler) for the same steps as
    in fp32 reaches a validation loss within 15% of fp32's, and well below the start."""
    start = evaluate(new_model(data).to(device), data.loader("valid"))["loss"]
    fp32 = train_steps(new_model(data), data, "fp32", device)
    mixed = train_steps(new_model(data), data, precision, device)
    print(f"{device} validation loss: start {start:.3f}, fp32 {fp32:.3f}, {precision} {mixed:.3f}")
    assert fp32 < 0.5 * start
    assert mixed <= 1.15 * fp32, f"{precision}: {mixed:.3f} against fp32's {fp32:.3f}"


@pytest.mark.parametrize("device", DEVICES)
def test_decoders_agree_between_fp32_and_bf16_on_a_trained_model(device, data, tmp_path):
    """Greedy and beam search under bf16 autocast give the fp32 outputs for nearly every
    sentence of a trained model; fit's checkpoint holds float32 weights."""
    model = new_model(data, dropout=0.0)
    path = tmp_path / "model.pt"
    fit(model, data, epochs=4, lr=3e-3, precision="bf16", device=device, progress="none",
        plot=False, checkpoint_path=path)
    weights = read_checkpoint(path)["model"]
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float32}
    test = data.tensors["test"]
    src, valid = test.src[:200], test.src_valid_len[:200]
    for decode in (lambda fast: greedy_decode(model, src, valid, max_len=16, fast=fast),
                   lambda fast: beam_search(model, src, valid, beam_size=3, max_len=16,
                                            fast=fast)):
        for fast in (False, True):
            plain = decode(fast)
            with autocast(device, "bf16"):
                mixed = decode(fast)
            assert plain.tokens.device.type == device
            same = [a[:n].tolist() == b[:m].tolist() for a, n, b, m in zip(
                plain.tokens, plain.lengths, mixed.tokens, mixed.lengths, strict=True)]
            assert sum(same) >= 0.95 * len(same), f"{sum(same)} of {len(same)} agree"


def test_16_bit_weights_are_refused(data):
    model = new_model(data).to(torch.bfloat16)
    optimizer = torch.optim.Adam(model.parameters())
    with pytest.raises(ValueError, match="keep them float32"):
        train_epoch(model, data.loader("train"), optimizer)


def test_fit_moves_the_model_and_batches_to_the_device_given(data):
    model = new_model(data)
    reference = copy.deepcopy(model)
    history = fit(model, data, epochs=1, device="cpu", progress="none", plot=False)
    assert next(model.parameters()).device.type == "cpu" and len(history) == 1
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(),
                                                     reference.parameters(), strict=True))
