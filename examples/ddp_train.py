"""Data-parallel π-StepNFT on PointReach with torch.distributed, top to bottom (docs/scaling.md).

torchrun --nproc_per_node=2 examples/ddp_train.py --steps 20000          # 2 processes on the CPU (gloo)
torchrun --nproc_per_node=8 examples/ddp_train.py --device cuda          # 8 GPUs (NCCL; untested, see docs/scaling.md)
python examples/ddp_train.py                                            # one process: the same script, no process group

What the process group changes (sb3_stepnft.common.distributed): each rank steps its own envs, seeded with
seed + rank·RANK_SEED_OFFSET; learn() starts from rank 0's weights; every minibatch's gradients are averaged across
ranks, so the replicas stay identical; num_timesteps and the schedules count the env steps of all ranks; rank 0 logs
and saves. batch_size and n_envs are per rank: the effective minibatch is batch_size × world size.
"""

import argparse

import torch.distributed as dist
from stable_baselines3.common.env_util import make_vec_env

from sb3_stepnft import StepNFT
from sb3_stepnft.common import distributed
from sb3_stepnft.common.evaluation import evaluate_success
from sb3_stepnft.envs import PointReachEnv

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=20_000, help="env steps of all ranks together")
parser.add_argument("--envs-per-rank", type=int, default=4)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--device", default="auto")
parser.add_argument("--save", default="stepnft_ddp_point_reach")
args = parser.parse_args()

# 1. The process group, from torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR...): gloo on CPU, NCCL on CUDA.
device = distributed.init_from_env(args.device)
rank, world_size = distributed.get_rank(), distributed.get_world_size()

# 2. This rank's envs, seeded by rank so that the ranks collect different episodes.
env = make_vec_env(PointReachEnv, n_envs=args.envs_per_rank, seed=distributed.rank_seed(args.seed))

# 3. The model: the same seed on every rank (StepNFT offsets its own seeding by rank; learn broadcasts rank 0's weights).
model = StepNFT("MlpPolicy", env, n_steps=32, batch_size=64, seed=args.seed, device=device, verbose=int(rank == 0))
model.learn(total_timesteps=args.steps)

# 4. The replicas are identical: rank 0 saves and evaluates, the others wait at the barrier.
assert distributed.replicas_identical(list(model.policy.parameters())), "replicas diverged"
model.save(args.save)  # writes on rank 0 only
if rank == 0:
    result = evaluate_success(model, make_vec_env(PointReachEnv, n_envs=1), n_eval_episodes=50, seed=1_000)
    print(f"{world_size} rank(s), {model.num_timesteps} env steps: success {result['success_rate']:.2f}")
if distributed.is_distributed():
    dist.barrier()
    dist.destroy_process_group()
