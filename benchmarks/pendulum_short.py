"""Does StepNFT's return on Pendulum-v1 improve over a short budget, and with which settings? (issue 14)

StepNFT from scratch (``"MlpPolicy"``, no demonstrations) on ``make_vec_env("Pendulum-v1", n_envs=--n-envs)``:
Pendulum reports no success flag, so episodes are labelled with graded returns from the running normaliser over
``return_window`` recent episodes (docs/stepnft.md, "Labels"). Each configuration is StepNFT's defaults with a few
settings changed (``--configs``, JSON dicts of keyword arguments). The return is the mean over --n-eval episodes of
``evaluate_success(model, env, seed=...)`` (the student's ODE sampler from random x_0, ``deterministic=False``) on a
separate 4-env evaluation env, with the env and the policy noise seeded 10_000 + seed: the same initial states and
noise draws before and after learning, so the gain is not blurred by the draw of initial states. The evaluation
noise row re-evaluates the untrained policy with 5 other evaluation seeds.

Each run is one ``learn(steps)`` call per budget (the EMA schedule follows the planned iterations, so a 20k-step run
is not the first half of a 40k-step run). One process, ``torch.set_num_threads(1)``.

Measured (benchmarks/results/pendulum_short.md, pendulum_short_long.md): no setting tried improves the return on
5/5 seeds, at 10k-40k steps or at 100k-200k; the gains stay within the evaluation noise. About 80% of an untrained
policy's return variance comes from the initial state, which whole-episode labels cannot separate from the actions.

    python benchmarks/pendulum_short.py                                    # runs/pendulum_short/pendulum_short.md
    python benchmarks/pendulum_short.py --seeds 0 --steps 20000 --configs '{"learning_rate": 1e-3}'
    python benchmarks/pendulum_short.py --out benchmarks/results           # rewrite the tracked results
"""

import argparse
import json
import math
import os
import shlex
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

CONFIGS = ["{}"]
RESULTS = os.path.join("runs", "pendulum_short")
EVAL_ENVS = 4


def evaluate(model, seed: int, n_eval: int) -> float:
    from stable_baselines3.common.env_util import make_vec_env

    from sb3_stepnft.common.evaluation import evaluate_success

    env = make_vec_env("Pendulum-v1", n_envs=EVAL_ENVS, seed=seed)
    return evaluate_success(model, env, n_eval_episodes=n_eval, seed=seed)["mean_return"]


def run_one(config: dict, seed: int, steps: int, n_envs: int, n_eval: int) -> dict:
    from stable_baselines3.common.env_util import make_vec_env

    from sb3_stepnft import StepNFT

    env = make_vec_env("Pendulum-v1", n_envs=n_envs, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # outcome="auto" announces that it labels by return
        model = StepNFT("MlpPolicy", env, seed=seed, **config)
    before = evaluate(model, 10_000 + seed, n_eval)
    losses: list[float] = []
    original = model._loss

    def spy(batch, index):
        loss, stats = original(batch, index)
        losses.append(float(stats["policy_loss"]))
        return loss, stats

    model._loss = spy
    start = time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.learn(steps)
    cpu = time.process_time() - start
    after = evaluate(model, 10_000 + seed, n_eval)
    return dict(config=json.dumps(config, sort_keys=True), seed=seed, steps=steps, before=before, after=after,
                gain=after - before, max_loss_departure=max((abs(x - math.log(2)) for x in losses), default=math.nan),
                learn_cpu_s=cpu)  # fmt: skip


def noise(seeds: list[int], n_envs: int, n_eval: int) -> list[float]:
    """Std over 5 evaluation seeds of the untrained policy's mean return, per exploration seed."""
    from stable_baselines3.common.env_util import make_vec_env

    from sb3_stepnft import StepNFT

    stds = []
    for seed in seeds:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = StepNFT("MlpPolicy", make_vec_env("Pendulum-v1", n_envs=n_envs, seed=seed), seed=seed)
        stds.append(float(np.std([evaluate(model, 20_000 + 10 * seed + i, n_eval) for i in range(5)])))
    return stds


def initial_state_share(seed: int, episodes: int = 200) -> float:
    """R² of the untrained policy's episode returns regressed on features of the initial state (θ0, θ̇0): the share of
    the return's variance that the episode's start explains, which no action of the episode changes."""
    import gymnasium as gym
    from stable_baselines3.common.env_util import make_vec_env

    from sb3_stepnft import StepNFT

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = StepNFT("MlpPolicy", make_vec_env("Pendulum-v1", n_envs=1, seed=seed), seed=seed)
    env = gym.make("Pendulum-v1")
    starts, returns = [], []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        theta, speed = np.arctan2(obs[1], obs[0]), obs[2]
        starts.append([1.0, np.cos(theta), np.cos(2 * theta), np.abs(theta), speed**2, np.abs(speed), theta * speed])
        total, done = 0.0, False
        while not done:
            action, _ = model.predict(obs, deterministic=False)
            obs, reward, terminated, truncated, _ = env.step(action)
            total, done = total + float(reward), terminated or truncated
        returns.append(total)
    x, y = np.array(starts), np.array(returns)
    residual = y - x @ np.linalg.lstsq(x, y, rcond=None)[0]
    return float(1.0 - residual.var() / y.var())


def summarise(rows: list[dict], stds: list[float], args, command: str, share: float | None = None) -> str:
    lines = [
        f"Command: `{command}`",
        "",
        f"StepNFT from scratch on Pendulum-v1, {args.n_envs} envs, seeds {args.seeds}; return: mean of "
        f"`evaluate_success` over {args.n_eval} episodes (deterministic=False), env and policy noise seeded "
        "10000 + seed, before and after one `learn(steps)`. Gain: after − before, per seed. CPU: `learn` only, "
        "one thread.",
        "",
        f"Evaluation noise (std of the untrained policy's mean return over 5 evaluation seeds): "
        f"{np.mean(stds):.0f} (per seed {', '.join(f'{s:.0f}' for s in stds)}).",
        "",
        *([] if share is None else [
            f"Share of the untrained policy's return variance explained by the initial state (R² of a regression on "
            f"features of θ0 and θ̇0, 200 episodes): {share:.2f}. A ranking of whole episodes from different starts "
            "mostly ranks the starts.", ""]),  # fmt: skip
        "| change from defaults | env steps | before | after | gain (mean ± std) | smallest gain | gains > 0 | "
        "per seed | CPU (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for config in dict.fromkeys(r["config"] for r in rows):
        for steps in sorted({r["steps"] for r in rows if r["config"] == config}):
            mine = [r for r in rows if r["config"] == config and r["steps"] == steps]
            gain = np.array([r["gain"] for r in mine])
            lines.append(
                f"| {config if config != '{}' else '(defaults)'} | {steps} | "
                f"{np.mean([r['before'] for r in mine]):.0f} | {np.mean([r['after'] for r in mine]):.0f} | "
                f"{gain.mean():+.0f} ± {gain.std():.0f} | {gain.min():+.0f} | {(gain > 0).sum()}/{len(gain)} | "
                f"{', '.join(f'{g:+.0f}' for g in gain)} | {np.mean([r['learn_cpu_s'] for r in mine]):.0f} |"
            )
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=CONFIGS, help="JSON dicts of StepNFT keyword arguments")
    parser.add_argument("--seeds", type=int, nargs="+", default=[100, 101, 102, 103, 104])
    parser.add_argument("--steps", type=int, nargs="+", default=[10_240, 20_480, 40_960])
    parser.add_argument("--n-envs", type=int, default=8)
    parser.add_argument("--n-eval", type=int, default=20)
    parser.add_argument("--out", default=None, help="output folder (default runs/pendulum_short)")
    parser.add_argument("--name", default="pendulum_short", help="file name of the outputs, without extension")
    args = parser.parse_args()
    import torch as th

    th.set_num_threads(1)
    out = os.path.join(args.out or RESULTS, args.name)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    command = shlex.join(["python", "benchmarks/pendulum_short.py", *sys.argv[1:]])
    rows = []
    for text in args.configs:
        config = json.loads(text)
        for steps in args.steps:
            for seed in args.seeds:
                rows.append(run_one(config, seed, steps, args.n_envs, args.n_eval))
                print(json.dumps(rows[-1]), flush=True)
    stds = noise(args.seeds, args.n_envs, args.n_eval)
    share = initial_state_share(args.seeds[0])
    with open(out + ".json", "w") as f:
        json.dump(dict(rows=rows, noise=stds, initial_state_share=share), f, indent=1)
    text = summarise(rows, stds, args, command, share)
    with open(out + ".md", "w") as f:
        f.write(text)
    print(text)
    print(f"wrote {out}.json, {out}.md")


if __name__ == "__main__":
    main()
