"""Training as plain functions: ``train_epoch``, ``evaluate`` and ``fit`` over any encoder-decoder.

    from course_lib.training import fit, set_seed
    set_seed(0)
    model = Seq2SeqGRU(len(data.src_vocab), len(data.tgt_vocab))
    history = fit(model, data, epochs=10, lr=5e-3)   # progress bar + live plot in Jupyter
    history.best_epoch, history.to_rows()

No trainer class to learn: each function is a short loop you can read (and copy) in one go.
Losses are means over real target tokens (``course_lib.losses.masked_cross_entropy``), so a batch
of short sentences counts each token as much as a batch of long ones. Epochs count from 1.

Notation: B batch · T time (T_tgt target) · V vocabulary size.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from course_lib.checkpoints import load_checkpoint, read_checkpoint, save_checkpoint
from course_lib.data.batching import Batch
from course_lib.decoding import make_bleu_fn
from course_lib.devices import (
    autocast,
    check_fp32_weights,
    check_precision,
    grad_scaler,
    model_device,
    to_device,
)
from course_lib.history import History
from course_lib.losses import masked_cross_entropy
from course_lib.masking import padding_mask
from course_lib.models.base import EncoderDecoder, inference
from course_lib.schedules import NoamSchedule, noam_lambda

__all__ = ["set_seed", "NoamSchedule", "noam_lambda", "scheduled_sampling_logits",
           "sequence_loss", "train_epoch", "evaluate", "History", "fit", "make_bleu_fn",
           "save_checkpoint", "load_checkpoint", "read_checkpoint"]  # schedules.py, checkpoints.py

_PROGRESS_MODES = ("auto", "bar", "log", "none")


def set_seed(seed: int) -> None:
    """Seed Python's ``random``, NumPy and torch, so a run can be repeated exactly."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def scheduled_sampling_logits(model: nn.Module, batch: Batch,
                              teacher_forcing: float) -> torch.Tensor:
    """Logits (B, T_tgt, V), decoding one step at a time with scheduled sampling.

    At every position after ``<bos>`` the decoder reads the gold previous token with probability
    ``teacher_forcing`` and the model's own greedy prediction otherwise (Bengio et al., 2015),
    so training sees some of its own mistakes, as testing will (exposure bias). The price is
    parallelism: step t+1's input depends on step t's output, so the T_tgt decoder steps run one
    after another, even for a Transformer whose teacher-forced training is one parallel pass.
    With ``teacher_forcing=1`` the result equals ``model(src, src_valid_len, dec_input)``.
    """
    state = model.encode(batch.src, batch.src_valid_len)
    dec_input = batch.dec_input  # (B, T_tgt)
    step_input = dec_input[:, :1]  # (B, 1): <bos>
    steps = []
    for t in range(dec_input.shape[1]):
        logits, state = model.decode(step_input, state)  # (B, 1, V)
        steps.append(logits)
        if t + 1 < dec_input.shape[1]:
            gold = dec_input[:, t + 1:t + 2]  # (B, 1)
            use_gold = torch.rand(gold.shape, device=gold.device) < teacher_forcing
            step_input = torch.where(use_gold, gold, logits.argmax(dim=-1))  # no gradient
    return torch.cat(steps, dim=1)  # (B, T_tgt, V)


def sequence_loss(model: nn.Module, batch: Batch, *, label_smoothing: float = 0.0,
                  reduction: str = "mean") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher-forced cross entropy of a batch, with logits computed at real target positions only.

    Equal to ``masked_cross_entropy(model(src, src_valid_len, dec_input), tgt, tgt_valid_len)``,
    but the output layer (D -> V, the biggest matrix product when V is a real vocabulary) runs on
    the N real target tokens instead of all B * T_tgt positions, padding included.
    Returns (loss, logits (N, V), targets (N,)).
    """
    keep = padding_mask(batch.tgt_valid_len, batch.tgt.shape[1])  # (B, T_tgt)
    if isinstance(model, EncoderDecoder):
        features = model.features(batch.src, batch.src_valid_len, batch.dec_input)  # (B, T, D)
        logits = model.output(features[keep])  # (N, V)
    else:  # any other model with the same call signature
        logits = model(batch.src, batch.src_valid_len, batch.dec_input)[keep]  # (N, V)
    targets = batch.tgt[keep]  # (N,)
    if targets.numel() == 0:
        return logits.sum() * 0.0, logits, targets  # no real token: zero, not NaN
    loss = F.cross_entropy(logits, targets, label_smoothing=label_smoothing, reduction=reduction)
    return loss, logits, targets


LossFn = Callable[[nn.Module, Batch], "torch.Tensor | tuple[torch.Tensor, dict[str, float]]"]


def _batch_loss(model: nn.Module, batch: Batch, loss_fn: LossFn | None, label_smoothing: float,
                teacher_forcing: float) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss to minimise on one batch, and the named parts ``loss_fn`` reports (if any)."""
    if loss_fn is not None:
        result = loss_fn(model, batch)
        return result if isinstance(result, tuple) else (result, {})
    if teacher_forcing >= 1.0:  # mean per real token, logits only where the target is real
        return sequence_loss(model, batch, label_smoothing=label_smoothing)[0], {}
    logits = scheduled_sampling_logits(model, batch, teacher_forcing)
    return masked_cross_entropy(logits, batch.tgt, batch.tgt_valid_len,
                                label_smoothing=label_smoothing), {}


def train_epoch(model: nn.Module, loader: Iterable[Batch], optimizer: torch.optim.Optimizer, *,
                loss_fn: LossFn | None = None, scheduler: Any = None,
                clip_grad: float | None = 1.0, label_smoothing: float = 0.0,
                teacher_forcing: float = 1.0, device: torch.device | str | None = None,
                precision: str = "fp32", scaler: torch.amp.GradScaler | None = None,
                progress: Any = None, stop_at: float | None = None) -> dict[str, float]:
    """One pass over ``loader``, one optimizer step per batch; returns what happened.

    Args:
        loss_fn: ``loss_fn(model, batch) -> loss`` (or ``(loss, parts)``, a dict of floats
            averaged over the batches into the result): another model's objective, e.g.
            ``course_lib.models.nat.nat_loss``. Default: the masked cross entropy of
            ``sequence_loss`` (with ``label_smoothing`` and ``teacher_forcing``).
        scheduler: stepped after every batch (per-step schedules such as ``NoamSchedule``).
        clip_grad: rescale gradients whose total norm exceeds it (None or 0: no clipping).
        teacher_forcing: probability of feeding the gold previous token (1 = plain teacher
            forcing, all positions in parallel; below 1 see ``scheduled_sampling_logits``).
        device: where batches go (default: the model's device); tensors already there stay.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``: the forward pass and the loss run
            under autocast (``course_lib.devices``); the weights stay float32.
        scaler: fp16's loss scaler, kept across epochs (``fit`` passes one); made here if None.
        progress: a tqdm bar (or anything with ``update``/``set_postfix``), advanced per batch.
        stop_at: a ``time.perf_counter()`` deadline: the epoch ends after the batch during
            which it passes (training to a wall-clock budget, as the benchmarks do).
    Returns ``loss`` (mean per real target token), ``tokens`` (real target tokens), ``seconds``,
    ``tokens_per_second``, ``grad_norm`` (mean gradient norm before clipping), ``batches``
    and ``stopped`` (True when ``stop_at`` ended the epoch before the loader did).
    """
    if not 0.0 <= teacher_forcing <= 1.0:
        raise ValueError(f"teacher_forcing must be a probability in [0, 1], got {teacher_forcing}")
    if loss_fn is not None and (teacher_forcing < 1.0 or label_smoothing):
        raise ValueError("teacher_forcing and label_smoothing apply to the default loss; "
                         "with loss_fn, give them to the loss function")
    device = model_device(model) if device is None else torch.device(device)
    check_precision(precision)
    check_fp32_weights(model)
    scaler = scaler if scaler is not None else grad_scaler(device, precision)
    model.train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    # Per-batch sums stay tensors on the device: a float() at every step would make the CPU
    # wait for the GPU at every step.
    losses, norms, total_tokens, num_batches = [], [], 0, 0
    part_sums: dict[str, float] = {}
    start = time.perf_counter()
    stopped = False
    for batch in loader:
        if stop_at is not None and time.perf_counter() >= stop_at:
            stopped = True
            break
        tokens = batch.num_target_tokens  # counted on the CPU copy
        batch = to_device(batch, device)
        # Inside an autocast context torch makes each weight's 16-bit copy once and reuses it
        # until the outermost context exits; but every optimizer step changes the weights in
        # place. Within a caller's `with torch.autocast(...)` around this epoch, every step
        # would run on the first step's weights (bf16 training then diverges): drop the copies.
        torch.clear_autocast_cache()
        with autocast(device, precision):
            loss, parts = _batch_loss(model, batch, loss_fn, label_smoothing, teacher_forcing)
        for name, value in parts.items():
            part_sums[name] = part_sums.get(name, 0.0) + value
        optimizer.zero_grad(set_to_none=True)
        max_norm = clip_grad if clip_grad else math.inf  # inf: measure the norm, change nothing
        if scaler is None:
            loss.backward()
            norms.append(nn.utils.clip_grad_norm_(parameters, max_norm))
            optimizer.step()
        else:  # fp16: backward on the scaled loss, clip the unscaled gradients
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            norms.append(nn.utils.clip_grad_norm_(parameters, max_norm))
            scaler.step(optimizer)  # skipped when a gradient overflowed
            scaler.update()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.detach().float() * tokens)
        total_tokens += tokens
        num_batches += 1
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{float(sum(losses)) / max(total_tokens, 1):.3f}",
                                 refresh=False)
    total_loss = float(torch.stack(losses).sum()) if losses else 0.0
    norm = torch.stack(norms).float() if norms else torch.zeros(1)
    norm = norm[norm.isfinite()]  # fp16 steps the scaler skipped have no finite norm
    seconds = time.perf_counter() - start
    parts = {name: value / max(num_batches, 1) for name, value in part_sums.items()}
    return parts | {"loss": total_loss / max(total_tokens, 1), "tokens": total_tokens,
                    "seconds": seconds, "tokens_per_second": total_tokens / max(seconds, 1e-9),
                    "grad_norm": float(norm.mean()) if norm.numel() else math.nan,
                    "batches": num_batches, "stopped": stopped}


def evaluate(model: nn.Module, loader: Iterable[Batch], *, loss_fn: LossFn | None = None,
             device: torch.device | str | None = None, precision: str = "fp32"
             ) -> dict[str, float]:
    """Teacher-forced ``loss`` (per real token, no smoothing) and token ``accuracy``.

    With ``loss_fn`` (as in ``train_epoch``): its ``loss`` and parts, averaged per batch.
    ``device`` and ``precision`` as in ``train_epoch``. Runs in eval mode without gradients
    and puts the model back in the mode it was in.
    """
    device = model_device(model) if device is None else torch.device(device)
    total_loss, correct, total_tokens, num_batches = 0.0, 0, 0, 0
    part_sums: dict[str, float] = {}
    with inference(model), autocast(device, precision):
        for batch in loader:
            num_batches += 1
            total_tokens += batch.num_target_tokens
            batch = to_device(batch, device)
            if loss_fn is not None:
                loss, parts = _batch_loss(model, batch, loss_fn, 0.0, 1.0)
                for name, value in (parts | {"loss": float(loss)}).items():
                    part_sums[name] = part_sums.get(name, 0.0) + value
                continue
            loss, logits, targets = sequence_loss(model, batch, reduction="sum")  # (N, V), (N,)
            total_loss += float(loss)
            correct += int((logits.argmax(dim=-1) == targets).sum())
    if loss_fn is not None:
        return {name: value / max(num_batches, 1) for name, value in part_sums.items()} | {
            "tokens": total_tokens}
    denominator = max(total_tokens, 1)
    return {"loss": total_loss / denominator, "accuracy": correct / denominator,
            "tokens": total_tokens}


def in_notebook() -> bool:
    """True inside a Jupyter kernel (ZMQInteractiveShell), False in scripts and IPython."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def _loaders(data_or_loaders: Any) -> tuple[Any, Any]:
    """(train, valid or None) from a TranslationData, a dict, a (train, valid) pair or a loader."""
    if hasattr(data_or_loaders, "loader"):
        has_valid = "valid" in getattr(data_or_loaders, "tensors", {"valid": None})
        return (data_or_loaders.loader("train"),
                data_or_loaders.loader("valid") if has_valid else None)
    if isinstance(data_or_loaders, dict):
        return data_or_loaders["train"], data_or_loaders.get("valid")
    if isinstance(data_or_loaders, tuple) and len(data_or_loaders) in (1, 2):
        return data_or_loaders[0], (data_or_loaders[1] if len(data_or_loaders) == 2 else None)
    return data_or_loaders, None


def fit(model: nn.Module, data_or_loaders: Any, *, epochs: int, lr: float = 1e-3,
        optimizer: torch.optim.Optimizer | None = None, warmup_steps: int | None = None,
        d_model: int | None = None, clip_grad: float | None = 1.0, label_smoothing: float = 0.0,
        teacher_forcing: float | Callable[[int], float] = 1.0,
        bleu_fn: Callable[[nn.Module], float] | None = None, bleu_every: int = 1, seed: int = 0,
        checkpoint_path: str | Path | None = None, checkpoint_extra: dict | None = None,
        device: torch.device | str | None = None, precision: str = "fp32",
        progress: str = "auto", plot: bool = True) -> History:
    """Train for ``epochs`` epochs, evaluating after each; returns the ``History``.

    Args:
        data_or_loaders: a ``TranslationData`` (its train and valid loaders), a dict with
            ``"train"`` (and ``"valid"``), a ``(train, valid)`` pair, or one training loader.
        lr: Adam's learning rate (when ``optimizer`` is None and there is no warmup).
        warmup_steps: use the Noam schedule: the optimizer's base lr is the multiplier (1 for
            the Adam made here, betas (0.9, 0.98)) and ``d_model`` (default:
            ``model.config.d_model``) sets the peak, reached after ``warmup_steps`` batches.
        teacher_forcing: a probability, or a function of the epoch (from 1) for scheduled
            sampling, e.g. ``lambda epoch: max(0.5, 1 - 0.05 * epoch)``.
        bleu_fn: ``bleu_fn(model) -> float`` (e.g. ``make_bleu_fn(data)``), run every
            ``bleu_every`` epochs and after the last one.
        checkpoint_path: save the model each time the validation loss is the best so far, with
            ``epoch``, ``history``, the vocabularies of a ``TranslationData`` and
            ``checkpoint_extra`` (e.g. the model's config as a dict).
        device: move the model there first (e.g. ``lesson.device``); default: where it is.
            Every batch goes to the model's device.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (mixed precision, ``course_lib.devices``)
            for training and validation; the weights, and the checkpoints, stay float32.
        progress: ``"auto"`` (a progress bar and a live plot in Jupyter, one line per epoch
            elsewhere), ``"bar"``, ``"log"`` or ``"none"``. ``plot=False`` turns the plot off.
    """
    check_precision(precision)
    if device is not None:
        model.to(device)
    device = model_device(model)
    scaler = grad_scaler(device, precision)  # fp16 only; kept across epochs
    if progress not in _PROGRESS_MODES:
        raise ValueError(f"progress must be one of {_PROGRESS_MODES}, got {progress!r}")
    if bleu_every < 1:
        raise ValueError(f"bleu_every must be >= 1, got {bleu_every}")
    notebook = in_notebook()
    if progress == "auto":
        progress = "bar" if notebook else "log"
    set_seed(seed)
    train_loader, valid_loader = _loaders(data_or_loaders)
    scheduler = None
    if warmup_steps is not None:
        d_model = d_model or getattr(getattr(model, "config", None), "d_model", None)
        if d_model is None:
            raise ValueError("warmup_steps needs d_model (pass d_model=..., or use a model "
                             "with config.d_model)")
        if optimizer is None:
            optimizer = torch.optim.Adam(model.parameters(), lr=1.0, betas=(0.9, 0.98), eps=1e-9)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                      noam_lambda(d_model, warmup_steps))
    elif optimizer is None:
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    bar = None
    if progress == "bar":
        from tqdm.auto import tqdm

        per_epoch = len(train_loader) if hasattr(train_loader, "__len__") else None
        bar = tqdm(total=per_epoch and per_epoch * epochs, unit="batch", desc="training")
    live_plot = None
    if plot and notebook and progress != "none":
        from course_lib.plots import LivePlot
        live_plot = LivePlot()  # an empty figure now, redrawn after every epoch
    history = History()
    extra = dict(checkpoint_extra or {})
    for name in ("src_vocab", "tgt_vocab"):
        if hasattr(getattr(data_or_loaders, name, None), "idx_to_token"):
            extra.setdefault(name, list(getattr(data_or_loaders, name).idx_to_token))
    try:
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            p = teacher_forcing(epoch) if callable(teacher_forcing) else teacher_forcing
            if bar is not None:
                bar.set_description(f"epoch {epoch}/{epochs}")
            train = train_epoch(model, train_loader, optimizer, scheduler=scheduler,
                                clip_grad=clip_grad, label_smoothing=label_smoothing,
                                teacher_forcing=p, precision=precision, scaler=scaler,
                                progress=bar)
            valid = (evaluate(model, valid_loader, precision=precision)
                     if valid_loader is not None else {})
            wants_bleu = bleu_fn is not None and (epoch % bleu_every == 0 or epoch == epochs)
            history.train_loss.append(train["loss"])
            history.valid_loss.append(valid.get("loss"))
            history.valid_accuracy.append(valid.get("accuracy"))
            history.valid_bleu.append(float(bleu_fn(model)) if wants_bleu else None)
            history.tokens_per_second.append(train["tokens_per_second"])
            history.learning_rate.append(optimizer.param_groups[0]["lr"])
            history.seconds.append(time.perf_counter() - start)
            if checkpoint_path is not None and history.best_epoch == epoch:
                save_checkpoint(checkpoint_path, model, optimizer,
                                extra={**extra, "epoch": epoch,
                                       "history": dataclasses.asdict(history)})
            if progress == "log":
                print(history.format_epoch(epoch - 1, epochs), flush=True)
            elif bar is not None:
                bar.set_postfix_str(history.format_epoch(epoch - 1, epochs).split(" | ", 1)[1])
            if live_plot is not None:
                live_plot.update(history)
    finally:
        if bar is not None:
            bar.close()
    return history
