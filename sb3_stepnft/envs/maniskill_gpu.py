"""ManiSkill's GPU-parallel simulator as one SB3 VecEnv: ``make_maniskill_env(..., sim_backend="gpu")``.

**Untested without a GPU.** This code was written against ManiSkill 3.0.1's batched API but has never run on a CUDA
device: the machines this package is developed and tested on have none. What is tested (tests/envs/test_maniskill.py) is the
bookkeeping of :class:`ManiSkillGPUVecEnv` on a batched *CPU* env with one sub-env (both modes, and a short StepNFT
run in the tensor mode), and the clear errors of :func:`make_maniskill_gpu_env` without CUDA. Action chunks, FlowGRPO
groups and narrowed action bounds are CPU-only.

Two modes: NumPy (the default; an ordinary SB3 VecEnv, one device-to-host copy of every output per step) and
``as_tensors=True``, a *tensor VecEnv* (:mod:`sb3_stepnft.common.tensor_env`) whose outputs stay on the simulator's
device, for device-resident rollouts (docs/scaling.md, "Device-resident rollouts").
"""

import dataclasses
import time
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvObs, VecEnvStepReturn

from sb3_stepnft.common.tensor_env import TensorVecEnv
from sb3_stepnft.envs.maniskill import ManiSkillSpec, as_spec, make_maniskill_base_env


def make_maniskill_gpu_env(
    spec: ManiSkillSpec | str,
    num_envs: int,
    seed: int | None = None,
    as_tensors: bool = False,
    ignore_terminations: bool = False,
    **fields: Any,
) -> "ManiSkillGPUVecEnv":
    """``num_envs`` sub-envs in ManiSkill's GPU-parallel simulator as one SB3 VecEnv. **Untested** (see the module
    docstring); raises a RuntimeError naming the fix when no CUDA device is usable.

    :param spec: The sub-env (or an env id, with ``fields`` as the other :class:`ManiSkillSpec` fields); its
        ``chunk_size`` must be 1 and its ``action_bounds`` None. A ``"cpu"`` render backend becomes ``"gpu"``.
    :param num_envs: Number of sub-envs, batched in one simulator.
    :param seed: Seeds the first reset.
    :param as_tensors: Return device tensors (a tensor VecEnv) instead of NumPy arrays (:class:`ManiSkillGPUVecEnv`).
    :param ignore_terminations: Run every episode to its time limit, ignoring terminations (:class:`ManiSkillGPUVecEnv`).
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
    vec_env = ManiSkillGPUVecEnv(
        env, instruction=spec.instruction_text, as_tensors=as_tensors, ignore_terminations=ignore_terminations
    )
    if seed is not None:
        vec_env.seed(seed)
    return vec_env


def _to_numpy(value):
    if isinstance(value, dict):
        return {key: _to_numpy(item) for key, item in value.items()}
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _as_bool(value, n: int, device):
    import torch as th

    return th.as_tensor(value, device=device).bool().reshape(n)


def _zeros_like(value):
    import torch as th

    return th.zeros_like(value) if isinstance(value, th.Tensor) else np.zeros_like(np.asarray(value))


def _clone(obs):
    if isinstance(obs, dict):
        return {key: _clone(value) for key, value in obs.items()}
    return obs.clone()


def _put_rows(obs, index, new):
    """``obs[index] = new[index]`` for a (dict of) device tensor(s)."""
    if isinstance(obs, dict):
        return {key: _put_rows(obs[key], index, new[key]) for key in obs}
    obs[index] = new[index].to(obs.dtype)
    return obs


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


class ManiSkillGPUVecEnv(TensorVecEnv):
    """SB3 VecEnv over one batched ManiSkill env (GPU simulator; also accepts a CPU env with ``num_envs=1``).

    **NumPy mode** (``as_tensors=False``, the default): emulates what ``Monitor`` and SB3's VecEnvs add per sub-env:
    ``info["episode"]`` (``r``, ``l``, ``t``), ``is_success``, ``TimeLimit.truncated`` and ``terminal_observation`` at
    episode ends. ``env_is_wrapped(Monitor)`` therefore answers True.

    **Tensor mode** (``as_tensors=True``): the tensor VecEnv contract of :mod:`sb3_stepnft.common.tensor_env`.
    Observations (a tensor or a dict of tensors), rewards (float32) and dones (bool) are ``(num_envs, ...)`` tensors on
    the simulator's device (``self.device``), actions are taken as device tensors, and ``infos`` is one dict of
    batched tensors: ``is_success`` (ManiSkill's ``info["success"]`` at this step, every step), ``TimeLimit.truncated``
    (ended by the time limit, not a termination), ``terminal_observation`` (on steps where some sub-env finished; rows
    valid where done) and ``instruction`` (a string) when set. There is no ``episode`` entry: the rollout loop tracks
    returns and lengths on the device.

    **Partial resets** (both modes): after a step, the sub-envs that finished (terminated or truncated) are reset with
    ``env.reset(options=dict(env_idx=...))`` and their rows of the returned observation are the first observation of
    the next episode, as SB3's auto-resetting VecEnvs do; the last observation of the finished episode is
    ``terminal_observation``. Finding the finished sub-envs costs one host sync of one bool per step (``dones.any()``),
    as in ManiSkill's own ``ManiSkillVectorEnv``; the rollout loop adds none.

    **ignore_terminations** (both modes; default False): ManiSkill terminates an episode when the task succeeds (or
    fails). With ``ignore_terminations=True`` terminations are ignored and every episode runs to its time limit
    (``max_episode_steps``), so all sub-envs of a batch end together and are reset together; an episode's success is
    then ManiSkill's ``success_once``: whether ``info["success"]`` was True at *any* step (the tensor mode reports the
    per-step flag, which the rollout loop ORs over the episode; the NumPy mode reports the OR at the episode's end).
    With False, ``is_success`` at the end is the flag of the final step (for tasks that terminate on success the two
    agree). Note for StepNFT: labels are episode outcomes, so success-once labels reward reaching the goal at any time.

    :param env: A ManiSkill env from ``gym.make(..., num_envs=N)`` (observations: batched torch tensors).
    :param instruction: Optional instruction text, reported in every info.
    :param as_tensors: Device tensors (True) or NumPy arrays (False).
    :param ignore_terminations: Ignore terminations, ending episodes only at the time limit (see above).
    """

    def __init__(
        self, env: gym.Env, instruction: str | None = None, as_tensors: bool = False, ignore_terminations: bool = False
    ):
        import torch as th

        base = env.unwrapped
        self.env = env
        self.instruction = instruction
        self.ignore_terminations = bool(ignore_terminations)
        device = th.device(getattr(base, "device", "cpu"))
        super().__init__(
            int(base.num_envs), base.single_observation_space, base.single_action_space, device=device, as_tensors=as_tensors
        )
        self._success_once = th.zeros(self.num_envs, dtype=th.bool, device=self.device)
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
        self._success_once.zero_()
        self.reset_infos = [self._info() for _ in range(self.num_envs)]
        return obs if self.returns_tensors else _to_numpy(obs)

    def step_wait(self) -> VecEnvStepReturn:
        import torch as th

        device = self.device
        obs, reward, terminated, truncated, info = self.env.step(self._actions)  # a float32 tensor on self.device
        if self.ignore_terminations:
            terminated = _zeros_like(terminated)
        if "success" in info:
            self._success_once |= _as_bool(info["success"], self.num_envs, self.device)
        if self.returns_tensors:
            return self._step_tensors(obs, reward, terminated, truncated, info)
        if self.ignore_terminations and "success" in info:
            info = {**info, "success": self._success_once.clone()}  # success_once, reported at the episode's end
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
            self._success_once[th.as_tensor(finished, device=device)] = False
        return obs, reward, dones, infos

    def _step_tensors(self, obs, reward, terminated, truncated, info) -> VecEnvStepReturn:
        """The tensor mode's step: everything stays on ``self.device``; one host sync (``dones.any()``)."""
        import torch as th

        n = self.num_envs
        terminated = _as_bool(terminated, n, self.device)
        truncated = _as_bool(truncated, n, self.device)
        dones = terminated | truncated
        infos: dict[str, Any] = {"TimeLimit.truncated": truncated & ~terminated}
        if "success" in info:
            infos["is_success"] = _as_bool(info["success"], n, self.device)
        if self.instruction is not None:
            infos["instruction"] = self.instruction
        if bool(dones.any()):  # the partial reset needs the finished sub-envs: one bool to the host per step
            infos["terminal_observation"] = _clone(obs)
            env_idx = dones.nonzero().flatten()
            new_obs, _ = self.env.reset(options=dict(env_idx=env_idx))
            obs = _put_rows(_clone(obs), env_idx, new_obs)
            self._success_once[env_idx] = False
        rewards = th.as_tensor(reward, device=self.device).float().reshape(n)
        return obs, rewards, dones, infos

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
