"""Success-rate evaluation under the paper's protocol."""

from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv


def evaluate_success(
    model,
    env: VecEnv,
    n_eval_episodes: int = 100,
    deterministic: bool = False,
    seed: int | None = None,
) -> dict[str, Any]:
    """Success rate and return of ``model`` over ``n_eval_episodes`` episodes (SB3's ``evaluate_policy`` inside).

    The paper's protocol is the default: ``deterministic=False`` (the student, Euler ODE from random x_0).
    With ``seed``, the env is reseeded and the policy's noise drawn from a forked, seeded torch generator, so the
    evaluation is reproducible and leaves the global random state as it was. An episode counts as a success when
    its final ``info["is_success"]`` is true (``ActionChunk`` and ``SuccessInfo`` report it).

    :return: ``dict(success_rate=..., mean_return=..., std_return=..., episodes=...)``.
    """
    successes: list[bool] = []

    def record(locals_: dict[str, Any], _globals: dict[str, Any]) -> None:
        if locals_["done"]:
            successes.append(bool(locals_["info"].get("is_success", False)))

    with th.random.fork_rng(devices=[]):
        if seed is not None:
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
    )
