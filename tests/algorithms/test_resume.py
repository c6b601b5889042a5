"""Exact resume (issue: reliability): learn(N/2); save; load; learn(N/2, reset_num_timesteps=False) continues the same
algorithm -- EMA schedule position, random stream, optimiser state -- and pending decisions are counted, not lost."""

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.vec_env import DummyVecEnv

from sb3_stepnft import FlowGRPO, FlowPPO, StepNFT


class Tick(gym.Env):
    """Deterministic reset, 4-step episodes; success when the last action is positive."""

    observation_space = spaces.Box(-1.0, 2.0, (2,), np.float32)
    action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0, 1.0], np.float32), {}

    def step(self, action):
        self.t += 1
        done = self.t >= 4
        success = bool(done and action[0] > 0)
        info = {"is_success": success} if done else {}
        return np.array([self.t / 4, 1.0], np.float32), float(action[0]), False, done, info


def env():
    return DummyVecEnv([Tick, Tick])


def make(algo):
    kwargs = dict(n_steps=4, batch_size=8, n_epochs=2, seed=3)
    if algo is FlowGRPO:
        kwargs["group_size"] = 2
    return algo("MlpPolicy", env(), **kwargs)


@pytest.mark.parametrize("algo", [StepNFT, FlowPPO, FlowGRPO])
def test_resume_is_bit_exact(tmp_path, algo):
    straight = make(algo)
    straight.learn(16)
    straight.learn(16, reset_num_timesteps=False)

    first = make(algo)
    first.learn(16)  # episodes end exactly at the rollout boundary: nothing pending
    first.save(tmp_path / "half")
    th.manual_seed(12345)  # whatever happens in between must not matter
    resumed = algo.load(tmp_path / "half", env=env())
    assert resumed.discarded_decisions == 0
    resumed.learn(16, reset_num_timesteps=False)

    assert resumed.num_timesteps == straight.num_timesteps
    for (name, a), b in zip(straight.policy.state_dict().items(), resumed.policy.state_dict().values()):
        assert th.equal(a, b), name
    if algo is StepNFT:
        assert resumed.ema_progress == straight.ema_progress
        for name, tensor in straight.ema.shadow.items():
            assert th.equal(tensor, resumed.ema.shadow[name]), name


def test_pending_decisions_at_save_are_counted_as_discarded(tmp_path):
    model = StepNFT("MlpPolicy", env(), n_steps=3, batch_size=8, n_epochs=1, seed=0)
    model.learn(6)  # 3 steps per env into 4-step episodes: 6 decisions pending
    assert model.rollout_buffer.n_pending == 6
    model.save(tmp_path / "mid")
    loaded = StepNFT.load(tmp_path / "mid", env=env())  # loading to evaluate says nothing
    assert loaded.discarded_decisions == model.discarded_decisions + 6
    with pytest.warns(UserWarning, match="6 decisions"):  # resuming training says what was lost
        loaded.learn(6, reset_num_timesteps=False)
    assert loaded.logger.name_to_value["train/discarded_decisions"] >= 6
