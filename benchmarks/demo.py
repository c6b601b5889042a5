"""`make demo-pointreach`: pretrain a flow policy on imperfect demonstrations, fine-tune it with π-StepNFT, compare with PPO.

Task: PointReach (sb3_stepnft.envs), sparse success. Evaluation follows the paper's protocol: the student
policy, Euler ODE from random x_0 (``deterministic=False``), seeded, 100 episodes per point.

    python benchmarks/demo.py                 # defaults: 1 seed, 100k env steps (a few minutes on 2 cores)
    python benchmarks/demo.py --seeds 0 1 2   # mean ± std over seeds

Writes demo.md (table + command), demo.csv (curves) and demo.png (learning curves) to runs/demo/ (git-ignored);
`--out benchmarks/results` rewrites the tracked results. One torch thread by default (--torch-threads).
"""

import argparse
import csv
import os
import sys
import tempfile
import time

import numpy as np
import torch as th

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from stable_baselines3 import PPO  # noqa: E402
from stable_baselines3.common.callbacks import EvalCallback  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402
from stable_baselines3.common.evaluation import evaluate_policy  # noqa: E402

from sb3_stepnft import StepNFT  # noqa: E402
from sb3_stepnft.common.threads import configure_torch_threads  # noqa: E402
from sb3_stepnft.envs import PointReachEnv, collect_demonstrations  # noqa: E402
from sb3_stepnft.sft import pretrain  # noqa: E402

N_ENVS = 8


def success_rate(model, seed: int, n_episodes: int) -> float:
    """Success rate of the student (ODE from random x_0), on an eval env seeded with ``seed``."""
    env = make_vec_env(PointReachEnv, n_envs=1, seed=seed)
    episode_rewards, _ = evaluate_policy(
        model, env, n_eval_episodes=n_episodes, deterministic=False, return_episode_rewards=True
    )
    return float(np.mean(np.asarray(episode_rewards) > 0))  # reward 1 exactly when the goal is reached


def run(algo: str, seed: int, steps: int, eval_every: int, n_eval: int, demos) -> tuple[list[int], list[float], float]:
    th.manual_seed(seed)
    env = make_vec_env(PointReachEnv, n_envs=N_ENVS, seed=seed)
    if algo == "StepNFT":
        model = StepNFT("MlpPolicy", env, seed=seed)
        pretrain(model, demos, seed=seed)
    else:
        model = PPO("MlpPolicy", env, seed=seed)  # SB3's defaults (n_steps=2048: it may overshoot the budget)
    eval_env = make_vec_env(PointReachEnv, n_envs=1, seed=10_000 + seed)
    log_dir = tempfile.mkdtemp(prefix="demo_eval_")  # EvalCallback records its curve only with a log_path
    callback = EvalCallback(
        eval_env, eval_freq=max(1, eval_every // N_ENVS), n_eval_episodes=n_eval, deterministic=False, verbose=0,
        log_path=log_dir,
    )  # fmt: skip
    steps_axis, curve = [0], [success_rate(model, 10_000 + seed, n_eval)]
    start = time.time()
    model.learn(steps, callback=callback)
    elapsed = time.time() - start
    for timestep, successes in zip(callback.evaluations_timesteps, callback.evaluations_successes):
        steps_axis.append(int(timestep))
        curve.append(float(np.mean(successes)))
    steps_axis.append(model.num_timesteps)
    curve.append(success_rate(model, 20_000 + seed, n_eval))
    return steps_axis, curve, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--eval-every", type=int, default=10_000)
    parser.add_argument("--n-eval", type=int, default=100)
    parser.add_argument(
        "--out",
        default=os.path.join("runs", "demo"),
        help="output folder (default runs/demo/, git-ignored; --out benchmarks/results rewrites the tracked results)",
    )
    parser.add_argument("--torch-threads", type=int, default=None, help="torch threads (default 1; 0: torch's default)")
    args = parser.parse_args()
    configure_torch_threads(args.torch_threads)

    from rich.console import Console
    from rich.table import Table

    console = Console()
    os.makedirs(args.out, exist_ok=True)
    results: dict[str, list] = {"StepNFT": [], "PPO": []}
    demo_rates = []
    for seed in args.seeds:
        demos, demo_rate = collect_demonstrations(40, seed=seed)
        demo_rates.append(demo_rate)
        console.print(f"seed {seed}: {demos.n_episodes} demonstrations ({len(demos)} steps), success {demo_rate:.2f}")
        for algo in results:
            with console.status(f"seed {seed}: {algo} for {args.steps} env steps"):
                results[algo].append(run(algo, seed, args.steps, args.eval_every, args.n_eval, demos))
            console.print(f"  {algo}: success {results[algo][-1][1][0]:.2f} -> {results[algo][-1][1][-1]:.2f}")

    command = "python benchmarks/demo.py " + " ".join(sys.argv[1:])
    table = Table(title=f"PointReach, {args.steps} env steps, {len(args.seeds)} seed(s), success over {args.n_eval} episodes")
    for column in ("algorithm", "start", "success at step 0", f"success after {args.steps}", "train time (s)"):
        table.add_column(column)
    rows = []
    for algo, runs in results.items():
        first = np.array([r[1][0] for r in runs])
        last = np.array([r[1][-1] for r in runs])
        wall = np.mean([r[2] for r in runs])
        start = "pretrained on demos" if algo == "StepNFT" else "from scratch"
        row = (algo, start, f"{first.mean():.2f} ± {first.std():.2f}", f"{last.mean():.2f} ± {last.std():.2f}", f"{wall:.0f}")
        rows.append(row)
        table.add_row(*row)
    console.print(table)

    with open(os.path.join(args.out, "demo.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["algorithm", "seed", "env_steps", "success_rate"])
        for algo, runs in results.items():
            for seed, (steps_axis, curve, _) in zip(args.seeds, runs):
                writer.writerows([algo, seed, s, c] for s, c in zip(steps_axis, curve))
    with open(os.path.join(args.out, "demo.md"), "w") as f:
        f.write(f"Command: `{command.strip()}`\n\nDemonstrator success: {np.mean(demo_rates):.2f}\n\n")
        f.write("| algorithm | start | success at step 0 | success after | train time (s) |\n|---|---|---|---|---|\n")
        for row in rows:
            f.write("| " + " | ".join(row) + " |\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for algo, runs in results.items():
        steps_axis = runs[0][0]
        curves = np.array([r[1] for r in runs])
        ax.plot(steps_axis, curves.mean(0), label=algo)
        if len(runs) > 1:
            ax.fill_between(steps_axis, curves.mean(0) - curves.std(0), curves.mean(0) + curves.std(0), alpha=0.2)
    ax.set_xlabel("env steps")
    ax.set_ylabel("success rate (deterministic=False)")
    ax.set_title("PointReach: StepNFT (pretrained) vs PPO (scratch)")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "demo.png"), dpi=100)
    console.print(f"wrote {args.out}/demo.md, demo.csv, demo.png")


if __name__ == "__main__":
    main()
