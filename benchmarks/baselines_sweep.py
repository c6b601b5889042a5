"""How the MLP-scale defaults of FlowPPO and FlowGRPO were chosen (ALGORITHM.md §5): one-at-a-time variations.

For each setting: PointReach, 8 envs (FlowGRPO: one group of 8 from ``make_grouped_vec_env``),
``pretrain(model, demos, seed=s)`` on 40 imperfect demonstrations, then ``learn(--steps)``; success of the policy
(Euler ODE from random x_0, ``deterministic=False``) over --n-eval seeded episodes, before and after, per seed.

    python benchmarks/baselines_sweep.py --steps 30000    # writes runs/baselines_sweep/baselines_sweep_30k.md

The defaults were chosen at 30k env steps: at 100k (``--steps 100000``, the default; writes ``..._100k.md``) the
defaults already reach a success of about 1.0 (benchmarks/results/compare.md), so the budget no longer separates
the settings.
"""

import argparse
import json
import multiprocessing as mp
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

VARIATIONS = {
    "FlowPPO": [
        {},
        {"learning_rate": 3e-5},
        {"learning_rate": 3e-4},
        {"n_epochs": 4},
        {"n_epochs": 16},
        {"n_steps": 256},
        {"critic_learning_rate": 1e-3},
    ],
    "FlowGRPO": [
        {},
        {"learning_rate": 3e-5},
        {"learning_rate": 3e-4},
        {"n_epochs": 4},
        {"n_epochs": 16},
        {"n_steps": 256},
    ],
}


def one_run(job):
    import torch as th

    th.set_num_threads(1)
    from stable_baselines3.common.env_util import make_vec_env

    from sb3_stepnft import FlowGRPO, FlowPPO
    from sb3_stepnft.common.evaluation import evaluate_success
    from sb3_stepnft.envs import PointReachEnv, collect_demonstrations, make_grouped_vec_env
    from sb3_stepnft.sft import pretrain

    algo, variation, seed, steps, n_eval = job
    if algo == "FlowGRPO":
        model = FlowGRPO("MlpPolicy", make_grouped_vec_env(PointReachEnv, 1, 8, seed=seed), seed=seed, **variation)
    else:
        model = FlowPPO("MlpPolicy", make_vec_env(PointReachEnv, n_envs=8, seed=seed), seed=seed, **variation)
    demos, _ = collect_demonstrations(40, seed=seed)
    pretrain(model, demos, seed=seed)
    eval_env = make_vec_env(PointReachEnv, n_envs=1)

    def success():
        return evaluate_success(model, eval_env, n_eval_episodes=n_eval, seed=10_000 + seed)["success_rate"]

    before = success()
    start = time.time()
    model.learn(steps)
    return algo, json.dumps(variation), seed, before, success(), time.time() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", default=list(VARIATIONS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--n-eval", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only-defaults", action="store_true", help="run the defaults only")
    parser.add_argument(
        "--out",
        default=os.path.join("runs", "baselines_sweep"),
        help="output folder (default runs/baselines_sweep/; --out benchmarks/results: the tracked results)",
    )
    args = parser.parse_args()
    jobs = [
        (algo, v, s, args.steps, args.n_eval)
        for algo in args.algos
        for v in (VARIATIONS[algo][:1] if args.only_defaults else VARIATIONS[algo])
        for s in args.seeds
    ]
    with mp.get_context("spawn").Pool(args.workers) as pool:
        results = []
        for result in pool.imap_unordered(one_run, jobs):
            print(result, flush=True)
            results.append(result)
    rows = {}
    for algo, key, seed, before, after, wall in results:
        rows.setdefault((algo, key), []).append((seed, before, after, wall))
    lines = [
        f"Command: `python benchmarks/baselines_sweep.py {' '.join(sys.argv[1:])}`".replace("  ", " "),
        "",
        f"PointReach, 8 envs, {args.steps} env steps, seeds {args.seeds}, success over {args.n_eval} episodes "
        "(deterministic=False). Each row changes one setting from the defaults.",
        "",
        "| algorithm | change from defaults | success before | success after | gain (mean ± std) | per seed | "
        "train time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for (algo, key), values in sorted(rows.items()):
        values = np.array(sorted(values))
        gain = values[:, 2] - values[:, 1]
        per_seed = ", ".join(f"{g:+.2f}" for g in gain)
        lines.append(
            f"| {algo} | {key if key != '{}' else '(defaults)'} | {values[:, 1].mean():.3f} | {values[:, 2].mean():.3f} | "
            f"{gain.mean():+.3f} ± {gain.std():.3f} | {per_seed} | {values[:, 3].mean():.0f} |"
        )
    text = "\n".join(lines) + "\n"
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"baselines_sweep_{args.steps // 1000}k.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
