"""Plots that several lessons share: attention heatmaps, training curves, BLEU by sentence length.

Most functions draw on a given matplotlib ``ax`` (or make a figure) and return the ``ax``, so a
lesson can put several side by side; those that draw a grid of panels (:func:`plot_history`,
:func:`plot_attention_heads`) make their own figure and return it. Every plot gets a title and
labelled axes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from .training import History


def _axes(ax, figsize):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def _as_array(weights: torch.Tensor | np.ndarray) -> np.ndarray:
    return weights.detach().float().cpu().numpy() if isinstance(weights, torch.Tensor) else np.asarray(weights)


def plot_attention(
    weights: torch.Tensor | np.ndarray,
    source_tokens: Sequence[str],
    target_tokens: Sequence[str],
    title: str = "Attention weights",
    ax=None,
):
    """Heatmap of attention ``weights`` (T, S): row t says where target token t looked in the source.

    ``source_tokens`` labels the S columns and ``target_tokens`` the T rows.
    """
    weights = _as_array(weights)
    if weights.shape != (len(target_tokens), len(source_tokens)):
        raise ValueError(f"weights have shape {weights.shape} but there are {len(target_tokens)} target "
                         f"and {len(source_tokens)} source tokens: expected (target, source).")
    T, S = weights.shape
    ax = _axes(ax, (max(4.0, 0.42 * S + 1.5), max(3.0, 0.38 * T + 1.2)))
    image = ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(S), source_tokens, rotation=90)
    ax.set_yticks(range(T), target_tokens)
    ax.set(title=title, xlabel="source token (attended to)", ylabel="target token (being produced)")
    ax.figure.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label="weight")
    return ax


def plot_attention_heads(
    weights: torch.Tensor | np.ndarray,
    query_tokens: Sequence[str],
    key_tokens: Sequence[str],
    title: str = "Attention weights per head",
    row_labels: Sequence[str] | None = None,
):
    """One heatmap per attention head, in a grid with one row per layer; returns the figure.

    ``weights`` is (n_heads, T_q, T_k) for one layer or (n_layers, n_heads, T_q, T_k) for several
    (one sentence's: index the batch away first). Row t of a heatmap says where query token t
    looked among the keys. ``query_tokens`` label the T_q rows, ``key_tokens`` the T_k columns.
    Panels are titled "head h", or "layer l, head h" for several layers; ``row_labels`` (one per
    row, e.g. "encoder layer 0") replace "layer l". All panels share one colour scale, 0 to 1.
    """
    weights = _as_array(weights)
    if weights.ndim not in (3, 4):
        raise ValueError(f"weights have shape {weights.shape}: expected (n_heads, T_q, T_k) or "
                         f"(n_layers, n_heads, T_q, T_k) (index one sentence out of a batch first).")
    grid = weights if weights.ndim == 4 else weights[None]  # (rows, heads, T_q, T_k)
    n_rows, n_heads, t_q, t_k = grid.shape
    if (t_q, t_k) != (len(query_tokens), len(key_tokens)):
        raise ValueError(f"weights have shape {weights.shape}, whose last two dimensions should be "
                         f"(T_q, T_k) = ({len(query_tokens)}, {len(key_tokens)}): one row per query token "
                         f"and one column per key token.")
    if row_labels is not None and len(row_labels) != n_rows:
        raise ValueError(f"{len(row_labels)} row label(s) for {n_rows} row(s) of heads.")
    if row_labels is None and weights.ndim == 4:
        row_labels = [f"layer {layer}" for layer in range(n_rows)]
    import matplotlib.pyplot as plt

    width, height = min(6.0, max(2.5, 0.4 * t_k + 1.2)), min(6.0, max(2.2, 0.36 * t_q + 1.0))
    fig, axes = plt.subplots(n_rows, n_heads, figsize=(width * n_heads + 1.0, height * n_rows + 0.6),
                             squeeze=False, layout="constrained")
    for row in range(n_rows):
        for head in range(n_heads):
            ax = axes[row, head]
            image = ax.imshow(grid[row, head], cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
            ax.set_xticks(range(t_k), key_tokens, rotation=90)
            ax.set_yticks(range(t_q), query_tokens)
            prefix = f"{row_labels[row]}, " if row_labels is not None else ""
            ax.set(title=f"{prefix}head {head}", xlabel="key (attended to)", ylabel="query")
    fig.colorbar(image, ax=axes, label="attention weight", shrink=0.8)
    fig.suptitle(title)
    return fig


def plot_history(history: History, title: str = "Training", window: int = 50):
    """Loss per step (raw and smoothed) and, if any, evaluation metrics per step. Returns the figure.

    ``history`` is a :class:`~transformer_lesson.training.History`; ``window`` the number of steps
    the smoothed curve averages over.
    """
    import matplotlib.pyplot as plt

    metric_names = sorted({k for e in history.evals for k in e if k not in ("step", "epoch")})
    n_panels = 1 + bool(metric_names)
    fig, axes = plt.subplots(1, n_panels, figsize=(6 * n_panels, 3.8), squeeze=False)
    ax = axes[0, 0]
    ax.plot(history.steps, history.losses, alpha=0.3, lw=0.8, label="per step")
    ax.plot(history.steps, history.smoothed_losses(window), lw=2, label=f"mean of last {window}")
    ax.set(title=f"{title}: loss", xlabel="optimizer step", ylabel="cross-entropy (nats/token)")
    ax.legend()
    if metric_names:
        ax = axes[0, 1]
        for name in metric_names:
            points = [(e["step"], e[name]) for e in history.evals if name in e]
            ax.plot(*zip(*points, strict=True), marker="o", label=name)
        ax.set(title=f"{title}: evaluation", xlabel="optimizer step", ylabel="metric value")
        ax.legend()
    fig.tight_layout()
    return fig


def live_history(title: str = "Training", window: int = 50):
    """A callback ``(history, metrics) -> None`` that redraws :func:`plot_history` in place in a notebook.

    Give it to :func:`~transformer_lesson.train.train` as ``on_evaluate``: the loss and validation
    curves then grow while training runs, in one output area. Outside a notebook it does nothing.
    """
    import matplotlib.pyplot as plt

    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # plain Python: nothing to draw into
        return lambda history, metrics: None
    if get_ipython() is None:
        return lambda history, metrics: None
    handle = None

    def redraw(history, metrics) -> None:
        nonlocal handle
        history = dataclasses.replace(history, evals=[*history.evals, dict(metrics)])  # this one is not in yet
        fig = plot_history(history, title, window)
        if handle is None:
            handle = display(fig, display_id=True)
        else:
            handle.update(fig)
        plt.close(fig)

    return redraw


def plot_curves(
    x: Sequence[float],
    curves: Mapping[str, Sequence[float]],
    title: str,
    xlabel: str,
    ylabel: str,
    logx: bool = False,
    logy: bool = False,
    ax=None,
    spread: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
):
    """Several named curves over the same ``x``, with markers (timings, gradient norms, ...).

    ``spread`` maps some curves' names to (low, high) values, drawn as a shaded band around the
    curve (for timings: the fastest and the slowest run).
    """
    ax = _axes(ax, (6.5, 4))
    for name, values in curves.items():
        (line,) = ax.plot(x, values, marker="o", markersize=3, label=name)
        if spread is not None and name in spread:
            low, high = spread[name]
            ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    if logx:
        ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return ax


def plot_bleu_by_length(results: Mapping[str, Sequence], title: str = "BLEU by source length",
                        ylabel: str = "BLEU", ax=None):
    """Grouped bars: for each model (key) its :class:`~transformer_lesson.evaluation.LengthBucket` list.

    The x labels give each bucket's range in source words and how many test sentences it has.
    """
    ax = _axes(ax, (7, 4))
    names = list(results)
    buckets = results[names[0]]
    width = 0.8 / len(names)
    positions = np.arange(len(buckets))
    for k, name in enumerate(names):
        ax.bar(positions + (k - (len(names) - 1) / 2) * width, [b.bleu for b in results[name]], width, label=name)
    ax.set_xticks(positions, [f"{b.label}\n(n={b.count})" for b in buckets])
    ax.set(title=title, xlabel="source length (words)", ylabel=ylabel)
    ax.legend()
    return ax


def explore(draw: Callable[..., object], **controls):
    """Show ``controls`` (ipywidgets) above the figure ``draw(**values)`` makes; changing one redraws it.

    ``draw`` takes one keyword per control and draws one figure with pyplot (it may return it) without
    showing it. The figure is an image widget whose PNG the kernel replaces on every change. Unlike
    ``ipywidgets.interact``, nothing is captured into an ``Output`` widget: a client without a browser
    (nbclient, nbconvert, nbgrader) then has no output widget to imitate and sends the kernel nothing
    while a cell runs, which is where headless runs of ``interact`` cells hang (jupyter/nbclient#312,
    jupyter/nbconvert#1921). A control without a description gets its keyword's name. If ``draw`` raises
    after a change, its error is shown under the controls and the last figure stays (the first drawing
    raises as usual). Displays a ``VBox`` of the controls, that error line and the image; returns nothing,
    so that it is not displayed twice.
    """
    import io

    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    if not callable(draw):
        raise TypeError(f"explore(draw, ...) needs a function that draws a figure, got {draw!r}.")
    if not controls:
        raise ValueError("explore needs at least one control, e.g. explore(draw, n=ipywidgets.IntSlider(3, 1, 10)).")
    for name, control in controls.items():
        if not isinstance(control, widgets.ValueWidget):
            raise TypeError(f"control {name}={control!r} has no value to pass to draw: give an ipywidgets "
                            f"control, e.g. {name}=ipywidgets.IntSlider(...) or ipywidgets.Dropdown(...).")
        if not control.description:
            control.description = name

    def render() -> bytes:
        before = set(plt.get_fignums())
        try:
            with plt.ioff():
                figure = draw(**{name: control.value for name, control in controls.items()})
                if not isinstance(figure, plt.Figure):
                    figure = plt.gcf()
                png = io.BytesIO()
                figure.savefig(png, format="png", bbox_inches="tight")
                return png.getvalue()
        finally:
            for number in set(plt.get_fignums()) - before:
                plt.close(number)

    image, error = widgets.Image(value=render(), format="png"), widgets.Label()

    def redraw(_change) -> None:
        try:
            image.value = render()
            error.value = ""
        except Exception as problem:  # shown beside the controls: a callback's exception is seen nowhere else
            error.value = f"{type(problem).__name__}: {problem}"

    for control in controls.values():
        control.observe(redraw, names="value")
    display(widgets.VBox([*controls.values(), error, image]))
