"""Data-parallel throughput on the CPU: StepNFT on PointReach with 1 or N ranks (docs/scaling.md).

Run once per number of ranks (gloo on the CPU, one torch thread per rank); each run appends one row:

    torchrun --nproc_per_node=1 benchmarks/ddp_scaling.py --out benchmarks/results/ddp_scaling.md
    torchrun --nproc_per_node=2 benchmarks/ddp_scaling.py --out benchmarks/results/ddp_scaling.md

Reported: env steps per second of all ranks (after a warm-up learn call, so imports and first-call costs are left
out), the share of the update spent in the gradient all-reduce, the time of one all-reduce of the trainable
parameters, and the peak resident memory of rank 0.
"""

import argparse
import os
import resource
import time

import torch as th
import torch.distributed as dist
from stable_baselines3.common.env_util import make_vec_env

from sb3_stepnft import StepNFT
from sb3_stepnft.common import distributed
from sb3_stepnft.envs import PointReachEnv

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=8192, help="timed env steps of all ranks together")
parser.add_argument("--envs-per-rank", type=int, default=4)
parser.add_argument("--net-arch", type=int, nargs="+", default=[256, 256])
parser.add_argument("--out", default=None, help="append the result row to this markdown file")
args = parser.parse_args()

th.set_num_threads(1)
distributed.init_from_env("cpu")
rank, world = distributed.get_rank(), distributed.get_world_size()
env = make_vec_env(PointReachEnv, n_envs=args.envs_per_rank, seed=distributed.rank_seed(0))
model = StepNFT("MlpPolicy", env, n_steps=32, batch_size=64, seed=0, policy_kwargs=dict(net_arch=args.net_arch))

reduce_time = [0.0]
original = distributed.average_gradients


def timed_average(*a, **k):
    start = time.perf_counter()
    result = original(*a, **k)
    reduce_time[0] += time.perf_counter() - start
    return result


import sb3_stepnft.common.on_policy as on_policy  # noqa: E402 (the update loop's reference, for timing only)

on_policy.average_gradients = timed_average
update_time = [0.0]
train = model.train


def timed_train():
    start = time.perf_counter()
    train()
    update_time[0] += time.perf_counter() - start


model.train = timed_train
model.learn(total_timesteps=args.envs_per_rank * world * 32 * 2)  # warm-up: first-call costs
reduce_time[0] = update_time[0] = 0.0
start = time.perf_counter()
model.learn(total_timesteps=args.steps, reset_num_timesteps=False)
elapsed = time.perf_counter() - start
steps = args.steps

parameters = list(model.policy.trainable_parameters())
n_parameters = sum(p.numel() for p in parameters)
for p in parameters:
    p.grad = th.zeros_like(p)
start = time.perf_counter()
for _ in range(20):
    original(parameters, weight=1.0)
one_reduce = (time.perf_counter() - start) / 20
memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
if rank == 0:
    row = (
        f"| {world} | {args.envs_per_rank} | {n_parameters} | {steps / elapsed:.0f} | "
        f"{100 * reduce_time[0] / max(update_time[0], 1e-9):.1f} % | {1e3 * one_reduce:.2f} ms | {memory:.0f} MiB |"
    )
    print(row)
    if args.out:
        new = not os.path.exists(args.out)
        with open(args.out, "a") as handle:
            if new:
                handle.write(
                    "| ranks | envs/rank | trainable parameters | env steps/s (all ranks) | all-reduce share of update | "
                    "one all-reduce | peak RSS rank 0 |\n|---|---|---|---|---|---|---|\n"
                )
            handle.write(row + "\n")
if distributed.is_distributed():
    dist.destroy_process_group()
