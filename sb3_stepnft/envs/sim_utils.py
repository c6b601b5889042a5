"""Helpers shared by the simulator adapters: lazy imports with actionable errors, instructions, repository paths."""

import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALL_HINT = "bash scripts/install_sim.sh <venv>"


def import_simulator(module: str, extra: str) -> ModuleType:
    """Import a simulator module, or raise an ImportError that names the extra (and the install script) to use.

    :param module: The module to import, e.g. ``"mani_skill.envs"``.
    :param extra: The extra of ``sb3-stepnft`` that provides it, e.g. ``"maniskill"``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{module.split('.')[0]} is not installed ({error}). Install the simulator with "
            f'`pip install "sb3-stepnft[{extra}]"`, or, with its system packages and pins, `{INSTALL_HINT}` '
            "(see docs/environments.md)."
        ) from error


def shared_data_dir() -> Path:
    """The folder of offline data bundles: ``$SB3_STEPNFT_SHARED_DATA``, else ``../shared/data`` next to the repository."""
    return Path(os.environ.get("SB3_STEPNFT_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")).expanduser()


class InstructionInfo(gym.Wrapper):
    """Attach a language instruction to an env: ``env.instruction`` and ``info["instruction"]`` at reset and at
    every step (strings in ``info`` pass through SB3's VecEnvs; a tokenising wrapper or a VLA policy reads them).

    :param env: The env.
    :param instruction: The instruction text.
    """

    def __init__(self, env: gym.Env, instruction: str):
        super().__init__(env)
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError(f"instruction must be a non-empty string, got {instruction!r}")
        self.instruction = instruction

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        return obs, {**info, "instruction": self.instruction}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, {**info, "instruction": self.instruction}


class ActionBounds(gym.ActionWrapper):
    """Narrow a Box action space to ``[-bounds, bounds]`` (intersected with the env's own bounds); actions pass through.

    Flow policies normalise actions by the Box bounds, and SB3 clips actions to them. When demonstrations use a small
    part of the range (ManiSkill's motion-planned ``pd_ee_delta_pos`` actions stay within about ±0.3 of ±1), bounds that
    match them keep the flow's resolution and its exploration noise in proportion to the demonstrated motions.

    :param env: An env with a Box action space.
    :param bounds: A float, or one value per action dimension (e.g. ``(0.3, 0.3, 0.4, 1.0)``: translation and gripper).
    """

    def __init__(self, env: gym.Env, bounds):
        super().__init__(env)
        space = env.action_space
        if not isinstance(space, spaces.Box):
            raise ValueError(f"ActionBounds needs a Box action space, got {space}")
        bounds = np.broadcast_to(np.asarray(bounds, dtype=space.dtype), space.shape)
        if not np.all(bounds > 0):
            raise ValueError(f"action bounds must be positive, got {bounds}")
        self.action_space = spaces.Box(np.maximum(space.low, -bounds), np.minimum(space.high, bounds), dtype=space.dtype)

    def action(self, action):
        return action
