"""Environments and env factories. Simulator adapters (ManiSkill, LIBERO) are imported lazily."""

import gymnasium as gym

from sb3_stepnft.envs.grouped import make_grouped_vec_env
from sb3_stepnft.envs.lang_reach import LangReachEnv, make_lang_reach_env
from sb3_stepnft.envs.lang_reach import collect_demonstrations as collect_lang_reach_demonstrations
from sb3_stepnft.envs.libero import evaluate_libero, make_libero_env
from sb3_stepnft.envs.maniskill import ManiSkillSpec, make_maniskill_env, make_maniskill_vec_env
from sb3_stepnft.envs.point_reach import PointReachEnv, collect_demonstrations
from sb3_stepnft.envs.testing import TorchPointReachVecEnv

POINT_REACH_ID = "sb3_stepnft/PointReach-v0"
if POINT_REACH_ID not in gym.registry:
    gym.register(id=POINT_REACH_ID, entry_point="sb3_stepnft.envs.point_reach:PointReachEnv")
LANG_REACH_ID = "sb3_stepnft/LangReach-v0"
if LANG_REACH_ID not in gym.registry:
    gym.register(id=LANG_REACH_ID, entry_point="sb3_stepnft.envs.lang_reach:LangReachEnv")

__all__ = [
    "PointReachEnv",
    "TorchPointReachVecEnv",
    "collect_demonstrations",
    "POINT_REACH_ID",
    "LangReachEnv",
    "make_lang_reach_env",
    "collect_lang_reach_demonstrations",
    "LANG_REACH_ID",
    "make_grouped_vec_env",
    "make_maniskill_env",
    "make_maniskill_vec_env",
    "ManiSkillSpec",
    "make_libero_env",
    "evaluate_libero",
]
