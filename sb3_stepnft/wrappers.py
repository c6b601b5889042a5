"""Gymnasium wrappers: action chunks and success adapters."""

from collections.abc import Callable
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class ActionChunk(gym.Wrapper):
    """Execute a chunk of ``size`` actions per step: Box(A) becomes Box(size, A).

    Rewards are summed (not discounted). The chunk stops early at termination or truncation; the last inner
    ``info`` is passed through (with the terminal observation), ``info["is_success"]`` is True if any inner step
    succeeded (present only when the inner env reports it) and ``info["env_steps"]`` counts the inner steps executed.

    :param env: An env with a 1-D Box action space.
    :param size: H, the number of rows of a chunk.
    """

    def __init__(self, env: gym.Env, size: int):
        super().__init__(env)
        if not isinstance(env.action_space, spaces.Box) or len(env.action_space.shape) != 1:
            raise ValueError(f"ActionChunk needs a 1-D Box action space, got {env.action_space}")
        if int(size) != size or size < 1:
            raise ValueError(f"ActionChunk size must be a positive integer, got {size!r}")
        self.size = int(size)
        inner = env.action_space
        self.action_space = spaces.Box(
            low=np.tile(inner.low, (self.size, 1)), high=np.tile(inner.high, (self.size, 1)), dtype=inner.dtype
        )

    def step(self, action: np.ndarray) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        action = np.asarray(action).reshape(self.action_space.shape)
        total_reward = 0.0
        success_seen, any_success = False, False
        terminated = truncated = False
        obs, info = None, {}
        steps = 0
        for row in action:
            obs, reward, terminated, truncated, info = self.env.step(row)
            total_reward += float(reward)
            steps += 1
            if "is_success" in info:
                success_seen = True
                any_success = any_success or bool(info["is_success"])
            if terminated or truncated:
                break
        info = dict(info)
        if success_seen:
            info["is_success"] = any_success
        info["env_steps"] = steps
        return obs, total_reward, terminated, truncated, info


class SuccessInfo(gym.Wrapper):
    """Report an env's success signal as ``info["is_success"]``, the key SB3 and sb3_stepnft read.

    :param env: The env.
    :param key: The info key under which the env reports success (e.g. ManiSkill's ``"success"``).
    :param success_fn: Alternatively, ``success_fn(obs, reward, terminated, truncated, info) -> bool``.
    """

    def __init__(
        self,
        env: gym.Env,
        key: str | None = "success",
        success_fn: Callable[[Any, float, bool, bool, dict[str, Any]], bool] | None = None,
    ):
        super().__init__(env)
        if (key is None) == (success_fn is None):
            raise ValueError("SuccessInfo needs exactly one of `key` or `success_fn`")
        self.key = key
        self.success_fn = success_fn

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self.success_fn is not None:
            success = self.success_fn(obs, reward, terminated, truncated, info)
        else:
            if self.key not in info:
                raise KeyError(
                    f"SuccessInfo(key={self.key!r}): the env's info has no {self.key!r} (keys: {sorted(info)}). "
                    "Pass the key the env uses, or success_fn=..."
                )
            success = info[self.key]
        info = dict(info)
        info["is_success"] = bool(np.asarray(success).item())
        return obs, reward, terminated, truncated, info
