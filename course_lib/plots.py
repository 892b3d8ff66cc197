"""The course's figures: attention heatmaps, positional encodings, training curves.

Every function returns a matplotlib ``Figure`` and never calls ``plt.show()``: leave the figure
as a cell's last expression (or call ``display(fig)``) to see it in Jupyter, or
``fig.savefig("x.png")`` anywhere (the Agg backend is enough). Figures are closed in pyplot's
registry as soon as they are made, so Jupyter shows each exactly once and loops do not pile
figures up in memory. Tensors (on any device, with or without grad) and arrays are accepted.

Notation: H heads · T_q queries · T_k keys · T positions · D model width.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = ["attention_heatmap", "positional_encoding_plot", "loss_curves", "LivePlot"]


def _array(x: Any) -> np.ndarray:
    """A float NumPy array from a tensor (detached, on the CPU) or anything array-like."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=float)


def _figure(figsize: tuple[float, float]) -> Figure:
    """A new figure that pyplot forgets at once (see the module docstring)."""
    fig = plt.figure(figsize=figsize, layout="constrained")  # room for labels
    plt.close(fig)
    return fig


def _check_labels(labels: Sequence[str] | None, size: int, name: str, axis: str) -> None:
    if labels is not None and len(labels) != size:
        raise ValueError(f"{name} has {len(labels)} tokens but the weights have {size} {axis}; "
                         f"slice the weights to the real tokens, e.g. weights[..., :T_q, :T_k]")


def attention_heatmap(weights: Any, x_labels: Sequence[str] | None = None,
                      y_labels: Sequence[str] | None = None, *, title: str | None = None,
                      ax: Axes | None = None, cmap: str = "Reds", ncols: int = 4) -> Figure:
    """Heatmap of attention weights (T_q, T_k), or one panel per head for (H, T_q, T_k).

    Args:
        x_labels: the key tokens (columns), y_labels: the query tokens (rows).
        ax: draw a single (T_q, T_k) map into these axes instead of a new figure.
        ncols: panels per row when there are several heads.
    All panels share one colour scale from 0 to the largest weight, so heads compare directly.
    """
    W = _array(weights)
    if W.ndim not in (2, 3):
        raise ValueError(f"weights must be (T_q, T_k) or (H, T_q, T_k), got shape {W.shape}; "
                         f"for a batch pick one example first, e.g. weights[0]")
    heads = W[None] if W.ndim == 2 else W  # (H, T_q, T_k)
    H, T_q, T_k = heads.shape
    _check_labels(x_labels, T_k, "x_labels", "keys (columns)")
    _check_labels(y_labels, T_q, "y_labels", "queries (rows)")
    if ax is not None and W.ndim == 3:
        raise ValueError("ax draws a single map; pass weights (T_q, T_k), or no ax for heads")
    cols = min(H, ncols)
    rows = math.ceil(H / cols)
    if ax is None:
        panel = (max(2.5, 0.35 * T_k + 1.2), max(2.0, 0.3 * T_q + 1.0))
        fig = _figure((panel[0] * cols + 1.0, panel[1] * rows + (0.4 if title else 0)))
        axes = [fig.add_subplot(rows, cols, h + 1) for h in range(H)]
    else:
        fig, axes = ax.figure, [ax]
    vmax = float(heads.max()) if heads.size and heads.max() > 0 else 1.0
    for h, (axis, head) in enumerate(zip(axes, heads, strict=True)):
        image = axis.imshow(head, cmap=cmap, vmin=0.0, vmax=vmax, aspect="auto")
        axis.set_xticks(range(T_k), labels=x_labels if x_labels is not None else range(T_k),
                        rotation=90)
        axis.set_yticks(range(T_q), labels=y_labels if y_labels is not None else range(T_q))
        axis.set_xlabel("keys")
        if h % cols == 0:
            axis.set_ylabel("queries")
        if H > 1:
            axis.set_title(f"head {h + 1}")
    fig.colorbar(image, ax=axes, shrink=0.8)
    if title:
        (fig.suptitle if H > 1 else axes[0].set_title)(title)
    return fig


def positional_encoding_plot(P: Any, dims: Sequence[int] = (4, 5, 6, 7), *,
                             title: str | None = "Positional encoding") -> Figure:
    """Curves of a few columns of P (T, D) over positions, beside a heatmap of all of P.

    Low dimensions oscillate fast, high ones slowly: each position gets its own pattern.
    """
    P = _array(P)
    if P.ndim == 3 and P.shape[0] == 1:
        P = P[0]  # (1, T, D) -> (T, D)
    if P.ndim != 2:
        raise ValueError(f"P must be (T, D), got shape {P.shape}")
    T, D = P.shape
    bad = [d for d in dims if not 0 <= d < D]
    if bad:
        raise ValueError(f"dims {bad} are outside 0..{D - 1} (P has D = {D} columns)")
    fig = _figure((11, 3.5))
    curves, heat = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for d in dims:
        curves.plot(np.arange(T), P[:, d], label=f"dim {d}")
    curves.set_xlabel("position")
    curves.set_ylabel("value")
    curves.legend(loc="upper right", fontsize="small")
    image = heat.imshow(P.T, cmap="Blues", aspect="auto", origin="lower")  # (D, T)
    heat.set_xlabel("position")
    heat.set_ylabel("encoding dimension")
    fig.colorbar(image, ax=heat)
    if title:
        fig.suptitle(title)
    return fig


def _series(history: Any, name: str) -> list:
    if isinstance(history, Mapping):
        return list(history.get(name) or [])
    return list(getattr(history, name, None) or [])


def loss_curves(history: Any, *, title: str | None = None, fig: Figure | None = None) -> Figure:
    """Training and validation loss per epoch, and validation BLEU in a second panel if any.

    Args:
        history: a ``course_lib.training.History`` or a dict of per-epoch lists (``train_loss``,
            ``valid_loss``, ``valid_bleu``); None entries (not computed) are skipped.
        fig: redraw into this figure (cleared first), e.g. for a live plot during training.
    """
    losses = {name: _series(history, name) for name in ("train_loss", "valid_loss")}
    bleu = _series(history, "valid_bleu")
    has_bleu = any(v is not None for v in bleu)
    if fig is None:
        fig = _figure((9 if has_bleu else 5, 3.2))
    else:
        fig.clear()
    loss_ax = fig.add_subplot(1, 2 if has_bleu else 1, 1)
    for name, values in losses.items():
        points = [(i + 1, v) for i, v in enumerate(values) if v is not None]
        if points:
            loss_ax.plot(*zip(*points, strict=True), marker=".", label=name.replace("_", " "))
    loss_ax.set_xlabel("epoch")
    loss_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss_ax.set_ylabel("loss per token")
    if loss_ax.lines:
        loss_ax.legend()
    if has_bleu:
        bleu_ax = fig.add_subplot(1, 2, 2)
        points = [(i + 1, v) for i, v in enumerate(bleu) if v is not None]
        bleu_ax.plot(*zip(*points, strict=True), marker="o", color="tab:green",
                     label="valid BLEU")
        bleu_ax.set_xlabel("epoch")
        bleu_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        bleu_ax.set_ylabel("BLEU")
        bleu_ax.legend()
    if title:
        fig.suptitle(title)
    return fig


class LivePlot:
    """``loss_curves`` in one notebook output, redrawn in place by ``update(history)``."""

    def __init__(self, figsize: tuple[float, float] = (9, 3.2)):
        from IPython.display import display

        self.figure = _figure(figsize)
        self.handle = display(self.figure, display_id=True)

    def update(self, history: Any) -> None:
        loss_curves(history, fig=self.figure)
        self.handle.update(self.figure)
