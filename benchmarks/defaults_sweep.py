"""How the flow algorithms' MLP-scale defaults are chosen (ALGORITHM.md §5): one-at-a-time variations, by measurement.

Each variation is the algorithm's defaults plus one change, run through the benchmark suite's machinery
(``benchmarks/suite.py``: same tasks, envs, pretraining and budgets), on **tuning seeds** (default 100 101 102) with
**tuning evaluation seeds** (from 50_000): the suite's own seeds (0 1 2, evaluations from 10_000) are never used for
tuning. Success (``evaluate_success``, ``deterministic=False``) before and after ``learn`` over ``--n-eval`` episodes.

    python benchmarks/defaults_sweep.py --task point_reach                  # StepNFT, runs/defaults_sweep/
    python benchmarks/defaults_sweep.py --task push_cube --grid maniskill   # the candidates on ManiSkill PushCube
    python benchmarks/defaults_sweep.py --task point_reach --algo FlowGRPO  # a baseline, same number of variations

The earlier sweep (old EMA schedule, one iteration-long horizon) is kept in benchmarks/results/defaults_sweep.md.
"""

import argparse
import json
import multiprocessing as mp
import os
import shlex
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks import suite  # noqa: E402

TUNING_EVAL_SEED = 50_000


def one_at_a_time(**values) -> list[dict]:
    """``[{}]`` (the defaults) and one variation per value of each setting."""
    return [{}] + [{name: value} for name, options in values.items() for value in options]


BASELINE_SETTINGS = dict(
    learning_rate=(3e-5, 3e-4), n_epochs=(4, 16), n_steps=(64, 256), batch_size=(128, 512), noise_level=(0.1, 0.4)
)
GRIDS = {
    # one change at a time around the defaults: the settings ALGORITHM.md §5 / the results issue names, in the
    # direction the first sweep (benchmarks/results/defaults_sweep.md) or the paper's Fig. 4 left open; each run costs
    # minutes on a shared 2-core machine, so the grid is small. The StepNFT grid was run around n_epochs=4 (--base).
    "StepNFT": one_at_a_time(
        learning_rate=(5e-5, 2e-4),
        n_epochs=(8,),
        batch_size=(128,),
        n_steps=(64,),
        trust_region=(2.0,),
        noise_level=(0.4,),
        ema_horizon_ratio=(1.0,),
    ),
    "FlowPPO": one_at_a_time(**BASELINE_SETTINGS, critic_learning_rate=(1e-3,)),
    "FlowGRPO": one_at_a_time(**BASELINE_SETTINGS),
    # ManiSkill runs cost ~10 CPU-minutes each: the candidates only (the defaults, the ManiSkill demo's former
    # overrides, and their two halves); --variations adds more (e.g. what PointReach's sweep favours)
    "maniskill": [
        {},
        {"learning_rate": 5e-5, "n_steps": 64, "batch_size": 128},
        {"learning_rate": 5e-5},
        {"n_steps": 64, "batch_size": 128},
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="point_reach", choices=list(suite.TASKS))
    parser.add_argument("--algo", default="StepNFT", choices=list(suite.FLOW))
    parser.add_argument(
        "--grid", default=None, choices=[*GRIDS, "none"], help="variations (default: the algorithm's; none: --variations only)"
    )
    parser.add_argument(
        "--base", default="{}", help="settings under every variation, as JSON (e.g. the defaults of an earlier version)"
    )
    parser.add_argument("--variations", nargs="*", default=[], help="extra variations as JSON, e.g. '{\"n_epochs\": 8}'")
    parser.add_argument("--seeds", type=int, nargs="+", default=[100, 101, 102], help="tuning seeds")
    parser.add_argument("--env-steps", type=int, default=None, help="budget per run (default: the suite's)")
    parser.add_argument("--n-eval", type=int, default=200, help="episodes per evaluation")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=os.path.join("runs", "defaults_sweep"), help="benchmarks/results: tracked")
    parser.add_argument("--report-only", action="store_true", help="write the table from the finished runs, run nothing")
    parser.add_argument("--name", default=None, help="result file name (default defaults_sweep_<task>_<algo>[_<grid>])")
    args = parser.parse_args()
    task = suite.TASKS[args.task]
    variations = GRIDS.get(args.grid or args.algo, []) + [json.loads(v) for v in args.variations]
    base = json.loads(args.base)
    budget = args.env_steps or task.env_steps
    os.makedirs(args.out, exist_ok=True)
    context = task.prepare(args.out, False)
    jobs = []
    for variation in variations:
        for seed in args.seeds:
            settings = {**base, **variation}
            n_steps = settings.get("n_steps", 128)
            overrides = {k: v for k, v in settings.items() if k != "n_steps"}
            values = (task, args.algo, seed, budget // task.chunk, 10**12, args.n_eval, n_steps, context, None)
            jobs.append(dict(zip(suite.JOB_FIELDS, values), overrides=overrides, eval_seed=TUNING_EVAL_SEED))
    name = args.name or f"defaults_sweep_{args.task}_{args.algo}" + (f"_{args.grid}" if args.grid else "")
    # finished runs go to <name>.jsonl as they end; a rerun with the same settings resumes from it
    log_path = os.path.join(args.out, name + ".jsonl")
    done = {}
    if os.path.exists(log_path):
        with open(log_path) as f:
            for line in f:
                entry = json.loads(line)
                if (entry["budget"], entry["n_eval"]) == (budget, args.n_eval):
                    done[(entry["key"], entry["seed"])] = entry
    for job, variation in zip(jobs, (v for v in variations for _ in args.seeds)):
        job["key"] = json.dumps(variation, sort_keys=True)  # the change from the defaults + --base
    todo = [] if args.report_only else [job for job in jobs if (job["key"], job["seed"]) not in done]
    with mp.get_context("spawn").Pool(args.workers) as pool:
        seeds = sorted({job["seed"] for job in todo})
        states = dict(zip(seeds, pool.map(suite.pretrained_state, [(task, s, context) for s in seeds])))
        for job in todo:
            job["state"] = states[job["seed"]]
        for job, rows in zip(todo, pool.imap(suite.run_one, todo)):
            entry = dict(key=job["key"], seed=job["seed"], budget=budget, n_eval=args.n_eval, before=rows[0]["success_rate"])
            entry.update(after=rows[-1]["success_rate"], train_time=rows[-1]["train_time"])
            done[(job["key"], job["seed"])] = entry
            with open(log_path, "a") as f:
                f.write(json.dumps(entry) + "\n")
            print(entry, flush=True)
    fields = ("key", "seed", "before", "after", "train_time")
    results = [tuple(done[(job["key"], job["seed"])][k] for k in fields) for job in jobs if (job["key"], job["seed"]) in done]
    command = shlex.join(["python", "benchmarks/defaults_sweep.py", *(a for a in sys.argv[1:] if a != "--report-only")])
    lines = [
        f"Command: `{command}`",
        "",
        f"{task.title}, {args.algo}, {suite.N_ENVS} envs, {budget} env steps, tuning seeds {args.seeds} (pretrained "
        f"start per seed as in the suite), success over {args.n_eval} episodes (deterministic=False) on tuning "
        f"evaluation seeds from {TUNING_EVAL_SEED}. Each row changes one setting from the defaults"
        + (f" plus {base}" if base else "")
        + " (n_steps 128 unless named). Train time: wall seconds on a shared 2-core machine under varying load (not "
        "comparable between rows).",
        "",
        "| change from defaults | success before | success after (mean ± std) | gain | per seed (after) | train time (s) |",
        "|---|---|---|---|---|---|",
    ]
    rows_by_key: dict[str, list] = {}
    for key, seed, before, after, wall in results:
        rows_by_key.setdefault(key, []).append((seed, before, after, wall))
    for key, values in rows_by_key.items():
        values = np.array(sorted(values))
        after = values[:, 2]
        lines.append(
            f"| {key if key != '{}' else '(defaults)'} | {values[:, 1].mean():.3f} | {after.mean():.3f} ± {after.std():.3f} "
            f"| {(after - values[:, 1]).mean():+.3f} | {', '.join(f'{a:.2f}' for a in after)} | {values[:, 3].mean():.0f} |"
        )
    text = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, name + ".md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
