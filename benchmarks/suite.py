"""The benchmark suite: StepNFT next to FlowPPO, FlowGRPO and the Gaussian references, task by task, at defaults.

Tasks (``--tasks``):

- ``point_reach``: PointReach (sparse success, 12-step episodes), MlpPolicy, pretrained on 40 demonstrations with 30%
  wandering ones (the package's demonstrator).
- ``lang_reach``: LangReach, a language-conditioned task; FlowVLAPolicy with a tiny PaliGemma (frozen) and a shared
  action expert (benchmarks/vla_langreach.py's model and pretraining: 200 epochs at lr 1e-3), chunks of 4; pretrained
  on 40 imperfect demonstrations. No
  Gaussian reference: SB3 has no policy for a frozen VLM backbone. ``lang_reach_pi05``: the same with a π0.5 expert
  (AdaRMS time conditioning; no state token, so the position comes from the image).
- ``push_cube`` / ``pick_cube``: ManiSkill3 PushCube-v1 / PickCube-v1, state observations, ``pd_ee_delta_pos``, chunks
  of 8, motion-planned demonstrations (``generate_demonstrations``, cached under ``<out>/tmp/demos``: 10 for PushCube;
  50 for PickCube, pretrained for 300 epochs, since 10 start it at 0.01: pretrain_sweep_pick_cube.md), observation
  normalisation and action bounds from the demonstrations, episodes of 1.5x the mean demonstration length.

Algorithms: StepNFT, FlowPPO and FlowGRPO start from the **same pretrained flow policy per seed** (``pretrain`` at its
defaults; weights copied with ``set_parameters``) and run at **their defaults** except ``n_steps`` (``--n-steps``,
default 128, the flow algorithms' default) and FlowGRPO's grouped envs; SB3 PPO and sb3-contrib TRPO start from
scratch with their SB3 defaults except ``n_steps``. 8 envs each, the same number of decisions (``learn``'s
``total_timesteps``) and so the same budget of underlying env steps (every algorithm acts in the same chunked env;
the table reports the env steps each actually used). Success: ``evaluate_success`` (``deterministic=False``: the
paper's protocol, seeded from 10_000 + seed, never used for tuning) every ``--eval-every`` env steps and at the end.
Reported: mean ± std over seeds of the success at step 0, at the end and the gain, env steps to reach
``--threshold`` (of the mean curve), wall time; curves (mean ± std band) as PNG; the command.

    python benchmarks/suite.py --quick                          # minutes: 1 seed, small budgets, runs/suite/
    python benchmarks/suite.py                                  # the full suite (hours on 2 cores)
    python benchmarks/suite.py --tasks point_reach --seeds 0 1 2 --out benchmarks/results   # rewrite tracked results
    python benchmarks/suite.py --tasks point_reach --algos StepNFT --update --out benchmarks/results   # rerun one algorithm

Each finished run is appended to ``<out>/<name>.runs.jsonl`` and the table, csv and curves are rewritten after every
run (marked *Partial* until all are in); a stopped command continues with the same arguments plus ``--resume``.

ManiSkill tasks need ``make install-sim``. One torch thread per worker process.
"""

import argparse
import csv
import json
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

ALGOS = ["StepNFT", "FlowPPO", "FlowGRPO", "PPO", "TRPO"]
FLOW = ("StepNFT", "FlowPPO", "FlowGRPO")
N_ENVS = 8
GROUP_SIZE = 8  # FlowGRPO's default
EVAL_SEED = 10_000


def algorithm(name: str):
    import sb3_contrib
    import stable_baselines3

    import sb3_stepnft

    return {"PPO": stable_baselines3.PPO, "TRPO": sb3_contrib.TRPO}.get(name) or getattr(sb3_stepnft, name)


@dataclass
class Task:
    """How the suite builds one task: envs, the flow policy, its pretraining data and its budgets."""

    name: str
    title: str
    chunk: int  # env steps per decision (ActionChunk rows); every algorithm acts in the same chunked env
    env_steps: int  # full budget in underlying env steps per run
    quick_env_steps: int
    gaussian_references: bool = True
    pretrain_kwargs: dict | None = None  # None: pretrain's defaults
    n_demos: int = 10  # ManiSkill: motion-planned demonstrations for pretraining

    # ---------------------------------------------------------------------------------------- per task hooks
    def prepare(self, out: str, quick: bool) -> dict:
        """Once, in the main process (e.g. motion planning); returns what the workers need (picklable)."""
        return {}

    def make_env(self, algo: str, n_envs: int, seed: int, context: dict):
        raise NotImplementedError

    def policy(self, algo: str) -> tuple:
        """``(policy, policy_kwargs)`` of ``algo`` on this task."""
        return "MlpPolicy", None

    def demonstrations(self, seed: int, context: dict):
        raise NotImplementedError


class PointReachTask(Task):
    def make_env(self, algo, n_envs, seed, context):
        from stable_baselines3.common.env_util import make_vec_env

        from sb3_stepnft.envs import PointReachEnv, make_grouped_vec_env

        if algo == "FlowGRPO":
            return make_grouped_vec_env(PointReachEnv, n_envs // GROUP_SIZE, GROUP_SIZE, seed=seed)
        return make_vec_env(PointReachEnv, n_envs=n_envs, seed=seed)

    def demonstrations(self, seed, context):
        from sb3_stepnft.envs import collect_demonstrations

        return collect_demonstrations(40, seed=seed)[0]


@dataclass
class LangReachTask(Task):
    MAX_LENGTH = 24
    variant: str = "pi0"  # FlowVLAPolicy's expert: "pi0" (state token) or "pi05" (AdaRMS time conditioning)

    def _env_kwargs(self):
        from transformers import ByT5Tokenizer

        return dict(tokenizer=ByT5Tokenizer(), max_length=self.MAX_LENGTH, chunk_size=self.chunk)

    def make_env(self, algo, n_envs, seed, context):
        from stable_baselines3.common.env_util import make_vec_env

        from sb3_stepnft.envs import make_grouped_vec_env
        from sb3_stepnft.envs.lang_reach import make_lang_reach_env

        if algo == "FlowGRPO":
            return make_grouped_vec_env(
                make_lang_reach_env, n_envs // GROUP_SIZE, GROUP_SIZE, seed=seed, env_kwargs=self._env_kwargs()
            )
        return make_vec_env(make_lang_reach_env, n_envs=n_envs, seed=seed, env_kwargs=self._env_kwargs())

    def policy(self, algo):
        from sb3_stepnft.vla import FlowVLAPolicy
        from sb3_stepnft.vla.testing import tiny_paligemma_config

        vlm = tiny_paligemma_config(image_size=16, patch_size=8, vocab_size=400)
        return FlowVLAPolicy, dict(vlm=vlm, expert="shared", expert_width=32, variant=self.variant)

    def demonstrations(self, seed, context):
        from sb3_stepnft.envs.lang_reach import collect_demonstrations

        kwargs = self._env_kwargs()
        return collect_demonstrations(
            40, seed=seed, imperfect_fraction=0.3, tokenizer=kwargs["tokenizer"], max_length=self.MAX_LENGTH
        )[0]


class ManiSkillTask(Task):
    env_id = ""

    def prepare(self, out, quick):
        from sb3_stepnft.envs.maniskill_demos import demo_action_bounds, generate_demonstrations

        demos, stats = generate_demonstrations(self.env_id, self.n_demos, out_dir=os.path.join(out, "tmp", "demos"))
        return dict(demos=demos, bounds=demo_action_bounds(demos), max_episode_steps=stats["recommended_max_episode_steps"])

    def make_env(self, algo, n_envs, seed, context):
        from sb3_stepnft.envs import make_maniskill_env
        from sb3_stepnft.envs.maniskill_demos import normalize_like_demos

        env = make_maniskill_env(
            self.env_id,
            num_envs=n_envs,
            seed=seed,
            max_episode_steps=context["max_episode_steps"],
            chunk_size=self.chunk,
            action_bounds=context["bounds"],
            group_size=GROUP_SIZE if algo == "FlowGRPO" else None,
        )
        return normalize_like_demos(env, context["demos"])

    def demonstrations(self, seed, context):
        return context["demos"]


class PushCubeTask(ManiSkillTask):
    env_id = "PushCube-v1"


class PickCubeTask(ManiSkillTask):
    env_id = "PickCube-v1"


TASKS = {
    "point_reach": PointReachTask("point_reach", "PointReach", chunk=1, env_steps=100_000, quick_env_steps=20_000),
    "lang_reach": LangReachTask(
        "lang_reach",
        "LangReach (tiny VLA)",
        chunk=4,
        env_steps=80_000,
        quick_env_steps=16_000,
        gaussian_references=False,
        pretrain_kwargs=dict(epochs=200, learning_rate=1e-3),  # benchmarks/vla_langreach.py's pretraining
    ),
    # the same task with a tiny π0.5 (AdaRMS time conditioning, no state token: the position comes from the image)
    "lang_reach_pi05": LangReachTask(
        "lang_reach_pi05",
        "LangReach (tiny π0.5 VLA)",
        chunk=4,
        env_steps=80_000,
        quick_env_steps=16_000,
        gaussian_references=False,
        pretrain_kwargs=dict(epochs=200, learning_rate=1e-3),
        variant="pi05",
    ),
    "push_cube": PushCubeTask("push_cube", "ManiSkill PushCube (state)", chunk=8, env_steps=100_000, quick_env_steps=16_000),
    # PickCube from 10 demos starts at 0.01 and nothing learns; 50 demos and 300 epochs start at 0.15 (tuning seeds:
    # benchmarks/results/pretrain_sweep_pick_cube.md).
    "pick_cube": PickCubeTask(
        "pick_cube",
        "ManiSkill PickCube (state)",
        chunk=8,
        env_steps=100_000,
        quick_env_steps=16_000,
        pretrain_kwargs=dict(epochs=300),
        n_demos=50,
    ),
}


# ----------------------------------------------------------------------------------------------------- workers
def pretrained_state(job) -> dict:
    """The flow policy pretrained once per (task, seed); StepNFT is only its carrier."""
    import torch as th

    th.set_num_threads(1)
    from sb3_stepnft.sft import pretrain

    task, seed, context = job
    policy, policy_kwargs = task.policy("StepNFT")
    env = task.make_env("StepNFT", 1, seed, context)
    model = algorithm("StepNFT")(policy, env, policy_kwargs=policy_kwargs, seed=seed)
    pretrain(model, task.demonstrations(seed, context), seed=seed, **(task.pretrain_kwargs or {}))
    env.close()
    return {name: tensor.clone() for name, tensor in model.policy.state_dict().items()}


JOB_FIELDS = ("task", "algo", "seed", "decisions", "eval_every", "n_eval", "n_steps", "context", "state")


def run_one(job: dict) -> list[dict]:
    """One training run with periodic evaluations. ``job`` holds :data:`JOB_FIELDS` and, optionally, ``overrides``
    (constructor arguments on top of the algorithm's defaults) and ``eval_seed`` (base of the evaluation seeds;
    default :data:`EVAL_SEED`)."""
    import torch as th

    th.set_num_threads(1)

    from benchmarks.curves import PeriodicEvaluation
    from sb3_stepnft.common.evaluation import evaluate_success

    task, algo, seed, decisions, eval_every, n_eval, n_steps, context, state = (job[k] for k in JOB_FIELDS)
    eval_seed = job.get("eval_seed", EVAL_SEED) + seed
    cls = algorithm(algo)
    env = task.make_env(algo, N_ENVS, 1_000 + seed, context)
    policy, policy_kwargs = task.policy(algo) if algo in FLOW else ("MlpPolicy", None)
    kwargs = {"n_steps": n_steps, **job.get("overrides", {})}
    model = cls(policy, env, policy_kwargs=policy_kwargs, seed=seed, **kwargs)
    if state is not None:
        model.set_parameters({"policy": state}, exact_match=False)  # FlowPPO's value head stays fresh
    eval_env = task.make_env("eval", 1, eval_seed, context)
    rows: list[dict] = []
    clock = {"start": time.time(), "eval": 0.0}

    def evaluate():
        start = time.time()
        result = evaluate_success(model, eval_env, n_eval_episodes=n_eval, seed=eval_seed)
        clock["eval"] += time.time() - start
        rows.append(
            dict(
                task=task.name,
                algo=algo,
                seed=seed,
                decisions=model.num_timesteps,
                env_steps=curve.env_steps,
                success_rate=result["success_rate"],
                train_time=time.time() - clock["start"] - clock["eval"],
            )
        )

    curve = PeriodicEvaluation(evaluate, eval_every, count_env_steps=True)
    model.learn(decisions, callback=curve)
    env.close()
    eval_env.close()
    return rows


def run_key(job: dict) -> str:
    """What identifies a finished run in a :class:`RunLog`: task, algorithm, seed, budget, evaluation and overrides
    (a run with other settings is not reused by ``--resume``)."""
    fields = {k: job[k] for k in ("algo", "seed", "decisions", "eval_every", "n_eval", "n_steps")}
    fields.update(task=job["task"].name, overrides=job.get("overrides", {}), eval_seed=job.get("eval_seed", EVAL_SEED))
    return json.dumps(fields, sort_keys=True, default=str)


def run_keyed(job: dict) -> tuple[str, list[dict]]:
    """:func:`run_one` for ``Pool.imap_unordered``: the run's key with its rows."""
    return job["key"], run_one(job)


class RunLog:
    """The finished runs of a benchmark, one JSON line each, appended (and synced) as each run ends: a run of hours
    that is stopped keeps what it finished, and ``--resume`` skips those runs. Without ``resume`` an earlier log at
    ``path`` is replaced."""

    def __init__(self, path: str, resume: bool):
        self.path, self.done = path, {}
        if not resume:
            open(path, "w").close()
            return
        self.done = self.read(path) if os.path.exists(path) else {}
        with open(path, "w") as f:  # without a killed writer's partial line, which the next append would extend
            f.writelines(json.dumps(dict(key=key, rows=rows)) + "\n" for key, rows in self.done.items())

    @staticmethod
    def read(path: str) -> dict[str, list[dict]]:
        """The finished runs of the log at ``path``: key → rows (a killed writer's partial last line skipped)."""
        done = {}
        with open(path) as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:  # the last line of a killed writer
                    continue
                done[entry["key"]] = entry["rows"]
        return done

    def reuse(self, paths: list[str], keys: list[str]) -> None:
        """Take the runs of ``keys`` that this log lacks from the logs at ``paths`` (another command's, finished with
        the same key: task, algorithm, seed, budget, evaluation and overrides), recording them here."""
        for path in paths:
            if not os.path.exists(path):
                raise FileNotFoundError(f"--reuse {path}: no such run log; give the .runs.jsonl of an earlier command")
            for key, rows in self.read(path).items():
                if key in keys and key not in self.done:
                    self.add(key, rows)

    def add(self, key: str, rows: list[dict]) -> None:
        rows = [{k: v.item() if isinstance(v, np.generic) else v for k, v in row.items()} for row in rows]
        with open(self.path, "a") as f:
            f.write(json.dumps(dict(key=key, rows=rows)) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.done[key] = rows


def run_pending(jobs: list[dict], log: RunLog, workers: int, describe, after_each=None) -> list[dict]:
    """Run the jobs (with their ``key``) that ``log`` has not finished, on a pool of ``workers`` processes: each flow
    job starts from its (task, seed)'s pretrained policy (pretrained once per pair); every run is logged as it ends,
    with a progress line ``[n/N] describe(job): success ...``, then ``after_each()``. Returns the jobs it ran."""
    pending = [job for job in jobs if job["key"] not in log.done]
    pretrain_jobs = list({(j["task"].name, j["seed"]): (j["task"], j["seed"], j["context"])
                          for j in pending if j["algo"] in FLOW}.values())  # fmt: skip
    described = {job["key"]: describe(job) for job in pending}
    with mp.get_context("spawn").Pool(workers) as pool:
        states = dict(zip([(j[0].name, j[1]) for j in pretrain_jobs], pool.map(pretrained_state, pretrain_jobs)))
        for job in pending:
            job["state"] = states.get((job["task"].name, job["seed"])) if job["algo"] in FLOW else None
        for n, (key, rows) in enumerate(pool.imap_unordered(run_keyed, pending), 1):
            log.add(key, rows)
            print(f"[{n}/{len(pending)}] {described[key]}: success {rows[-1]['success_rate']:.3f}", flush=True)
            if after_each is not None:
                after_each()
    return pending


def run_label(job: dict) -> str:
    """``task algorithm seed N``: a run in progress lines and in a *Partial* table."""
    return f"{job['task'].name} {job['algo']} seed {job['seed']}"


def command_line(script: str, argv: list[str]) -> str:
    """The command a result file records: ``--resume`` left out (a resumed run gives the same result)."""
    return " ".join([f"python {script}", *(a for a in argv if a != "--resume")])


# ------------------------------------------------------------------------------------------------------ report
def steps_to(curve_steps: np.ndarray, curve: np.ndarray, threshold: float) -> str:
    reached = np.nonzero(curve >= threshold)[0]
    return f"{int(curve_steps[reached[0]])}" if len(reached) else "not reached"


def mean_curve(rows: list[dict], task: str, algo: str, key: str = "algo") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Success against env steps, mean and std over seeds (each seed's curve interpolated on a common grid), of the rows
    of ``task`` whose ``key`` (the algorithm; ablations: the variation) is ``algo``."""
    seeds = sorted({r["seed"] for r in rows if r["task"] == task and r[key] == algo})
    curves = [[(r["env_steps"], r["success_rate"]) for r in rows if (r["task"], r[key], r["seed"]) == (task, algo, s)]
              for s in seeds]  # fmt: skip
    grid = np.array(sorted({step for curve in curves for step, _ in curve}))
    values = np.array([np.interp(grid, [p[0] for p in c], [p[1] for p in c]) for c in curves])
    return grid, values.mean(axis=0), values.std(axis=0)


def seed_summary(rows: list[dict]) -> dict:
    """The rows of one curve family (one task and algorithm or variation, all seeds, sorted by env steps within a seed):
    per seed the success at the first and at the last evaluation; mean env steps and train time at the end."""
    per_seed: dict[int, list[dict]] = {}
    for r in rows:
        per_seed.setdefault(r["seed"], []).append(r)
    return dict(
        first=np.array([v[0]["success_rate"] for v in per_seed.values()]),
        last=np.array([v[-1]["success_rate"] for v in per_seed.values()]),
        env_steps=int(np.mean([v[-1]["env_steps"] for v in per_seed.values()])),
        train_time=float(np.mean([v[-1]["train_time"] for v in per_seed.values()])),
    )


def pm(values: np.ndarray, fmt: str = ".3f") -> str:
    """``mean ± std`` over seeds."""
    return f"{round(float(values.mean()), 3) + 0.0:{fmt}} ± {values.std():.3f}"  # + 0.0: no "-0.000"


def table_cells(rows: list[dict], task: str, label: str, threshold: float, key: str = "algo") -> dict[str, str]:
    """The report's cells of one curve family (rows of ``task`` whose ``key`` is ``label``): success at step 0 and at
    the end, gain (mean ± std over seeds), env steps, steps to ``threshold`` of the mean curve, train time (s)."""
    summary = seed_summary([r for r in rows if (r["task"], r[key]) == (task, label)])
    grid, mean, _ = mean_curve(rows, task, label, key)
    return dict(
        first=pm(summary["first"]),
        last=pm(summary["last"]),
        gain=pm(summary["last"] - summary["first"], "+.3f"),
        env_steps=str(summary["env_steps"]),
        steps_to=steps_to(grid, mean, threshold),
        train_time=f"{summary['train_time']:.0f}",
    )


def report(rows: list[dict], args, command: str, out: str, missing: list[str] = ()) -> str:
    lines = [f"Command: `{command}`", ""]
    if missing:
        lines += [
            f"**Partial**: {len(missing)} run(s) not finished yet ({', '.join(missing)}); the same command with "
            "`--resume` runs them.",
            "",
        ]
    lines.append(
        f"{N_ENVS} envs, n_steps={args.n_steps} for every algorithm, seeds {args.seeds}; success over {args.n_eval} "
        f"episodes with `evaluate_success(deterministic=False)` on evaluation seeds from {EVAL_SEED}. Flow algorithms "
        "start from the same pretrained flow policy per seed and run at their defaults; PPO/TRPO (Gaussian MlpPolicy, "
        f"SB3 defaults) from scratch. Mean ± std over seeds. Steps to {args.threshold}: first evaluation at which the "
        "mean curve reaches it. Train time excludes evaluations."
    )
    for task_name in dict.fromkeys(r["task"] for r in rows):
        task = TASKS[task_name]
        lines += ["", f"### {task.title}", "", f"Chunk {task.chunk} env steps per decision.", ""]
        lines += [
            f"| algorithm | start | success at step 0 | final success | gain | env steps | steps to {args.threshold} "
            "| train time (s) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for algo in dict.fromkeys(r["algo"] for r in rows if r["task"] == task_name):
            cells = table_cells(rows, task_name, algo, args.threshold)
            lines.append(
                f"| {algo} | {'pretrained' if algo in FLOW else 'scratch'} | {cells['first']} | {cells['last']} | "
                f"{cells['gain']} | {cells['env_steps']} | {cells['steps_to']} | {cells['train_time']} |"
            )
    return write_markdown(lines, out)


def plot(rows: list[dict], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for ax, task_name in zip(axes[0], tasks):
        plot_curves(ax, rows, task_name, TASKS[task_name].title)
    fig.tight_layout()
    fig.savefig(out + ".png", dpi=110)
    plt.close(fig)


def plot_curves(ax, rows: list[dict], task_name: str, title: str, key: str = "algo") -> None:
    """One axes: the mean ± std success curve of every ``key`` (algorithm; ablations: variation) of ``task_name``."""
    for label in dict.fromkeys(r[key] for r in rows if r["task"] == task_name):
        grid, mean, std = mean_curve(rows, task_name, label, key)
        ax.plot(grid, mean, label=label)
        ax.fill_between(grid, mean - std, mean + std, alpha=0.2)
    ax.set_title(title)
    ax.set_xlabel("env steps")
    ax.set_ylabel("success rate (deterministic=False)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()


def add_run_arguments(parser: argparse.ArgumentParser, tasks: list[str], out: str) -> None:
    """The command-line arguments the suite shares with benchmarks/ablations.py (default ``--tasks`` and ``--out``)."""
    parser.add_argument("--tasks", nargs="+", default=tasks, choices=list(TASKS))
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2 (--quick: 0)")
    parser.add_argument("--env-steps", type=int, default=None, help="budget per run (default: per task)")
    parser.add_argument("--eval-every", type=int, default=None, help="env steps (default: budget / 10; --quick: / 4)")
    parser.add_argument("--n-eval", type=int, default=None, help="episodes per evaluation (default 200; --quick: 50)")
    parser.add_argument("--n-steps", type=int, default=128, help="decisions per env per iteration, every run")
    parser.add_argument("--threshold", type=float, default=0.8, help="success for the steps-to-threshold column")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="1 seed, small budgets: minutes on 2 cores")
    parser.add_argument("--out", default=out, help="folder (benchmarks/results: tracked)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="skip the runs an earlier, stopped command finished (its <out>/<name>.runs.jsonl) and run the rest",
    )


def parse_run_arguments(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse, fill in the --quick dependent defaults and create ``--out``."""
    args = parser.parse_args(argv)
    args.seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    args.n_eval = args.n_eval or (50 if args.quick else 200)
    os.makedirs(args.out, exist_ok=True)
    return args


def budget(task: Task, args: argparse.Namespace) -> tuple[int, int]:
    """``(decisions, eval_every)`` of one run on ``task``: ``learn``'s total_timesteps and env steps between points."""
    env_steps = args.env_steps or (task.quick_env_steps if args.quick else task.env_steps)
    return env_steps // task.chunk, args.eval_every or env_steps // (4 if args.quick else 10)


def write_markdown(lines: list[str], out: str) -> str:
    """Write ``out.md``; return its text."""
    text = "\n".join(lines) + "\n"
    with open(out + ".md", "w") as f:
        f.write(text)
    return text


def write_csv(rows: list[dict], path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: str) -> list[dict]:
    """Rows written by :func:`write_csv`, numbers converted back."""
    numbers = dict(seed=int, decisions=int, env_steps=int, success_rate=float, train_time=float)
    with open(path, newline="") as f:
        return [{k: numbers.get(k, str)(v) for k, v in row.items()} for row in csv.DictReader(f)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser, list(TASKS), os.path.join("runs", "suite"))
    parser.add_argument("--algos", nargs="+", default=ALGOS, choices=ALGOS)
    parser.add_argument(
        "--update",
        action="store_true",
        help="keep the other algorithms' rows of an existing result (e.g. rerun StepNFT after a change of its defaults)",
    )
    args = parse_run_arguments(parser)
    name = "suite" + ("_quick" if args.quick else "") + ("" if args.tasks == list(TASKS) else "_" + "_".join(args.tasks))
    out = os.path.join(args.out, name)  # e.g. suite.md, suite_quick.md, suite_point_reach.md
    command = command_line("benchmarks/suite.py", sys.argv[1:])

    contexts = {name: TASKS[name].prepare(args.out, args.quick) for name in args.tasks}
    jobs = []
    for name in args.tasks:
        task = TASKS[name]
        decisions, eval_every = budget(task, args)
        for seed in args.seeds:
            for algo in args.algos:
                if algo not in FLOW and not task.gaussian_references:
                    continue
                values = (task, algo, seed, decisions, eval_every, args.n_eval, args.n_steps, contexts[name])
                jobs.append(dict(zip(JOB_FIELDS, values)))
                jobs[-1]["key"] = run_key(jobs[-1])
    log = RunLog(out + ".runs.jsonl", args.resume)
    kept: list[dict] = []
    if args.update and os.path.exists(out + ".csv"):
        kept = [r for r in read_csv(out + ".csv") if r["algo"] not in args.algos]
        with open(out + ".md") as f:
            first = f.readline().strip()
        previous = first[len("Command: `") : -1] if first.startswith("Command: `") else "an earlier run"
        ours = f"` (the other rows); the rows of {', '.join(args.algos)} by `{command}"
        command = previous if previous.endswith(ours) else previous + ours  # a --resume of the same --update

    def publish() -> None:
        """Table, csv and curves of every finished run (rewritten after each one)."""
        rows = kept + [row for job in jobs if job["key"] in log.done for row in log.done[job["key"]]]
        if not rows:
            return
        algos = [a for a in ALGOS if any(r["algo"] == a for r in rows)]
        order = {(t, a): i for i, (t, a) in enumerate((t, a) for t in args.tasks for a in algos)}
        rows.sort(key=lambda r: (order[(r["task"], r["algo"])], r["seed"], r["env_steps"]))
        write_csv(rows, out + ".csv")
        missing = [run_label(j) for j in jobs if j["key"] not in log.done]
        print(report(rows, args, command, out, missing))
        plot(rows, out)
        print(f"wrote {out}.csv, {out}.md, {out}.png", flush=True)

    if not run_pending(jobs, log, args.workers, run_label, after_each=publish):
        publish()


if __name__ == "__main__":
    main()
