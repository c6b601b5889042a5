"""A batched PointReach written in torch: a tensor VecEnv on any device, to test and measure device-resident rollouts
without a GPU simulator (docs/scaling.md, "Device-resident rollouts").

It follows the tensor VecEnv contract of :mod:`sb3_stepnft.common.tensor_env` (``as_tensors=True``) or is an
ordinary NumPy VecEnv with SB3's list infos (``as_tensors=False``) with *the same* dynamics and random stream, so the
two rollout paths can be compared step for step.
"""

from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.monitor import Monitor

from sb3_stepnft.common.tensor_env import TensorVecEnv


class TorchPointReachVecEnv(TensorVecEnv):
    """``num_envs`` PointReach tasks (:class:`~sb3_stepnft.envs.point_reach.PointReachEnv`'s rules) as batched tensors.

    Observation ``(x, y, goal_x - x, goal_y - y, last_action_x, last_action_y)``; action a velocity in [-1, 1]²;
    reward 1 and termination when the point is within ``goal_radius`` of the goal; truncation after
    ``max_episode_steps``. Infos: ``is_success`` (every step), ``TimeLimit.truncated`` and ``terminal_observation``
    (every step, rows valid where done); the NumPy mode adds Monitor's ``episode`` statistics where an episode
    ended. Finished sub-envs are reset inside ``step_wait`` (partial reset) without a host sync: new starts are drawn
    for every sub-env and kept where one finished.

    The random stream is the env's own ``torch.Generator`` on ``device``, seeded by ``seed()`` (SB3's convention:
    the next ``reset`` uses it), independent of the global torch generator of the policy.

    :param num_envs: Number of sub-envs.
    :param device: Torch device of the state and outputs.
    :param as_tensors: Device tensors (True) or SB3's NumPy types (False).
    """

    def __init__(
        self,
        num_envs: int = 4,
        device: th.device | str = "cpu",
        as_tensors: bool = True,
        max_episode_steps: int = 12,
        step_size: float = 0.1,
        goal_radius: float = 0.1,
        goal_distance: float = 0.7,
    ):
        super().__init__(
            num_envs,
            spaces.Box(-2.0, 2.0, shape=(6,), dtype=np.float32),
            spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32),
            device=device,
            as_tensors=as_tensors,
        )
        self.max_episode_steps = int(max_episode_steps)
        self.step_size = float(step_size)
        self.goal_radius = float(goal_radius)
        self.goal_distance = float(goal_distance)
        self.generator = th.Generator(device=self.device)
        self.generator.manual_seed(0)
        n = self.num_envs
        self._position = th.zeros(n, 2, device=self.device)
        self._goal = th.zeros(n, 2, device=self.device)
        self._last_action = th.zeros(n, 2, device=self.device)
        self._steps = th.zeros(n, dtype=th.long, device=self.device)
        self._returns = th.zeros(n, device=self.device)

    def _draw_starts(self) -> tuple[th.Tensor, th.Tensor]:
        n = self.num_envs
        position = (th.rand(n, 2, generator=self.generator, device=self.device) * 2 - 1) * 0.2
        angle = th.rand(n, generator=self.generator, device=self.device) * (2 * np.pi)
        goal = position + self.goal_distance * th.stack([th.cos(angle), th.sin(angle)], dim=1)
        return position, goal

    def _obs(self) -> th.Tensor:
        return th.cat([self._position, self._goal - self._position, self._last_action], dim=1)

    def reset(self):
        if self._seeds[0] is not None:
            self.generator.manual_seed(int(self._seeds[0]))
        self._reset_seeds()
        self._reset_options()
        self._position, self._goal = self._draw_starts()
        self._last_action.zero_()
        self._steps.zero_()
        self._returns.zero_()
        self.reset_infos = [{} for _ in range(self.num_envs)]
        obs = self._obs()
        return obs if self.returns_tensors else obs.cpu().numpy()

    def step_wait(self):
        action = self._actions.reshape(self.num_envs, 2).clamp(-1.0, 1.0)
        self._position = (self._position + self.step_size * action).clamp(-1.0, 1.0)
        self._last_action = action
        self._steps += 1
        success = th.linalg.vector_norm(self._goal - self._position, dim=1) < self.goal_radius
        truncated = ~success & (self._steps >= self.max_episode_steps)
        dones = success | truncated
        rewards = success.float()
        self._returns += rewards
        terminal = self._obs()
        infos: dict[str, Any] = {"is_success": success, "TimeLimit.truncated": truncated, "terminal_observation": terminal}
        if not self.returns_tensors:  # Monitor-like episode statistics of the NumPy mode (where done)
            infos["episode"] = {"r": self._returns.clone(), "l": self._steps.clone()}
        # partial reset without a host sync: starts are drawn for every sub-env, kept where one finished
        position, goal = self._draw_starts()
        done = dones[:, None]
        self._position = th.where(done, position, self._position)
        self._goal = th.where(done, goal, self._goal)
        self._last_action = th.where(done, th.zeros_like(self._last_action), self._last_action)
        self._steps = th.where(dones, th.zeros_like(self._steps), self._steps)
        self._returns = th.where(dones, th.zeros_like(self._returns), self._returns)
        return self._output(self._obs(), rewards, dones, infos)

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        """Monitor's episode statistics are emulated (``info["episode"]`` in the NumPy mode), as ManiSkillGPUVecEnv."""
        return [issubclass(Monitor, wrapper_class)] * self._count(indices)


__all__ = ["TorchPointReachVecEnv"]
