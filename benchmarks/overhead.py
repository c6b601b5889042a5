"""What the package's training loop costs next to a single-file PyTorch StepNFT with the same hyper-parameters.

The reference below (``reference_stepnft``) is StepNFT written CleanRL-style, top to bottom in one function: the same
velocity network (SB3 ``FlattenExtractor`` → MLP [256, 256] SiLU on [obs, x_t, sinusoidal time embedding]), the
Flow-SDE rollout with the EMA weights (ALGORITHM.md §2, §3.1), one stored transition per decision, labels from the
episode's success when it ends (pending until then), ``n_epochs`` shuffled minibatches of the ranking loss (§3.3-3.4)
with AdamW and grad clip, and the cosine EMA schedule with the package's default horizon (§3.5). It has none of the
package's guard rails, callbacks, logging or typed records. Both use the same ``DummyVecEnv`` of PointReach (8 envs,
``Monitor``), so the env costs the same; the ratio measures the algorithm's loop.

Timings are ratios measured in one run, alternating package and reference runs (``--repeats``), one torch thread.

    python benchmarks/overhead.py                          # runs/overhead/overhead.md
    python benchmarks/overhead.py --steps 20000 --repeats 1   # a quick look
    python benchmarks/overhead.py --out benchmarks/results     # rewrite the tracked result
"""

import argparse
import math
import os
import platform
import sys
import time

import numpy as np
import torch as th
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

N_ENVS = 8
HPARAMS = dict(learning_rate=1e-4, n_steps=128, batch_size=256, n_epochs=4, num_denoise_steps=4, noise_level=0.2)


def make_env(seed: int):
    from stable_baselines3.common.env_util import make_vec_env

    from sb3_stepnft.envs.point_reach import PointReachEnv

    return make_vec_env(PointReachEnv, n_envs=N_ENVS, seed=seed)


# ------------------------------------------------------------------------------------------------ the reference
class Velocity(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, time_dim: int = 32):
        super().__init__()
        freqs = th.exp(-math.log(100.0) * th.arange(time_dim // 2, dtype=th.float32) / (time_dim // 2))
        self.register_buffer("freqs", freqs * 2 * math.pi)
        self.net = nn.Sequential(
            nn.Linear(obs_dim + act_dim + time_dim, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, act_dim),
        )

    def forward(self, obs, x, t):
        angles = t[:, None] * self.freqs[None]
        return self.net(th.cat([obs, x, th.sin(angles), th.cos(angles)], dim=-1))


def reference_stepnft(total_timesteps: int, seed: int) -> dict:
    """StepNFT in one function (ALGORITHM.md §2-3); returns the update epochs made and the last 100 episodes' success."""
    th.manual_seed(seed)
    np.random.seed(seed)
    env = make_env(seed)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    K, a, n_steps, lr = HPARAMS["num_denoise_steps"], HPARAMS["noise_level"], HPARAMS["n_steps"], HPARAMS["learning_rate"]
    student = Velocity(obs_dim, act_dim)
    old = Velocity(obs_dim, act_dim)
    old.load_state_dict(student.state_dict())
    optimizer = th.optim.AdamW(student.parameters(), lr=lr, betas=(0.9, 0.95), eps=1e-5, weight_decay=0.01)
    # Flow-SDE coefficients (§2): t_k = 1 - k/K, σ_k = a·sqrt(t_k / (1 - t̃_k)), μ = A x + B v, s = sqrt(Δ)·σ
    t = [1 - k / K for k in range(K + 1)]
    delta = 1.0 / K
    sigma = [a * math.sqrt(t[k] / (1 - (t[1] if k == 0 else t[k]))) for k in range(K)]
    A = th.tensor([1 - sigma[k] ** 2 * delta / (2 * t[k]) for k in range(K)])
    B = th.tensor([-delta * (1 + sigma[k] ** 2 * (1 - t[k]) / (2 * t[k])) for k in range(K)])
    S = th.tensor([math.sqrt(delta) * sigma[k] for k in range(K)])
    T = th.tensor(t[:K])
    iterations = math.ceil(total_timesteps / (n_steps * N_ENVS))
    horizon = math.ceil(400 / 240 * iterations)  # the package's default EMA horizon (§3.5)
    obs = env.reset()
    episode_id = np.arange(N_ENVS)
    next_id = N_ENVS
    labels: dict[int, float] = {}  # episode id -> success, once the episode ended
    carried = None  # decisions of episodes still running at the end of the last iteration
    success_now = np.zeros(N_ENVS, dtype=bool)
    updates, successes = 0, []
    for iteration in range(iterations):
        steps = []  # per env step: (obs, x_k, x_next, v_old, k, episode id)
        for _ in range(n_steps):
            with th.no_grad():
                o = th.as_tensor(obs, dtype=th.float32)
                x = th.randn(N_ENVS, act_dim)
                k_draw = th.randint(0, K, (N_ENVS,))
                x_k = th.zeros_like(x)
                x_next = th.zeros_like(x)
                v_old = th.zeros_like(x)
                for k in range(K):  # every step an SDE step (§3.1), the EMA weights
                    v = old(o, x, th.full((N_ENVS,), t[k]))
                    x_new = A[k] * x + B[k] * v + S[k] * th.randn_like(x)
                    chosen = k_draw == k
                    x_k[chosen], x_next[chosen], v_old[chosen] = x[chosen], x_new[chosen], v[chosen]
                    x = x_new
            obs_next, _, dones, infos = env.step(np.clip(x.numpy(), -1.0, 1.0))
            steps.append((o, x_k, x_next, v_old, k_draw, th.as_tensor(episode_id.copy())))
            for i in range(N_ENVS):
                success_now[i] |= bool(infos[i].get("is_success", False))
                if dones[i]:
                    labels[int(episode_id[i])] = float(success_now[i])
                    successes.append(float(success_now[i]))
                    episode_id[i], next_id, success_now[i] = next_id, next_id + 1, False
            obs = obs_next
        decisions = [th.cat([step[j] for step in steps]) for j in range(6)]
        if carried is not None:
            decisions = [th.cat([c, d]) for c, d in zip(carried, decisions)]
        ended = th.tensor([labels.get(int(e), -1.0) for e in decisions[5].tolist()])
        carried = [d[ended < 0] for d in decisions]
        o, xk, xn, vo, kk = (d[ended >= 0] for d in decisions[:5])
        r = ended[ended >= 0]
        if len(r):
            n = len(r)
            for _ in range(HPARAMS["n_epochs"]):
                updates += 1
                perm = th.randperm(n)
                for start in range(0, n, HPARAMS["batch_size"]):
                    idx = perm[start : start + HPARAMS["batch_size"]]
                    k = kk[idx]
                    v_theta = student(o[idx], xk[idx], T[k])
                    dv = v_theta - vo[idx]  # Eq. 4-5, drift clip 0.5, β = 1
                    dv_c = dv * th.clamp(0.5 / (dv.norm(dim=-1, keepdim=True) + 1e-8), max=1.0)
                    var = S[k][:, None] ** 2 + 1e-4
                    mean = A[k][:, None] * xk[idx] + B[k][:, None] * vo[idx]
                    e_plus = ((xn[idx] - mean - B[k][:, None] * dv_c) ** 2 / var).sum(-1)  # Eq. 3, 6
                    e_minus = ((xn[idx] - mean + B[k][:, None] * dv_c) ** 2 / var).sum(-1)
                    y = 2 * r[idx] - 1
                    loss = nn.functional.softplus(0.5 * y * (e_plus - e_minus)).mean() + 1e-4 * (dv**2).mean()  # Eq. 7
                    optimizer.zero_grad()
                    loss.backward()
                    nn.utils.clip_grad_norm_(student.parameters(), 1.0)
                    optimizer.step()
        d = 0.995 - (0.995 - 0.1) * 0.5 * (1 + math.cos(math.pi * min(iteration / horizon, 1.0)))  # §3.5
        with th.no_grad():
            for p_old, p in zip(old.parameters(), student.parameters()):
                p_old.mul_(d).add_(p, alpha=1 - d)
    env.close()
    return dict(epochs=updates, success=float(np.mean(successes[-100:])) if successes else float("nan"))


# -------------------------------------------------------------------------------------------------- the package
def package_stepnft(total_timesteps: int, seed: int) -> dict:
    from sb3_stepnft import StepNFT

    env = make_env(seed)
    model = StepNFT("MlpPolicy", env, seed=seed, **HPARAMS)
    model.learn(total_timesteps)
    success = float(np.mean(model.ep_success_buffer)) if model.ep_success_buffer else float("nan")
    env.close()
    return dict(epochs=model._n_updates, success=success)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=2, help="alternating package/reference runs of each")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join("runs", "overhead"))
    parser.add_argument("--torch-threads", type=int, default=1)
    args = parser.parse_args()
    th.set_num_threads(args.torch_threads)
    # One-time costs out of the timings: imports (sb3_stepnft, SB3, torch's optimiser machinery) and a tiny run of each.
    package_stepnft(N_ENVS * HPARAMS["n_steps"], args.seed)
    reference_stepnft(N_ENVS * HPARAMS["n_steps"], args.seed)
    times: dict[str, list[float]] = {"package": [], "reference": []}
    info: dict[str, dict] = {}
    for repeat in range(args.repeats):
        for name, run in (("package", package_stepnft), ("reference", reference_stepnft)):
            start = time.perf_counter()
            info[name] = run(args.steps, args.seed)
            times[name].append(time.perf_counter() - start)
            print(f"{name} run {repeat}: {times[name][-1]:.1f} s {info[name]}", flush=True)
    best = {name: min(values) for name, values in times.items()}
    ratio = best["package"] / best["reference"]
    command = "python benchmarks/overhead.py " + " ".join(sys.argv[1:])
    lines = [
        f"Command: `{command.strip()}`",
        "",
        f"StepNFT on PointReach, MlpPolicy, {N_ENVS} envs, {args.steps} env steps, seed {args.seed}, hyper-parameters "
        f"{HPARAMS}, {args.torch_threads} torch thread(s), {platform.processor() or platform.machine()}. Best of "
        f"{args.repeats} alternating runs each.",
        "",
        "| implementation | wall time (s), each run | best (s) |",
        "|---|---|---|",
        *(f"| {name} | {', '.join(f'{v:.1f}' for v in values)} | {best[name]:.1f} |" for name, values in times.items()),
        "",
        f"**Package / single-file reference: {ratio:.2f}x** (target < 1.3x).",
    ]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "overhead.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
