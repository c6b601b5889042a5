"""Device-resident rollouts: throughput of StepNFT's NumPy path before and after the change, and the tensor path
against the NumPy path on the same task (docs/scaling.md, "Device-resident rollouts").

Three workloads, each StepNFT (MLP [64, 64], K = 4, ``n_steps=32``, ``batch_size=256``, ``n_epochs=2``) for ``--steps``
env steps after a one-iteration warm-up, one torch thread, each run in a fresh process:

- ``numpy PointReach``: SB3's ``DummyVecEnv`` of :class:`~sb3_stepnft.envs.point_reach.PointReachEnv` (the NumPy
  path), timed with this checkout's code and with the baseline's (``--baseline``, a git ref, extracted with
  ``git archive`` into a temporary folder: no stash, no second worktree). Their ratio is the regression check.
- ``numpy TorchReach`` / ``tensor TorchReach``: :class:`~sb3_stepnft.envs.testing.TorchPointReachVecEnv` on the CPU in its
  NumPy mode (``as_tensors=False``: the NumPy path, SB3's list infos) and its tensor mode (``as_tensors=True``: the
  device-resident path); the same dynamics and random streams, so the ratio is the cost of the two rollout paths.

Throughput is env steps per second of the process's CPU time (one torch thread, so CPU time is the run's own work;
wall time on a shared 2-core machine moved by ±50 % between identical runs). Runs alternate between the workloads
(``--repeats`` rounds); the table gives the best run of each and, for the ratios, also the median of the per-round
ratios (each round runs the compared workloads back to back).

    python benchmarks/tensor_env.py                                   # runs/tensor_env/tensor_env.md
    python benchmarks/tensor_env.py --steps 4000 --repeats 1          # a quick look
    python benchmarks/tensor_env.py --out benchmarks/results          # rewrite the tracked result
    python benchmarks/tensor_env.py --calls --steps 4000 --out benchmarks/results   # function calls per env step
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
HPARAMS = dict(n_steps=32, batch_size=256, n_epochs=2, num_denoise_steps=4, learning_rate=1e-4)


def worker(code_root: str, kind: str, n_envs: int, steps: int, seed: int, calls: bool = False) -> float:
    """Env steps per CPU second of one run (in this process, with the package at ``code_root``); with ``calls``,
    Python function calls per env step instead (cProfile: deterministic, unlike timings on a shared machine)."""
    sys.path.insert(0, code_root)
    import torch as th

    th.set_num_threads(1)
    from stable_baselines3.common.env_util import make_vec_env

    import sb3_stepnft
    from sb3_stepnft import StepNFT

    assert os.path.realpath(sb3_stepnft.__file__).startswith(os.path.realpath(code_root)), sb3_stepnft.__file__
    if kind == "numpy PointReach":
        from sb3_stepnft.envs.point_reach import PointReachEnv

        env = make_vec_env(PointReachEnv, n_envs=n_envs, seed=seed)
    else:
        from sb3_stepnft.envs.testing import TorchPointReachVecEnv

        env = TorchPointReachVecEnv(num_envs=n_envs, as_tensors=kind.startswith("tensor"))
    model = StepNFT("MlpPolicy", env, policy_kwargs=dict(net_arch=[64, 64]), seed=seed, device="cpu", **HPARAMS)
    model.learn(HPARAMS["n_steps"] * n_envs)  # warm-up iteration
    if calls:
        import cProfile
        import pstats

        profile = cProfile.Profile()
        profile.runcall(model.learn, steps, reset_num_timesteps=False)
        return pstats.Stats(profile).total_calls / steps
    start = time.process_time()  # CPU time of this process: other jobs on a shared machine barely move it
    model.learn(steps, reset_num_timesteps=False)
    return steps / (time.process_time() - start)


def run_worker(code_root: str, kind: str, n_envs: int, steps: int, seed: int, calls: bool = False) -> float:
    arguments = json.dumps([code_root, kind, n_envs, steps, seed, calls])
    command = [sys.executable, os.path.abspath(__file__), "--worker", arguments]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": code_root}
    output = subprocess.run(command, check=True, capture_output=True, text=True, env=env, cwd=code_root).stdout
    return float(output.strip().splitlines()[-1])


def extract(ref: str, folder: str) -> str:
    """The package of git ref ``ref`` in ``folder`` (``git archive``), returned as a code root."""
    archive = subprocess.run(["git", "-C", ROOT, "archive", ref, "sb3_stepnft"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    return folder


def count_calls(args, here: str) -> None:
    """The deterministic side of the regression check: Python function calls per env step of the NumPy path."""
    lines = [
        "# Device-resident rollouts: Python function calls per env step of the NumPy path (StepNFT, PointReach)",
        "",
        f"Command: `python benchmarks/tensor_env.py --calls --steps {args.steps} --n-envs "
        f"{' '.join(map(str, args.n_envs))} --baseline {args.baseline}` (cProfile's call count over the timed "
        "`learn`; training included).",
        "",
        "| n_envs | baseline | this change | ratio |",
        "|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as folder:
        baseline = extract(args.baseline, folder)
        for n_envs in args.n_envs:
            before = run_worker(baseline, "numpy PointReach", n_envs, args.steps, 0, calls=True)
            after = run_worker(here, "numpy PointReach", n_envs, args.steps, 0, calls=True)
            lines.append(f"| {n_envs} | {before:.1f} | {after:.1f} | {after / before:.3f} |")
    write_report(lines, args.out, "tensor_env_calls.md")


def write_report(lines: list[str], out: str, name: str) -> None:
    """Print the table and write it to ``out/name``."""
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, name), "w") as handle:
        handle.write(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20000, help="timed env steps per run")
    parser.add_argument("--n-envs", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", default="main", help="git ref of the code before the change ('' to skip)")
    parser.add_argument("--out", default="runs/tensor_env")
    parser.add_argument(
        "--calls", action="store_true", help="Python function calls per env step of the NumPy path, before and after"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(worker(*json.loads(args.worker)))
        return
    here = os.path.realpath(ROOT)
    if args.calls:
        count_calls(args, here)
        return
    with tempfile.TemporaryDirectory() as folder:
        baseline = extract(args.baseline, folder) if args.baseline else None
        jobs = [("numpy PointReach", here), ("numpy TorchReach", here), ("tensor TorchReach", here)]
        if baseline:
            jobs.insert(0, ("numpy PointReach (baseline)", baseline))
        rates: dict[tuple[str, int], list[float]] = {}
        for round_ in range(args.repeats):
            for n_envs in args.n_envs:
                for name, code_root in jobs:
                    rate = run_worker(code_root, name.replace(" (baseline)", ""), n_envs, args.steps, seed=round_)
                    rates.setdefault((name, n_envs), []).append(rate)
                    print(f"round {round_}: {name:28s} n_envs={n_envs:4d}: {rate:8.0f} env steps/CPU s", flush=True)
    best = {key: max(values) for key, values in rates.items()}

    def paired(name: str, reference: str, n_envs: int) -> str:
        ratios = [a / b for a, b in zip(rates[(name, n_envs)], rates[(reference, n_envs)])]
        return f"{best[(name, n_envs)] / best[(reference, n_envs)]:.2f} (median per round {statistics.median(ratios):.2f})"

    lines = [
        "# Device-resident rollouts: throughput (StepNFT, CPU)",
        "",
        f"Command: `python benchmarks/tensor_env.py --steps {args.steps} --n-envs {' '.join(map(str, args.n_envs))} "
        f"--repeats {args.repeats} --baseline {args.baseline or repr('')}`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (shared), Python "
        f"{platform.python_version()}, one torch thread, best of {args.repeats} alternating runs of {args.steps} env steps "
        f"each (StepNFT, MLP [64, 64], {HPARAMS}). Throughput in env steps per CPU second of the process.",
        "",
        "| n_envs | workload | env steps/CPU s (best) | ratio of the best (median of per-round ratios) |",
        "|---|---|---|---|",
    ]
    for n_envs in args.n_envs:
        numpy_now = best[("numpy PointReach", n_envs)]
        if baseline:
            before = best[("numpy PointReach (baseline)", n_envs)]
            lines.append(f"| {n_envs} | numpy PointReach, baseline `{args.baseline}` | {before:.0f} | 1.00 |")
            ratio = paired("numpy PointReach", "numpy PointReach (baseline)", n_envs)
            lines.append(f"| {n_envs} | numpy PointReach, this change | {numpy_now:.0f} | {ratio} after/before |")
        numpy_torch, tensor_torch = best[("numpy TorchReach", n_envs)], best[("tensor TorchReach", n_envs)]
        lines.append(f"| {n_envs} | numpy TorchReach (as_tensors=False) | {numpy_torch:.0f} | 1.00 |")
        ratio = paired("tensor TorchReach", "numpy TorchReach", n_envs) + " tensor/numpy"
        lines.append(f"| {n_envs} | tensor TorchReach (as_tensors=True) | {tensor_torch:.0f} | {ratio} |")
    write_report(lines, args.out, "tensor_env.md")


if __name__ == "__main__":
    main()
