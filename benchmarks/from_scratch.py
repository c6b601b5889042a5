"""What to expect from scratch on SB3's classic continuous tasks (no demonstrations, no success flag).

StepNFT, FlowPPO and FlowGRPO are fine-tuning methods: they rank or weigh a pretrained flow policy's own samples.
On tasks without a success flag StepNFT labels episodes by return through a running normaliser over the last
``return_window`` episodes (docs/stepnft.md, "Labels"). This script measures what that gives from scratch, next to
SB3's PPO with its defaults, on Pendulum-v1 (200-step episodes) and a MuJoCo task (default InvertedPendulum-v5).

Every algorithm: 8 envs (FlowGRPO: one group of 8 from ``make_grouped_vec_env``), ``n_steps=128`` (PPO too, so all
collect 1024 env steps per iteration), otherwise its defaults; the same env-step budget and seeds. The return is
``evaluate_policy`` over --n-eval episodes on an evaluation env seeded 10_000 + seed (stochastic policies, the flow
ones through the ODE sampler), at step 0 and every --eval-every env steps.

    python benchmarks/from_scratch.py                       # runs/from_scratch/from_scratch.{csv,md,png}
    python benchmarks/from_scratch.py --quick               # one seed, 20k steps, Pendulum only
    python benchmarks/from_scratch.py --out benchmarks/results   # rewrite the tracked results
"""

import argparse
import csv
import multiprocessing as mp
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

ALGOS = ["StepNFT", "FlowPPO", "FlowGRPO", "PPO"]
TASKS = ["Pendulum-v1", "InvertedPendulum-v5"]
N_ENVS = 8
N_STEPS = 128
RESULTS = os.path.join("runs", "from_scratch")


def algorithm(name: str):
    import stable_baselines3

    import sb3_stepnft

    return getattr(sb3_stepnft, name, None) or getattr(stable_baselines3, name)


def run_one(job) -> list[dict]:
    import torch as th

    th.set_num_threads(1)
    import warnings

    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    from benchmarks.curves import PeriodicEvaluation
    from sb3_stepnft import FlowGRPO
    from sb3_stepnft.envs import make_grouped_vec_env

    name, task, seed, steps, eval_every, n_eval = job
    cls = algorithm(name)
    if cls is FlowGRPO:
        env = make_grouped_vec_env(task, n_groups=1, group_size=N_ENVS, seed=seed)
    else:
        env = make_vec_env(task, n_envs=N_ENVS, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # outcome="auto" announces that it labels by return
        model = cls("MlpPolicy", env, n_steps=N_STEPS, seed=seed)
    eval_env = make_vec_env(task, n_envs=1, seed=10_000 + seed)
    rows: list[dict] = []
    start = time.time()

    def evaluate():
        eval_env.seed(10_000 + seed)
        returns, _ = evaluate_policy(model, eval_env, n_eval_episodes=n_eval, deterministic=False,
                                     return_episode_rewards=True)  # fmt: skip
        rows.append(dict(algo=name, task=task, seed=seed, env_steps=model.num_timesteps,
                         mean_return=float(np.mean(returns)), wall_time=time.time() - start))  # fmt: skip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.learn(steps, callback=PeriodicEvaluation(evaluate, eval_every))
    return rows


def summarise(rows: list[dict], args, command: str) -> str:
    lines = [
        f"Command: `{command}`",
        "",
        f"From scratch (random initial policy, no demonstrations), {N_ENVS} envs, n_steps={N_STEPS} for every "
        f"algorithm, {args.steps} env steps per run, seeds {args.seeds}. Return: `evaluate_policy` over {args.n_eval} "
        "episodes (deterministic=False) on an evaluation env seeded 10000 + seed. Mean ± std over seeds.",
        "",
        "| task | algorithm | return at step 0 | final return | gain | wall time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for task in dict.fromkeys(r["task"] for r in rows):
        for algo in dict.fromkeys(r["algo"] for r in rows):
            runs = {}
            for r in rows:
                if r["task"] == task and r["algo"] == algo:
                    runs.setdefault(r["seed"], []).append(r)
            if not runs:
                continue
            first = np.array([r[0]["mean_return"] for r in runs.values()])
            last = np.array([r[-1]["mean_return"] for r in runs.values()])
            wall = np.array([r[-1]["wall_time"] for r in runs.values()])
            lines.append(
                f"| {task} | {algo} | {first.mean():.1f} ± {first.std():.1f} | {last.mean():.1f} ± {last.std():.1f} | "
                f"{(last - first).mean():+.1f} ± {(last - first).std():.1f} | {wall.mean():.0f} |"
            )
    return "\n".join(lines) + "\n"


def plot(path: str, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for algo in dict.fromkeys(r["algo"] for r in rows):
            mine = [r for r in rows if r["task"] == task and r["algo"] == algo]
            steps = sorted({r["env_steps"] for r in mine})
            seeds = sorted({r["seed"] for r in mine})
            curves = np.array([[np.mean([r["mean_return"] for r in mine if r["env_steps"] == s and r["seed"] == seed]
                                 or [np.nan]) for s in steps] for seed in seeds])  # fmt: skip
            mean, std = np.nanmean(curves, axis=0), np.nanstd(curves, axis=0)
            ax.plot(steps, mean, label=algo)
            ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
        ax.set_title(f"{task}, from scratch")
        ax.set_xlabel("env steps")
        ax.set_ylabel("episode return")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", default=ALGOS, choices=ALGOS)
    parser.add_argument("--tasks", nargs="+", default=None, help=f"gymnasium ids (default {' '.join(TASKS)})")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2 (--quick: 0)")
    parser.add_argument("--steps", type=int, default=None, help="env steps per run (default 100000; --quick 20000)")
    parser.add_argument("--eval-every", type=int, default=None, help="default 10240 (--quick 5120)")
    parser.add_argument("--n-eval", type=int, default=10, help="evaluation episodes per point")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None, help="output folder (default runs/from_scratch)")
    args = parser.parse_args()
    args.tasks = args.tasks or (TASKS[:1] if args.quick else TASKS)
    args.seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    args.steps = args.steps or (20_000 if args.quick else 100_000)
    args.eval_every = args.eval_every or (5_120 if args.quick else 10_240)
    out = os.path.join(args.out or RESULTS, "from_scratch_quick" if args.quick else "from_scratch")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    command = " ".join(["python benchmarks/from_scratch.py", *sys.argv[1:]])

    jobs = [(a, t, s, args.steps, args.eval_every, args.n_eval) for t in args.tasks for s in args.seeds for a in args.algos]
    with mp.get_context("spawn").Pool(args.workers) as pool:
        rows = [row for result in pool.imap_unordered(run_one, jobs) for row in result]
    rows.sort(key=lambda r: (args.tasks.index(r["task"]), args.algos.index(r["algo"]), r["seed"], r["env_steps"]))
    with open(out + ".csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    text = summarise(rows, args, command)
    with open(out + ".md", "w") as f:
        f.write(text)
    plot(out + ".png", rows)
    print(text)
    print(f"wrote {out}.csv, {out}.md, {out}.png")


if __name__ == "__main__":
    main()
