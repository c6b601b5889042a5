"""LIBERO adapter: a gymnasium env over LIBERO's offscreen env, and the standard evaluation protocol.

``libero`` (PyPI 0.1.1) is imported inside the functions. Before its first import this module checks that LIBERO's
``config.yaml`` exists (LIBERO otherwise prompts on stdin; :func:`libero_config_file` says which one: a virtual
environment has its own, so two checkouts do not overwrite each other's) and points LIBERO at it, selects EGL for
offscreen rendering unless ``MUJOCO_GL`` is set, and points LIBERO at its assets: ``assets_path``, LIBERO's own, or
the offline bundle unpacked at install time. Installing is not this module's job: ``python
scripts/setup_libero_assets.py`` (which ``scripts/install_sim.sh`` runs) writes the config and unpacks the bundle; a
missing config or missing assets raise a ``FileNotFoundError`` naming that command (docs/environments.md).
"""

import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

from sb3_stepnft.common.evaluation import evaluate_success
from sb3_stepnft.envs.sim_utils import INSTALL_HINT, import_simulator, shared_data_dir
from sb3_stepnft.wrappers import ActionChunk

LIBERO_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
#: Step limits of the standard evaluation protocol (OpenVLA / openpi LIBERO evaluation), in env steps at 20 Hz,
#: counted after the settle steps.
LIBERO_MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}
#: No-op steps after setting the initial state, so that objects settle (the protocol's ``num_steps_wait``).
SETTLE_STEPS = 10
#: The settle action: no motion, gripper open.
NOOP_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float64)
#: Written by scripts/setup_libero_assets.py into an assets folder unpacked from the offline bundle; lists the files
#: the bundle lacks.
BUNDLE_MARKER = ".sb3_stepnft_bundle_missing.txt"
#: The command that writes LIBERO's config and installs its assets (named by the errors below).
SETUP_HINT = f"python scripts/setup_libero_assets.py (part of `{INSTALL_HINT}`)"
_ASSET_SUBDIRS = ("articulated_objects", "stable_scanned_objects", "turbosquid_objects", "stable_hope_objects", "scenes")
_CONFIG_DIRS = ("benchmark_root", "bddl_files", "init_states")


# ------------------------------------------------------------------------------------------- configuration and assets
def libero_package_dir() -> Path:
    """``.../site-packages/libero/libero`` (found without importing it: its import prompts without a config)."""
    import importlib.util

    spec = importlib.util.find_spec("libero")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            'LIBERO is not installed. Install `pip install "sb3-stepnft[libero]"` and then `pip install --no-deps '
            f"libero==0.1.1` (its own requirements would replace torch), or run `{INSTALL_HINT}`."
        )
    return Path(list(spec.submodule_search_locations)[0]) / "libero"


#: LIBERO's own default config file (``libero/libero/__init__.py``), used without ``$LIBERO_CONFIG_PATH`` or a venv's.
HOME_CONFIG_FILE = Path("~/.libero/config.yaml")


def venv_config_dir() -> Path | None:
    """``<venv>/etc/libero``: where ``scripts/setup_libero_assets.py`` writes the config of the running virtual
    environment (``None`` outside one)."""
    return Path(sys.prefix) / "etc" / "libero" if sys.prefix != sys.base_prefix else None


def libero_config_file() -> Path:
    """The ``config.yaml`` LIBERO is to read: ``$LIBERO_CONFIG_PATH``'s when set; else the running virtual
    environment's (:func:`venv_config_dir`) when it has one, so that a second checkout's install (a fresh clone's
    ``make test``) does not repoint this one's; else LIBERO's default ``~/.libero``."""
    if "LIBERO_CONFIG_PATH" in os.environ:
        return Path(os.environ["LIBERO_CONFIG_PATH"]).expanduser() / "config.yaml"
    local = venv_config_dir()
    if local is not None and (local / "config.yaml").exists():
        return local / "config.yaml"
    return HOME_CONFIG_FILE.expanduser()


def check_libero_config() -> Path:
    """LIBERO's ``config.yaml``, or a ``FileNotFoundError`` naming the set-up command when it is missing or names
    folders that do not exist (``import libero.libero`` would otherwise ask for them on stdin, or fail later).

    :return: The config file.
    """
    import yaml

    config_file = libero_config_file()
    problem = "does not exist"
    if config_file.exists():
        try:
            config = dict(yaml.safe_load(config_file.read_text()) or {})
        except (yaml.YAMLError, TypeError, ValueError) as error:
            config, problem = {}, f"is not valid YAML ({error})"
        else:
            absent = [key for key in _CONFIG_DIRS if not Path(str(config.get(key, ""))).is_dir()]
            if not absent:
                return config_file
            problem = f"names folders that do not exist ({', '.join(f'{key}: {config.get(key)}' for key in absent)})"
    raise FileNotFoundError(
        f"LIBERO's config {config_file} {problem}; without a valid one LIBERO's first import asks for its folders on "
        f"stdin. Write it with `{SETUP_HINT}` (or `--config-only` for the config alone); $LIBERO_CONFIG_PATH selects "
        "another folder."
    )


def _complete(assets: Path) -> bool:
    return all((assets / sub).is_dir() for sub in _ASSET_SUBDIRS[:4])


def bundle_missing_files(assets: str | os.PathLike) -> list[str]:
    """Files the offline bundle lacks that are still absent from ``assets`` (empty for LIBERO's own assets)."""
    marker = Path(assets) / BUNDLE_MARKER
    if not marker.exists():
        return []
    return [line for line in marker.read_text().split() if not (Path(assets) / line).exists()]


def resolve_libero_assets(assets_path: str | os.PathLike | None = None) -> Path:
    """The assets folder to use: ``assets_path``, ``$SB3_STEPNFT_LIBERO_ASSETS``, else LIBERO's own (``<libero
    package>/assets``, where ``scripts/setup_libero_assets.py`` unpacks the offline bundle, or
    ``~/.cache/libero/assets``). Raises a ``FileNotFoundError`` naming the fixes when there is none."""
    explicit = assets_path or os.environ.get("SB3_STEPNFT_LIBERO_ASSETS")
    if explicit:
        path = Path(explicit).expanduser()
        if not _complete(path):
            raise FileNotFoundError(f"{path} is not a LIBERO assets folder (it needs {', '.join(_ASSET_SUBDIRS)})")
        return path
    for candidate in (libero_package_dir() / "assets", Path("~/.cache/libero/assets").expanduser()):
        if _complete(candidate):
            return candidate
    raise FileNotFoundError(
        "LIBERO's scene and object assets are not installed (the PyPI package does not ship them and downloads them "
        'from the Hugging Face hub on first use). Fixes: where a network is available, run `python -c "from '
        'libero.libero.utils.download_utils import download_assets_from_huggingface as d; d()"`; or copy the '
        f"`libero/libero/assets` folder of a LIBERO checkout to {libero_package_dir() / 'assets'}; or pass "
        f"assets_path=...; or put the offline bundle in {shared_data_dir()} and run `{SETUP_HINT}`."
    )


def import_libero(assets_path: str | os.PathLike | None = None):
    """Import ``libero.libero`` non-interactively (config checked, EGL, assets) and return it."""
    import_simulator("robosuite", "libero")
    os.environ["LIBERO_CONFIG_PATH"] = str(check_libero_config().parent)  # LIBERO reads the one checked here
    os.environ.setdefault("MUJOCO_GL", "egl")
    if os.environ["MUJOCO_GL"] in ("egl", "osmesa"):
        os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    libero = import_simulator("libero.libero", "libero")
    libero._assets_path_cache = str(resolve_libero_assets(assets_path))  # what libero.libero.get_assets_path() returns
    return libero


def _missing_asset_error(error: Exception, assets: str) -> Exception:
    missing = bundle_missing_files(assets)
    return FileNotFoundError(
        f"LIBERO could not build the scene: {error}. The assets in {assets} come from the offline bundle, which lacks "
        f"{len(missing)} large visual files (listed in {Path(assets) / BUNDLE_MARKER}). Get LIBERO's complete assets "
        '(with a network: `python -c "from libero.libero.utils.download_utils import download_assets_from_huggingface '
        'as d; d()"`, then pass assets_path=~/.cache/libero/assets) or copy them from a LIBERO checkout. Test set-ups '
        "may fill the missing files with placeholders (tests/envs/test_libero.py), at the price of wrong-looking objects."
    )


def _quat2axisangle(quat: np.ndarray) -> np.ndarray:
    """Axis-angle of an (x, y, z, w) quaternion (robosuite's convention), as in the openpi LIBERO client."""
    quat = np.asarray(quat, dtype=np.float64).copy()
    quat[3] = np.clip(quat[3], -1.0, 1.0)
    den = np.sqrt(1.0 - quat[3] * quat[3])
    if np.isclose(den, 0.0):
        return np.zeros(3)
    return quat[:3] * 2.0 * np.arccos(quat[3]) / den


# ------------------------------------------------------------------------------------------------ object state
#: Floats per object in ``object_state``: position (3) and quaternion (4, x y z w).
OBJECT_POSE_SIZE = 7


def _check_object_state_option(object_state) -> None:
    if isinstance(object_state, bool):
        return
    if isinstance(object_state, str) or not isinstance(object_state, Sequence) or not object_state:
        raise ValueError(
            f"object_state must be True, False or a non-empty sequence of object names, got {object_state!r} (a single "
            "name goes in a list: object_state=['basket_1'])"
        )
    if not all(isinstance(name, str) for name in object_state):
        raise ValueError(f"object_state names must be strings, got {object_state!r}")


def _known(env, name: str) -> str:
    if name not in env.obj_body_id:
        raise ValueError(f"Unknown object {name!r} in this LIBERO scene: use one of {sorted(env.obj_body_id)}")
    return name


def relevant_objects(env) -> list[str]:
    """The objects and fixtures of a LIBERO (BDDL) env's ``obj_of_interest``, in the BDDL's order: a region
    (e.g. ``wooden_cabinet_1_middle_region``, ``basket_1_contain_region``) stands for the object or fixture whose
    name it starts with; regions of the table itself (fixed, e.g. ``main_table_stove_front_region``) are skipped;
    duplicates are dropped.

    :param env: LIBERO's BDDL env (``LiberoEnv(...).libero_env``).
    """
    names: list[str] = []
    for item in env.obj_of_interest:
        owner = item if item in env.obj_body_id else None
        if owner is None:
            owners = [name for name in env.obj_body_id if item.startswith(name + "_")]
            owner = max(owners, key=len) if owners else None
        if owner is not None and owner not in names:  # a region of the table itself (fixed) has no pose to report
            names.append(owner)
    if not names:
        raise ValueError(
            f"The task's objects of interest {env.obj_of_interest} are regions of the table only: pass object names, "
            f"object_state=[...] from {sorted(env.obj_body_id)}"
        )
    return names


def _object_state_names(env, object_state: bool | Sequence[str]) -> list[str]:
    if object_state is False:
        return []
    if object_state is True:
        return relevant_objects(env)
    names = [_known(env, name) for name in object_state]
    if len(set(names)) != len(names):
        raise ValueError(f"object_state names must be distinct, got {names}")
    return names


# --------------------------------------------------------------------------------------------------------- the env
class LiberoEnv(gym.Env):
    """One LIBERO task as a gymnasium env (Panda, OSC_POSE delta control at 20 Hz).

    - Observation (Dict): ``state`` (8, float32: end-effector position, axis-angle, gripper joint positions: the
      π0/openpi LIBERO state), and with cameras ``agentview_image`` and ``wrist_image`` (``camera_size`` px, uint8
      HWC, rotated by 180° as in the OpenVLA/openpi protocol: LIBERO renders upside down). With ``object_state``,
      also ``object_state`` (float32, ``7 x len(object_state_names)``): for each object in ``object_state_names``, in
      that order, its root body's world position (3) then quaternion (4, x y z w: the quantities of robosuite's
      ``<obj>_pos`` and ``<obj>_quat`` observables), read from MuJoCo at the end of the step (privileged state; with
      ``camera_size=None`` the physics-only observation for state-based RL).
    - Action: Box(-1, 1, (7,)): end-effector delta position and rotation, gripper (-1 open, +1 close).
    - Reset: LIBERO's reset, then one of the task's fixed initial states, then ``settle_steps`` no-op steps (not
      counted). Initial states are cycled through ``init_state_ids`` in order; a reset ``seed`` selects the position
      in the cycle (``seed mod len(init_state_ids)``); ``options={"init_state_id": k}`` picks state k directly.
    - Success: LIBERO's ``check_success()`` (BDDL goal), as ``info["is_success"]``; the episode terminates there
      (reward 1) and is truncated after ``max_episode_steps`` env steps. ``info["instruction"]`` is the task's language.

    :param suite: ``"libero_spatial"``, ``"libero_object"``, ``"libero_goal"``, ``"libero_10"`` or ``"libero_90"``.
    :param task_id: Task index in the suite.
    :param camera_size: Image size of both cameras; None: no cameras and no renderer (physics only, ~10x faster).
    :param init_state_ids: Initial states to cycle through (default: all of the task's, usually 50).
    :param object_state: False (default): no ``object_state`` key; True: the task's relevant objects
        (:func:`relevant_objects`: the BDDL's objects of interest, a region standing for the object or fixture it
        belongs to); or a sequence of object/fixture names of the scene.
    :param seed: Initial position in the cycle (as a reset seed).
    :param max_episode_steps: Default :data:`LIBERO_MAX_STEPS` of the suite.
    :param settle_steps: No-op steps after setting the initial state.
    :param assets_path: LIBERO assets folder (default: :func:`resolve_libero_assets`).
    :param env_kwargs: Further keyword arguments of LIBERO's ``OffScreenRenderEnv``/``ControlEnv``.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        suite: str,
        task_id: int,
        camera_size: int | None = 128,
        init_state_ids: Sequence[int] | None = None,
        seed: int | None = None,
        max_episode_steps: int | None = None,
        settle_steps: int = SETTLE_STEPS,
        assets_path: str | os.PathLike | None = None,
        render_mode: str | None = None,
        env_kwargs: dict[str, Any] | None = None,
        object_state: bool | Sequence[str] = False,
    ):
        super().__init__()
        _check_object_state_option(object_state)
        if suite not in LIBERO_SUITES:
            raise ValueError(f"Unknown LIBERO suite {suite!r}: use one of {LIBERO_SUITES}")
        libero = import_libero(assets_path)
        self._assets = libero._assets_path_cache
        from libero.libero import benchmark
        from libero.libero.envs.env_wrapper import ControlEnv, OffScreenRenderEnv

        task_suite = benchmark.get_benchmark_dict()[suite]()
        if not 0 <= int(task_id) < task_suite.n_tasks:
            raise ValueError(f"task_id must be in [0, {task_suite.n_tasks - 1}] for {suite}, got {task_id!r}")
        task = task_suite.get_task(int(task_id))
        self.suite, self.task_id, self.task_name, self.instruction = suite, int(task_id), task.name, task.language
        self.init_states = np.asarray(task_suite.get_task_init_states(int(task_id)))
        ids = list(range(len(self.init_states))) if init_state_ids is None else [int(i) for i in init_state_ids]
        if not ids or any(not 0 <= i < len(self.init_states) for i in ids):
            raise ValueError(f"init_state_ids must be non-empty indices in [0, {len(self.init_states) - 1}], got {ids}")
        self.init_state_ids = ids
        self.max_episode_steps = int(max_episode_steps or LIBERO_MAX_STEPS[suite])
        self.settle_steps = int(settle_steps)
        self.camera_size = camera_size
        self.render_mode = render_mode
        bddl = os.path.join(libero.get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
        kwargs: dict[str, Any] = dict(bddl_file_name=bddl, **(env_kwargs or {}))
        try:
            if camera_size is None:
                self._env = ControlEnv(use_camera_obs=False, has_offscreen_renderer=False, **kwargs)
            else:
                kwargs.update(camera_heights=int(camera_size), camera_widths=int(camera_size))
                self._env = OffScreenRenderEnv(**kwargs)
        except ValueError as error:
            if "Error opening file" in str(error):
                raise _missing_asset_error(error, self._assets) from error
            raise
        obs_spaces: dict[str, spaces.Space] = {"state": spaces.Box(-np.inf, np.inf, (8,), np.float32)}
        self.object_state_names: list[str] = _object_state_names(self._env.env, object_state)
        self._object_body_ids = [self._env.env.obj_body_id[name] for name in self.object_state_names]
        if self.object_state_names:
            size = OBJECT_POSE_SIZE * len(self.object_state_names)
            obs_spaces["object_state"] = spaces.Box(-np.inf, np.inf, (size,), np.float32)
        if camera_size is not None:
            image = spaces.Box(0, 255, (int(camera_size), int(camera_size), 3), np.uint8)
            obs_spaces.update(agentview_image=image, wrist_image=image)
        self.observation_space = spaces.Dict(obs_spaces)
        self.action_space = spaces.Box(-1.0, 1.0, (7,), np.float32)
        self._cursor = 0 if seed is None else int(seed) % len(ids)
        self._steps = 0
        self._last_raw: dict[str, Any] | None = None
        self.init_state_id: int | None = None

    def _obs(self, raw: dict[str, Any]) -> dict[str, np.ndarray]:
        self._last_raw = raw
        state = np.concatenate([raw["robot0_eef_pos"], _quat2axisangle(raw["robot0_eef_quat"]), raw["robot0_gripper_qpos"]])
        obs = {"state": state.astype(np.float32)}
        if self.object_state_names:
            obs["object_state"] = self.object_poses().reshape(-1)
        if self.camera_size is not None:
            obs["agentview_image"] = np.ascontiguousarray(raw["agentview_image"][::-1, ::-1])
            obs["wrist_image"] = np.ascontiguousarray(raw["robot0_eye_in_hand_image"][::-1, ::-1])
        return obs

    def _info(self, success: bool) -> dict[str, Any]:
        return {"is_success": success, "instruction": self.instruction, "init_state_id": self.init_state_id}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._cursor = int(seed) % len(self.init_state_ids)
        if options and options.get("init_state_id") is not None:
            state_id = int(options["init_state_id"])
            if not 0 <= state_id < len(self.init_states):
                raise ValueError(f"init_state_id must be in [0, {len(self.init_states) - 1}], got {state_id}")
        else:
            state_id = self.init_state_ids[self._cursor]
            self._cursor = (self._cursor + 1) % len(self.init_state_ids)
        import libero.libero

        libero.libero._assets_path_cache = self._assets  # a hard reset reloads the scene files
        self._env.reset()
        raw = self._env.set_init_state(self.init_states[state_id])
        for _ in range(self.settle_steps):
            raw, _, _, _ = self._env.step(NOOP_ACTION)
        self.init_state_id = state_id
        self._steps = 0
        return self._obs(raw), self._info(bool(self._env.check_success()))

    def step(self, action: np.ndarray):
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(7), -1.0, 1.0)
        raw, reward, _, _ = self._env.step(action)
        self._steps += 1
        success = bool(self._env.check_success())
        truncated = not success and self._steps >= self.max_episode_steps
        return self._obs(raw), float(reward), success, truncated, self._info(success)

    def object_poses(self, names: Sequence[str] | None = None) -> np.ndarray:
        """``(len(names), 7)`` float32 world poses (position, x y z w quaternion) of the root bodies of ``names``
        (default: :attr:`object_state_names`), read from MuJoCo now."""
        env = self._env.env
        ids = self._object_body_ids if names is None else [env.obj_body_id[_known(env, n)] for n in names]
        data = self._env.sim.data
        xquat = np.asarray(data.body_xquat)[ids]  # w x y z
        poses = np.concatenate([np.asarray(data.body_xpos)[ids], xquat[:, [1, 2, 3, 0]]], axis=1)
        return poses.astype(np.float32).reshape(len(ids), OBJECT_POSE_SIZE)

    def check_success(self) -> bool:
        """LIBERO's BDDL goal check on the current state."""
        return bool(self._env.check_success())

    @property
    def libero_env(self):
        """LIBERO's BDDL env (robosuite ``ManipulationEnv``: ``obj_of_interest``, ``obj_body_id``,
        ``parsed_problem``)."""
        return self._env.env

    @property
    def sim(self):
        """The MuJoCo simulation (robosuite's ``MjSim``)."""
        return self._env.sim

    def render(self):
        if self.render_mode == "rgb_array" and self._last_raw is not None and self.camera_size is not None:
            return np.ascontiguousarray(self._last_raw["agentview_image"][::-1, ::-1])
        return None

    def close(self) -> None:
        if getattr(self, "_env", None) is not None:
            self._env.close()
            self._env = None


def make_libero_env(
    suite: str,
    task_id: int,
    camera_size: int | None = 128,
    chunk_size: int = 1,
    init_state_ids: Sequence[int] | None = None,
    seed: int | None = None,
    max_episode_steps: int | None = None,
    settle_steps: int = SETTLE_STEPS,
    assets_path: str | os.PathLike | None = None,
    render_mode: str | None = None,
    env_kwargs: dict[str, Any] | None = None,
    object_state: bool | Sequence[str] = False,
) -> gym.Env:
    """A LIBERO task as a gymnasium env (:class:`LiberoEnv`), in ``ActionChunk`` when ``chunk_size > 1``.

    For SB3, vectorise it as any gymnasium env, e.g. ``make_vec_env(make_libero_env, n_envs=2, seed=0,
    env_kwargs=dict(suite="libero_goal", task_id=0))`` (sub-env i then starts at initial state ``i``); use
    ``MultiInputPolicy``. Parameters: see :class:`LiberoEnv`.
    """
    if isinstance(chunk_size, bool) or int(chunk_size) != chunk_size or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    env: gym.Env = LiberoEnv(
        suite, task_id, camera_size, init_state_ids, seed, max_episode_steps, settle_steps, assets_path, render_mode,
        env_kwargs, object_state,
    )  # fmt: skip
    if chunk_size > 1:
        env = ActionChunk(env, int(chunk_size))
    return env


# ----------------------------------------------------------------------------------------------------- evaluation
def _chunk_size_of(model) -> int:
    shape = getattr(getattr(model, "action_space", None), "shape", None)
    return int(shape[0]) if shape is not None and len(shape) == 2 else 1


def evaluate_libero(
    model,
    suite: str,
    tasks: Iterable[int] | None = None,
    init_states: Iterable[int] = range(50),
    camera_size: int | None = 128,
    max_steps: int | None = None,
    settle_steps: int = SETTLE_STEPS,
    deterministic: bool = False,
    seed: int | None = 0,
    chunk_size: int | None = None,
    assets_path: str | os.PathLike | None = None,
    env_kwargs: dict[str, Any] | None = None,
    verbose: int = 0,
    object_state: bool | Sequence[str] = False,
) -> dict[str, Any]:
    """LIBERO's standard evaluation protocol: every task of the suite, the fixed initial states in order, ``settle_steps``
    no-op steps after each reset, at most ``max_steps`` env steps per episode (:data:`LIBERO_MAX_STEPS` of the suite),
    success = the BDDL goal reached within the limit; the policy samples as in the paper's evaluation
    (``deterministic=False``: the ODE from x_0 ~ N(0, I), seeded; ALGORITHM.md §1), or ``deterministic=True``.

    Each task's episodes run through the package's one evaluation loop,
    :func:`~sb3_stepnft.common.evaluation.evaluate_success`, on a one-env ``DummyVecEnv`` whose :class:`LiberoEnv`
    cycles through ``init_states`` in order (the env is not reseeded; ``seed`` seeds only the policy's noise).

    50 initial states x 10 tasks take hours on 2 CPU cores (about 5 env steps/s with two 128 px cameras): pass
    ``tasks`` and ``init_states`` subsets for quick checks, and report them.

    :param model: Anything with SB3's ``predict(obs, state=None, episode_start=None, deterministic=...)`` (an SB3 or
        sb3_stepnft model) trained on :func:`make_libero_env` observations with the same ``camera_size``.
    :param suite: The LIBERO suite.
    :param tasks: Task ids (default: all of the suite).
    :param init_states: Initial-state ids, run in this order for every task.
    :param camera_size: Camera size (None: physics only, for state-only policies).
    :param max_steps: Episode limit in env steps (default: the suite's).
    :param settle_steps: No-op steps after each reset.
    :param deterministic: Passed to ``predict`` (default False, the paper's sampler; True: x_0 = 0).
    :param seed: Seeds torch inside a forked random state (matters only for ``deterministic=False``).
    :param chunk_size: Rows per decision (default: from the model's action space, Box(H, 7) -> H).
    :param assets_path: LIBERO assets folder.
    :param env_kwargs: Further keyword arguments of :class:`LiberoEnv`'s LIBERO env.
    :param verbose: 1 prints one line per task.
    :param object_state: :class:`LiberoEnv`'s ``object_state`` (for policies trained on the privileged state).
    :return: ``dict(suite, success_rate, episodes, max_steps, settle_steps, tasks=[dict(task_id, name, instruction,
        success_rate, successes, lengths), ...])``; ``success_rate`` is over all episodes (equal per task); ``lengths``
        are env steps.
    """
    init_states = [int(i) for i in init_states]
    if not init_states:
        raise ValueError("init_states is empty")
    import_libero(assets_path)
    if tasks is None:
        from libero.libero import benchmark

        tasks = range(benchmark.get_benchmark_dict()[suite]().n_tasks)
    chunk_size = chunk_size or _chunk_size_of(model)
    results = []
    for task_id in tasks:
        env = make_libero_env(
            suite, task_id, camera_size, chunk_size, init_state_ids=init_states, max_episode_steps=max_steps,
            settle_steps=settle_steps, assets_path=assets_path, env_kwargs=env_kwargs, object_state=object_state,
        )  # fmt: skip
        inner: LiberoEnv = env.unwrapped  # type: ignore[assignment]
        vec_env = DummyVecEnv([lambda env=env: Monitor(env)])
        try:
            outcome = evaluate_success(model, vec_env, len(init_states), deterministic, seed, seed_env=False)
        finally:
            vec_env.close()
        results.append(
            dict(
                task_id=int(task_id),
                name=inner.task_name,
                instruction=inner.instruction,
                success_rate=outcome["success_rate"],
                successes=outcome["successes"],
                lengths=outcome["env_steps"],
            )
        )
        if verbose:
            print(f"{suite} task {task_id} ({inner.instruction}): success {results[-1]['success_rate']:.2f}")
    all_successes = [s for r in results for s in r["successes"]]
    return dict(
        suite=suite,
        success_rate=float(np.mean(all_successes)),
        episodes=len(all_successes),
        max_steps=int(max_steps or LIBERO_MAX_STEPS[suite]),
        settle_steps=int(settle_steps),
        tasks=results,
    )
