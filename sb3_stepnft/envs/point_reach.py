"""PointReach: a small sparse-success reaching task with an imperfect scripted demonstrator.

Used by the tests, ``make demo-pointreach`` and the comparison benchmark: it runs at tens of thousands of steps per
second, reports ``info["is_success"]``, and its demonstrations are deliberately imperfect (half of the
demonstrated episodes wander sideways), so a pretrained flow policy succeeds only part of the time and
online RL has room to improve it.
"""

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class PointReachEnv(gym.Env):
    """Move a point in the square [-1, 1]² to a random goal.

    - Observation: ``(x, y, goal_x - x, goal_y - y, last_action_x, last_action_y)`` (float32): the position,
      the offset to the goal and the previous action (zero after a reset), so a policy can keep a heading.
    - Action: a velocity in [-1, 1]²; the point moves by ``step_size·action``.
    - Start and goal: the start near the centre and the goal ``goal_distance`` away in a random direction
      (``goal_distance=None``: both uniform in the square).
    - Reward: 1 when the point comes within ``goal_radius`` of the goal (the episode then terminates), else 0.
    - ``info["is_success"]``: whether the goal was reached; episodes are truncated after ``max_episode_steps``.
    """

    metadata = {"render_modes": []}

    def __init__(
        self, max_episode_steps: int = 12, step_size: float = 0.1, goal_radius: float = 0.1, goal_distance: float | None = 0.7
    ):
        super().__init__()
        self.max_episode_steps = max_episode_steps
        self.step_size = step_size
        self.goal_radius = goal_radius
        self.goal_distance = goal_distance
        self.observation_space = spaces.Box(-2.0, 2.0, shape=(6,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self._position = np.zeros(2)
        self._goal = np.zeros(2)
        self._steps = 0
        self._last_action = np.zeros(2)

    def _obs(self) -> np.ndarray:
        return np.concatenate([self._position, self._goal - self._position, self._last_action]).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if self.goal_distance is None:  # start and goal anywhere in the square
            self._position = self.np_random.uniform(-0.9, 0.9, size=2)
            self._goal = self.np_random.uniform(-0.9, 0.9, size=2)
            while np.linalg.norm(self._goal - self._position) < 3 * self.goal_radius:
                self._goal = self.np_random.uniform(-0.9, 0.9, size=2)
        else:  # goal at a fixed distance in a random direction: success depends on the actions, not on luck
            self._position = self.np_random.uniform(-0.2, 0.2, size=2)
            angle = self.np_random.uniform(0.0, 2 * np.pi)
            self._goal = self._position + self.goal_distance * np.array([np.cos(angle), np.sin(angle)])
        self._steps = 0
        self._last_action = np.zeros(2)
        return self._obs(), {}

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
        self._position = np.clip(self._position + self.step_size * action, -1.0, 1.0)
        self._steps += 1
        self._last_action = action
        success = bool(np.linalg.norm(self._goal - self._position) < self.goal_radius)
        truncated = (not success) and self._steps >= self.max_episode_steps
        return self._obs(), float(success), success, truncated, {"is_success": success}


def demonstrator_action(obs: np.ndarray, wander: float, rng: np.random.Generator, step_size: float = 0.1) -> np.ndarray:
    """Scripted action: head for the goal, turned sideways by ``wander`` radians, with a little noise."""
    return steer(obs[2:4], wander, rng, step_size)


def steer(offset: np.ndarray, wander: float, rng: np.random.Generator, step_size: float = 0.1) -> np.ndarray:
    """Move along ``offset`` (goal minus position) turned by ``wander`` radians, slowing near the goal, plus noise."""
    delta = np.asarray(offset, dtype=np.float64)
    distance = np.linalg.norm(delta)
    direction = delta / max(distance, 1e-8)
    cos, sin = np.cos(wander), np.sin(wander)
    direction = np.array([cos * direction[0] - sin * direction[1], sin * direction[0] + cos * direction[1]])
    speed = min(1.0, distance / step_size)
    return np.clip(speed * direction + 0.1 * rng.standard_normal(2), -1.0, 1.0).astype(np.float32)


def collect_demonstrations(
    n_episodes: int = 40,
    seed: int = 0,
    imperfect_fraction: float = 0.5,
    wander: float = 1.3,
    env_kwargs: dict[str, Any] | None = None,
):
    """Roll out the scripted demonstrator on :class:`PointReachEnv`.

    A fraction ``imperfect_fraction`` of the episodes heads sideways (``±wander`` radians off the goal
    direction) and mostly fails; the rest head straight for the goal. Returns
    :class:`sb3_stepnft.sft.Demonstrations` and the demonstrator's success rate.
    """
    from sb3_stepnft.sft import record_demonstrations

    rng = np.random.default_rng(seed)
    env = PointReachEnv(**(env_kwargs or {}))

    def episode_actor(obs, info):
        angle = rng.choice([-wander, wander]) if rng.random() < imperfect_fraction else 0.0
        return lambda obs: demonstrator_action(obs, angle, rng, env.step_size)

    return record_demonstrations(env, n_episodes, seed, episode_actor)
