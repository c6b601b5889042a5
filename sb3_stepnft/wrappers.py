"""Gymnasium wrappers: action chunks, success adapters and group seeding."""

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


class GroupSeed(gym.Wrapper):
    """Reseed every reset with ``base_seed + episode_counter``: envs built with the same ``base_seed`` start their
    j-th episodes from the same initial state (FlowGRPO's groups, ALGORITHM.md §4). No extra ``reset()`` is ever
    made, so Monitor statistics and episode counts are those of an unwrapped env.

    A seed passed to ``reset()`` is ignored: SB3's VecEnvs pass ``seed + env index`` to every member, which would
    give each member its own initial states. Choose the seeds with ``base_seed`` (or use
    :func:`sb3_stepnft.envs.make_grouped_vec_env`).

    :param env: The env to reseed; its initial state must be a function of the reset seed.
    :param base_seed: Seed of the first episode; episode j uses ``base_seed + j``.
    """

    def __init__(self, env: gym.Env, base_seed: int):
        super().__init__(env)
        if isinstance(base_seed, bool) or int(base_seed) != base_seed or base_seed < 0:
            raise ValueError(f"GroupSeed base_seed must be a non-negative integer, got {base_seed!r}")
        self.base_seed = int(base_seed)
        self.episode_counter = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        episode_seed = self.base_seed + self.episode_counter
        self.episode_counter += 1
        return self.env.reset(seed=episode_seed, options=options)

    def set_episode_counter(self, episode_counter: int) -> None:
        """Make the next reset use ``base_seed + episode_counter`` (FlowGRPO realigns a group before it resets the
        env from outside, when members had finished different numbers of episodes)."""
        if int(episode_counter) != episode_counter or episode_counter < 0:
            raise ValueError(f"episode_counter must be a non-negative integer, got {episode_counter!r}")
        self.episode_counter = int(episode_counter)
