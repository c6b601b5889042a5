"""Ablations of StepNFT: the paper's Figs. 2a, 2b, 3a, 4 and 5, on tasks of the benchmark suite.

Every variation is StepNFT **at its defaults plus one override** (a switch of ALGORITHM.md §3, or one
hyper-parameter), started from **the same pretrained flow policy per (task, seed) as benchmarks/suite.py**
(``suite.pretrained_state``) and trained and evaluated by the suite's worker (``suite.run_one``: 8 envs, the same
training-env seeds, ``evaluate_success(deterministic=False)`` on evaluation seeds from 10_000 + seed). Variations that
are the same configuration in several groups (the defaults in every group; ``target="terminal"`` in "rollout" and
"target") run once and are reported in each of their groups.

Groups (``--groups``; the paper's ordering that the report checks):

- ``rollout`` (Fig. 2a): ODE rollouts with the terminal target, naive SDE with the terminal target, SDE with the step
  target and mean correction (the defaults). Paper: the last is best.
- ``target`` (Fig. 2b): step (default) vs terminal target. Paper: step > terminal.
- ``objective`` (Fig. 3a): ranking (default), wMSE, positive-only, negative-only. Paper: ranking > wMSE >
  positive-only / negative-only.
- ``noise`` (Fig. 4): noise level a. Paper: a moderate level is best.
- ``trust_region`` (Fig. 4): β. Paper: β ≈ 1 is best.
- ``ema`` (Fig. 4): the EMA schedule of the rollout policy: dynamic (the default cosine schedule; also with T = the
  run, ``ema_horizon_ratio=1``), constant high decay, aggressive (constant low decay). Paper: the constant high decay
  lags, the aggressive one collapses.
- ``step_selection`` (Fig. 5): random k (default) vs each fixed k. Paper: random ≈ the best fixed k.

The values of the sweeps (noise levels, β, the constant decays) are ours: the paper plots these ablations without a
table of their values. Outputs per task, in ``--out`` (default runs/ablations/; benchmarks/results only when asked):
``ablations[_quick]_<task>.md`` (the command, one table of every group's variations, and the paper's orderings with
"holds here?"), ``.csv`` (the curves of every variation and seed) and ``ablations[_quick]_<task>_<group>.png`` (one
figure per group, mean ± std over seeds). "holds here?" is decided only when the two sides' mean final successes
differ by more than the larger of their stds over seeds; otherwise "not separated" (one seed: "n/a").

    python benchmarks/ablations.py --quick --tasks point_reach --workers 1   # minutes: 1 seed, small budgets
    python benchmarks/ablations.py                                          # every group, point_reach and push_cube, 3 seeds
    python benchmarks/ablations.py --groups objective ema --tasks push_cube --out benchmarks/results

Each finished run is appended to ``<out>/ablations_<tasks>[_only_<groups>].runs.jsonl``; a stopped command continues
with the same arguments plus ``--resume`` (the tables are written when every run is in). Groups run by separate
commands share their common runs (the defaults) with ``--reuse <other log>``: a run is taken only when its task, seed,
budget, evaluation and configuration are the same, so the groups compare against one set of defaults runs::

    python benchmarks/ablations.py --groups ema --tasks push_cube --out benchmarks/results
    python benchmarks/ablations.py --groups trust_region --tasks push_cube --out benchmarks/results \
        --reuse benchmarks/results/ablations_push_cube_only_ema.runs.jsonl

ManiSkill tasks need ``make install-sim``. One torch thread per worker process.
"""

import argparse
import inspect
import os
import sys
from dataclasses import dataclass

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks import suite  # noqa: E402

Claim = tuple[tuple[str, ...], str, tuple[str, ...]]  # (left variations, ">" or "≈", right variations): best vs best


@dataclass(frozen=True)
class Group:
    """One ablation: its variations (name → overrides of StepNFT's defaults) and the paper's ordering as claims."""

    figure: str
    title: str
    paper: str
    variations: dict[str, dict]
    claims: tuple[Claim, ...]


def stepnft_defaults() -> dict:
    from sb3_stepnft import StepNFT

    parameters = inspect.signature(StepNFT.__init__).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def changed(overrides: dict) -> dict:
    """The run a variation needs: its overrides without those equal to StepNFT's defaults (``noise_level=0.2`` is
    the defaults run, in every group and every run log)."""
    defaults = stepnft_defaults()
    return {k: v for k, v in sorted(overrides.items()) if k not in defaults or defaults[k] != v}


def config_of(overrides: dict) -> str:
    """:func:`changed` as text ("defaults" when nothing is)."""
    return ", ".join(f"{k}={v!r}" for k, v in changed(overrides).items()) or "defaults"


def _step_selection_group() -> Group:
    k_count = stepnft_defaults()["num_denoise_steps"]
    fixed = tuple(f"k={k}" for k in range(k_count))
    return Group(
        "Fig. 5",
        "step selection",
        "random k ≈ the best fixed k",
        {"random": {}, **{f"k={k}": dict(step_selection=k) for k in range(k_count)}},
        ((("random",), "≈", fixed),),
    )


SDE_STEP = "SDE, step target + mean correction"
GROUPS: dict[str, Group] = {
    "rollout": Group(
        "Fig. 2a",
        "rollout strategy",
        "SDE with the step target and mean correction is best",
        {
            "ODE, terminal target": dict(sampler="ode", target="terminal"),
            "naive SDE, terminal target": dict(target="terminal"),
            SDE_STEP: {},
        },
        (((SDE_STEP,), ">", ("naive SDE, terminal target",)), ((SDE_STEP,), ">", ("ODE, terminal target",))),
    ),
    "target": Group(
        "Fig. 2b",
        "supervision target",
        "step > terminal",
        {"step": {}, "terminal": dict(target="terminal")},
        ((("step",), ">", ("terminal",)),),
    ),
    "objective": Group(
        "Fig. 3a",
        "objective",
        "ranking > wMSE > positive-only / negative-only",
        {
            "ranking": {},
            "wMSE": dict(objective="wmse"),
            "positive-only": dict(objective="positive"),
            "negative-only": dict(objective="negative"),
        },
        ((("ranking",), ">", ("wMSE",)), (("wMSE",), ">", ("positive-only",)), (("wMSE",), ">", ("negative-only",))),
    ),
    "noise": Group(
        "Fig. 4",
        "noise level a",
        "a moderate noise level is best (too little limits exploration, too much slows convergence)",
        {f"a={a:g}": dict(noise_level=a) for a in (0.05, 0.2, 0.5, 1.0)},
        ((("a=0.2", "a=0.5"), ">", ("a=0.05",)), (("a=0.2", "a=0.5"), ">", ("a=1",))),
    ),
    "trust_region": Group(
        "Fig. 4",
        "trust region β",
        "β ≈ 1 is best",
        {f"β={b:g}": dict(trust_region=b) for b in (0.5, 1.0, 2.0)},
        ((("β=1",), ">", ("β=0.5",)), (("β=1",), ">", ("β=2",))),
    ),
    "ema": Group(
        "Fig. 4",
        "EMA schedule",
        "dynamic best: a constant high decay lags, a constant low (aggressive) decay collapses",
        {
            "dynamic (default)": {},
            "dynamic, T = run": dict(ema_horizon_ratio=1.0),
            "constant d=0.995": dict(ema_decay=0.995),
            "aggressive: constant d=0.1": dict(ema_decay=0.1),
        },
        ((("dynamic (default)",), ">", ("constant d=0.995",)), (("dynamic (default)",), ">", ("aggressive: constant d=0.1",))),
    ),
    "step_selection": _step_selection_group(),
}


# ------------------------------------------------------------------------------------------------------ report
def verdict(difference: float, threshold: float, relation: str, n_seeds: int) -> str:
    """ "holds here?" of one claim: decided only when |difference| exceeds the seeds' std (``threshold``)."""
    if n_seeds < 2:
        return "n/a (1 seed)"
    if abs(difference) <= threshold:
        return "not separated" + (" (as the paper's ≈)" if relation == "≈" else "")
    if relation == "≈":
        return "yes (better)" if difference > 0 else "no"
    return "yes" if difference > 0 else "no"


def report(task_name: str, groups: list[str], rows: list[dict], args, command: str, out: str) -> str:
    """The markdown of one task: every group's variations, then the paper's orderings and whether they hold here."""
    task = suite.TASKS[task_name]
    lines = [f"Command: `{command}`", ""]
    lines.append(
        f"StepNFT at its defaults plus the overrides of each variation, from the pretrained flow policy of each seed "
        f"(the suite's pretraining); {suite.N_ENVS} envs, n_steps={args.n_steps}, seeds {args.seeds}, "
        f"{suite.budget(task, args)[0] * task.chunk} env steps per run (chunk {task.chunk}); success over "
        f"{args.n_eval} episodes with `evaluate_success(deterministic=False)` on evaluation seeds from {suite.EVAL_SEED}. "
        f"Mean ± std over seeds. Steps to {args.threshold}: first evaluation at which the mean curve reaches it. Train "
        "time excludes evaluations. Identical configurations are one run, reported in each of their groups."
    )
    lines += ["", f"### {task.title}", ""]
    lines += [
        f"| group | variation | overrides | final success | gain | steps to {args.threshold} | train time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in groups:
        group_rows = [r for r in rows if r["group"] == name]
        for variation, overrides in GROUPS[name].variations.items():
            cells = suite.table_cells(group_rows, task_name, variation, args.threshold, key="variation")
            lines.append(
                f"| {name} ({GROUPS[name].figure}) | {variation} | {config_of(overrides)} | {cells['last']} | "
                f"{cells['gain']} | {cells['steps_to']} | {cells['train_time']} |"
            )
    lines += ["", "#### The paper's orderings: do they hold here?", ""]
    lines.append(
        "Each side is its best variation by mean final success; a comparison is decided only when the difference of the "
        "means exceeds the larger std over seeds of the two, otherwise it is *not separated*."
    )
    lines += [
        "",
        "| group | paper's ordering | comparison | Δ final success | larger std | holds here? |",
        "|---|---|---|---|---|---|",
    ]
    for name in groups:
        group = GROUPS[name]
        final = {v: suite.seed_summary([r for r in rows if (r["group"], r["variation"]) == (name, v)])["last"]
                 for v in group.variations}  # fmt: skip
        for left, relation, right in group.claims:
            best_left = max(left, key=lambda v: final[v].mean())
            best_right = max(right, key=lambda v: final[v].mean())
            a, b = final[best_left], final[best_right]
            threshold = max(a.std(), b.std())
            lines.append(
                f"| {name} ({group.figure}) | {group.paper} | {best_left} {relation} {best_right} | "
                f"{a.mean() - b.mean():+.3f} | {threshold:.3f} | "
                f"{verdict(a.mean() - b.mean(), threshold, relation, len(args.seeds))} |"
            )
    return suite.write_markdown(lines, out)


def plot(task_name: str, groups: list[str], rows: list[dict], out: str) -> None:
    """One figure per group: the mean ± std success curve of each variation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name in groups:
        group = GROUPS[name]
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        title = f"{suite.TASKS[task_name].title}: {group.figure} {group.title}"
        suite.plot_curves(ax, [r for r in rows if r["group"] == name], task_name, title, key="variation")
        fig.tight_layout()
        fig.savefig(f"{out}_{name}.png", dpi=110)
        plt.close(fig)


# -------------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    suite.add_run_arguments(parser, ["point_reach", "push_cube"], os.path.join("runs", "ablations"))
    parser.add_argument("--groups", nargs="+", default=list(GROUPS), choices=list(GROUPS))
    parser.add_argument(
        "--reuse",
        nargs="+",
        default=[],
        metavar="RUNS_JSONL",
        help="take the runs these logs of other groups finished with the same configuration, seed, budget and "
        "evaluation (the defaults runs) instead of running them again; they are copied into this command's log",
    )
    args = suite.parse_run_arguments(parser, argv)
    command = suite.command_line("benchmarks/ablations.py", sys.argv[1:] if argv is None else argv)
    variations = [GROUPS[g].variations[v] for g in args.groups for v in GROUPS[g].variations]
    configs = {config_of(overrides): changed(overrides) for overrides in variations}

    contexts = {name: suite.TASKS[name].prepare(args.out, args.quick) for name in args.tasks}
    keys = [(task_name, seed, config) for task_name in args.tasks for seed in args.seeds for config in configs]
    jobs = []
    for task_name, seed, config in keys:
        task = suite.TASKS[task_name]
        decisions, eval_every = suite.budget(task, args)
        run = (task, "StepNFT", seed, decisions, eval_every, args.n_eval, args.n_steps, contexts[task_name], None)
        jobs.append(dict(zip(suite.JOB_FIELDS, run), overrides=configs[config]))
        jobs[-1]["key"] = suite.run_key(jobs[-1])
    # every finished run is logged as it ends; --resume skips those (suite.RunLog)
    log_name = "ablations" + ("_quick" if args.quick else "") + "_" + "_".join(args.tasks)
    log_name += "" if args.groups == list(GROUPS) else "_only_" + "_".join(args.groups)
    log = suite.RunLog(os.path.join(args.out, log_name + ".runs.jsonl"), args.resume)
    log.reuse(args.reuse, [job["key"] for job in jobs])
    describe = lambda job: f"{job['task'].name}, seed {job['seed']}, {config_of(job['overrides'])}"  # noqa: E731
    suite.run_pending(jobs, log, args.workers, describe)
    runs = {key: log.done[job["key"]] for key, job in zip(keys, jobs)}

    for task_name in args.tasks:
        rows = [
            dict(group=g, variation=v, config=config_of(overrides), **{k: x for k, x in row.items() if k != "algo"})
            for g in args.groups
            for v, overrides in GROUPS[g].variations.items()
            for seed in args.seeds
            for row in runs[task_name, seed, config_of(overrides)]
        ]
        name = "ablations" + ("_quick" if args.quick else "") + f"_{task_name}"
        name += "" if args.groups == list(GROUPS) else "_only_" + "_".join(args.groups)
        out = os.path.join(args.out, name)
        suite.write_csv(rows, out + ".csv")
        print(report(task_name, args.groups, rows, args, command, out))
        plot(task_name, args.groups, rows, out)
        print(f"wrote {out}.csv, {out}.md, {out}_<group>.png ({', '.join(args.groups)})")


if __name__ == "__main__":
    main()
