"""Tests for course_lib.training: schedules, the training loop, evaluation, checkpoints, logging."""

from __future__ import annotations

import copy
import math
import os
import random

os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np
import pytest
import torch

from course_lib import decoding
from course_lib.data.generated import numbers_dataset
from course_lib.data.translation import TranslationData
from course_lib.losses import masked_cross_entropy
from course_lib.models.rnn import Seq2SeqGRU
from course_lib.training import (
    History,
    evaluate,
    fit,
    load_checkpoint,
    make_bleu_fn,
    noam_lambda,
    save_checkpoint,
    scheduled_sampling_logits,
    set_seed,
    train_epoch,
)


@pytest.fixture(scope="module")
def data() -> TranslationData:
    return TranslationData(numbers_dataset(0, 999), num_steps=12, batch_size=64)


def new_model(data: TranslationData, seed: int = 0, **sizes) -> Seq2SeqGRU:
    set_seed(seed)
    sizes = {"embed_size": 32, "num_hiddens": 64, **sizes}
    return Seq2SeqGRU(len(data.src_vocab), len(data.tgt_vocab), **sizes)


@pytest.fixture(scope="module")
def trained(data):
    """(model, history, accuracy before training) after a short fit on numbers 0..999."""
    model = new_model(data)
    before = evaluate(model, data.loader("valid"))["accuracy"]
    history = fit(model, data, epochs=6, lr=1e-2, progress="none")
    return model, history, before


@pytest.fixture
def batch(data):
    return next(iter(data.loader("valid", batch_size=16)))


def noam_formula(d_model: int, warmup: int, step: int, factor: float = 1.0) -> float:
    return factor * d_model ** -0.5 * min(step ** -0.5, step * warmup ** -1.5)


# --- schedules and seeds ------------------------------------------------------------------------

def test_noam_lambda_through_lambda_lr_follows_the_formula_and_peaks_at_warmup():
    d_model, warmup = 64, 10
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, noam_lambda(d_model, warmup))
    rates = []
    for _ in range(40):  # the lr used by optimizer step k (k = 1, 2, ...)
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [noam_formula(d_model, warmup, k) for k in range(1, 41)]
    assert rates == pytest.approx(expected, rel=1e-12)
    assert int(np.argmax(rates)) + 1 == warmup
    assert rates[0] == pytest.approx(d_model ** -0.5 * warmup ** -1.5)
    assert noam_lambda(d_model, warmup, factor=2.0)(4) == pytest.approx(2 * rates[4])


def test_noam_lambda_rejects_nonsense():
    with pytest.raises(ValueError, match="warmup_steps"):
        noam_lambda(64, 0)


def test_set_seed_repeats_python_numpy_and_torch():
    set_seed(3)
    first = (random.random(), np.random.rand(), torch.rand(2).tolist())
    set_seed(3)
    assert (random.random(), np.random.rand(), torch.rand(2).tolist()) == first


# --- fit ------------------------------------------------------------------------------------------

def test_fit_learns_numbers_and_fills_history(trained):
    model, history, accuracy_before = trained
    assert isinstance(history, History) and len(history) == 6
    assert history.train_loss[-1] < 0.3 * history.train_loss[0]
    assert history.valid_loss[-1] < 0.5 * history.valid_loss[0]
    assert history.valid_accuracy[-1] > accuracy_before + 0.3
    assert history.valid_accuracy[-1] > 0.8
    assert all(t > 0 for t in history.tokens_per_second)
    assert all(s > 0 for s in history.seconds)
    assert history.valid_bleu == [None] * 6  # no bleu_fn
    assert history.learning_rate == [1e-2] * 6
    assert history.best_epoch == int(np.argmin(history.valid_loss)) + 1
    rows = history.to_rows()
    assert [r["epoch"] for r in rows] == list(range(1, 7))
    assert rows[2]["valid_loss"] == history.valid_loss[2]


def test_fit_is_deterministic_for_a_seed(data):
    runs = [fit(new_model(data), data, epochs=2, lr=1e-2, seed=5, progress="none")
            for _ in range(2)]
    assert runs[0].train_loss == runs[1].train_loss
    assert runs[0].valid_loss == runs[1].valid_loss


def test_evaluate_matches_a_direct_computation_and_restores_mode(data, batch):
    model = new_model(data)
    model.train()
    result = evaluate(model, [batch])
    assert model.training
    with torch.no_grad():
        logits = model(batch.src, batch.src_valid_len, batch.dec_input)
    expected = masked_cross_entropy(logits, batch.tgt, batch.tgt_valid_len)
    assert result["loss"] == pytest.approx(float(expected), rel=1e-5)
    real = torch.arange(batch.tgt.shape[1])[None] < batch.tgt_valid_len[:, None]
    hits = ((logits.argmax(-1) == batch.tgt) & real).sum() / real.sum()
    assert result["accuracy"] == pytest.approx(float(hits))
    assert result["tokens"] == batch.num_target_tokens
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    evaluate(model, [batch])
    assert not model.training


def test_label_smoothing_loss_equals_masked_cross_entropy(data, batch):
    model = new_model(data)
    frozen = torch.optim.SGD(model.parameters(), lr=0.0)  # a step that changes nothing
    with torch.no_grad():
        logits = model(batch.src, batch.src_valid_len, batch.dec_input)
    for smoothing in (0.0, 0.1, 0.3):
        result = train_epoch(model, [batch], frozen, label_smoothing=smoothing)
        expected = masked_cross_entropy(logits, batch.tgt, batch.tgt_valid_len,
                                        label_smoothing=smoothing)
        assert result["loss"] == pytest.approx(float(expected), rel=1e-5)
    # Independently: smoothing eps mixes the gold-token loss with the mean over the vocabulary.
    log_probs = logits.log_softmax(-1)  # (B, T, V)
    real = torch.arange(batch.tgt.shape[1])[None] < batch.tgt_valid_len[:, None]  # (B, T)
    gold = -log_probs.gather(-1, batch.tgt.unsqueeze(-1)).squeeze(-1)[real].mean()
    uniform = -log_probs.mean(-1)[real].mean()
    smoothed = train_epoch(model, [batch], frozen, label_smoothing=0.2)["loss"]
    assert smoothed == pytest.approx(float(0.8 * gold + 0.2 * uniform), rel=1e-5)
    assert abs(smoothed - float(gold)) > 1e-3


class NormRecordingSGD(torch.optim.SGD):
    """SGD that records the total gradient norm it is asked to apply."""

    def step(self, closure=None):
        grads = [p.grad for group in self.param_groups for p in group["params"]
                 if p.grad is not None]
        self.norms = [float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g) for g in grads])))]
        return super().step(closure)


def test_gradient_clipping_caps_the_norm_the_optimizer_sees(data, batch):
    model = new_model(data)
    with torch.no_grad():
        model.output.weight.mul_(50.0)  # huge logits: huge loss and gradients
    for clip, capped in ((0.5, True), (None, False)):
        optimizer = NormRecordingSGD(model.parameters(), lr=0.0)
        result = train_epoch(model, [batch], optimizer, clip_grad=clip)
        assert result["grad_norm"] > 5.0  # the norm before clipping
        if capped:
            assert optimizer.norms[0] == pytest.approx(0.5, rel=1e-4)
        else:
            assert optimizer.norms[0] == pytest.approx(result["grad_norm"], rel=1e-4)


def test_step_by_step_decoding_with_full_teacher_forcing_equals_the_parallel_pass(data, batch):
    model = new_model(data)
    with torch.no_grad():
        parallel = model(batch.src, batch.src_valid_len, batch.dec_input)
        stepped = scheduled_sampling_logits(model, batch, teacher_forcing=1.0)
    torch.testing.assert_close(stepped, parallel, atol=1e-5, rtol=1e-5)
    loss = masked_cross_entropy
    assert float(loss(stepped, batch.tgt, batch.tgt_valid_len)) == pytest.approx(
        float(loss(parallel, batch.tgt, batch.tgt_valid_len)), abs=1e-5)


def test_without_teacher_forcing_the_decoder_reads_its_own_predictions(data, batch):
    model = new_model(data)
    inputs = []
    original = model.decode

    def recording_decode(dec_input, state):
        inputs.append(dec_input)
        return original(dec_input, state)

    model.decode = recording_decode
    logits = scheduled_sampling_logits(model, batch, teacher_forcing=0.0)  # (B, T, V)
    assert len(inputs) == batch.tgt.shape[1]
    assert bool((inputs[0][:, 0] == data.tgt_vocab.bos).all())
    for t in range(1, len(inputs)):
        assert torch.equal(inputs[t][:, 0], logits[:, t - 1].argmax(-1))


def test_scheduled_sampling_trains_and_differs_from_teacher_forcing(data):
    losses = {}
    for p in (1.0, 0.5):
        model = new_model(data)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        set_seed(1)
        loader = data.loader("train")
        losses[p] = [train_epoch(model, loader, optimizer, teacher_forcing=p)["loss"]
                     for _ in range(2)]
    assert all(math.isfinite(v) for v in losses[0.5])
    assert losses[0.5][0] != pytest.approx(losses[1.0][0], abs=1e-4)


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_teacher_forcing_must_be_a_probability(data, batch, p):
    model = new_model(data)
    with pytest.raises(ValueError, match="teacher_forcing"):
        train_epoch(model, [batch], torch.optim.SGD(model.parameters(), lr=0.0),
                    teacher_forcing=p)


def test_fit_calls_the_teacher_forcing_schedule_with_epochs_from_1(data):
    seen = []

    def schedule(epoch):
        seen.append(epoch)
        return 1.0

    fit(new_model(data), data.loader("valid"), epochs=3, teacher_forcing=schedule,
        progress="none")
    assert seen == [1, 2, 3]


def test_fit_computes_bleu_every_n_epochs_and_after_the_last(data):
    calls = []

    def bleu_fn(model):
        calls.append(model.training)
        return 12.5

    history = fit(new_model(data), (data.loader("valid"), data.loader("test")), epochs=3,
                  bleu_fn=bleu_fn, bleu_every=2, progress="none")
    assert history.valid_bleu == [None, 12.5, 12.5]
    assert len(calls) == 2


def test_fit_with_warmup_follows_the_noam_schedule(data):
    loader = data.loader("valid", batch_size=25)  # 100 sentences: 4 steps per epoch
    history = fit(new_model(data), loader, epochs=2, warmup_steps=3, d_model=64,
                  progress="none")
    assert history.learning_rate == pytest.approx([noam_formula(64, 3, 5),
                                                   noam_formula(64, 3, 9)])
    assert history.valid_loss == [None, None]  # no validation loader given
    assert history.best_epoch == int(np.argmin(history.train_loss)) + 1
    with pytest.raises(ValueError, match="d_model"):
        fit(new_model(data), loader, epochs=1, warmup_steps=3, progress="none")


def test_make_bleu_fn_lines_up_sources_and_references(data, monkeypatch):
    """With a stand-in decoder that returns the gold targets, BLEU must be 100."""
    valid = data.tensors["valid"]
    gold = {tuple(s.tolist()): t for s, t in zip(valid.src, valid.tgt, strict=True)}

    class FakeResult:
        def __init__(self, ids):
            self.ids = ids

        def to_sentences(self, vocab):
            return [" ".join(vocab.decode(row.tolist())) for row in self.ids]

    def greedy_decode(model, src, src_valid_len, *, max_len):
        assert not model.training and max_len == 12
        return FakeResult(torch.stack([gold[tuple(row.tolist())] for row in src]))

    monkeypatch.setattr(decoding, "greedy_decode", greedy_decode)
    model = new_model(data)
    bleu_fn = make_bleu_fn(data, "valid", max_sentences=50, batch_size=16)
    assert bleu_fn(model) == pytest.approx(100.0)
    assert model.training


# --- progress -----------------------------------------------------------------------------------

def test_progress_log_prints_one_line_per_epoch(data, capsys):
    fit(new_model(data), data, epochs=2, progress="log")
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 2
    assert out[0].startswith("epoch 1/2") and "valid loss" in out[0] and "tok/s" in out[0]


def test_progress_auto_outside_a_notebook_logs_lines(data, capsys):
    from course_lib.training import in_notebook

    assert not in_notebook()
    fit(new_model(data), data.loader("valid"), epochs=1, progress="auto")
    assert capsys.readouterr().out.startswith("epoch 1/1 | train loss")


def test_progress_none_prints_nothing(data, capsys):
    fit(new_model(data), data, epochs=1, progress="none")
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_progress_bar_goes_to_stderr_and_ends_at_all_batches(data, capsys):
    fit(new_model(data), data, epochs=2, progress="bar")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "epoch 2/2" in captured.err and f"{2 * len(data.loader())}/{2 * len(data.loader())}" \
        in captured.err


def test_live_plot_in_a_notebook_updates_one_display_per_epoch(data, monkeypatch):
    import IPython.display

    import course_lib.training as training

    class Handle:
        updates = []

        def update(self, fig):
            self.updates.append(len(fig.axes[0].get_lines()[0].get_xdata()))

    shown = []
    monkeypatch.setattr(training, "in_notebook", lambda: True)
    monkeypatch.setattr(IPython.display, "display",
                        lambda obj, display_id: shown.append(obj) or Handle())
    fit(new_model(data), data, epochs=3, progress="none")  # "none": no plot either
    assert shown == []
    fit(new_model(data), data, epochs=3, progress="log")
    assert len(shown) == 1 and Handle.updates == [1, 2, 3]  # train loss points so far


def test_progress_must_be_a_known_mode(data):
    with pytest.raises(ValueError, match="progress"):
        fit(new_model(data), data, epochs=1, progress="verbose")


# --- checkpoints -------------------------------------------------------------------------------

def test_checkpoint_round_trip_restores_outputs_optimizer_and_extra(data, batch, tmp_path):
    model = new_model(data, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    train_epoch(model, [batch], optimizer)
    path = tmp_path / "ckpt" / "model.pt"
    save_checkpoint(path, model, optimizer, extra={"epoch": 3, "src_vocab": ["<pad>", "a"]})
    other = new_model(data, seed=1)
    other_optimizer = torch.optim.Adam(other.parameters(), lr=1e-3)
    assert not torch.equal(other(batch.src, batch.src_valid_len, batch.dec_input),
                           model(batch.src, batch.src_valid_len, batch.dec_input))
    extra = load_checkpoint(path, other, other_optimizer)
    assert extra == {"epoch": 3, "src_vocab": ["<pad>", "a"]}
    assert torch.equal(other(batch.src, batch.src_valid_len, batch.dec_input),
                       model(batch.src, batch.src_valid_len, batch.dec_input))
    assert (other_optimizer.state_dict()["state"][0]["exp_avg"].tolist()
            == optimizer.state_dict()["state"][0]["exp_avg"].tolist())


def test_loading_into_a_model_of_another_shape_names_the_parameters(data, tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(path, new_model(data))
    with pytest.raises(ValueError, match=r"output.weight: checkpoint \(31, 64\) vs model "
                                         r"\(31, 48\)"):
        load_checkpoint(path, new_model(data, num_hiddens=48))


def test_a_failed_save_leaves_no_partial_file_and_keeps_the_old_one(data, tmp_path):
    model = new_model(data)
    path = tmp_path / "model.pt"
    with pytest.raises(Exception):  # noqa: B017  (pickle's error type varies)
        save_checkpoint(path, model, extra={"unpicklable": lambda: None})
    assert list(tmp_path.iterdir()) == []
    save_checkpoint(path, model, extra={"epoch": 1})
    with pytest.raises(Exception):  # noqa: B017
        save_checkpoint(path, model, extra={"unpicklable": lambda: None})
    assert list(tmp_path.iterdir()) == [path]
    assert load_checkpoint(path, copy.deepcopy(model)) == {"epoch": 1}


def test_fit_checkpoints_the_best_epoch_with_vocabularies(data, tmp_path):
    path = tmp_path / "best.pt"
    model = new_model(data)
    history = fit(model, data, epochs=3, lr=1e-2, checkpoint_path=path,
                  checkpoint_extra={"config": {"num_hiddens": 64}}, progress="none")
    extra = load_checkpoint(path, new_model(data, seed=9))
    assert extra["epoch"] == history.best_epoch
    assert extra["config"] == {"num_hiddens": 64}
    assert extra["tgt_vocab"] == data.tgt_vocab.idx_to_token
    assert extra["history"]["valid_loss"] == history.valid_loss[:extra["epoch"]]


def test_make_bleu_fn_with_the_real_greedy_decoder_scores_a_trained_model_high(data, trained):
    pytest.importorskip("course_lib.decoding")
    bleu_fn = make_bleu_fn(data, "valid")
    model, _, _ = trained
    assert bleu_fn(model) > 50.0
    assert 0.0 <= bleu_fn(new_model(data)) < 20.0


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_sequence_loss_equals_masked_loss_on_full_logits(smoothing):
    """Computing logits only at real target positions changes the work, not the numbers."""
    from course_lib.models.transformer import Transformer, TransformerConfig
    from course_lib.training import sequence_loss

    torch.manual_seed(0)
    data = TranslationData(numbers_dataset(0, 299, seed=0), num_steps=12, batch_size=16)
    batch = next(iter(data.loader("train")))
    assert (batch.tgt_valid_len < batch.tgt.shape[1]).any()  # the batch has padding
    for model in (Seq2SeqGRU(len(data.src_vocab), len(data.tgt_vocab), 16, 32),
                  Transformer(TransformerConfig.tiny(len(data.src_vocab), len(data.tgt_vocab)))):
        full = masked_cross_entropy(model(batch.src, batch.src_valid_len, batch.dec_input),
                                    batch.tgt, batch.tgt_valid_len, label_smoothing=smoothing)
        packed, logits, targets = sequence_loss(model, batch, label_smoothing=smoothing)
        torch.testing.assert_close(packed, full, rtol=0, atol=1e-6)
        assert logits.shape == (batch.num_target_tokens, len(data.tgt_vocab))
        assert targets.shape == (batch.num_target_tokens,)


def test_train_epoch_stops_at_the_deadline_between_batches(data, batch, monkeypatch):
    import course_lib.training as training

    clock = iter(range(1000))  # each perf_counter() call is one second later
    monkeypatch.setattr(training.time, "perf_counter", lambda: float(next(clock)))
    model = new_model(data)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    # Calls: 0 = start; then one check per batch at 1, 2, 3, ...: a deadline of 3 lets the
    # batches checked at 1 and 2 run, and stops before the third.
    result = train_epoch(model, [batch] * 10, optimizer, stop_at=3.0)
    assert result["batches"] == 2 and result["stopped"] is True
    assert result["tokens"] == 2 * batch.num_target_tokens

    monkeypatch.undo()
    result = train_epoch(model, [batch] * 3, optimizer, stop_at=time_far_ahead())
    assert result["batches"] == 3 and result["stopped"] is False
    result = train_epoch(model, [batch] * 3, optimizer, stop_at=0.0)  # already passed
    assert result["batches"] == 0 and result["stopped"] is True and result["loss"] == 0.0


def time_far_ahead() -> float:
    import time

    return time.perf_counter() + 3600.0
