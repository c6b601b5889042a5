"""π-StepNFT on PointReach, top to bottom: demonstrations → flow-matching pretraining → online RL → evaluation.

python examples/stepnft_point_reach.py --steps 100000 --seed 0
"""

import argparse

from stable_baselines3.common.env_util import make_vec_env

from sb3_stepnft import StepNFT
from sb3_stepnft.common.evaluation import evaluate_success
from sb3_stepnft.envs import PointReachEnv, collect_demonstrations
from sb3_stepnft.sft import pretrain

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=100_000)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--save", default="stepnft_point_reach")
args = parser.parse_args()

# 1. Environment: 8 parallel PointReach envs; success is reported in info["is_success"].
env = make_vec_env(PointReachEnv, n_envs=8, seed=args.seed)
eval_env = make_vec_env(PointReachEnv, n_envs=1)

# 2. Imperfect demonstrations: half of the demonstrated episodes wander sideways and mostly fail.
demos, demo_success = collect_demonstrations(n_episodes=40, seed=args.seed)
print(f"{demos.n_episodes} demonstrations, {len(demos)} steps, demonstrator success {demo_success:.2f}")

# 3. A flow policy pretrained with the flow-matching loss (sets the EMA rollout policy to the student).
model = StepNFT("MlpPolicy", env, seed=args.seed, verbose=0)
pretrain(model, demos, seed=args.seed, progress_bar=True)
before = evaluate_success(model, eval_env, n_eval_episodes=100, seed=1_000)
print(f"pretrained: success {before['success_rate']:.2f}")

# 4. Online RL with π-StepNFT (default hyper-parameters).
model.learn(total_timesteps=args.steps, progress_bar=True)
after = evaluate_success(model, eval_env, n_eval_episodes=100, seed=1_000)
print(f"after {args.steps} env steps of StepNFT: success {after['success_rate']:.2f}")

# 5. Save, load, act.
model.save(args.save)
model = StepNFT.load(args.save, env=eval_env)
obs = eval_env.reset()
action, _ = model.predict(obs, deterministic=True)  # Euler ODE from x_0 = 0
print("action for the first observation:", action)
