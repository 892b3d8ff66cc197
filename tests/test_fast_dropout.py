"""course_lib.fast.dropout.CheapDropout acts as torch.nn.Dropout (distribution, modes, gradient),
and use_cheap_dropout swaps it into a model without changing anything else."""

import math

import pytest
import torch
from torch import nn

from course_lib.data.batching import encode_pairs
from course_lib.data.vocab import Vocab
from course_lib.fast.dropout import CheapDropout as Dropout
from course_lib.fast.dropout import use_cheap_dropout
from course_lib.models.nat import NATConfig, NATransformer
from course_lib.models.transformer import Transformer, TransformerConfig
from course_lib.training import train_epoch

N = 200_000


def within(observed: float, expected: float, sigma: float, k: float = 5.0) -> bool:
    return abs(observed - expected) <= k * sigma


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_each_entry_is_kept_with_probability_1_minus_p_and_scaled(p):
    torch.manual_seed(0)
    X = torch.rand(N) + 0.5  # no zeros of its own
    for module in (Dropout(p), nn.Dropout(p)):  # the reference must pass the same checks
        out = module.train()(X)
        kept = out != 0
        assert torch.allclose(out[kept], X[kept] / (1 - p))  # kept entries scaled by 1/(1-p)
        fraction = kept.float().mean().item()
        assert within(fraction, 1 - p, math.sqrt(p * (1 - p) / N)), (type(module), fraction)
        # The expected value of every entry is kept: the mean of out / X is 1.
        ratio = (out / X).mean().item()
        assert within(ratio, 1.0, math.sqrt(p / (1 - p) / N)), (type(module), ratio)


def test_entries_are_dropped_independently_and_afresh_each_call():
    p = 0.3
    torch.manual_seed(1)
    drop = Dropout(p).train()
    X = torch.ones(N // 2, 2)
    first, second = drop(X) != 0, drop(X) != 0
    both = (first[:, 0] & first[:, 1]).float().mean().item()  # neighbours kept together
    assert within(both, (1 - p) ** 2, math.sqrt((1 - p) ** 2 * (1 - (1 - p) ** 2) / (N // 2)))
    again = (first == second).float().mean().item()  # two calls agree as often as chance says
    chance = (1 - p) ** 2 + p ** 2
    assert within(again, chance, math.sqrt(chance * (1 - chance) / N))


def test_a_seed_repeats_the_mask():
    X = torch.ones(1000)
    torch.manual_seed(7)
    first = Dropout(0.5).train()(X)
    torch.manual_seed(7)
    assert torch.equal(Dropout(0.5).train()(X), first)


def test_eval_mode_and_p_zero_change_nothing_and_p_one_zeroes():
    X = torch.randn(4, 5)
    assert Dropout(0.5).eval()(X) is X
    assert Dropout(0.0).train()(X) is X
    assert torch.equal(Dropout(1.0).train()(X), torch.zeros(4, 5))
    Y = X.clone()
    out = Dropout(0.5, inplace=True).train()(Y)  # in place, as nn.Dropout does it
    assert out.data_ptr() == Y.data_ptr()
    assert set(torch.unique(out / X).tolist()) <= {0.0, 2.0}


def test_other_dtypes_go_through_torch_and_keep_their_dtype():
    X = torch.ones(10_000, dtype=torch.bfloat16)
    torch.manual_seed(3)
    out = Dropout(0.5).train()(X)
    torch.manual_seed(3)
    assert out.dtype == torch.bfloat16 and torch.equal(out, nn.Dropout(0.5).train()(X))


def test_bad_p_is_rejected_as_nn_dropout_rejects_it():
    with pytest.raises(ValueError, match="probability"):
        Dropout(1.5)


def test_gradient_passes_through_kept_entries_only_scaled():
    p = 0.25
    torch.manual_seed(2)
    X = (torch.rand(10_000) + 0.5).requires_grad_()
    out = Dropout(p).train()(X)
    out.backward(torch.full_like(out, 3.0))
    kept = (out != 0).float()
    assert torch.allclose(X.grad, 3.0 * kept / (1 - p))


def test_the_teaching_core_uses_torchs_dropout_and_the_swap_replaces_every_one():
    """The core's models use nn.Dropout; use_cheap_dropout swaps each for a CheapDropout of the
    same p and mode, and leaves the parameters, the state dict and other modules alone."""
    models = [Transformer(TransformerConfig.tiny(11, 13, dropout=0.3)),
              NATransformer(NATConfig.tiny(11, 13, dropout=0.2))]
    for model in models:
        drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
        assert drops and all(type(m) is nn.Dropout for m in drops), type(model)
        model.eval()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        names = [name for name, m in model.named_modules() if isinstance(m, nn.Dropout)]
        assert use_cheap_dropout(model) is model
        swapped = dict(model.named_modules())
        assert all(type(swapped[name]) is Dropout for name in names), type(model)
        assert {swapped[name].p for name in names} == {d.p for d in drops}
        assert not any(swapped[name].training for name in names)  # the mode is kept
        after = model.state_dict()
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before)


def _tiny_batch():
    pairs = [(["a", "b", "c"], ["x", "y"]), (["b", "c"], ["y", "z", "x"]),
             (["c", "a", "a", "b"], ["z"]), (["a"], ["x", "x", "y", "z"])]
    src_vocab, tgt_vocab = Vocab(s for s, _ in pairs), Vocab(t for _, t in pairs)
    return encode_pairs(pairs, src_vocab, tgt_vocab, num_steps=6), len(src_vocab), len(tgt_vocab)


def test_training_with_cheap_dropout_gives_the_same_losses_step_by_step():
    """Where the swap touches training: with p = 0 every step's loss is the core's exactly; with
    p > 0 the masks differ, but training still lowers the loss as the core's does."""
    batch, v_src, v_tgt = _tiny_batch()
    for p, steps in ((0.0, 8), (0.3, 60)):
        losses = []
        for cheap in (False, True):
            torch.manual_seed(0)
            model = Transformer(TransformerConfig.tiny(v_src, v_tgt, dropout=p, use_sdpa=True))
            if cheap:
                use_cheap_dropout(model)
            optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
            losses.append([train_epoch(model, [batch], optimizer)["loss"] for _ in range(steps)])
        core, fast = losses
        if p == 0.0:
            assert fast == pytest.approx(core, rel=1e-5, abs=1e-6)
        else:
            assert fast != core  # another mask
            assert fast[-1] < 0.5 * fast[0] and core[-1] < 0.5 * core[0]
