"""Learning-rate schedules: how the step size changes during training.

Adam divides each gradient by a running estimate of its size, and at the first steps that
estimate rests on a handful of gradients, so the first updates can be large and erratic. A
*warm-up* raises the learning rate from near 0 to its peak over the first steps; afterwards it
usually decays. Lesson 07 measures which Transformers need the warm-up; lesson 09's translator
warms up, then decays linearly to 0 (:func:`warmup_linear_decay`).

Each function returns a ``torch.optim.lr_scheduler.LambdaLR``: call ``scheduler.step()`` after
every ``optimizer.step()`` (the :class:`~transformer_lesson.training.Trainer` does).
"""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LambdaLR


def warmup_factor(step: int, warmup_steps: int, total_steps: int | None = None) -> float:
    """The multiplier of the peak learning rate at ``step`` (0-based).

    Rises linearly from 1/warmup_steps to 1 over ``warmup_steps`` steps (no warm-up when 0), then
    stays at 1, or, with ``total_steps``, falls linearly to 0 at ``total_steps``.
    """
    if warmup_steps < 0 or (total_steps is not None and total_steps <= warmup_steps):
        raise ValueError(f"Need 0 <= warmup_steps < total_steps, got {warmup_steps} and {total_steps}.")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if total_steps is None:
        return 1.0
    return max(0.0, (total_steps - step) / (total_steps - warmup_steps))


def warmup_linear_decay(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int | None = None
) -> LambdaLR:
    """Linear warm-up over ``warmup_steps``, then constant, or linear decay to 0 at ``total_steps``."""
    warmup_factor(0, warmup_steps, total_steps)  # validate now, not at the first step
    return LambdaLR(optimizer, lambda step: warmup_factor(step, warmup_steps, total_steps))
