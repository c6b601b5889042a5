"""How the `pretrain` defaults were chosen: success of the pretrained flow policy versus SFT settings.

PointReach, 40 imperfect demonstrations per seed (``collect_demonstrations(40, seed)``), success of the student
(ODE from random x_0, ``deterministic=False``) over --n-eval seeded episodes, mean over --seeds.

    python benchmarks/pretrain_sweep.py        # writes runs/pretrain_sweep/pretrain_sweep.md
"""

import argparse
import multiprocessing as mp
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

SETTINGS = [
    dict(epochs=30),
    dict(epochs=60),
    dict(epochs=100),
    dict(epochs=150),
    dict(epochs=300),
    dict(epochs=100, batch_size=256),
    dict(epochs=100, learning_rate=3e-4),
    dict(epochs=100, learning_rate=3e-3),
]


def one_run(job):
    import torch as th

    th.set_num_threads(1)
    from stable_baselines3.common.env_util import make_vec_env

    from sb3_stepnft import StepNFT
    from sb3_stepnft.common.evaluation import evaluate_success
    from sb3_stepnft.envs import PointReachEnv, collect_demonstrations
    from sb3_stepnft.sft import pretrain

    setting, seed, n_eval = job
    demos, _ = collect_demonstrations(40, seed=seed)
    model = StepNFT("MlpPolicy", make_vec_env(PointReachEnv, n_envs=1, seed=seed), seed=seed)
    metrics = pretrain(model, demos, seed=seed, **setting)
    success = evaluate_success(model, make_vec_env(PointReachEnv, n_envs=1), n_eval_episodes=n_eval, seed=10_000 + seed)
    return str(setting), success["success_rate"], metrics["loss"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--n-eval", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--out",
        default=os.path.join("runs", "pretrain_sweep"),
        help="output folder (default runs/pretrain_sweep/; --out benchmarks/results: the tracked results)",
    )
    args = parser.parse_args()
    jobs = [(s, seed, args.n_eval) for s in SETTINGS for seed in args.seeds]
    with mp.get_context("spawn").Pool(args.workers) as pool:
        results = pool.map(one_run, jobs)
    rows: dict[str, list] = {}
    for key, success, loss in results:
        rows.setdefault(key, []).append((success, loss))
    lines = [
        f"Command: `{' '.join(['python benchmarks/pretrain_sweep.py', *sys.argv[1:]])}`",
        "",
        f"PointReach, 40 imperfect demonstrations (demonstrator success about 0.5), seeds {args.seeds}, success of the "
        f"pretrained policy over {args.n_eval} episodes (deterministic=False). Unlisted settings: batch_size=64, "
        "learning_rate=1e-3.",
        "",
        "| pretrain settings | success (mean ± std) | final SFT loss |",
        "|---|---|---|",
    ]
    for key, values in rows.items():
        values = np.array(values)
        lines.append(f"| {key} | {values[:, 0].mean():.3f} ± {values[:, 0].std():.3f} | {values[:, 1].mean():.3f} |")
    text = "\n".join(lines) + "\n"
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "pretrain_sweep.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
