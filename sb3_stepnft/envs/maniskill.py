"""ManiSkill3 adapter: SB3 VecEnvs over ManiSkill tasks.

A :class:`ManiSkillSpec` says what one sub-env is (task, observation and control modes, wrappers); the factories take
it. On the CPU simulator every sub-env is one ManiSkill env (``num_envs=1``, ManiSkill's ``CPUGymWrapper``) wrapped
for SB3: success as ``info["is_success"]``, optional instruction and action chunks, SB3 ``Monitor``, seeded resets,
and FlowGRPO groups (``GroupSeed``) on request. The GPU simulator lives in :mod:`sb3_stepnft.envs.maniskill_gpu`
(untested without a GPU). ``mani_skill`` is imported inside the functions, so this module imports with the core
install. See docs/environments.md for installation (Vulkan is required even for state observations), supported tasks
and measured speeds.
"""

import contextlib
import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from sb3_stepnft.envs.grouped import make_grouped_vec_env
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


def _check_chunk_size(chunk_size: int) -> None:
    if isinstance(chunk_size, bool) or int(chunk_size) != chunk_size or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")


@dataclasses.dataclass(frozen=True)
class ManiSkillSpec:
    """What one ManiSkill sub-env is: the task, its observation and control modes, and the wrappers around it.

    The simulator backend and the number of sub-envs belong to the VecEnv (:func:`make_maniskill_vec_env`), not here.
    Invalid values raise at construction (before ManiSkill is imported). Parameters: see :func:`make_maniskill_env`.
    """

    env_id: str
    obs_mode: str = "state"
    control_mode: str = "pd_ee_delta_pos"
    chunk_size: int = 1
    instruction: str | bool | None = None
    max_episode_steps: int | None = None
    render_backend: str = "cpu"
    camera_size: int | None = None
    reward_mode: str | None = None
    action_bounds: float | Sequence[float] | None = None
    env_kwargs: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        _check_obs_mode(self.obs_mode)
        _check_chunk_size(self.chunk_size)
        task_instruction(self.env_id, self.instruction)  # early error for instruction=True on an unknown task

    @property
    def instruction_text(self) -> str | None:
        """The instruction string (:func:`task_instruction`), or None."""
        return task_instruction(self.env_id, self.instruction)


def as_spec(spec: ManiSkillSpec | str, **fields: Any) -> ManiSkillSpec:
    """``spec`` with ``fields`` replaced, or a new :class:`ManiSkillSpec` when ``spec`` is an env id."""
    if isinstance(spec, ManiSkillSpec):
        return dataclasses.replace(spec, **fields) if fields else spec
    if not isinstance(spec, str):
        raise TypeError(f"Expected a ManiSkillSpec or a ManiSkill env id, got {type(spec).__name__}")
    return ManiSkillSpec(spec, **fields)


def make_maniskill_base_env(
    spec: ManiSkillSpec | str, sim_backend: str = "physx_cpu", num_envs: int = 1, **fields: Any
) -> gym.Env:
    """``gym.make`` of a ManiSkill task, with visual observations flattened to ``{"state", "rgb"/"depth"}``.

    Returns ManiSkill's own (batched, torch) env, without the spec's wrappers (chunks, instruction, bounds):
    :func:`make_maniskill_gym_env` adds them and the CPU/SB3 wrappers. Raises a RuntimeError naming the fix when no
    Vulkan device is usable, and a FileNotFoundError when the task needs assets that are not on this machine.

    :param spec: The sub-env (or an env id, with ``fields`` as the other :class:`ManiSkillSpec` fields).
    :param sim_backend: ManiSkill's ``sim_backend`` (``"physx_cpu"`` or ``"physx_cuda"``).
    :param num_envs: ManiSkill's ``num_envs`` (1 on the CPU simulator).
    """
    spec = as_spec(spec, **fields)
    import_simulator("mani_skill.envs", "maniskill")  # registers the ManiSkill ids
    if spec.env_id not in gym.registry:
        raise ValueError(
            f"Unknown ManiSkill env id {spec.env_id!r} (e.g. {sorted(TASK_INSTRUCTIONS)}); see docs/environments.md"
        )
    kwargs: dict[str, Any] = dict(
        obs_mode=spec.obs_mode, control_mode=spec.control_mode, sim_backend=sim_backend,
        render_backend=spec.render_backend, num_envs=num_envs,
    )  # fmt: skip
    if spec.camera_size is not None:
        kwargs["sensor_configs"] = dict(width=int(spec.camera_size), height=int(spec.camera_size))
    if spec.reward_mode is not None:
        kwargs["reward_mode"] = spec.reward_mode
    if spec.max_episode_steps is not None:
        kwargs["max_episode_steps"] = int(spec.max_episode_steps)
    kwargs.update(spec.env_kwargs or {})
    try:
        with _no_asset_downloads():
            env = gym.make(spec.env_id, **kwargs)
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
            f"{spec.env_id} needs ManiSkill assets that are not on this machine ({error}). Download them beforehand "
            f"where a network is available (`python -m mani_skill.utils.download_asset {spec.env_id}`), or use a task "
            "that needs none (PushCube, PullCube, PickCube, StackCube, LiftPegUpright, ...: docs/environments.md)."
        ) from error
    if spec.obs_mode != "state":
        from mani_skill.utils.wrappers.flatten import FlattenRGBDObservationWrapper

        rgb, depth = spec.obs_mode in ("rgb", "rgbd"), spec.obs_mode in ("rgbd", "depth")
        env = FlattenRGBDObservationWrapper(env, rgb=rgb, depth=depth, state=True)
    return env


def make_maniskill_gym_env(spec: ManiSkillSpec | str, **fields: Any) -> gym.Env:
    """One ManiSkill task on the CPU simulator as a plain gymnasium env (numpy, unbatched), without ``Monitor``.

    Wrappers, inside out: ManiSkill's ``CPUGymWrapper(record_metrics=False)`` (its ``record_metrics=True`` writes an
    ``info["episode"]`` that breaks SB3's logger), :class:`~sb3_stepnft.wrappers.SuccessInfo` (ManiSkill's
    ``info["success"]`` as ``info["is_success"]``), :class:`~sb3_stepnft.envs.sim_utils.InstructionInfo` when an
    instruction is given, :class:`~sb3_stepnft.envs.sim_utils.ActionBounds` when ``action_bounds`` is given, and
    :class:`~sb3_stepnft.wrappers.ActionChunk` when ``chunk_size > 1``. Episodes terminate
    at success (ManiSkill's convention) and are truncated after ``max_episode_steps`` underlying steps.

    :param spec: The sub-env (or an env id, with ``fields`` as the other :class:`ManiSkillSpec` fields, e.g.
        ``make_maniskill_gym_env("PushCube-v1", max_episode_steps=80)``).
    """
    spec = as_spec(spec, **fields)
    import_simulator("mani_skill.envs", "maniskill")
    from mani_skill.utils.wrappers.gymnasium import CPUGymWrapper

    env = make_maniskill_base_env(spec, "physx_cpu", 1)
    env = CPUGymWrapper(env, ignore_terminations=False, record_metrics=False)
    env = SuccessInfo(env, key="success")
    if spec.instruction_text is not None:
        env = InstructionInfo(env, spec.instruction_text)
    if spec.action_bounds is not None:
        env = ActionBounds(env, spec.action_bounds)
    if spec.chunk_size > 1:
        env = ActionChunk(env, spec.chunk_size)
    return env


def make_maniskill_vec_env(
    spec: ManiSkillSpec,
    num_envs: int = 1,
    sim_backend: str = "cpu",
    seed: int | None = None,
    group_size: int | None = None,
    vec_env_cls: type[DummyVecEnv] | type[SubprocVecEnv] = DummyVecEnv,
    monitor_dir: str | None = None,
    vec_env_kwargs: dict[str, Any] | None = None,
) -> VecEnv:
    """An SB3 VecEnv of ``num_envs`` sub-envs described by ``spec``. Parameters: see :func:`make_maniskill_env`."""
    for name, value in (("num_envs", num_envs),) + ((("group_size", group_size),) if group_size is not None else ()):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    import_simulator("mani_skill.envs", "maniskill")  # here, not in a SubprocVecEnv worker
    if sim_backend in GPU_BACKENDS:
        if group_size is not None:
            raise NotImplementedError(
                "sim_backend='gpu' supports no group_size (GPU sub-envs share one batched simulator); use "
                "sim_backend='cpu' for FlowGRPO groups"
            )
        from sb3_stepnft.envs.maniskill_gpu import make_maniskill_gpu_env

        return make_maniskill_gpu_env(spec, num_envs, seed)
    if sim_backend not in CPU_BACKENDS:
        raise ValueError(f"Unknown sim_backend={sim_backend!r}: use 'cpu' or 'gpu'")
    env_fn = functools.partial(make_maniskill_gym_env, spec)
    if group_size is not None:
        if num_envs % group_size:
            raise ValueError(f"num_envs={num_envs} must be a multiple of group_size={group_size}")
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
    """An SB3 VecEnv of ``num_envs`` copies of a ManiSkill3 task: builds the :class:`ManiSkillSpec` from the keywords
    and calls :func:`make_maniskill_vec_env`.

    ``sim_backend="cpu"`` (tested): one ManiSkill env per sub-env (:func:`make_maniskill_gym_env`), each in SB3's
    ``Monitor`` (with ``is_success`` in its CSV), in ``vec_env_cls`` (``SubprocVecEnv`` uses both cores; it needs an
    ``if __name__ == "__main__":`` guard in scripts). ``sim_backend="gpu"``: ManiSkill's GPU-parallel PhysX with all
    sub-envs in one process (:mod:`sb3_stepnft.envs.maniskill_gpu`); it needs a CUDA GPU and is **untested** (no GPU
    here).

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
    spec = ManiSkillSpec(
        env_id, obs_mode, control_mode, chunk_size, instruction, max_episode_steps, render_backend, camera_size,
        reward_mode, action_bounds, env_kwargs,
    )  # fmt: skip
    return make_maniskill_vec_env(spec, num_envs, sim_backend, seed, group_size, vec_env_cls, monitor_dir, vec_env_kwargs)


def _monitored(env_fn: Callable[[], gym.Env], rank: int, monitor_dir: str | None) -> Callable[[], gym.Env]:
    def _init() -> gym.Env:
        filename = None
        if monitor_dir is not None:
            os.makedirs(monitor_dir, exist_ok=True)
            filename = os.path.join(monitor_dir, str(rank))
        return Monitor(env_fn(), filename=filename, info_keywords=("is_success",))

    return _init


def __getattr__(name: str) -> Any:
    """The GPU simulator's names, which moved to :mod:`sb3_stepnft.envs.maniskill_gpu` (imported on first use)."""
    if name in ("ManiSkillGPUVecEnv", "make_maniskill_gpu_env"):
        from sb3_stepnft.envs import maniskill_gpu

        return getattr(maniskill_gpu, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ManiSkillSpec",
    "make_maniskill_env",
    "make_maniskill_vec_env",
    "make_maniskill_gym_env",
    "make_maniskill_base_env",
    "TASK_INSTRUCTIONS",
]
