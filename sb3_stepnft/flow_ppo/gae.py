"""Generalised advantage estimation over decisions (ALGORITHM.md §4, FlowPPO), as a pure function of arrays."""

from typing import Any

import numpy as np
import torch as th


def compute_gae(
    rewards: np.ndarray,
    values: np.ndarray,
    dones: np.ndarray,
    last_values: np.ndarray,
    gamma: float = 0.99,
    gae_lambda: float = 0.95,
) -> tuple[np.ndarray, np.ndarray]:
    """GAE(γ, λ) of a rollout, SB3's convention: cut where an episode ended, bootstrapped through the reward at a
    time-limit truncation.

    :param rewards: ``(T, N)`` reward of each decision (a chunk's rewards summed); at a truncation it already
        includes ``γ·V(terminal observation)``, as SB3's PPO adds it.
    :param values: ``(T, N)`` value estimates ``V(s_t)`` of the observations the decisions were taken in.
    :param dones: ``(T, N)`` whether the episode ended with decision t (termination or truncation).
    :param last_values: ``(N,)`` ``V`` of the observations after the last decision.
    :return: ``(advantages, returns)``, both ``(T, N)`` float32, ``returns = advantages + values``.

    Tensors in (device-resident rollouts): the same recursion in float64 on their device, tensors out.
    """
    if isinstance(rewards, th.Tensor):
        rewards, values, dones = rewards.double(), values.double(), dones.bool().double()
        next_values = last_values.double().reshape(rewards.shape[1:])
        zeros_like = th.zeros_like
    else:
        rewards = np.asarray(rewards, dtype=np.float64)
        values = np.asarray(values, dtype=np.float64)
        dones = np.asarray(dones, dtype=bool).astype(np.float64)
        next_values = np.asarray(last_values, dtype=np.float64).reshape(rewards.shape[1:])
        zeros_like = np.zeros_like
    if not rewards.shape == values.shape == dones.shape:
        raise ValueError(f"rewards, values and dones must have one shape, got {rewards.shape}, {values.shape}, {dones.shape}")
    advantages, running = zeros_like(rewards), zeros_like(next_values)
    for t in reversed(range(len(rewards))):
        non_terminal = 1.0 - dones[t]
        delta = rewards[t] + gamma * next_values * non_terminal - values[t]
        running = delta + gamma * gae_lambda * non_terminal * running
        advantages[t] = running
        next_values = values[t]
    returns = advantages + values
    if isinstance(advantages, th.Tensor):
        return advantages.float(), returns.float()
    return advantages.astype(np.float32), returns.astype(np.float32)


class GAE:
    """FlowPPO's labels (ALGORITHM.md §4): GAE(γ, λ) advantages and returns of every decision of a rollout."""

    per_decision = True  # labels a whole rollout at once: nothing stays pending

    def __init__(self, gamma: float, gae_lambda: float):
        self.gamma, self.gae_lambda = float(gamma), float(gae_lambda)

    def label(self, steps: dict[str, np.ndarray], last_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return compute_gae(steps["reward"], steps["value"], steps["done"], last_values, self.gamma, self.gae_lambda)

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        pass
