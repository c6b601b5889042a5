"""ManiSkill3 adapter: SB3 VecEnvs over ManiSkill tasks.

On the CPU simulator every sub-env is one ManiSkill env (``num_envs=1``, ManiSkill's ``CPUGymWrapper``) wrapped for
SB3: success as ``info["is_success"]``, optional instruction and action chunks, SB3 ``Monitor``, seeded resets, and
FlowGRPO groups (``GroupSeed``) on request. ``mani_skill`` is imported inside the functions, so this module imports
with the core install. See docs/environments.md for installation (Vulkan is required even for state observations),
supported tasks and measured speeds.
"""

import contextlib
import functools
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvObs, VecEnvStepReturn

from sb3_stepnft.envs.sim_utils import ActionBounds, InstructionInfo, import_simulator
from sb3_stepnft.wrappers import ActionChunk, SuccessInfo

OBS_MODES = ("state", "rgb", "rgbd", "depth")
CPU_BACKENDS = ("cpu", "physx_cpu")
GPU_BACKENDS = ("gpu", "physx_cuda", "physx_gpu")

#: Instructions used with ``instruction=True`` (ManiSkill tasks carry no language of their own).
TASK_INSTRUCTIONS = {
    "PushCube-v1": "push the cube to the goal region",
    "PullCube-v1": "pull the cube to the goal region",
    "PickCube-v1": "pick up the cube and move it to the goal position",
    "StackCube-v1": "stack the red cube on top of the green cube",
    "LiftPegUpright-v1": "lift the peg and stand it upright",
    "PegInsertionSide-v1": "insert the peg into the hole on the side of the box",
    "PlaceSphere-v1": "place the sphere into the bin",
    "PokeCube-v1": "poke the cube to the goal with the peg",
    "PushT-v1": "push the T-shaped block onto the target",
}

VULKAN_HELP = (
    "ManiSkill (SAPIEN) found no usable Vulkan device; it needs one even for obs_mode='state'. On a CPU-only "
    "machine install Mesa >= 25 lavapipe: `bash scripts/install_sim.sh <venv>` (as root), or on Debian 12 "
    "`apt-get install -t bookworm-backports mesa-vulkan-drivers libvulkan1` (Debian 12's stock Mesa 22.3.6 is "
    "rejected by SAPIEN). Check with `vulkaninfo | grep descriptorBindingPartiallyBound` (must say true)."
)


@contextlib.contextmanager
def _no_asset_downloads():
    """Make ManiSkill's download prompt (task or robot assets missing) raise instead of asking on stdin, downloading
    (``MS_SKIP_ASSET_DOWNLOAD_PROMPT=1``) or calling ``exit()`` (answer "n")."""
    from mani_skill.utils import download_asset

    def refuse(message: str) -> bool:
        raise FileNotFoundError(f"ManiSkill asked to download assets, which the adapter never does: {message}")

    original = download_asset.prompt_yes_no
    download_asset.prompt_yes_no = refuse
    try:
        yield
    finally:
        download_asset.prompt_yes_no = original


def _is_vulkan_error(error: BaseException) -> bool:
    text = str(error).lower()
    return any(key in text for key in ("rendering device", "vulkan", "vk::", "physical device", "errorincompatibledriver"))


def task_instruction(env_id: str, instruction: str | bool | None) -> str | None:
    """The instruction text for ``instruction`` (a string as is; True: the task's entry of :data:`TASK_INSTRUCTIONS`)."""
    if instruction is None or instruction is False:
        return None
    if instruction is True:
        if env_id not in TASK_INSTRUCTIONS:
            raise ValueError(
                f"No default instruction for {env_id}: pass instruction='...' (known: {sorted(TASK_INSTRUCTIONS)})"
            )
        return TASK_INSTRUCTIONS[env_id]
    if not isinstance(instruction, str):
        raise TypeError(f"instruction must be a string, True or None, got {type(instruction).__name__}")
    return instruction


def _check_obs_mode(obs_mode: str) -> None:
    if obs_mode not in OBS_MODES:
        raise ValueError(
            f"Unsupported obs_mode={obs_mode!r}: use one of {OBS_MODES} (state: a flat Box; rgb/rgbd/depth: a Dict with "
            "'state' and the stacked camera images, for MultiInputPolicy)"
        )


def make_maniskill_base_env(
    env_id: str,
    obs_mode: str = "state",
    control_mode: str = "pd_ee_delta_pos",
    sim_backend: str = "physx_cpu",
    num_envs: int = 1,
    max_episode_steps: int | None = None,
    render_backend: str = "cpu",
    camera_size: int | None = None,
    reward_mode: str | None = None,
    env_kwargs: dict[str, Any] | None = None,
) -> gym.Env:
    """``gym.make`` of a ManiSkill task, with visual observations flattened to ``{"state", "rgb"/"depth"}``.

    Returns ManiSkill's own (batched, torch) env; :func:`make_maniskill_gym_env` adds the CPU/SB3 wrappers.
    Raises a RuntimeError naming the fix when no Vulkan device is usable, and a FileNotFoundError when the task
    needs assets that are not on this machine.
    """
    _check_obs_mode(obs_mode)
    import_simulator("mani_skill.envs", "maniskill")  # registers the ManiSkill ids
    if env_id not in gym.registry:
        raise ValueError(f"Unknown ManiSkill env id {env_id!r} (e.g. {sorted(TASK_INSTRUCTIONS)}); see docs/environments.md")
    kwargs: dict[str, Any] = dict(
        obs_mode=obs_mode, control_mode=control_mode, sim_backend=sim_backend, render_backend=render_backend, num_envs=num_envs
    )
    if camera_size is not None:
        kwargs["sensor_configs"] = dict(width=int(camera_size), height=int(camera_size))
    if reward_mode is not None:
        kwargs["reward_mode"] = reward_mode
    if max_episode_steps is not None:
        kwargs["max_episode_steps"] = int(max_episode_steps)
    kwargs.update(env_kwargs or {})
    try:
        with _no_asset_downloads():
            env = gym.make(env_id, **kwargs)
    except RuntimeError as error:
        if _is_vulkan_error(error):
            raise RuntimeError(f"{VULKAN_HELP} (original error: {error})") from error
        if "cuda" in str(error).lower():
            raise RuntimeError(
                f"sim_backend={sim_backend!r} needs a CUDA GPU that SAPIEN/PhysX can use, and none was found ({error}). "
                "Use sim_backend='cpu'."
            ) from error
        raise
    except OSError as error:  # the refused download prompt, or data files missing under ~/.maniskill
        raise FileNotFoundError(
            f"{env_id} needs ManiSkill assets that are not on this machine ({error}). Download them beforehand where a "
            f"network is available (`python -m mani_skill.utils.download_asset {env_id}`), or use a task that needs "
            "none (PushCube, PullCube, PickCube, StackCube, LiftPegUpright, ...: docs/environments.md)."
        ) from error
    if obs_mode != "state":
        from mani_skill.utils.wrappers.flatten import FlattenRGBDObservationWrapper

        rgb, depth = obs_mode in ("rgb", "rgbd"), obs_mode in ("rgbd", "depth")
        env = FlattenRGBDObservationWrapper(env, rgb=rgb, depth=depth, state=True)
    return env


def make_maniskill_gym_env(
    env_id: str,
    obs_mode: str = "state",
    control_mode: str = "pd_ee_delta_pos",
    chunk_size: int = 1,
    instruction: str | bool | None = None,
    max_episode_steps: int | None = None,
    render_backend: str = "cpu",
    camera_size: int | None = None,
    reward_mode: str | None = None,
    action_bounds: float | Sequence[float] | None = None,
    env_kwargs: dict[str, Any] | None = None,
) -> gym.Env:
    """One ManiSkill task on the CPU simulator as a plain gymnasium env (numpy, unbatched), without ``Monitor``.

    Wrappers, inside out: ManiSkill's ``CPUGymWrapper(record_metrics=False)`` (its ``record_metrics=True`` writes an
    ``info["episode"]`` that breaks SB3's logger), :class:`~sb3_stepnft.wrappers.SuccessInfo` (ManiSkill's
    ``info["success"]`` as ``info["is_success"]``), :class:`~sb3_stepnft.envs.sim_utils.InstructionInfo` when an
    instruction is given, :class:`~sb3_stepnft.envs.sim_utils.ActionBounds` when ``action_bounds`` is given, and
    :class:`~sb3_stepnft.wrappers.ActionChunk` when ``chunk_size > 1``. Episodes terminate
    at success (ManiSkill's convention) and are truncated after ``max_episode_steps`` underlying steps.

    Parameters: see :func:`make_maniskill_env`.
    """
    _check_chunk_size(chunk_size)
    import_simulator("mani_skill.envs", "maniskill")
    from mani_skill.utils.wrappers.gymnasium import CPUGymWrapper

    text = task_instruction(env_id, instruction)
    env = make_maniskill_base_env(
        env_id, obs_mode, control_mode, "physx_cpu", 1, max_episode_steps, render_backend, camera_size, reward_mode, env_kwargs
    )
    env = CPUGymWrapper(env, ignore_terminations=False, record_metrics=False)
    env = SuccessInfo(env, key="success")
    if text is not None:
        env = InstructionInfo(env, text)
    if action_bounds is not None:
        env = ActionBounds(env, action_bounds)
    if chunk_size > 1:
        env = ActionChunk(env, chunk_size)
    return env


def _check_chunk_size(chunk_size: int) -> None:
    if isinstance(chunk_size, bool) or int(chunk_size) != chunk_size or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")


def make_maniskill_env(
    env_id: str,
    num_envs: int = 1,
    obs_mode: str = "state",
    control_mode: str = "pd_ee_delta_pos",
    sim_backend: str = "cpu",
    chunk_size: int = 1,
    instruction: str | bool | None = None,
    seed: int | None = None,
    max_episode_steps: int | None = None,
    group_size: int | None = None,
    vec_env_cls: type[DummyVecEnv] | type[SubprocVecEnv] = DummyVecEnv,
    *,
    render_backend: str = "cpu",
    camera_size: int | None = None,
    reward_mode: str | None = None,
    action_bounds: float | Sequence[float] | None = None,
    env_kwargs: dict[str, Any] | None = None,
    monitor_dir: str | None = None,
    vec_env_kwargs: dict[str, Any] | None = None,
) -> VecEnv:
    """An SB3 VecEnv of ``num_envs`` copies of a ManiSkill3 task.

    ``sim_backend="cpu"`` (tested): one ManiSkill env per sub-env (:func:`make_maniskill_gym_env`), each in SB3's
    ``Monitor`` (with ``is_success`` in its CSV), in ``vec_env_cls`` (``SubprocVecEnv`` uses both cores; it needs an
    ``if __name__ == "__main__":`` guard in scripts). ``sim_backend="gpu"``: ManiSkill's GPU-parallel PhysX with all
    sub-envs in one process (:class:`ManiSkillGPUVecEnv`); it needs a CUDA GPU and is **untested** (no GPU here).

    :param env_id: A ManiSkill id, e.g. ``"PushCube-v1"`` (docs/environments.md lists those that work offline).
    :param num_envs: Number of sub-envs.
    :param obs_mode: ``"state"`` (flat Box) or ``"rgb"``/``"rgbd"``/``"depth"`` (Dict ``{"state", "rgb", "depth"}``
        with the cameras stacked on the channel axis; use ``MultiInputPolicy``).
    :param control_mode: ManiSkill controller, e.g. ``"pd_ee_delta_pos"`` (the demonstrations' default) or
        ``"pd_joint_delta_pos"`` (ManiSkill's default).
    :param sim_backend: ``"cpu"`` or ``"gpu"``.
    :param chunk_size: H > 1 wraps each sub-env in ``ActionChunk``: Box(A) becomes Box(H, A).
    :param instruction: None, a string, or True for the task's default (:data:`TASK_INSTRUCTIONS`): reported as
        ``info["instruction"]`` and the ``instruction`` attribute.
    :param seed: Sub-env i's first reset uses ``seed + i``; later resets continue its random stream, so a seed
        fixes the whole sequence of initial states. With ``group_size``: the root seed of the groups' base seeds.
    :param max_episode_steps: Truncation in underlying env steps (None: ManiSkill's default, e.g. 50 for PushCube).
        With policies pretrained on motion-planned demonstrations use at least 1.5x the mean demonstration length
        (:func:`sb3_stepnft.envs.maniskill_demos.recommended_max_episode_steps`).
    :param group_size: FlowGRPO groups: ``num_envs // group_size`` groups whose members start every episode from the
        same initial state (:func:`sb3_stepnft.envs.make_grouped_vec_env`); ``num_envs`` must be a multiple.
    :param vec_env_cls: ``DummyVecEnv`` or ``SubprocVecEnv`` (CPU backend only).
    :param render_backend: SAPIEN render device: ``"cpu"`` (lavapipe) works everywhere Vulkan does.
    :param camera_size: Width and height of the sensor cameras (None: the task's default, 128).
    :param reward_mode: ManiSkill reward mode (None: the task's default, ``"normalized_dense"``); StepNFT uses success.
    :param action_bounds: Narrow the policy's action Box to ``±action_bounds`` (per dimension or one float), e.g.
        :func:`sb3_stepnft.envs.maniskill_demos.demo_action_bounds` of the demonstrations (CPU backend only).
    :param env_kwargs: Further keyword arguments of ``gym.make``.
    :param monitor_dir: Folder for Monitor CSV files (None: none written).
    :param vec_env_kwargs: Keyword arguments of ``vec_env_cls``.
    """
    for name, value in (("num_envs", num_envs),) + ((("group_size", group_size),) if group_size is not None else ()):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    _check_chunk_size(chunk_size)
    _check_obs_mode(obs_mode)
    task_instruction(env_id, instruction)  # early error for instruction=True on an unknown task
    import_simulator("mani_skill.envs", "maniskill")  # here, not in a SubprocVecEnv worker
    if sim_backend in GPU_BACKENDS:
        if chunk_size != 1 or group_size is not None or action_bounds is not None:
            raise NotImplementedError(
                "sim_backend='gpu' supports chunk_size=1, no group_size and no action_bounds (GPU sub-envs share one "
                "batched simulator); use sim_backend='cpu' for action chunks, FlowGRPO groups and narrowed bounds"
            )
        return make_maniskill_gpu_env(
            env_id, num_envs, obs_mode, control_mode, instruction, seed, max_episode_steps, render_backend, camera_size,
            reward_mode, env_kwargs,
        )  # fmt: skip
    if sim_backend not in CPU_BACKENDS:
        raise ValueError(f"Unknown sim_backend={sim_backend!r}: use 'cpu' or 'gpu'")
    env_fn = functools.partial(
        make_maniskill_gym_env,
        env_id,
        obs_mode=obs_mode,
        control_mode=control_mode,
        chunk_size=chunk_size,
        instruction=instruction,
        max_episode_steps=max_episode_steps,
        render_backend=render_backend,
        camera_size=camera_size,
        reward_mode=reward_mode,
        action_bounds=action_bounds,
        env_kwargs=env_kwargs,
    )
    if group_size is not None:
        if num_envs % group_size:
            raise ValueError(f"num_envs={num_envs} must be a multiple of group_size={group_size}")
        try:
            from sb3_stepnft.envs.grouped import make_grouped_vec_env
        except ImportError as error:  # pragma: no cover - only before GroupSeed/make_grouped_vec_env exist
            raise NotImplementedError("group_size needs sb3_stepnft.envs.make_grouped_vec_env (FlowGRPO groups)") from error
        return make_grouped_vec_env(
            env_fn,
            n_groups=num_envs // group_size,
            group_size=group_size,
            seed=seed,
            vec_env_cls=vec_env_cls,
            monitor_dir=monitor_dir,
            vec_env_kwargs=vec_env_kwargs,
        )
    vec_env = vec_env_cls([_monitored(env_fn, rank, monitor_dir) for rank in range(num_envs)], **(vec_env_kwargs or {}))
    if seed is not None:
        vec_env.seed(seed)
    return vec_env


def _monitored(env_fn: Callable[[], gym.Env], rank: int, monitor_dir: str | None) -> Callable[[], gym.Env]:
    def _init() -> gym.Env:
        filename = None
        if monitor_dir is not None:
            os.makedirs(monitor_dir, exist_ok=True)
            filename = os.path.join(monitor_dir, str(rank))
        return Monitor(env_fn(), filename=filename, info_keywords=("is_success",))

    return _init


# ---------------------------------------------------------------------------------------------- GPU simulator
def make_maniskill_gpu_env(
    env_id: str,
    num_envs: int,
    obs_mode: str = "state",
    control_mode: str = "pd_ee_delta_pos",
    instruction: str | bool | None = None,
    seed: int | None = None,
    max_episode_steps: int | None = None,
    render_backend: str = "cpu",
    camera_size: int | None = None,
    reward_mode: str | None = None,
    env_kwargs: dict[str, Any] | None = None,
) -> "ManiSkillGPUVecEnv":
    """``num_envs`` sub-envs in ManiSkill's GPU-parallel simulator as one SB3 VecEnv. **Untested** (no GPU on the
    machines this package is developed on); raises a RuntimeError naming the fix when no CUDA device is usable."""
    import torch as th

    if not th.cuda.is_available():
        raise RuntimeError(
            "sim_backend='gpu' needs a CUDA GPU (torch.cuda.is_available() is False here). Use sim_backend='cpu', "
            "which runs one ManiSkill env per sub-env."
        )
    if render_backend == "cpu":
        render_backend = "gpu"
    env = make_maniskill_base_env(
        env_id, obs_mode, control_mode, "physx_cuda", num_envs, max_episode_steps, render_backend, camera_size,
        reward_mode, env_kwargs,
    )  # fmt: skip
    vec_env = ManiSkillGPUVecEnv(env, instruction=task_instruction(env_id, instruction))
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


__all__ = [
    "make_maniskill_env",
    "make_maniskill_gym_env",
    "make_maniskill_base_env",
    "ManiSkillGPUVecEnv",
    "TASK_INSTRUCTIONS",
]
