"""End-to-end: default StepNFT raises the success of a pretrained flow policy (paper's evaluation protocol)."""

import numpy as np
from stable_baselines3.common.env_util import make_vec_env

from sb3_stepnft import StepNFT
from sb3_stepnft.common.evaluation import evaluate_success
from sb3_stepnft.envs import PointReachEnv, collect_demonstrations
from sb3_stepnft.sft import pretrain

SEEDS = (0, 1)
MARGIN = 0.2  # measured gains on this task are +0.4 to +0.6 (benchmarks/results/defaults_sweep.md)


def test_default_stepnft_beats_its_pretrained_policy():
    before, after = [], []
    for seed in SEEDS:
        demos, demo_success = collect_demonstrations(40, seed=seed)  # half of the episodes wander off
        assert demo_success < 0.7
        model = StepNFT("MlpPolicy", make_vec_env(PointReachEnv, n_envs=8, seed=seed), seed=seed)
        pretrain(model, demos, seed=seed)
        eval_env = make_vec_env(PointReachEnv, n_envs=1)
        before.append(evaluate_success(model, eval_env, n_eval_episodes=100, seed=100 + seed)["success_rate"])
        model.learn(total_timesteps=100_000)
        after.append(evaluate_success(model, eval_env, n_eval_episodes=100, seed=100 + seed)["success_rate"])
    print(f"success before {before}, after {after}")
    assert np.mean(after) >= np.mean(before) + MARGIN, (before, after)
