"""ManiSkill's GPU-parallel simulator as one SB3 VecEnv: ``make_maniskill_env(..., sim_backend="gpu")``.

**Untested without a GPU.** This code was written against ManiSkill 3.0.1's batched API but has never run on a CUDA
device: the machines this package is developed and tested on have none. What is tested (tests/envs/test_maniskill.py) is the
bookkeeping of :class:`ManiSkillGPUVecEnv` on a batched *CPU* env with one sub-env, and the clear errors of
:func:`make_maniskill_gpu_env` without CUDA. Action chunks, FlowGRPO groups and narrowed action bounds are CPU-only.
"""

import dataclasses
import time
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvObs, VecEnvStepReturn

from sb3_stepnft.envs.maniskill import ManiSkillSpec, as_spec, make_maniskill_base_env


def make_maniskill_gpu_env(
    spec: ManiSkillSpec | str, num_envs: int, seed: int | None = None, **fields: Any
) -> "ManiSkillGPUVecEnv":
    """``num_envs`` sub-envs in ManiSkill's GPU-parallel simulator as one SB3 VecEnv. **Untested** (see the module
    docstring); raises a RuntimeError naming the fix when no CUDA device is usable.

    :param spec: The sub-env (or an env id, with ``fields`` as the other :class:`ManiSkillSpec` fields); its
        ``chunk_size`` must be 1 and its ``action_bounds`` None. A ``"cpu"`` render backend becomes ``"gpu"``.
    :param num_envs: Number of sub-envs, batched in one simulator.
    :param seed: Seeds the first reset.
    """
    import torch as th

    spec = as_spec(spec, **fields)
    if spec.chunk_size != 1 or spec.action_bounds is not None:
        raise NotImplementedError(
            "sim_backend='gpu' supports chunk_size=1 and no action_bounds (GPU sub-envs share one batched simulator); "
            "use sim_backend='cpu' for action chunks, FlowGRPO groups and narrowed bounds"
        )
    if not th.cuda.is_available():
        raise RuntimeError(
            "sim_backend='gpu' needs a CUDA GPU (torch.cuda.is_available() is False here). Use sim_backend='cpu', "
            "which runs one ManiSkill env per sub-env."
        )
    if spec.render_backend == "cpu":
        spec = dataclasses.replace(spec, render_backend="gpu")
    env = make_maniskill_base_env(spec, "physx_cuda", num_envs)
    vec_env = ManiSkillGPUVecEnv(env, instruction=spec.instruction_text)
    if seed is not None:
        vec_env.seed(seed)
    return vec_env


def _to_numpy(value):
    if isinstance(value, dict):
        return {key: _to_numpy(item) for key, item in value.items()}
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _take(obs, index: int):
    if isinstance(obs, dict):
        return {key: value[index].copy() for key, value in obs.items()}
    return obs[index].copy()  # a copy: the partial reset overwrites obs in place


def _put(obs, index: np.ndarray, new):
    if isinstance(obs, dict):
        for key in obs:
            obs[key][index] = new[key][index]
    else:
        obs[index] = new[index]


class ManiSkillGPUVecEnv(VecEnv):
    """SB3 VecEnv over one batched ManiSkill env (GPU simulator; also accepts a CPU env with ``num_envs=1``).

    Emulates what ``Monitor`` and SB3's VecEnvs add per sub-env: ``info["episode"]`` (``r``, ``l``, ``t``),
    ``is_success``, ``TimeLimit.truncated`` and ``terminal_observation`` at episode ends, followed by a partial reset of
    the finished sub-envs. ``env_is_wrapped(Monitor)`` therefore answers True.

    :param env: A ManiSkill env from ``gym.make(..., num_envs=N)`` (observations: batched torch tensors).
    :param instruction: Optional instruction text, reported in every info.
    """

    def __init__(self, env: gym.Env, instruction: str | None = None):
        base = env.unwrapped
        self.env = env
        self.instruction = instruction
        super().__init__(int(base.num_envs), base.single_observation_space, base.single_action_space)
        self._actions: np.ndarray | None = None
        self._returns = np.zeros(self.num_envs, dtype=np.float64)
        self._lengths = np.zeros(self.num_envs, dtype=np.int64)
        self._start = time.time()

    def _info(self) -> dict[str, Any]:
        return {} if self.instruction is None else {"instruction": self.instruction}

    def reset(self) -> VecEnvObs:
        seeds = None if all(s is None for s in self._seeds) else [int(s or 0) for s in self._seeds]
        obs, _ = self.env.reset(seed=seeds, options=self._options[0] or None)
        self._reset_seeds()
        self._reset_options()
        self._returns[:] = 0.0
        self._lengths[:] = 0
        self.reset_infos = [self._info() for _ in range(self.num_envs)]
        return _to_numpy(obs)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions, dtype=np.float32)

    def step_wait(self) -> VecEnvStepReturn:
        import torch as th

        device = getattr(self.env.unwrapped, "device", "cpu")
        obs, reward, terminated, truncated, info = self.env.step(th.as_tensor(self._actions, device=device))
        obs = _to_numpy(obs)
        reward = _to_numpy(reward).astype(np.float32).reshape(self.num_envs)
        terminated = _to_numpy(terminated).astype(bool).reshape(self.num_envs)
        truncated = _to_numpy(truncated).astype(bool).reshape(self.num_envs)
        success = _to_numpy(info["success"]).astype(bool).reshape(self.num_envs) if "success" in info else None
        dones = terminated | truncated
        self._returns += reward
        self._lengths += 1
        infos = [self._info() for _ in range(self.num_envs)]
        finished = np.flatnonzero(dones)
        for i in finished:
            infos[i]["terminal_observation"] = _take(obs, i)
            infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
            if success is not None:
                infos[i]["is_success"] = bool(success[i])
            infos[i]["episode"] = {
                "r": float(self._returns[i]),
                "l": int(self._lengths[i]),
                "t": round(time.time() - self._start, 6),
            }
        if len(finished):
            new_obs, _ = self.env.reset(options=dict(env_idx=th.as_tensor(finished, device=device)))
            _put(obs, finished, _to_numpy(new_obs))
            self._returns[finished] = 0.0
            self._lengths[finished] = 0
        return obs, reward, dones, infos

    def close(self) -> None:
        self.env.close()

    def _count(self, indices: VecEnvIndices) -> int:
        return len(self._get_indices(indices))

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        value = self.instruction if attr_name == "instruction" else getattr(self.env.unwrapped, attr_name)
        return [value] * self._count(indices)

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        setattr(self.env.unwrapped, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices: VecEnvIndices = None, **method_kwargs) -> list[Any]:
        result = getattr(self.env, method_name)(*method_args, **method_kwargs)
        return [result] * self._count(indices)

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [issubclass(Monitor, wrapper_class)] * self._count(indices)


__all__ = ["make_maniskill_gpu_env", "ManiSkillGPUVecEnv"]
