"""Success-rate evaluation under the paper's protocol: the one evaluation loop (LIBERO's protocol runs through it too)."""

from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv

from sb3_stepnft.common.tensor_env import numpy_mode


def evaluate_success(
    model,
    env: VecEnv,
    n_eval_episodes: int = 100,
    deterministic: bool = False,
    seed: int | None = None,
    seed_env: bool = True,
) -> dict[str, Any]:
    """Success rate and return of ``model`` over ``n_eval_episodes`` episodes (SB3's ``evaluate_policy`` inside).

    The paper's protocol is the default: ``deterministic=False`` (the student, Euler ODE from random x_0).
    With ``seed``, the env is reseeded and the policy's noise drawn from a forked, seeded torch generator, so the
    evaluation is reproducible and leaves the global random state as it was. An episode counts as a success when
    its final ``info["is_success"]`` is true (``ActionChunk`` and ``SuccessInfo`` report it).

    A tensor VecEnv (:class:`~sb3_stepnft.common.tensor_env.TensorVecEnv`) is evaluated in its NumPy mode.

    :param seed_env: False: ``seed`` seeds only the policy's noise and the env keeps its own order of initial states
        (envs with fixed initial states, e.g. LIBERO's protocol in :func:`sb3_stepnft.envs.evaluate_libero`).
    :return: ``dict(success_rate=..., mean_return=..., std_return=..., episodes=..., successes=[...], env_steps=[...])``:
        ``successes`` and ``env_steps`` (underlying env steps: ``info["env_steps"]`` of action chunks, else 1 per
        step) per episode, in the order the episodes ended.
    """
    successes: list[bool] = []
    env_steps: list[int] = []
    running: dict[int, int] = {}  # env steps of each sub-env's current episode

    def record(locals_: dict[str, Any], _globals: dict[str, Any]) -> None:
        i, info = locals_["i"], locals_["info"]
        running[i] = running.get(i, 0) + int(info.get("env_steps", 1))
        if locals_["done"]:
            successes.append(bool(info.get("is_success", False)))
            env_steps.append(running.pop(i))

    with th.random.fork_rng(devices=[]), numpy_mode(env):  # a TensorVecEnv answers in NumPy for SB3's evaluation
        if seed is not None:
            if seed_env:
                env.seed(seed)
            th.manual_seed(seed)
        returns, _ = evaluate_policy(
            model, env, n_eval_episodes=n_eval_episodes, deterministic=deterministic, return_episode_rewards=True,
            callback=record,
        )  # fmt: skip
    return dict(
        success_rate=float(np.mean(successes)) if successes else 0.0,
        mean_return=float(np.mean(returns)),
        std_return=float(np.std(returns)),
        episodes=len(returns),
        successes=successes,
        env_steps=env_steps,
    )
