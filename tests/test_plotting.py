"""The shared plots draw what they are given: the right panels, titles, labels and values."""

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from transformer_lesson.plotting import plot_attention_heads, plot_history
from transformer_lesson.training import History


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def heatmaps(fig):
    """The panels that hold a heatmap (the colorbar's axes hold none)."""
    return [ax for ax in fig.axes if ax.images]


def test_one_heatmap_per_head_with_its_weights_titles_labels_and_one_colorbar():
    weights = torch.softmax(torch.randn(3, 4, 5), dim=-1)  # 3 heads, 4 queries, 5 keys
    queries, keys = list("abcd"), list("vwxyz")
    fig = plot_attention_heads(weights, queries, keys, title="three heads")
    panels = heatmaps(fig)
    assert len(panels) == 3 and len(fig.axes) == 4  # plus one shared colorbar
    assert [ax.get_title() for ax in panels] == ["head 0", "head 1", "head 2"]
    assert fig.get_suptitle() == "three heads"
    for head, ax in enumerate(panels):
        [image] = ax.images
        np.testing.assert_array_equal(image.get_array(), weights[head].numpy())
        assert image.get_clim() == (0.0, 1.0)
        assert [t.get_text() for t in ax.get_xticklabels()] == keys
        assert [t.get_text() for t in ax.get_yticklabels()] == queries
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("key (attended to)", "query")


def test_several_layers_make_one_row_each():
    weights = np.random.default_rng(0).random((2, 3, 4, 4))  # 2 layers of 3 heads
    tokens = ["<bos>", "a", "b", "<eos>"]
    fig = plot_attention_heads(weights, tokens, tokens)
    panels = heatmaps(fig)
    assert len(panels) == 6
    assert [ax.get_title() for ax in panels] == [f"layer {layer}, head {head}" for layer in range(2)
                                                 for head in range(3)]
    rows = sorted({round(ax.get_position().y0, 3) for ax in panels}, reverse=True)
    assert len(rows) == 2  # a grid of 2 rows
    for index, ax in enumerate(panels):
        np.testing.assert_array_equal(ax.images[0].get_array(), weights[index // 3, index % 3])
    labelled = plot_attention_heads(weights, tokens, tokens, row_labels=["encoder", "decoder"])
    assert heatmaps(labelled)[3].get_title() == "decoder, head 0"


def test_shapes_that_do_not_fit_the_tokens_are_clear_errors():
    weights = torch.rand(2, 4, 5)
    with pytest.raises(ValueError, match=r"\(T_q, T_k\) = \(5, 4\)"):
        plot_attention_heads(weights, list("abcde"), list("wxyz"))  # query and key tokens swapped
    with pytest.raises(ValueError, match="index one sentence out of a batch"):
        plot_attention_heads(torch.rand(1, 1, 2, 4, 5), list("abcd"), list("vwxyz"))
    with pytest.raises(ValueError, match="expected"):
        plot_attention_heads(torch.rand(4, 5), list("abcd"), list("vwxyz"))
    with pytest.raises(ValueError, match="1 row label"):
        plot_attention_heads(torch.rand(2, 2, 4, 5), list("abcd"), list("vwxyz"), row_labels=["only one"])


def test_history_plot_draws_the_loss_raw_and_smoothed_and_each_metric():
    history = History()
    for step in range(1, 31):
        history.log_step(step, 0, 3.0 / step, 1e-3, 1.0)
    history.evals += [{"step": 15, "epoch": 0, "bleu": 10.0}, {"step": 30, "epoch": 0, "bleu": 12.5}]
    fig = plot_history(history, title="toy", window=5)
    loss, metrics = fig.axes
    assert (loss.get_title(), metrics.get_title()) == ("toy: loss", "toy: evaluation")
    raw, smoothed = loss.get_lines()
    assert list(raw.get_ydata()) == history.losses and list(raw.get_xdata()) == history.steps
    np.testing.assert_allclose(smoothed.get_ydata(), history.smoothed_losses(5))
    assert smoothed.get_label() == "mean of last 5"
    [bleu] = metrics.get_lines()
    assert bleu.get_label() == "bleu" and list(bleu.get_xdata()) == [15, 30] and list(bleu.get_ydata()) == [10.0, 12.5]
    assert all(ax.get_xlabel() and ax.get_ylabel() for ax in fig.axes)


def test_history_without_evaluations_is_one_panel():
    history = History()
    history.log_step(1, 0, 2.0, 1e-3, 1.0)
    fig = plot_history(history)
    assert [ax.get_title() for ax in fig.axes] == ["Training: loss"]
