"""Tests for course_lib.plots: figures, panels, tick labels, and saving under Agg."""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from course_lib.attention import sinusoidal_table  # noqa: E402
from course_lib.plots import attention_heatmap, loss_curves, positional_encoding_plot  # noqa: E402
from course_lib.training import History  # noqa: E402

KEYS = ["je", "suis", "un", "chat", "<eos>"]
QUERIES = ["i", "am", "a", "cat"]


def texts(labels) -> list[str]:
    return [label.get_text() for label in labels]


def heatmap_axes(fig: Figure) -> list:
    """The panels that hold an image (colorbars excluded)."""
    return [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]


def weights(*shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(0)).softmax(-1)


def test_single_heatmap_has_token_ticks_a_title_and_a_colorbar():
    fig = attention_heatmap(weights(4, 5), KEYS, QUERIES, title="alignment")
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2  # the map and its colorbar
    (ax,) = heatmap_axes(fig)
    assert texts(ax.get_xticklabels()) == KEYS
    assert texts(ax.get_yticklabels()) == QUERIES
    assert all(label.get_rotation() == 90 for label in ax.get_xticklabels())
    assert ax.get_title() == "alignment"
    np.testing.assert_allclose(ax.images[0].get_array(), weights(4, 5).numpy(), rtol=1e-6)


def test_multi_head_heatmap_has_one_panel_per_head_on_one_scale():
    W = weights(6, 4, 5)
    fig = attention_heatmap(W, KEYS, QUERIES, title="heads", ncols=4)
    panels = heatmap_axes(fig)
    assert len(panels) == 6 and len(fig.axes) == 7
    assert [ax.get_title() for ax in panels] == [f"head {h}" for h in range(1, 7)]
    for ax in panels:
        assert texts(ax.get_xticklabels()) == KEYS
        assert texts(ax.get_yticklabels()) == QUERIES
        assert ax.images[0].get_clim() == pytest.approx((0.0, float(W.max())))
    assert fig.get_suptitle() == "heads"


def test_heatmap_takes_grad_tensors_arrays_and_a_given_axes():
    W = weights(4, 5).requires_grad_()
    fig = attention_heatmap(W)  # no labels: positions
    assert texts(heatmap_axes(fig)[0].get_xticklabels()) == ["0", "1", "2", "3", "4"]
    outer = plt.figure()
    try:
        ax = outer.add_subplot(1, 2, 2)
        assert attention_heatmap(W.detach().numpy(), KEYS, QUERIES, ax=ax) is outer
        assert texts(ax.get_xticklabels()) == KEYS
    finally:
        plt.close(outer)


@pytest.mark.parametrize("shape, labels, message", [
    ((2, 3, 4, 5), (KEYS, QUERIES), "weights\\[0\\]"),
    ((4, 5), (KEYS[:3], QUERIES), "x_labels has 3 tokens"),
    ((4, 5), (KEYS, QUERIES + ["!"]), "y_labels has 5 tokens"),
])
def test_heatmap_explains_bad_inputs(shape, labels, message):
    with pytest.raises(ValueError, match=message):
        attention_heatmap(weights(*shape), *labels)


def test_positional_encoding_plot_draws_the_chosen_dimensions_and_a_heatmap():
    P = sinusoidal_table(50, 16)
    fig = positional_encoding_plot(P, dims=(2, 3, 9))
    curves, heat = fig.axes[0], fig.axes[1]
    assert len(fig.axes) == 3  # curves, heatmap, colorbar
    assert [line.get_label() for line in curves.get_lines()] == ["dim 2", "dim 3", "dim 9"]
    np.testing.assert_allclose(curves.get_lines()[2].get_ydata(), P[:, 9].numpy(), rtol=1e-6)
    assert heat.images[0].get_array().shape == (16, 50)  # (D, T)
    with pytest.raises(ValueError, match="outside 0..15"):
        positional_encoding_plot(P, dims=(16,))


def test_loss_curves_from_a_history_skip_missing_values():
    history = History(train_loss=[3.0, 2.0, 1.0], valid_loss=[3.5, 2.5, 1.5],
                      valid_accuracy=[0.1, 0.2, 0.3], valid_bleu=[None, 10.0, 20.0],
                      tokens_per_second=[1.0] * 3, seconds=[1.0] * 3)
    fig = loss_curves(history, title="run")
    loss_ax, bleu_ax = fig.axes
    lines = {line.get_label(): line for line in loss_ax.get_lines()}
    assert list(lines) == ["train loss", "valid loss"]
    assert list(lines["valid loss"].get_ydata()) == [3.5, 2.5, 1.5]
    assert list(lines["train loss"].get_xdata()) == [1, 2, 3]
    (bleu_line,) = bleu_ax.get_lines()
    assert list(bleu_line.get_xdata()) == [2, 3] and list(bleu_line.get_ydata()) == [10.0, 20.0]


def test_loss_curves_from_a_dict_without_bleu_has_one_panel_and_redraws_in_place():
    fig = loss_curves({"train_loss": [2.0, 1.0]})
    assert len(fig.axes) == 1 and len(fig.axes[0].get_lines()) == 1
    again = loss_curves({"train_loss": [2.0, 1.0, 0.5], "valid_bleu": [None, 5.0, 6.0]},
                        fig=fig)
    assert again is fig and len(fig.axes) == 2
    assert len(fig.axes[0].get_lines()[0].get_xdata()) == 3


@pytest.mark.parametrize("make", [
    lambda: attention_heatmap(weights(4, 5), KEYS, QUERIES),
    lambda: attention_heatmap(weights(3, 4, 5), KEYS, QUERIES),
    lambda: positional_encoding_plot(sinusoidal_table(30, 8)),
    lambda: loss_curves({"train_loss": [2.0, 1.0], "valid_bleu": [1.0, 2.0]}),
])
def test_figures_save_to_png_under_agg_and_leave_no_open_pyplot_figures(make, tmp_path):
    assert matplotlib.get_backend().lower() == "agg"
    open_before = plt.get_fignums()
    fig = make()
    assert plt.get_fignums() == open_before  # closed in pyplot: shown once, never leaked
    path = tmp_path / "figure.png"
    fig.savefig(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
