"""OOD generalisation on LangReach (the paper's Table 2, in miniature): StepNFT and FlowPPO from one SFT start.

Per seed: the tiny VLA of benchmarks/suite.py's ``lang_reach`` task (FlowVLAPolicy, tiny PaliGemma frozen, shared
action expert of width 32, ByT5 tokens, max_length 24, chunks of 4) is pretrained once (200 epochs at lr 1e-3) on 40
demonstrations (30% imperfect) recorded under the in-distribution variations (``OOD_VARIATIONS["ind"]``:
three backgrounds, two shades per target, three phrasings, starts in [-0.2, 0.2]²). StepNFT and FlowPPO (its value
head on the same features: the frozen VLM's pooled prefix and the state) start from that policy, run at their
defaults (``n_steps`` 128, 8 envs, the ``"ind"`` variations) for the same number of decisions (so the same env-step
budget), and are evaluated with ``evaluate_success(deterministic=False)`` on ``--n-eval`` episodes of each category:
``ind`` and the held-out ``vision`` (unseen backgrounds + pixel noise), ``semantics`` (unseen phrasings and target
shades) and ``execution`` (starts in the annulus 0.25 <= max(|x|, |y|) <= 0.4). Evaluation seeds start at 20_000
(never used for anything else; nothing was tuned). The SFT policy is evaluated too (the baseline row).

Probe (on unless ``--no-probe``): FlowPPO's value head on the same 200 start states (same seeds: same target,
phrasing, start) rendered under ``ind`` and under ``vision``; it reports how much V moves when only the nuisance
pixels change, relative to how much it varies across IND states, and the share of V's variance over IND states that
the background colour explains. ``--factors``: also the single-factor splits (:data:`FACTORS`); ``--curve-every N``:
every category evaluated every N decisions during training (the OOD-vs-IND curves, the equal-IND comparison);
``--report-only``: rewrite the .md from the CSVs.

    python benchmarks/ood_langreach.py --quick                     # minutes: 1 seed, tiny budget, runs/ood/
    nice -n 5 python benchmarks/ood_langreach.py --seeds 0 1 2 3 4 --factors --curve-every 8192 --out benchmarks/results

One process, one torch thread (LangReach renders 16x16 images in NumPy: fast on CPU; ManiSkill's rgb observations
with CPU rendering are far too slow for a multi-seed study on 2 cores).
"""

import argparse
import csv
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks.suite import write_csv  # noqa: E402

CATEGORIES = ("ind", "vision", "semantics", "execution")
OOD = CATEGORIES[1:]
#: ``--factors``: single-factor splits of the held-out categories (the ``"ind"`` variations with one key of the
#: category's replaced), to tell which factor a category's drop comes from.
FACTORS: dict[str, tuple[str, str]] = {
    "vision/background": ("vision", "background_colors"),
    "vision/noise": ("vision", "image_noise_std"),
    "semantics/phrasing": ("semantics", "instruction_templates"),
    "semantics/shades": ("semantics", "target_shades"),
}
ALGOS = ("StepNFT", "FlowPPO")
N_ENVS = 8
N_EVAL_ENVS = 8
EVAL_SEED = 20_000
CHUNK = 4
MAX_LENGTH = 24


def env_kwargs(category: str) -> dict:
    from transformers import ByT5Tokenizer

    from sb3_stepnft.envs.lang_reach import OOD_VARIATIONS, ood_env_kwargs

    if category in FACTORS:
        held_out, key = FACTORS[category]
        variations = {**ood_env_kwargs("ind"), key: OOD_VARIATIONS[held_out][key]}
    else:
        variations = ood_env_kwargs(category)
    return dict(tokenizer=ByT5Tokenizer(), max_length=MAX_LENGTH, chunk_size=CHUNK, **variations)


def make_env(category: str, n_envs: int, seed: int):
    from stable_baselines3.common.env_util import make_vec_env

    from sb3_stepnft.envs.lang_reach import make_lang_reach_env

    return make_vec_env(make_lang_reach_env, n_envs=n_envs, seed=seed, env_kwargs=env_kwargs(category))


def policy_spec() -> tuple:
    from sb3_stepnft.vla import FlowVLAPolicy
    from sb3_stepnft.vla.testing import tiny_paligemma_config

    kwargs = dict(vlm=tiny_paligemma_config(image_size=16, patch_size=8, vocab_size=400), expert="shared", expert_width=32)
    return FlowVLAPolicy, kwargs


def build(algo: str, env, seed: int, n_steps: int):
    import sb3_stepnft

    policy, kwargs = policy_spec()
    return getattr(sb3_stepnft, algo)(policy, env, policy_kwargs=kwargs, seed=seed, n_steps=n_steps)


def sft_state(seed: int, n_demos: int = 40, epochs: int = 200) -> dict:
    """The SFT policy of one seed (IND demonstrations), as a state dict; StepNFT is only its carrier."""
    from sb3_stepnft.envs.lang_reach import collect_demonstrations, ood_env_kwargs
    from sb3_stepnft.sft import pretrain

    env = make_env("ind", 1, seed)
    model = build("StepNFT", env, seed, 128)
    kwargs = env_kwargs("ind")
    demos, _ = collect_demonstrations(
        n_demos, seed=seed, imperfect_fraction=0.3, tokenizer=kwargs["tokenizer"], max_length=MAX_LENGTH,
        env_kwargs=ood_env_kwargs("ind"),
    )  # fmt: skip
    pretrain(model, demos, seed=seed, epochs=epochs, learning_rate=1e-3)
    env.close()
    return {name: tensor.clone() for name, tensor in model.policy.state_dict().items()}


def evaluate_all(model, seed: int, n_eval: int, categories=CATEGORIES) -> dict[str, float]:
    """Success of ``model`` on every category, ``n_eval`` episodes each, on evaluation seeds ``EVAL_SEED + 1000·seed``."""
    from sb3_stepnft.common.evaluation import evaluate_success

    out = {}
    for category in categories:
        env = make_env(category, N_EVAL_ENVS, EVAL_SEED + 1000 * seed)
        out[category] = evaluate_success(model, env, n_eval_episodes=n_eval, seed=EVAL_SEED + 1000 * seed)["success_rate"]
        env.close()
    return out


def probe_values(model, seed: int, n_states: int = 200) -> dict[str, float]:
    """FlowPPO's value head on ``n_states`` start observations rendered under ``ind`` and under ``vision`` (same
    reset seeds: the same target, phrasing and start; only backgrounds and pixel noise differ)."""
    import torch as th

    from sb3_stepnft.envs.lang_reach import make_lang_reach_env

    values, backgrounds = {}, []
    for category in ("ind", "vision"):
        env = make_lang_reach_env(**env_kwargs(category))
        batch: dict[str, list] = {}
        for i in range(n_states):
            obs, _ = env.reset(seed=EVAL_SEED + 500_000 + 1000 * seed + i)
            for key, value in obs.items():
                batch.setdefault(key, []).append(value)
            if category == "ind":
                backgrounds.append(env.unwrapped.background_colors.index(env.unwrapped.background_color))
        obs_t, _ = model.policy.obs_to_tensor({k: np.stack(v) for k, v in batch.items()})
        with th.no_grad():
            values[category] = model.policy.predict_values(obs_t).flatten().cpu().numpy()
        env.close()
    ind, vision = values["ind"], values["vision"]
    backgrounds = np.array(backgrounds)
    # how much of V's variance over IND states the background explains (between-group variance / total variance)
    means = {b: ind[backgrounds == b].mean() for b in np.unique(backgrounds)}
    between = np.mean([(means[b] - ind.mean()) ** 2 for b in backgrounds])
    return dict(
        v_ind_mean=float(ind.mean()),
        v_ind_std=float(ind.std()),
        v_vision_mean=float(vision.mean()),
        v_shift_abs=float(np.abs(vision - ind).mean()),
        v_shift_rel=float(np.abs(vision - ind).mean() / (ind.std() + 1e-8)),
        v_background_r2=float(between / (ind.var() + 1e-12)),
    )


def run_seed(
    seed: int,
    decisions: int,
    n_eval: int,
    n_steps: int,
    probe: bool,
    log=print,
    categories=CATEGORIES,
    curve_every: int = 0,
) -> tuple[list[dict], list[dict], list[dict]]:
    """SFT, then StepNFT and FlowPPO from it; rows ``(algo, seed, category, success_rate, ...)`` at the end, probe
    rows, and (``curve_every`` decisions > 0) curve rows: every category evaluated during training (at the first
    rollout past each ``curve_every`` decisions, and at the end; the evaluations use their own seeded RNGs and envs,
    so training is the same with or without them)."""
    import torch as th

    from benchmarks.curves import PeriodicEvaluation

    th.set_num_threads(1)
    start = time.time()
    state = sft_state(seed)
    sft_time = time.time() - start
    rows, probes, curves = [], [], []
    carrier = build("StepNFT", make_env("ind", 1, seed), seed, n_steps)
    carrier.set_parameters({"policy": state}, exact_match=False)
    carrier.env.close()
    for category, rate in evaluate_all(carrier, seed, n_eval, categories).items():
        rows.append(dict(algo="SFT", seed=seed, category=category, success_rate=rate, decisions=0, train_time=sft_time))
    log(f"seed {seed} SFT: {[(r['category'], r['success_rate']) for r in rows]} ({sft_time:.0f} s)")
    for algo in ALGOS:
        model = build(algo, make_env("ind", N_ENVS, 1_000 + seed), seed, n_steps)
        model.set_parameters({"policy": state}, exact_match=False)  # FlowPPO's value head stays fresh
        start, eval_time = time.time(), [0.0]

        def checkpoint(model=model, algo=algo, eval_time=eval_time):
            begin = time.time()
            for category, rate in evaluate_all(model, seed, n_eval).items():
                curves.append(dict(algo=algo, seed=seed, category=category, success_rate=rate,
                                   decisions=model.num_timesteps))  # fmt: skip
            eval_time[0] += time.time() - begin

        model.learn(decisions, callback=PeriodicEvaluation(checkpoint, curve_every) if curve_every else None)
        train_time = time.time() - start - eval_time[0]
        result = evaluate_all(model, seed, n_eval, categories)
        for category, rate in result.items():
            rows.append(dict(algo=algo, seed=seed, category=category, success_rate=rate, decisions=model.num_timesteps,
                             train_time=train_time))  # fmt: skip
        log(f"seed {seed} {algo}: {result} ({train_time:.0f} s)")
        if probe and algo == "FlowPPO":
            probes.append(dict(seed=seed, **probe_values(model, seed)))
            log(f"seed {seed} probe: {probes[-1]}")
        model.env.close()
    return rows, probes, curves


# ------------------------------------------------------------------------------------------------------ report
def pm(values) -> str:
    values = np.asarray(values, dtype=float)
    return f"{round(float(values.mean()), 3) + 0.0:.3f} ± {values.std():.3f}"


def table(rows: list[dict]) -> list[str]:
    """Markdown rows: per algorithm, mean ± std over seeds of the success on each category and the OOD mean."""
    head = "| policy | seeds | IND | vision | semantics | execution | OOD mean | OOD - IND | OOD / IND |"
    lines = [head, "|---" * 9 + "|"]
    for algo in dict.fromkeys(r["algo"] for r in rows):
        mine = [r for r in rows if r["algo"] == algo]
        seeds = sorted({r["seed"] for r in mine})
        per = {c: np.array([next(r["success_rate"] for r in mine if (r["seed"], r["category"]) == (s, c)) for s in seeds])
               for c in CATEGORIES}  # fmt: skip
        ood = np.mean([per[c] for c in OOD], axis=0)
        cells = [pm(per[c]) for c in CATEGORIES] + [
            pm(ood),
            pm(ood - per["ind"]),
            pm(ood / np.maximum(per["ind"], 1e-9)),
        ]
        lines.append(f"| {algo} | {len(seeds)} | " + " | ".join(cells) + " |")
    return lines


def factor_table(rows: list[dict]) -> list[str]:
    """Markdown rows of the single-factor splits (``--factors``), if any: mean ± std over seeds per algorithm."""
    factors = [f for f in FACTORS if any(r["category"] == f for r in rows)]
    if not factors:
        return []
    lines = ["| policy | IND | " + " | ".join(factors) + " |", "|---" * (len(factors) + 2) + "|"]
    for algo in dict.fromkeys(r["algo"] for r in rows):
        cells = [pm([r["success_rate"] for r in rows if (r["algo"], r["category"]) == (algo, c)]) for c in ("ind", *factors)]
        lines.append(f"| {algo} | " + " | ".join(cells) + " |")
    return lines


def curve_table(curves: list[dict]) -> list[str]:
    """Markdown rows of the curves (``--curve-every``): per algorithm and checkpoint, success on each category and the
    OOD mean, means over the seeds (so the algorithms can be compared at the same IND success)."""
    if not curves:
        return []
    lines = ["| policy | decisions | seeds | IND | vision | semantics | execution | OOD mean |", "|---" * 8 + "|"]
    for algo in dict.fromkeys(r["algo"] for r in curves):
        for decisions in sorted({r["decisions"] for r in curves if r["algo"] == algo}):
            mine = [r for r in curves if (r["algo"], r["decisions"]) == (algo, decisions)]
            rate = {c: np.mean([r["success_rate"] for r in mine if r["category"] == c]) for c in CATEGORIES}
            seeds = len({r["seed"] for r in mine})
            cells = [f"{rate[c]:.3f}" for c in CATEGORIES] + [f"{np.mean([rate[c] for c in OOD]):.3f}"]
            lines.append(f"| {algo} | {decisions} | {seeds} | " + " | ".join(cells) + " |")
    return lines


def ood_curve(curves: list[dict], algo: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(decisions, IND success, OOD mean)`` of one run's checkpoints, in training order."""
    mine = [r for r in curves if (r["algo"], r["seed"]) == (algo, seed)]
    grid = np.array(sorted({r["decisions"] for r in mine}))
    rate = {(r["decisions"], r["category"]): r["success_rate"] for r in mine}
    ind = np.array([rate[d, "ind"] for d in grid])
    ood = np.array([np.mean([rate[d, c] for c in OOD]) for d in grid])
    return grid, ind, ood


def matched_ind(curves: list[dict], reference: str = "StepNFT", other: str = "FlowPPO") -> list[dict]:
    """Per seed: ``reference``'s final IND success and OOD mean, and ``other``'s OOD mean at that IND success (linear
    interpolation between the two checkpoints where ``other``'s IND curve first crosses it; NaN if it never does)."""
    out = []
    for seed in sorted({r["seed"] for r in curves if r["algo"] == reference}):
        _, ref_ind, ref_ood = ood_curve(curves, reference, seed)
        _, ind, ood = ood_curve(curves, other, seed)
        target, value = ref_ind[-1], float("nan")
        for k in range(len(ind) - 1):
            low, high = sorted((ind[k], ind[k + 1]))
            if low <= target <= high:
                w = 0.0 if ind[k + 1] == ind[k] else (target - ind[k]) / (ind[k + 1] - ind[k])
                value = float(ood[k] + w * (ood[k + 1] - ood[k]))
                break
        out.append(dict(seed=seed, ind=float(target), reference_ood=float(ref_ood[-1]), other_ood=value))
    return out


def matched_table(curves: list[dict]) -> list[str]:
    matched = matched_ind(curves)
    if not matched:
        return []
    lines = ["| seed | StepNFT final IND | StepNFT OOD mean | FlowPPO OOD mean at that IND |", "|---" * 4 + "|"]
    for m in matched:
        other = "not crossed" if np.isnan(m["other_ood"]) else f"{m['other_ood']:.3f}"
        lines.append(f"| {m['seed']} | {m['ind']:.3f} | {m['reference_ood']:.3f} | {other} |")
    both = [m for m in matched if not np.isnan(m["other_ood"])]
    if both:
        lines.append(
            f"| mean ({len(both)} seeds crossed) | {np.mean([m['ind'] for m in both]):.3f} | "
            f"{pm([m['reference_ood'] for m in both])} | {pm([m['other_ood'] for m in both])} |"
        )
    return lines


def plot(curves: list[dict], out: str) -> None:
    """``out.png``: OOD mean against IND success along training (one line per algorithm and seed; the paper's claim
    is a curve above the other at the same IND success), and IND / OOD mean against decisions (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for index, algo in enumerate(dict.fromkeys(r["algo"] for r in curves)):
        color = f"C{index}"
        seeds = sorted({r["seed"] for r in curves if r["algo"] == algo})
        grid = sorted({r["decisions"] for r in curves if r["algo"] == algo})
        per = {}  # (seed, category) -> success along the grid
        for seed in seeds:
            for c in CATEGORIES:
                points = {
                    r["decisions"]: r["success_rate"]
                    for r in curves
                    if (r["algo"], r["seed"], r["category"]) == (algo, seed, c)
                }
                per[seed, c] = np.array([points[d] for d in grid])  # fmt: skip
            ood = np.mean([per[seed, c] for c in OOD], axis=0)
            left.plot(per[seed, "ind"], ood, "o-", color=color, alpha=0.6, ms=3, label=algo if seed == seeds[0] else None)
        ind = np.mean([per[s, "ind"] for s in seeds], axis=0)
        ood = np.mean([np.mean([per[s, c] for c in OOD], axis=0) for s in seeds], axis=0)
        right.plot(grid, ind, "-", color=color, label=f"{algo} IND")
        right.plot(grid, ood, "--", color=color, label=f"{algo} OOD mean")
    left.plot([0, 1], [0, 1], ":", color="gray", lw=0.8)
    left.set_xlabel("IND success")
    left.set_ylabel("OOD success (mean of vision, semantics, execution)")
    left.set_title("OOD against IND along training (per seed)")
    right.set_xlabel("decisions (x4 env steps)")
    right.set_ylabel("success (mean over seeds)")
    right.set_title("LangReach OOD study")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out + ".png", dpi=110)
    plt.close(fig)


def probe_table(probes: list[dict]) -> list[str]:
    if not probes:
        return []
    keys = [k for k in probes[0] if k != "seed"]
    return ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys),
            "| " + " | ".join(pm([p[k] for p in probes]) for k in keys) + " |"]  # fmt: skip


def read_csv(path: str) -> list[dict]:
    """Rows written by :func:`write_csv`, numbers converted back."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    text = ("algo", "category")
    return [{k: (v if k in text else int(v) if k in ("seed", "decisions") else float(v)) for k, v in r.items()} for r in rows]


def report(rows: list[dict], probes: list[dict], args, command: str, curves: list[dict] | None = None) -> str:
    from sb3_stepnft.envs.lang_reach import OOD_VARIATIONS

    lines = [f"Command: `{command}`", ""]
    lines.append(
        f"Seeds {sorted({r['seed'] for r in rows})}; {args.decisions} decisions (x{CHUNK} env steps) per run, {N_ENVS} "
        f"envs, n_steps={args.n_steps}, both algorithms at their defaults from the same SFT policy per seed. Success over "
        f"{args.n_eval} episodes per category (`evaluate_success(deterministic=False)`, evaluation seeds from "
        f"{EVAL_SEED} + 1000·seed). Mean ± std over seeds. OOD mean: mean of vision, semantics, execution."
    )
    lines += [""] + table(rows) + [""]
    if factor_table(rows):
        lines += ["Single-factor splits (`--factors`: the IND variations with one factor of a held-out category):", ""]
        lines += factor_table(rows) + [""]
    lines.append("Variations (`sb3_stepnft.envs.lang_reach.OOD_VARIATIONS`; held-out categories change only their keys):")
    lines.append("")
    for category, kwargs in OOD_VARIATIONS.items():
        lines.append(f"- `{category}`: " + "; ".join(f"{k}={v}" for k, v in kwargs.items()))
    if probes:
        lines += ["", "FlowPPO value-head probe (200 start states, same seeds rendered under `ind` and `vision`; "
                  "`v_shift_rel`: mean |V_vision - V_ind| / std of V over IND states; `v_background_r2`: share of "
                  "V's variance over IND states explained by the background colour):", ""]  # fmt: skip
        lines += probe_table(probes)
    if curves:
        lines += [
            "",
            f"Along training (every category evaluated every {args.curve_every} decisions; means over seeds):",
            "",
        ]
        lines += curve_table(curves)
        lines += [
            "",
            "At equal IND success (FlowPPO's OOD mean interpolated along its checkpoints at StepNFT's final IND):",
        ]
        lines += [""] + matched_table(curves)
    lines += ["", f"Wall time: SFT {np.mean([r['train_time'] for r in rows if r['algo'] == 'SFT']):.0f} s, "
              + ", ".join(f"{a} {np.mean([r['train_time'] for r in rows if r['algo'] == a]):.0f} s"
                          for a in ALGOS if any(r["algo"] == a for r in rows)) + " of training per seed."]  # fmt: skip
    text = "\n".join(lines) + "\n"
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2 (--quick: 0)")
    parser.add_argument("--decisions", type=int, default=None, help="per run (default 40960; --quick: 256)")
    parser.add_argument("--n-eval", type=int, default=None, help="episodes per category (default 200; --quick: 16)")
    parser.add_argument("--n-steps", type=int, default=128)
    parser.add_argument("--no-probe", dest="probe", action="store_false")
    parser.add_argument("--factors", action="store_true", help="also evaluate the single-factor splits (FACTORS)")
    parser.add_argument("--curve-every", type=int, default=0, help="decisions between evaluations during training")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=os.path.join("runs", "ood"))
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite the .md from the .csv files of an earlier run (pass that run's arguments); keeps its command",
    )
    args = parser.parse_args(argv)
    args.seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    args.decisions = args.decisions or (256 if args.quick else 40_960)
    args.n_eval = args.n_eval or (16 if args.quick else 200)
    if args.quick:
        args.n_steps = min(args.n_steps, 16)
    os.makedirs(args.out, exist_ok=True)
    out = os.path.join(args.out, "ood_langreach" + ("_quick" if args.quick else ""))
    categories = CATEGORIES + (tuple(FACTORS) if args.factors else ())
    command = " ".join(["python benchmarks/ood_langreach.py", *(sys.argv[1:] if argv is None else argv)])
    if args.report_only:
        with open(out + ".md") as f:
            first = f.readline().strip()
        previous = first.split("`")[1] if first.startswith("Command: `") else "an earlier run"
        rows = read_csv(out + ".csv")
        probes = read_csv(out + "_probe.csv") if os.path.exists(out + "_probe.csv") else []
        curves = read_csv(out + "_curves.csv") if os.path.exists(out + "_curves.csv") else []
        text = report(rows, probes, args, f"{previous}`; table rewritten from its CSV by `{command}", curves)
        with open(out + ".md", "w") as f:
            f.write(text)
        print(text)
        return
    rows, probes, curves = [], [], []
    for seed in args.seeds:  # results are written after every seed: a partial run is still reported (seeds done)
        seed_rows, seed_probes, seed_curves = run_seed(
            seed,
            args.decisions,
            args.n_eval,
            args.n_steps,
            args.probe,
            categories=categories,
            curve_every=args.curve_every,
        )
        rows += seed_rows
        probes += seed_probes
        curves += seed_curves
        if curves:
            write_csv(curves, out + "_curves.csv")
            plot(curves, out)
        write_csv(rows, out + ".csv")
        if probes:
            write_csv(probes, out + "_probe.csv")
        text = report(rows, probes, args, command, curves)
        with open(out + ".md", "w") as f:
            f.write(text)
    print(text)
    print(f"wrote {out}.md, {out}.csv")


if __name__ == "__main__":
    main()
