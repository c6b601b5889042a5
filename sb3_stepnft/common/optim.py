"""The one optimiser step of the package: the RL update loop of every algorithm and ``pretrain`` call it."""

from collections.abc import Callable, Iterable

import torch as th
from torch import nn


class NonFiniteLossError(FloatingPointError):
    """The loss of a flow algorithm (or of pretraining) became NaN or infinite."""


def optimizer_step(
    optimizer: th.optim.Optimizer,
    loss: th.Tensor,
    parameters: Iterable[nn.Parameter],
    max_grad_norm: float | None,
    describe_non_finite: Callable[[float], str] | None = None,
) -> float:
    """``zero_grad``, ``backward``, grad-norm clip over ``parameters``, ``step``; returns the loss as a float.

    A NaN/inf loss raises :class:`NonFiniteLossError` before any weight changes, with the message
    ``describe_non_finite(loss)`` (the caller names the likely cause and the fix).
    """
    value = float(loss.detach())
    if not th.isfinite(loss.detach()):
        message = describe_non_finite(value) if describe_non_finite else f"The loss is {value}: lower the learning rate."
        raise NonFiniteLossError(message)
    optimizer.zero_grad()
    loss.backward()
    if max_grad_norm is not None:
        th.nn.utils.clip_grad_norm_(list(parameters), max_grad_norm)
    optimizer.step()
    return value


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
