"""How the `pretrain` defaults were chosen: success of the pretrained flow policy versus SFT settings.

PointReach (default): 40 imperfect demonstrations per seed (``collect_demonstrations(40, seed)``), success of the
student (ODE from random x_0, ``deterministic=False``) over --n-eval seeded episodes, mean over --seeds.

ManiSkill (``--task push_cube`` / ``pick_cube``): the suite's envs and pretraining (benchmarks/suite.py) with the
first ``n_demos`` of the motion-planned demonstrations (episode seeds 0, 1, ...), on tuning seeds (default 100 101
102) evaluated on tuning evaluation seeds from 50_000: the suite's seeds and evaluation seeds are never used here.

    python benchmarks/pretrain_sweep.py                     # writes runs/pretrain_sweep/pretrain_sweep.md
    python benchmarks/pretrain_sweep.py --task pick_cube    # writes runs/pretrain_sweep/pretrain_sweep_pick_cube.md
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
MANISKILL_SETTINGS = [
    dict(n_demos=10),
    dict(n_demos=25),
    dict(n_demos=50),
    dict(n_demos=50, epochs=300),
]
TUNING_EVAL_SEED = 50_000


def first_episodes(demos, n: int):
    """The first ``n`` episodes of ``demos``."""
    from sb3_stepnft.sft import Demonstrations

    starts = np.flatnonzero(demos.episode_starts)
    end = len(demos) if n >= len(starts) else int(starts[n])
    obs = demos.observations
    obs = {k: v[:end] for k, v in obs.items()} if isinstance(obs, dict) else obs[:end]
    return Demonstrations(obs, demos.actions[:end], demos.episode_starts[:end])


def maniskill_context(task_name: str, n_demos: int, out: str) -> dict:
    """The suite's ``prepare`` with ``n_demos`` demonstrations (the action bounds and normalisation are theirs)."""
    from benchmarks import suite
    from sb3_stepnft.envs.maniskill_demos import demo_action_bounds, generate_demonstrations

    demos, stats = generate_demonstrations(suite.TASKS[task_name].env_id, n_demos, out_dir=os.path.join(out, "demos"))
    return dict(demos=demos, bounds=demo_action_bounds(demos), max_episode_steps=stats["recommended_max_episode_steps"])


def one_maniskill_run(job):
    import torch as th

    th.set_num_threads(1)
    from benchmarks import suite
    from sb3_stepnft import StepNFT
    from sb3_stepnft.common.evaluation import evaluate_success
    from sb3_stepnft.sft import pretrain

    task_name, setting, seed, n_eval, context = job
    task = suite.TASKS[task_name]
    setting = dict(setting)
    demos = first_episodes(context["demos"], setting.pop("n_demos"))
    context = dict(context, demos=demos)
    model = StepNFT("MlpPolicy", task.make_env("StepNFT", 1, seed, context), seed=seed)
    metrics = pretrain(model, demos, seed=seed, **setting)
    eval_env = task.make_env("eval", 1, TUNING_EVAL_SEED + seed, context)
    success = evaluate_success(model, eval_env, n_eval_episodes=n_eval, seed=TUNING_EVAL_SEED + seed)
    eval_env.close()
    return str(job[1]), success["success_rate"], metrics["loss"]


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
    parser.add_argument("--task", default="point_reach", choices=["point_reach", "push_cube", "pick_cube"])
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0-3 (PointReach), 100-102")
    parser.add_argument("--n-eval", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--out",
        default=os.path.join("runs", "pretrain_sweep"),
        help="output folder (default runs/pretrain_sweep/; --out benchmarks/results: the tracked results)",
    )
    args = parser.parse_args()
    maniskill = args.task != "point_reach"
    args.seeds = args.seeds or ([100, 101, 102] if maniskill else [0, 1, 2, 3])
    if maniskill:
        most = max(s["n_demos"] for s in MANISKILL_SETTINGS)
        context = maniskill_context(args.task, most, os.path.join(args.out, "tmp"))  # once, in the main process
        jobs = [(args.task, s, seed, args.n_eval, context) for s in MANISKILL_SETTINGS for seed in args.seeds]
        worker = one_maniskill_run
    else:
        jobs = [(s, seed, args.n_eval) for s in SETTINGS for seed in args.seeds]
        worker = one_run
    with mp.get_context("spawn").Pool(args.workers) as pool:
        results = pool.map(worker, jobs)
    rows: dict[str, list] = {}
    for key, success, loss in results:
        rows.setdefault(key, []).append((success, loss))
    if maniskill:
        description = (
            f"{args.task}: the suite's env and pretraining with the first n_demos motion-planned demonstrations, tuning "
            f"seeds {args.seeds}, success of the pretrained policy over {args.n_eval} episodes (deterministic=False) on "
            f"evaluation seeds from {TUNING_EVAL_SEED}. Unlisted settings: pretrain's defaults (epochs=100, "
            "batch_size=64, learning_rate=3e-4)."
        )
    else:
        description = (
            f"PointReach, 40 imperfect demonstrations (demonstrator success about 0.5), seeds {args.seeds}, success of "
            f"the pretrained policy over {args.n_eval} episodes (deterministic=False). Unlisted settings: batch_size=64, "
            "learning_rate=1e-3."
        )
    lines = [
        f"Command: `{' '.join(['python benchmarks/pretrain_sweep.py', *sys.argv[1:]])}`",
        "",
        description,
        "",
        "| pretrain settings | success (mean ± std) | final SFT loss |",
        "|---|---|---|",
    ]
    for key, values in rows.items():
        values = np.array(values)
        lines.append(f"| {key} | {values[:, 0].mean():.3f} ± {values[:, 0].std():.3f} | {values[:, 1].mean():.3f} |")
    text = "\n".join(lines) + "\n"
    os.makedirs(args.out, exist_ok=True)
    name = "pretrain_sweep" + ("" if args.task == "point_reach" else f"_{args.task}")
    with open(os.path.join(args.out, f"{name}.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
