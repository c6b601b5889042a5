"""The one evaluation loop, evaluate_success: per-episode outcomes and env steps, and seeding only the policy."""

import numpy as np
import pytest
from stable_baselines3.common.env_util import make_vec_env

from sb3_stepnft.common.evaluation import evaluate_success
from sb3_stepnft.envs import PointReachEnv
from sb3_stepnft.wrappers import ActionChunk


class ZeroModel:
    """Never moves: every PointReach episode runs to its time limit without success."""

    def __init__(self, action_space):
        self.action_space = action_space

    def predict(self, obs, state=None, episode_start=None, deterministic=False):
        return np.zeros((len(episode_start), *self.action_space.shape), np.float32), None


def test_per_episode_successes_and_env_steps_of_chunks():
    env = make_vec_env(lambda: ActionChunk(PointReachEnv(max_episode_steps=12), 5), n_envs=2, seed=0)
    result = evaluate_success(ZeroModel(env.action_space), env, n_eval_episodes=4, seed=0)
    assert result["episodes"] == 4 and result["successes"] == [False] * 4 and result["success_rate"] == 0.0
    assert result["env_steps"] == [12] * 4  # 5 + 5 + 2 underlying steps, not 3 decisions


def test_seed_env_false_seeds_only_the_policy(monkeypatch):
    env = make_vec_env(PointReachEnv, n_envs=1)

    def no_reseed(seed=None):
        raise AssertionError("the env was reseeded")

    monkeypatch.setattr(env, "seed", no_reseed)
    assert evaluate_success(ZeroModel(env.action_space), env, n_eval_episodes=1, seed=3, seed_env=False)["episodes"] == 1
    with pytest.raises(AssertionError, match="reseeded"):
        evaluate_success(ZeroModel(env.action_space), env, n_eval_episodes=1, seed=3)
