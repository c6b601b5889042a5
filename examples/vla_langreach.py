"""A language-conditioned VLA policy, top to bottom: tokenised instructions → tiny π0-style VLA → pretraining on
demonstrations → StepNFT → evaluation → save/load.

python examples/vla_langreach.py --steps 20000 --seed 0

For a real backbone, replace ``tiny_paligemma_config(...)`` by a local model directory (e.g. SmolVLM2) or use
``sb3_stepnft.vla.pi0_policy_kwargs(path)`` + ``model.policy.load_pi0(path)`` for a π0 checkpoint (docs/vla.md),
and the ByT5 tokenizer by the VLM's own (``AutoTokenizer.from_pretrained(path)``).
"""

import argparse

from stable_baselines3.common.env_util import make_vec_env
from transformers import ByT5Tokenizer

from sb3_stepnft import StepNFT
from sb3_stepnft.common.evaluation import evaluate_success
from sb3_stepnft.envs.lang_reach import collect_demonstrations, make_lang_reach_env
from sb3_stepnft.policies import FlowVLAPolicy
from sb3_stepnft.sft import pretrain
from sb3_stepnft.vla.testing import tiny_paligemma_config

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=20_000)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--save", default="stepnft_vla_langreach")
args = parser.parse_args()

# 1. Envs whose instruction ("go to the blue target") is tokenised into instruction_ids / instruction_mask.
tokenizer = ByT5Tokenizer()  # needs no files
env_kwargs = dict(tokenizer=tokenizer, max_length=24, chunk_size=4)
env = make_vec_env(make_lang_reach_env, n_envs=8, seed=args.seed, env_kwargs=env_kwargs)
eval_env = make_vec_env(make_lang_reach_env, n_envs=8, seed=10_000 + args.seed, env_kwargs=env_kwargs)

# 2. A tiny PaliGemma-style VLM (frozen, random weights here) and a trainable shared-attention action expert.
policy_kwargs = dict(vlm=tiny_paligemma_config(image_size=16, patch_size=8), expert="shared", expert_width=32)
model = StepNFT(FlowVLAPolicy, env, n_steps=16, batch_size=64, policy_kwargs=policy_kwargs, seed=args.seed)
print(f"trainable parameters: {sum(p.numel() for p in model.policy.trainable_parameters()):,}, "
      f"backbone (frozen): {sum(p.numel() for p in model.policy.vlm.parameters()):,}, "
      f"prefix cached in the buffer: {model.policy.cache_features}")  # fmt: skip

# 3. Pretraining on scripted demonstrations (some wander and fail).
demos, demo_success = collect_demonstrations(40, seed=args.seed, imperfect_fraction=0.3, tokenizer=tokenizer, max_length=24)
pretrain(model, demos, epochs=200, learning_rate=1e-3, seed=args.seed)
print(f"demonstrator {demo_success:.2f}, pretrained {evaluate_success(model, eval_env, 200, seed=0)['success_rate']:.2f}")

# 4. Online RL with StepNFT, then evaluation (stochastic student, ODE sampler: the paper's protocol).
model.learn(args.steps)
print(f"after StepNFT: {evaluate_success(model, eval_env, 200, seed=0)['success_rate']:.2f}")
print(f"backbone passes: {model.policy.backbone_observations} for {model.num_timesteps} decisions")

# 5. Save and load: the backbone is stored as its config plus weights, so loading needs no Hub access.
model.save(args.save)
loaded = StepNFT.load(args.save, env=eval_env)
print(f"reloaded: {evaluate_success(loaded, eval_env, 200, seed=0)['success_rate']:.2f}")
