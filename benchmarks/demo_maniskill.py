"""`make demo`: few-shot pretraining from motion-planned demonstrations, then π-StepNFT, on ManiSkill PushCube (state).

1. Motion-plan 10 PushCube demonstrations offline, convert them to pd_ee_delta_pos and re-simulate them in the
   training env (``sb3_stepnft.envs.maniskill_demos``; a few seconds per demonstration on 2 cores, cached).
2. Pretrain a flow policy on them (flow matching), with observation statistics and action bounds taken from the
   demonstrations and chunks of H = 8 actions.
3. Fine-tune with StepNFT; evaluate the student (Euler ODE from random x_0, ``deterministic=False``, the paper's
   protocol) on seeds disjoint from the demonstrations'. Episodes are limited to 1.5x the mean demonstration length.

    python benchmarks/demo_maniskill.py              # `make demo`: 1 seed, 12,288 decisions (~95k env steps), ~7 min
    python benchmarks/demo_maniskill.py --seeds 0 1 2 --name demo_maniskill_3seeds    # mean ± std over seeds

Needs the [maniskill] extra and Vulkan (`make install-sim`, or bash scripts/install_sim.sh venv). Writes
<name>.md (table + command), <name>.csv (curves) and <name>.png (learning curve) to runs/<name>/ (git-ignored; the
default name is demo_maniskill); `--out benchmarks/results` rewrites the tracked results. One torch thread by default.
The PointReach demo of earlier versions is `make demo-pointreach` (benchmarks/demo.py).
"""

import argparse
import csv
import os
import sys
import time

import numpy as np
import torch as th

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from stable_baselines3.common.callbacks import BaseCallback  # noqa: E402

from sb3_stepnft import StepNFT  # noqa: E402
from sb3_stepnft.common.evaluation import evaluate_success  # noqa: E402
from sb3_stepnft.common.threads import configure_torch_threads  # noqa: E402
from sb3_stepnft.envs import make_maniskill_env  # noqa: E402
from sb3_stepnft.envs.maniskill_demos import (  # noqa: E402
    demo_action_bounds,
    format_stats,
    generate_demonstrations,
    normalize_like_demos,
)
from sb3_stepnft.sft import pretrain  # noqa: E402

EVAL_SEED = 10_000  # demonstrations use seeds from 0: evaluation never sees a demonstrated initial state


class EnvStepEvaluation(BaseCallback):
    """Count underlying env steps (``info["env_steps"]`` of ActionChunk) and evaluate every ``eval_every`` decisions."""

    def __init__(self, make_eval_env, eval_every: int, n_eval: int, seed: int):
        super().__init__()
        self.make_eval_env, self.eval_every, self.n_eval, self.seed = make_eval_env, eval_every, n_eval, seed
        self.env_steps = 0
        self.eval_time = 0.0
        self.curve: list[tuple[int, int, float]] = []  # (decisions, env steps, success)

    def evaluate(self) -> float:
        start = time.time()
        env = self.make_eval_env()
        rate = evaluate_success(self.model, env, n_eval_episodes=self.n_eval, seed=self.seed)["success_rate"]
        env.close()
        self.curve.append((self.model.num_timesteps, self.env_steps, rate))
        self.eval_time += time.time() - start
        return rate

    def _on_step(self) -> bool:
        self.env_steps += sum(int(info.get("env_steps", 1)) for info in self.locals["infos"])
        if self.n_calls % max(1, self.eval_every // self.training_env.num_envs) == 0:
            self.evaluate()
        return True


def run(seed: int, args, demos, bounds) -> dict:
    th.manual_seed(seed)
    limit = args.max_episode_steps

    def make(num_envs: int, env_seed: int):
        env = make_maniskill_env(
            args.env, num_envs=num_envs, seed=env_seed, max_episode_steps=limit, chunk_size=args.chunk, action_bounds=bounds
        )
        return normalize_like_demos(env, demos)

    env = make(args.n_envs, 1_000 + seed)
    settings = dict(learning_rate=args.learning_rate, n_steps=args.n_steps, batch_size=args.batch_size, n_epochs=args.n_epochs)
    model = StepNFT("MlpPolicy", env, seed=seed, **{k: v for k, v in settings.items() if v is not None})  # None: default
    start = time.time()
    pretrain(model, demos, seed=seed)
    pretrain_time = time.time() - start
    callback = EnvStepEvaluation(lambda: make(1, EVAL_SEED + seed), args.eval_every, args.n_eval, EVAL_SEED + seed)
    callback.init_callback(model)
    before = callback.evaluate()
    start, eval_time = time.time(), callback.eval_time
    model.learn(args.steps, callback=callback)
    train_time = time.time() - start - (callback.eval_time - eval_time)  # without the evaluations
    if callback.curve[-1][0] != model.num_timesteps:
        callback.evaluate()
    env.close()
    return dict(before=before, after=callback.curve[-1][2], curve=callback.curve, pretrain_time=pretrain_time,
                train_time=train_time, env_steps=callback.env_steps)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="PushCube-v1")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--demos", type=int, default=10, help="motion-planned demonstrations (few-shot)")
    parser.add_argument("--steps", type=int, default=12_288, help="StepNFT decisions (x chunk env steps)")
    parser.add_argument("--chunk", type=int, default=8)
    parser.add_argument("--n-envs", type=int, default=8)
    # StepNFT's defaults unless given (the same defaults as every other task: benchmarks/defaults_sweep.py)
    parser.add_argument("--n-steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--n-epochs", type=int, default=None)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--eval-every", type=int, default=4096, help="decisions between evaluations")
    parser.add_argument("--n-eval", type=int, default=100)
    parser.add_argument("--max-episode-steps", type=int, default=None, help="default: 1.5 x mean demo length")
    parser.add_argument(
        "--out",
        default=None,
        help="output folder (default runs/<name>/, git-ignored; --out benchmarks/results rewrites the tracked results)",
    )
    parser.add_argument("--name", default="demo_maniskill", help="base name of the result files in --out")
    parser.add_argument("--torch-threads", type=int, default=None, help="torch threads (default 1; 0: torch's default)")
    args = parser.parse_args()
    args.out = args.out or os.path.join("runs", args.name)
    configure_torch_threads(args.torch_threads)

    from rich.console import Console
    from rich.table import Table

    console = Console()
    os.makedirs(args.out, exist_ok=True)
    wall_start = time.time()
    with console.status(f"motion-planning {args.demos} {args.env} demonstrations"):
        demos, stats = generate_demonstrations(args.env, args.demos, out_dir=os.path.join(args.out, "tmp", "demos"))
    console.print(format_stats(stats))
    args.max_episode_steps = args.max_episode_steps or stats["recommended_max_episode_steps"]
    bounds = demo_action_bounds(demos)
    bounds_text = np.round(bounds, 3).tolist()
    console.print(f"max_episode_steps {args.max_episode_steps}, action bounds {bounds_text}, chunk {args.chunk}")
    runs = []
    for seed in args.seeds:
        with console.status(f"seed {seed}: pretrain + StepNFT for {args.steps} decisions"):
            runs.append(run(seed, args, demos, bounds))
        console.print(f"  seed {seed}: success {runs[-1]['before']:.2f} -> {runs[-1]['after']:.2f}")

    before = np.array([r["before"] for r in runs])
    after = np.array([r["after"] for r in runs])
    env_steps = int(np.mean([r["env_steps"] for r in runs]))
    title = (
        f"{args.env} (state, pd_ee_delta_pos, chunk {args.chunk}), {len(args.seeds)} seed(s), "
        f"success over {args.n_eval} episodes (deterministic=False)"
    )
    table = Table(title=title)
    for column in ("policy", "success", "env steps", "time (s)"):
        table.add_column(column)
    planner = stats["planned"] / (stats["planned"] + stats["planner_failures"])
    rows = [
        ("motion planner (demonstrator)", f"{planner:.2f}", "-", "-"),
        (f"pretrained on {stats['kept']} demos", f"{before.mean():.2f} ± {before.std():.2f}", "0",
         f"{np.mean([r['pretrain_time'] for r in runs]):.0f}"),
        (f"+ StepNFT, {args.steps} decisions", f"{after.mean():.2f} ± {after.std():.2f}", f"{env_steps}",
         f"{np.mean([r['train_time'] for r in runs]):.0f}"),
    ]  # fmt: skip
    for row in rows:
        table.add_row(*row)
    console.print(table)

    command = "python benchmarks/demo_maniskill.py " + " ".join(sys.argv[1:])
    wall = (time.time() - wall_start) / 60
    console.print(f"total wall time {wall:.1f} min (demonstrations, pretraining, StepNFT and evaluations)")
    with open(os.path.join(args.out, f"{args.name}.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["seed", "decisions", "env_steps", "success_rate"])
        for seed, r in zip(args.seeds, runs):
            writer.writerows([seed, *point] for point in r["curve"])
    with open(os.path.join(args.out, f"{args.name}.md"), "w") as f:
        f.write(f"Command: `{command.strip()}`\n\n{title}.\n\n")
        f.write(f"Demonstrations: {stats['kept']} (mean length {stats['mean']:.1f}, seeds {min(stats['seeds'])}-")
        f.write(f"{max(stats['seeds'])}); evaluation seeds from {EVAL_SEED}; max_episode_steps {args.max_episode_steps}.\n\n")
        f.write("| policy | success | env steps | time (s) |\n|---|---|---|---|\n")
        for row in rows:
            f.write("| " + " | ".join(row) + " |\n")
        f.write(
            f"\nTotal wall time {wall:.1f} min on {os.cpu_count()} CPU cores; time columns: per seed, without evaluations.\n"
        )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for seed, r in zip(args.seeds, runs):
        curve = np.array(r["curve"])
        ax.plot(curve[:, 1], curve[:, 2], marker="o", label=f"StepNFT, seed {seed}")
    ax.axhline(planner, color="grey", linestyle="--", label="motion planner")
    ax.set_xlabel("env steps")
    ax.set_ylabel("success rate (deterministic=False)")
    ax.set_title(f"{args.env}: {stats['kept']} motion-planned demos, then StepNFT")
    ax.set_ylim(0, 1.05)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, f"{args.name}.png"), dpi=100)
    console.print(f"wrote {args.out}/{args.name}.md, {args.name}.csv, {args.name}.png")


if __name__ == "__main__":
    main()
