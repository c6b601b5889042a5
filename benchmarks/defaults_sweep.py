"""How StepNFT's MLP-scale defaults were chosen (ALGORITHM.md §5): one-at-a-time variations around them.

For each setting: PointReach, 8 envs, ``pretrain(model, demos, seed=s)`` on 40 imperfect demonstrations, then
``learn(--steps)``; success of the student (ODE from random x_0, ``deterministic=False``) over --n-eval
seeded episodes, before and after, averaged over --seeds.

    python benchmarks/defaults_sweep.py                  # writes runs/defaults_sweep/defaults_sweep.md
"""

import argparse
import json
import multiprocessing as mp
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

VARIATIONS = [
    {},
    {"learning_rate": 5e-5},
    {"learning_rate": 2e-4},
    {"learning_rate": 5e-4},
    {"n_steps": 64},
    {"n_steps": 256},
    {"n_steps": 2048},
    {"batch_size": 64},
    {"n_epochs": 1},
    {"n_epochs": 8},
    {"pretrain": {"epochs": 100}},
    {"pretrain": {"epochs": 1000}},
]


def one_run(job):
    import torch as th

    th.set_num_threads(1)
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    from sb3_stepnft import StepNFT
    from sb3_stepnft.envs import PointReachEnv, collect_demonstrations
    from sb3_stepnft.sft import pretrain

    variation, seed, steps, n_eval, pretrain_kwargs = job
    kwargs = {k: v for k, v in variation.items() if k != "pretrain"}
    demos, _ = collect_demonstrations(40, seed=seed)
    model = StepNFT("MlpPolicy", make_vec_env(PointReachEnv, n_envs=8, seed=seed), seed=seed, **kwargs)
    pretrain(model, demos, seed=seed, **{**pretrain_kwargs, **variation.get("pretrain", {})})

    def success():
        env = make_vec_env(PointReachEnv, n_envs=1, seed=10_000 + seed)
        rewards, _ = evaluate_policy(model, env, n_eval_episodes=n_eval, deterministic=False, return_episode_rewards=True)
        return float(np.mean(np.asarray(rewards) > 0))

    before = success()
    start = time.time()
    model.learn(steps)
    return json.dumps(variation), seed, before, success(), time.time() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--n-eval", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pretrain-epochs", type=int, default=None, help="pretrain epochs (default: pretrain's)")
    parser.add_argument("--pretrain-lr", type=float, default=None, help="pretrain learning rate (default: pretrain's)")
    parser.add_argument(
        "--out",
        default=os.path.join("runs", "defaults_sweep"),
        help="output folder (default runs/defaults_sweep/; --out benchmarks/results: the tracked results)",
    )
    args = parser.parse_args()
    pretrain_kwargs = {}
    if args.pretrain_epochs is not None:
        pretrain_kwargs["epochs"] = args.pretrain_epochs
    if args.pretrain_lr is not None:
        pretrain_kwargs["learning_rate"] = args.pretrain_lr
    jobs = [(v, s, args.steps, args.n_eval, pretrain_kwargs) for v in VARIATIONS for s in args.seeds]
    with mp.get_context("spawn").Pool(args.workers) as pool:
        results = pool.map(one_run, jobs)
    rows = {}
    for key, _seed, before, after, wall in results:
        rows.setdefault(key, []).append((before, after, wall))
    os.makedirs(args.out, exist_ok=True)
    lines = [
        f"Command: `{' '.join(['python benchmarks/defaults_sweep.py', *sys.argv[1:]])}`",
        "",
        f"PointReach, 8 envs, {args.steps} env steps, seeds {args.seeds}, success over {args.n_eval} episodes "
        f"(deterministic=False), pretrain settings {pretrain_kwargs or 'defaults'}. Each row changes one setting from "
        "the defaults.",
        "",
        "| change from defaults | success before | success after | gain (mean ± std) | train time (s) |",
        "|---|---|---|---|---|",
    ]
    for key, values in rows.items():
        values = np.array(values)
        gain = values[:, 1] - values[:, 0]
        lines.append(
            f"| {key if key != '{}' else '(defaults)'} | {values[:, 0].mean():.3f} | {values[:, 1].mean():.3f} | "
            f"{gain.mean():+.3f} ± {gain.std():.3f} | {values[:, 2].mean():.0f} |"
        )
    text = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "defaults_sweep.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
