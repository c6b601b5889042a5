import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from stable_baselines3.common.vec_env import DummyVecEnv

from sb3_stepnft.envs import PointReachEnv
from sb3_stepnft.wrappers import ActionChunk, SuccessInfo


class Counter(gym.Env):
    """Reward = step index; terminates at step ``end``; success reported at step ``success_at`` only."""

    def __init__(self, end=5, success_at=2, key="is_success", limit=None):
        self.end, self.success_at, self.key, self.limit = end, success_at, key, limit
        self.observation_space = spaces.Box(0, 100, (1,), np.float32)
        self.action_space = spaces.Box(-1, 1, (2,), np.float32)
        self.actions = []

    def reset(self, *, seed=None, options=None):
        self.t, self.actions = 0, []
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        self.actions.append(np.array(action))
        info = {self.key: self.t == self.success_at} if self.key else {}
        truncated = self.limit is not None and self.t >= self.limit
        return np.array([self.t], np.float32), float(self.t), self.t >= self.end, truncated, info


def test_action_chunk_space_sum_and_success_any():
    env = ActionChunk(Counter(end=10, success_at=2), size=3)
    assert env.action_space.shape == (3, 2)
    env.reset()
    chunk = np.arange(6, dtype=np.float32).reshape(3, 2) / 10
    obs, reward, terminated, truncated, info = env.step(chunk)
    assert reward == 1 + 2 + 3 and info["env_steps"] == 3 and info["is_success"] is True
    assert np.allclose(np.array(env.unwrapped.actions), chunk)
    _, reward, _, _, info = env.step(chunk)
    assert reward == 4 + 5 + 6 and info["is_success"] is False


def test_action_chunk_stops_at_termination_and_truncation():
    env = ActionChunk(Counter(end=4, success_at=0), size=3)
    env.reset()
    env.step(np.zeros((3, 2)))
    obs, reward, terminated, truncated, info = env.step(np.zeros((3, 2)))
    assert terminated and info["env_steps"] == 1 and reward == 4 and obs[0] == 4
    env = ActionChunk(Counter(end=100, limit=5), size=3)
    env.reset()
    env.step(np.zeros((3, 2)))
    _, _, terminated, truncated, info = env.step(np.zeros((3, 2)))
    assert truncated and not terminated and info["env_steps"] == 2


def test_action_chunk_no_success_key_when_env_has_none():
    env = ActionChunk(Counter(key=None), size=2)
    env.reset()
    _, _, _, _, info = env.step(np.zeros((2, 2)))
    assert "is_success" not in info


def test_action_chunk_in_vec_env_passes_terminal_observation_and_truncation():
    vec = DummyVecEnv([lambda: ActionChunk(Counter(end=100, limit=4), size=3)])
    vec.reset()
    vec.step(np.zeros((1, 3, 2)))
    _, _, dones, infos = vec.step(np.zeros((1, 3, 2)))
    assert dones[0] and infos[0]["TimeLimit.truncated"] and infos[0]["terminal_observation"][0] == 4


def test_action_chunk_rejects_bad_input():
    with pytest.raises(ValueError):
        ActionChunk(gym.make("CartPole-v1"), size=2)
    with pytest.raises(ValueError):
        ActionChunk(PointReachEnv(), size=0)


def test_success_info_adapter():
    env = SuccessInfo(Counter(key="success", success_at=1), key="success")
    env.reset()
    assert env.step(np.zeros(2))[-1]["is_success"] is True
    assert env.step(np.zeros(2))[-1]["is_success"] is False
    env = SuccessInfo(Counter(key=None), key=None, success_fn=lambda obs, r, term, trunc, info: r >= 2)
    env.reset()
    assert [env.step(np.zeros(2))[-1]["is_success"] for _ in range(2)] == [False, True]
    env = SuccessInfo(Counter(key=None), key="success")
    env.reset()
    with pytest.raises(KeyError, match="success_fn"):
        env.step(np.zeros(2))
    with pytest.raises(ValueError):
        SuccessInfo(Counter(), key=None)
