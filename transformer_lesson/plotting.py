"""Plots that several lessons share: attention heatmaps, curves, BLEU by sentence length.

Each function draws on a given matplotlib ``ax`` (or makes a figure) and returns the ``ax``, so a
lesson can put several side by side. Every plot gets a title and labelled axes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch


def _axes(ax, figsize):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


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
    weights = weights.detach().float().cpu().numpy() if isinstance(weights, torch.Tensor) else np.asarray(weights)
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
