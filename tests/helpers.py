"""Small builders shared by the tests."""

import importlib.util
from pathlib import Path
from types import ModuleType

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.env_util import make_vec_env

from sb3_stepnft.envs import PointReachEnv


def point_reach_vec(n_envs=2, seed=0, **env_kwargs):
    return make_vec_env(PointReachEnv, n_envs=n_envs, seed=seed, env_kwargs=env_kwargs or None)


def record_training_data(model):
    """Record what every ``train`` takes from the buffer: a list that grows by one entry (None: nothing) per call."""
    seen = []
    original = model.rollout_buffer.pop_labelled

    def pop():
        data = original()
        seen.append(data)
        return data

    model.rollout_buffer.pop_labelled = pop
    return seen


class ImageReachEnv(gym.Env):
    """PointReach with a small image observation (a CnnPolicy target)."""

    def __init__(self):
        self.inner = PointReachEnv()
        self.observation_space = spaces.Box(0, 255, shape=(36, 36, 1), dtype=np.uint8)
        self.action_space = self.inner.action_space

    def _image(self, obs):
        img = np.zeros((36, 36, 1), dtype=np.uint8)
        for (x, y), value in (((obs[0], obs[1]), 255), ((obs[0] + obs[2], obs[1] + obs[3]), 128)):
            i, j = int((np.clip(x, -1, 1) + 1) * 17.5), int((np.clip(y, -1, 1) + 1) * 17.5)
            img[i, j, 0] = value
        return img

    def reset(self, *, seed=None, options=None):
        obs, info = self.inner.reset(seed=seed)
        return self._image(obs), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.inner.step(action)
        return self._image(obs), reward, terminated, truncated, info


class DictReachEnv(gym.Env):
    """PointReach with Dict observations (a MultiInputPolicy target)."""

    def __init__(self):
        self.inner = PointReachEnv()
        self.observation_space = spaces.Dict(
            {"position": spaces.Box(-1, 1, (2,), np.float32), "goal": spaces.Box(-2, 2, (4,), np.float32)}
        )
        self.action_space = self.inner.action_space

    def _split(self, obs):
        return {"position": obs[:2], "goal": obs[2:]}

    def reset(self, *, seed=None, options=None):
        obs, info = self.inner.reset(seed=seed)
        return self._split(obs), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.inner.step(action)
        return self._split(obs), reward, terminated, truncated, info


def load_script(name: str, folder: str = "scripts") -> ModuleType:
    """A module of ``scripts/`` (installation helpers live there, outside the importable package) or of another folder
    of the checkout (``benchmarks``)."""
    path = Path(__file__).resolve().parents[1] / folder / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{folder}_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def lerobot_fixture_vlm():
    """The tiny PaliGemma of LeRobot's fixtures (tests/data/lerobot_*); PaliGemma's SigLIP has no pooling head (π0
    checkpoints have none)."""
    from sb3_stepnft.vla.testing import tiny_paligemma_config

    config = tiny_paligemma_config(image_size=16, patch_size=8)
    config.vision_config.vision_use_head = False
    return config


def lerobot_fixture_spaces(io):
    """Observation and action spaces of a LeRobot fixture's recorded inputs (``io.pt``)."""
    tokens = io["tokens"].shape[1]
    observation_space = spaces.Dict(
        image=spaces.Box(0, 255, tuple(io["images"].shape[1:]), np.uint8),
        state=spaces.Box(-1, 1, (io["state"].shape[1],), np.float32),
        instruction_ids=spaces.Box(0, 399, (tokens,), np.int64),
        instruction_mask=spaces.MultiBinary(tokens),
    )
    return observation_space, spaces.Box(-1, 1, tuple(io["noise"].shape[1:]), np.float32)
