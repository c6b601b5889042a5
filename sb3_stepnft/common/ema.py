"""The EMA rollout policy θ_old and its decay schedule (ALGORITHM.md §3.5)."""

import contextlib
import math
from collections import OrderedDict
from collections.abc import Iterator

import torch as th
from torch import nn

# The authors' effective schedule (ALGORITHM.md §3.5): T = runner.max_epochs (400 in their ManiSkill configs) while the
# runs stop at 240 iterations, so T is 400/240 = 5/3 of the iterations a run makes and the rollout decay ends near 0.69.
EMA_HORIZON_RATIO = 400 / 240


def ema_decay_at(iteration: float, horizon: float, decay: float | tuple[float, float]) -> float:
    """Decay ``d(g)`` of iteration ``g`` (counted from 0).

    A float is a constant decay; a pair ``(d_start, d_end)`` is the cosine schedule
    ``d(g) = d_end - (d_end - d_start)·½·(1 + cos(π·min(g/T, 1)))`` with ``T = horizon``.
    """
    if isinstance(decay, (int, float)):
        return float(decay)
    d_start, d_end = decay
    progress = min(iteration / max(horizon, 1), 1.0)
    return d_end - (d_end - d_start) * 0.5 * (1.0 + math.cos(math.pi * progress))


def check_ema_decay(decay) -> float | tuple[float, float]:
    """Validate ``ema_decay``: a float in [0, 1] or a pair of such floats."""
    values = (decay,) if isinstance(decay, (int, float)) else tuple(decay)
    if len(values) not in (1, 2) or not all(isinstance(v, (int, float)) and 0.0 <= v <= 1.0 for v in values):
        raise ValueError(f"ema_decay must be a float in [0, 1] or a pair (start, end) of such floats, got {decay!r}")
    return float(values[0]) if len(values) == 1 else (float(values[0]), float(values[1]))


class EMAWeights:
    """Exponential moving average of the *trainable* parameters of a module (θ_old).

    It holds tensors only, so its ``state_dict`` travels with SB3's ``save``/``get_parameters`` and
    ``weights_only`` loading. Rollouts run the student module with these weights swapped in
    (:meth:`swapped_into`): no second copy of frozen parts (a VLM backbone) is ever made.
    Non-trainable buffers are not averaged: the student's are used (ALGORITHM.md §3.5).
    """

    def __init__(self, module: nn.Module):
        self._module = module
        self.shadow: OrderedDict[str, th.Tensor] = OrderedDict(
            (name, param.detach().clone()) for name, param in module.named_parameters() if param.requires_grad
        )

    def _params(self) -> Iterator[tuple[str, nn.Parameter]]:
        # The (name, parameter) pairs are looked up once: rollouts swap θ_old in at every env step, and
        # named_parameters() is the costly part of a swap. Moving the module to a device or loading a state dict
        # keeps the Parameter objects, so the cached pairs stay valid.
        cached = getattr(self, "_cached_params", None)
        if cached is None:
            params = dict(self._module.named_parameters())
            cached = self._cached_params = [(name, params[name]) for name in self.shadow]
        return iter(cached)

    @th.no_grad()
    def copy_from_student(self) -> None:
        """θ_old ← θ."""
        for name, param in self._params():
            self.shadow[name].copy_(param.detach())

    @th.no_grad()
    def update(self, decay: float) -> None:
        """θ_old ← d·θ_old + (1 - d)·θ."""
        for name, param in self._params():
            self.shadow[name].mul_(decay).add_(param.detach().to(self.shadow[name].dtype), alpha=1.0 - decay)

    @contextlib.contextmanager
    def swapped_into(self, module: nn.Module | None = None):
        """Run the student with θ_old in place of θ inside the block (pointer swap, no copy)."""
        assert module is None or module is self._module
        swapped = list(self._params())
        for name, param in swapped:
            param.data, self.shadow[name] = self.shadow[name], param.data
        try:
            yield
        finally:
            for name, param in swapped:
                param.data, self.shadow[name] = self.shadow[name], param.data

    def state_dict(self) -> "OrderedDict[str, th.Tensor]":
        return OrderedDict((name, tensor.detach().clone()) for name, tensor in self.shadow.items())

    def load_state_dict(self, state_dict, strict: bool = True) -> None:
        missing = set(self.shadow) - set(state_dict)
        unexpected = set(state_dict) - set(self.shadow)
        if strict and (missing or unexpected):
            raise RuntimeError(
                "EMA weights do not match the policy's trainable parameters "
                f"(missing: {sorted(missing)[:5]}, unexpected: {sorted(unexpected)[:5]}). "
                "Was the checkpoint saved with another policy or net_arch?"
            )
        with th.no_grad():
            for name, tensor in state_dict.items():
                if name in self.shadow:
                    if self.shadow[name].shape != tensor.shape:
                        raise RuntimeError(
                            f"EMA weight {name!r} has shape {tuple(tensor.shape)}, the policy expects "
                            f"{tuple(self.shadow[name].shape)}: the checkpoint belongs to another architecture."
                        )
                    self.shadow[name].copy_(tensor)

    def to(self, device) -> "EMAWeights":
        for name in self.shadow:
            self.shadow[name] = self.shadow[name].to(device)
        return self
