"""Compare StepNFT, FlowPPO, FlowGRPO and the classical references SB3 PPO and sb3-contrib TRPO on PointReach.

Every algorithm gets the same env-step budget, the same seeds and 8 envs (FlowGRPO: groups of its default size from
``make_grouped_vec_env``). The flow algorithms start from one pretrained flow policy per seed (``pretrain`` on
``collect_demonstrations(40, seed)``, weights copied with ``set_parameters``); PPO and TRPO learn a Gaussian
``MlpPolicy`` from scratch with their SB3 defaults except ``n_steps=128``, so that every algorithm collects 1024
decisions per iteration and stops at the same budget. Success is measured with ``evaluate_success``
(``deterministic=False``, seeded) every --eval-every env steps, at the start of a rollout (after the previous
update) and once more after the last update.

    python benchmarks/compare.py                   # full run: runs/compare/compare.{csv,md,png}
    python benchmarks/compare.py --quick           # a few minutes on 2 cores: runs/compare/compare_quick.*
    python benchmarks/compare.py --out benchmarks/results     # rewrite the tracked benchmarks/results/compare.*
    python benchmarks/compare.py --algos sb3_stepnft.StepNFT stable_baselines3.PPO --seeds 0 1
"""

import argparse
import csv
import importlib
import multiprocessing as mp
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

DEFAULT_ALGOS = [
    "sb3_stepnft.StepNFT",
    "sb3_stepnft.FlowPPO",
    "sb3_stepnft.FlowGRPO",
    "stable_baselines3.PPO",
    "sb3_contrib.TRPO",
]
RESULTS = os.path.join("runs", "compare")  # git-ignored; --out benchmarks/results rewrites the tracked results
N_ENVS = 8
N_STEPS = 128  # env steps per env per iteration, for every algorithm (the flow algorithms' default)


def load_class(path: str):
    """``"package.Class"`` (or a bare name of the defaults, e.g. ``"FlowPPO"``) → the class."""
    if "." not in path:
        matches = [p for p in DEFAULT_ALGOS if p.rsplit(".", 1)[1] == path]
        if not matches:
            raise ValueError(f"Unknown algorithm {path!r}: give a class path such as 'stable_baselines3.A2C'")
        path = matches[0]
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def is_flow(cls) -> bool:
    from sb3_stepnft.common.on_policy import FlowOnPolicyAlgorithm

    return issubclass(cls, FlowOnPolicyAlgorithm)


def make_train_env(cls, seed: int):
    from stable_baselines3.common.env_util import make_vec_env

    from sb3_stepnft import FlowGRPO
    from sb3_stepnft.envs import PointReachEnv, make_grouped_vec_env

    if issubclass(cls, FlowGRPO):
        group_size = 8  # FlowGRPO's default
        return make_grouped_vec_env(PointReachEnv, N_ENVS // group_size, group_size, seed=seed)
    return make_vec_env(PointReachEnv, n_envs=N_ENVS, seed=seed)


def pretrained_policy_state(seed: int) -> dict:
    """The flow policy pretrained once per seed (a StepNFT model is only the carrier of the policy)."""
    import torch as th

    th.set_num_threads(1)
    from sb3_stepnft import StepNFT
    from sb3_stepnft.envs import PointReachEnv, collect_demonstrations
    from sb3_stepnft.sft import pretrain

    model = StepNFT("MlpPolicy", PointReachEnv(), seed=seed)
    demos, _ = collect_demonstrations(40, seed=seed)
    pretrain(model, demos, seed=seed)
    return {name: tensor.clone() for name, tensor in model.policy.state_dict().items()}


def run_one(job) -> list[dict]:
    import torch as th

    th.set_num_threads(1)
    from stable_baselines3.common.env_util import make_vec_env

    from benchmarks.curves import PeriodicEvaluation
    from sb3_stepnft.common.evaluation import evaluate_success
    from sb3_stepnft.envs import PointReachEnv

    algo_path, seed, steps, eval_every, n_eval, policy_state = job
    cls = load_class(algo_path)
    model = cls("MlpPolicy", make_train_env(cls, seed), seed=seed, n_steps=N_STEPS)
    if policy_state is not None:
        model.set_parameters({"policy": policy_state}, exact_match=False)  # FlowPPO's value head stays fresh
    eval_env = make_vec_env(PointReachEnv, n_envs=1)
    rows: list[dict] = []

    def evaluate():
        result = evaluate_success(model, eval_env, n_eval_episodes=n_eval, seed=10_000 + seed)
        rows.append(
            dict(
                algo=cls.__name__,
                seed=seed,
                env_steps=model.num_timesteps,
                success_rate=result["success_rate"],
                mean_return=result["mean_return"],
                wall_time=time.time() - start,
            )
        )

    start = time.time()
    model.learn(steps, callback=PeriodicEvaluation(evaluate, eval_every))
    return rows


def write_markdown(path: str, rows: list[dict], args, command: str, flow_algos: set[str]) -> str:
    algos = list(dict.fromkeys(row["algo"] for row in rows))
    lines = [
        f"Command: `{command}`",
        "",
        f"PointReach (sparse success, 12-step episodes), {N_ENVS} envs, {args.steps} env steps per run, seeds "
        f"{args.seeds}; success rate over {args.n_eval} seeded episodes with `evaluate_success(deterministic=False)`. "
        "Flow algorithms start from the same pretrained flow policy per seed (step 0); PPO and TRPO (Gaussian "
        f"MlpPolicy, SB3 defaults except n_steps={N_STEPS}) start from scratch. Every algorithm collects "
        f"{N_ENVS * N_STEPS} decisions per iteration. Mean ± std over seeds.",
        "",
        "| algorithm | start | success at step 0 | final success | gain | final return | final env steps | "
        "wall time incl. evaluations (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for algo in algos:
        per_seed = {}
        for row in rows:
            if row["algo"] == algo:
                per_seed.setdefault(row["seed"], []).append(row)
        first = np.array([r[0]["success_rate"] for r in per_seed.values()])
        last = np.array([r[-1]["success_rate"] for r in per_seed.values()])
        ret = np.array([r[-1]["mean_return"] for r in per_seed.values()])
        wall = np.array([r[-1]["wall_time"] for r in per_seed.values()])
        final_steps = max(r[-1]["env_steps"] for r in per_seed.values())
        start = "pretrained flow policy" if algo in flow_algos else "from scratch"
        lines.append(
            f"| {algo} | {start} | {first.mean():.3f} ± {first.std():.3f} | {last.mean():.3f} ± {last.std():.3f} | "
            f"{(last - first).mean():+.3f} ± {(last - first).std():.3f} | {ret.mean():.3f} ± {ret.std():.3f} | "
            f"{final_steps} | {wall.mean():.0f} |"
        )
    lines += ["", "Success rate (mean over seeds) against env steps:", ""]
    grid = sorted({row["env_steps"] for row in rows})
    checkpoints = [g for g in grid if all(any(r["env_steps"] == g for r in rows if r["algo"] == a) for a in algos)]
    lines.append("| env steps | " + " | ".join(algos) + " |")
    lines.append("|---" * (len(algos) + 1) + "|")
    for step in checkpoints:
        cells = [np.mean([r["success_rate"] for r in rows if r["algo"] == a and r["env_steps"] == step]) for a in algos]
        lines.append(f"| {step} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    text = "\n".join(lines) + "\n"
    with open(path, "w") as f:
        f.write(text)
    return text


def write_plot(path: str, rows: list[dict], args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for algo in dict.fromkeys(row["algo"] for row in rows):
        steps = sorted({r["env_steps"] for r in rows if r["algo"] == algo})
        curves = np.array(
            [[np.mean([r["success_rate"] for r in rows if r["algo"] == algo and r["env_steps"] == s and r["seed"] == seed])
              for s in steps] for seed in sorted({r["seed"] for r in rows})]
        )  # fmt: skip
        mean, std = np.nanmean(curves, axis=0), np.nanstd(curves, axis=0)
        ax.plot(steps, mean, label=algo)
        ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("env steps")
    ax.set_ylabel("success rate (deterministic=False)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"PointReach, {N_ENVS} envs, seeds {args.seeds}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", default=DEFAULT_ALGOS, help="class paths, e.g. sb3_contrib.TRPO")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2 (--quick: 0)")
    parser.add_argument("--steps", type=int, default=None, help="env steps per run (default 100000; --quick: 20000)")
    parser.add_argument("--eval-every", type=int, default=None, help="default 10000 (--quick: 5000)")
    parser.add_argument("--n-eval", type=int, default=None, help="episodes per evaluation (default 200; --quick: 50)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a small run that finishes in a few minutes on 2 cores")
    parser.add_argument("--out", default=None, help="output folder, or a file prefix (default runs/compare/compare[_quick])")
    args = parser.parse_args()
    quick = args.quick
    args.seeds = args.seeds if args.seeds is not None else ([0] if quick else [0, 1, 2])
    args.steps = args.steps or (20_000 if quick else 100_000)
    args.eval_every = args.eval_every or (5_000 if quick else 10_000)
    args.n_eval = args.n_eval or (50 if quick else 200)
    out = args.out or RESULTS
    if os.path.isdir(out) or out.endswith(os.sep) or out == RESULTS:  # a folder: the default file names in it
        out = os.path.join(out, "compare_quick" if quick else "compare")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    command = " ".join(["python benchmarks/compare.py", *sys.argv[1:]])

    classes = {path: load_class(path) for path in args.algos}
    context = mp.get_context("spawn")
    with context.Pool(args.workers) as pool:
        states = {}
        if any(is_flow(cls) for cls in classes.values()):
            states = dict(zip(args.seeds, pool.map(pretrained_policy_state, args.seeds)))
        jobs = [
            (path, seed, args.steps, args.eval_every, args.n_eval, states.get(seed) if is_flow(cls) else None)
            for seed in args.seeds
            for path, cls in classes.items()
        ]
        rows = [row for result in pool.imap_unordered(run_one, jobs) for row in result]
    rows.sort(key=lambda r: (list(classes).index(next(p for p, c in classes.items() if c.__name__ == r["algo"])),
                             r["seed"], r["env_steps"]))  # fmt: skip

    with open(out + ".csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    flow_algos = {cls.__name__ for cls in classes.values() if is_flow(cls)}
    print(write_markdown(out + ".md", rows, args, command, flow_algos))
    write_plot(out + ".png", rows, args)
    print(f"wrote {out}.csv, {out}.md, {out}.png")


if __name__ == "__main__":
    main()
