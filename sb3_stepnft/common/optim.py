"""The one optimiser step of the package: the RL update loop of every algorithm and ``pretrain`` call it."""

import math
from collections.abc import Callable, Iterable

import torch as th
from torch import nn


class NonFiniteLossError(FloatingPointError):
    """The loss of a flow algorithm (or of pretraining) became NaN or infinite."""


def optimizer_step(
    optimizer: th.optim.Optimizer,
    loss: th.Tensor | Iterable[tuple[th.Tensor, float]],
    parameters: Iterable[nn.Parameter],
    max_grad_norm: float | None,
    describe_non_finite: Callable[[float], str] | None = None,
    synchronise: Callable[..., bool] | None = None,
) -> float:
    """``zero_grad``, ``backward``, grad-norm clip over ``parameters``, ``step``; returns the loss as a float.

    A NaN/inf loss raises :class:`NonFiniteLossError` before any weight changes, with the message
    ``describe_non_finite(loss)`` (the caller names the likely cause and the fix).

    :param loss: the loss, or (gradient accumulation) an iterable of ``(loss, weight)`` pairs, e.g. a generator
        that computes each micro-batch's loss only when asked: each is backpropagated as ``weight·loss`` before the
        next is computed, so only one micro-batch's graph is alive at a time. The returned loss is ``Σ weight·loss``.
        An empty iterable contributes zero gradient (a data-parallel rank without data for this step).
    :param synchronise: called after the backward passes as ``synchronise(parameters, failed=...)`` (``failed``: this
        process's loss was non-finite); it averages the gradients across ranks and returns whether any rank's loss
        was non-finite (:func:`sb3_stepnft.common.distributed.average_gradients`), so that all ranks raise together.
    """
    parameters = list(parameters)
    parts = [(loss, 1.0)] if isinstance(loss, th.Tensor) else loss
    optimizer.zero_grad()
    total, bad_value = 0.0, None
    for part, weight in parts:
        value = float(part.detach())
        if not math.isfinite(value):
            bad_value = value
            break
        (part if weight == 1.0 else part * weight).backward()
        total += weight * value
    failed_elsewhere = synchronise(parameters, failed=bad_value is not None) if synchronise is not None else False
    if bad_value is not None or failed_elsewhere:
        if bad_value is None:
            message = "The loss became non-finite on another data-parallel rank (its message says why)."
        elif describe_non_finite is not None:
            message = describe_non_finite(bad_value)
        else:
            message = f"The loss is {bad_value}: lower the learning rate."
        optimizer.zero_grad()
        raise NonFiniteLossError(message)
    if max_grad_norm is not None:
        th.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
    optimizer.step()
    return total


class RunningMeans:
    """Means of per-minibatch statistics over one update (what the algorithms log as ``train/*``)."""

    def __init__(self):
        self.totals: dict[str, float] = {}
        self.count = 0

    def add(self, stats: dict[str, float]) -> None:
        for key, value in stats.items():
            self.totals[key] = self.totals.get(key, 0.0) + float(value)
        self.count += 1

    def means(self) -> dict[str, float]:
        return {key: value / self.count for key, value in self.totals.items()} if self.count else {}
