"""Vector envs whose members form FlowGRPO groups with shared initial states (ALGORITHM.md §4)."""

import os
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from sb3_stepnft.wrappers import GroupSeed


def group_base_seed(seed: int, group_index: int) -> int:
    """The base seed of a group, derived from ``(seed, group_index)`` with NumPy's SeedSequence (31 bits)."""
    return int(np.random.SeedSequence([int(seed), int(group_index)]).generate_state(1, dtype=np.uint32)[0] >> 1)


def make_grouped_vec_env(
    env_fn: Callable[[], gym.Env] | str,
    n_groups: int,
    group_size: int,
    seed: int | None = 0,
    vec_env_cls: type[DummyVecEnv] | type[SubprocVecEnv] = DummyVecEnv,
    env_kwargs: dict[str, Any] | None = None,
    monitor_dir: str | None = None,
    vec_env_kwargs: dict[str, Any] | None = None,
) -> VecEnv:
    """``n_groups * group_size`` envs for FlowGRPO: env i belongs to group ``i // group_size``, every env is wrapped in
    ``Monitor`` and :class:`~sb3_stepnft.wrappers.GroupSeed`, and the members of a group share a base seed derived
    from ``(seed, group index)``, so the j-th episode of every member starts from the same initial state.

    :param env_fn: A callable returning an env, or a registered env id.
    :param n_groups: Number of groups.
    :param group_size: Members per group (FlowGRPO's ``group_size``).
    :param seed: Root seed of the groups' base seeds (None: a random one).
    :param vec_env_cls: ``DummyVecEnv`` or ``SubprocVecEnv``.
    :param env_kwargs: Keyword arguments of ``env_fn`` (or of ``gym.make``).
    :param monitor_dir: Where Monitor writes its CSV files (None: nowhere).
    :param vec_env_kwargs: Keyword arguments of ``vec_env_cls``.
    """
    for name, value in (("n_groups", n_groups), ("group_size", group_size)):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0] >> 1)
    env_kwargs = env_kwargs or {}

    def make_member(rank: int) -> Callable[[], gym.Env]:
        base_seed = group_base_seed(seed, rank // group_size)

        def _init() -> gym.Env:
            env = gym.make(env_fn, **env_kwargs) if isinstance(env_fn, str) else env_fn(**env_kwargs)
            monitor_path = os.path.join(monitor_dir, str(rank)) if monitor_dir is not None else None
            if monitor_path is not None:
                os.makedirs(monitor_dir, exist_ok=True)
            return GroupSeed(Monitor(env, filename=monitor_path), base_seed)

        return _init

    return vec_env_cls([make_member(rank) for rank in range(n_groups * group_size)], **(vec_env_kwargs or {}))
