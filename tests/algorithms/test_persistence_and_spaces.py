"""Checkpoints (atomic saves, corrupted or foreign files) and the observation spaces PPO accepts."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

from sb3_stepnft import StepNFT
from tests.helpers import point_reach_vec


def test_failed_save_leaves_no_partial_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    model = StepNFT("MlpPolicy", point_reach_vec(), seed=0)
    model.save(tmp_path / "model")
    good = (tmp_path / "model.zip").read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("stable_baselines3.common.base_class.save_to_zip_file", broken)
    with pytest.raises(OSError, match="disk full"):
        model.save(tmp_path / "model")
    assert (tmp_path / "model.zip").read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.zip"]


def test_corrupted_and_foreign_checkpoints_give_clear_errors(tmp_path):
    (tmp_path / "garbage.zip").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="not a zip archive"):
        StepNFT.load(tmp_path / "garbage.zip")
    PPO("MlpPolicy", point_reach_vec(), n_steps=16).save(tmp_path / "ppo")
    with pytest.raises(ValueError, match="PPO.load"):
        StepNFT.load(tmp_path / "ppo")
    import zipfile

    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("hello.txt", "hi")
    with pytest.raises(ValueError, match="not an SB3 checkpoint"):
        StepNFT.load(tmp_path / "other.zip")


class DiscreteObsEnv(gym.Env):
    """Discrete / MultiBinary / MultiDiscrete observations with a Box action: SB3 one-hot encodes them."""

    def __init__(self, space):
        self.observation_space = space
        self.action_space = spaces.Box(-1, 1, (2,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        self.t += 1
        success = bool(action[0] > 0.5)
        return self.observation_space.sample(), float(success), success, self.t >= 5, {"is_success": success}


@pytest.mark.parametrize(
    "space", [spaces.Discrete(4), spaces.MultiDiscrete([3, 2]), spaces.MultiBinary(3)], ids=lambda s: type(s).__name__
)
def test_observation_spaces_ppo_accepts(space):
    env = make_vec_env(lambda: DiscreteObsEnv(space), n_envs=2, seed=0)
    PPO("MlpPolicy", env, n_steps=8, batch_size=16).learn(16)  # the same env works with PPO
    model = StepNFT("MlpPolicy", env, n_steps=8, batch_size=16, n_epochs=1, seed=0)
    model.learn(32)
    actions, _ = model.predict(env.reset(), deterministic=True)
    assert actions.shape == (2, 2)
