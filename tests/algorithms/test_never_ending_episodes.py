"""Episodes that never end (issue: reliability, item 5): a warning naming the fix, bounded pending decisions, and a
learn() call without any labelled decision says so."""

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from stable_baselines3.common.vec_env import DummyVecEnv

from sb3_stepnft import FlowGRPO, StepNFT


class Endless(gym.Env):
    observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), 0.0, False, False, {}


def test_endless_episodes_warn_once_and_pending_stays_bounded():
    model = StepNFT("MlpPolicy", DummyVecEnv([Endless, Endless]), n_steps=4, batch_size=8, n_epochs=1, seed=0)
    model.max_pending_decisions = 20
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.learn(8 * 12)  # 12 iterations of 8 decisions
    messages = [str(w.message) for w in caught]
    never = [m for m in messages if "no decision has been labelled for 10 iterations" in m]
    assert len(never) == 1 and "TimeLimit" in never[0]
    capped = [m for m in messages if "were pending" in m]
    assert len(capped) == 1 and "max_pending_decisions" in capped[0]
    assert model.rollout_buffer.n_pending == 20
    assert model.discarded_decisions == 8 * 12 - 20
    assert any("ended before any decision was labelled" in m for m in messages)
    assert model.logger.name_to_value["train/discarded_decisions"] == model.discarded_decisions


def test_learn_without_labels_warns_once_then_learns_normally():
    model = StepNFT("MlpPolicy", DummyVecEnv([Endless]), n_steps=4, seed=0)
    with pytest.warns(UserWarning, match="ended before any decision was labelled"):
        model.learn(4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # said once only
        model.learn(4, reset_num_timesteps=False)


def test_default_cap_is_twenty_rollouts():
    model = FlowGRPO("MlpPolicy", DummyVecEnv([Endless, Endless]), n_steps=2, batch_size=8, group_size=2, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.learn(4 * 22)
    assert model.rollout_buffer.n_pending == 20 * 2 * 2
