"""StepNFT on a tiny π0-style VLA: LangReach, where only the instruction tells which target to reach.

A tiny PaliGemma-style VLM (random weights, frozen) and a shared-attention action expert are pretrained on
imperfect scripted demonstrations (about half succeed), then fine-tuned online with StepNFT. Success rates are
measured with ``evaluate_success`` (stochastic student, ODE sampler, the paper's protocol) before and after.

    python benchmarks/vla_langreach.py --seeds 0 1 2 --out benchmarks/results/vla_langreach.md
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import torch as th
from stable_baselines3.common.env_util import make_vec_env
from transformers import ByT5Tokenizer

from sb3_stepnft import StepNFT
from sb3_stepnft.common.ema import EMA_HORIZON_RATIO
from sb3_stepnft.common.evaluation import evaluate_success
from sb3_stepnft.envs.lang_reach import LangReachEnv, collect_demonstrations, make_lang_reach_env
from sb3_stepnft.sft import pretrain
from sb3_stepnft.vla import FlowVLAPolicy
from sb3_stepnft.vla.prompt import Pi05Prompt
from sb3_stepnft.vla.testing import tiny_paligemma_config
from sb3_stepnft.wrappers import ActionChunk

MAX_LENGTH = 24
PI05_PROMPT_LENGTH = 64  # ByT5 bytes of "Task: go to the yellow target, State: b b b b;\nAction: " (<= 62)
IMAGE_SIZE = 16


def vla_policy_kwargs(
    expert: str = "shared", variant: str = "pi0", expert_width: int = 32, image_size: int = IMAGE_SIZE
) -> dict:
    return dict(
        vlm=tiny_paligemma_config(image_size=image_size, patch_size=8, vocab_size=400),
        expert=expert,
        expert_width=expert_width,
        variant=variant,
    )


def make_pi05_prompt_env(tokenizer, max_length: int, chunk_size: int = 1, seed=None, image_size: int = IMAGE_SIZE):
    """LangReach with π0.5's prompt (``Pi05Prompt``: the state, already in [-1, 1], discretised into the prompt)."""
    env = Pi05Prompt(LangReachEnv(seed=seed, image_size=image_size), tokenizer, max_length=max_length)
    return ActionChunk(env, chunk_size) if chunk_size > 1 else env


def make_env(n_envs: int, seed: int, tokenizer, chunk_size: int, state_prompt: bool = False, image_size: int = IMAGE_SIZE):
    max_length = PI05_PROMPT_LENGTH if state_prompt else MAX_LENGTH
    env_kwargs = dict(tokenizer=tokenizer, max_length=max_length, chunk_size=chunk_size, image_size=image_size)
    factory = make_pi05_prompt_env if state_prompt else make_lang_reach_env
    return make_vec_env(factory, n_envs=n_envs, seed=seed, env_kwargs=env_kwargs)


def run(seed: int, args) -> dict:
    tokenizer = ByT5Tokenizer()
    th.manual_seed(seed)
    env = make_env(args.n_envs, seed, tokenizer, args.chunk_size, args.state_prompt, args.image_size)
    model = StepNFT(
        FlowVLAPolicy,
        env,
        learning_rate=args.lr,
        n_steps=args.n_steps,
        batch_size=args.batch_size,
        n_epochs=args.n_epochs,
        policy_kwargs=vla_policy_kwargs(args.expert, args.variant, args.expert_width, args.image_size),
        seed=seed,
        ema_horizon_ratio=args.ema_horizon_ratio,
        **({} if args.noise_level is None else dict(noise_level=args.noise_level)),
    )
    # the same episodes and demonstrator; with --state-prompt recorded in π0.5's prompt env
    demo_env = make_pi05_prompt_env(tokenizer, PI05_PROMPT_LENGTH, image_size=args.image_size) if args.state_prompt else None
    demos, demo_success = collect_demonstrations(
        args.demos, seed=seed, imperfect_fraction=args.imperfect_fraction, tokenizer=tokenizer, max_length=MAX_LENGTH,
        env=demo_env, env_kwargs=dict(image_size=args.image_size),
    )  # fmt: skip
    start = time.perf_counter()
    pretrain(model, demos, epochs=args.pretrain_epochs, learning_rate=args.pretrain_lr, seed=seed)
    pretrain_time = time.perf_counter() - start
    eval_seed = seed + args.eval_seed_offset
    eval_env = make_env(8, 10_000 + eval_seed, tokenizer, args.chunk_size, args.state_prompt, args.image_size)
    before = evaluate_success(model, eval_env, n_eval_episodes=args.eval_episodes, seed=eval_seed)["success_rate"]
    passes = model.policy.backbone_observations
    start = time.perf_counter()
    model.learn(args.steps)
    passes = model.policy.backbone_observations - passes  # during learn only (evaluation encodes too)
    learn_time = time.perf_counter() - start
    after = evaluate_success(model, eval_env, n_eval_episodes=args.eval_episodes, seed=eval_seed)["success_rate"]
    result = dict(
        seed=seed,
        demonstrator=demo_success,
        pretrained=before,
        stepnft=after,
        pretrain_s=pretrain_time,
        learn_s=learn_time,
        backbone_observations=passes,
        rollout_observations=model.num_timesteps,
        cached=model.policy.cache_features,
    )
    print(json.dumps(result), flush=True)
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=30_000)
    parser.add_argument("--n-envs", type=int, default=8)
    parser.add_argument("--chunk-size", type=int, default=4, help="env steps per decision (ActionChunk)")
    parser.add_argument("--n-steps", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--n-epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--noise-level", type=float, default=None, help="StepNFT's noise level (default: its default)")
    parser.add_argument("--demos", type=int, default=40)
    parser.add_argument("--imperfect-fraction", type=float, default=0.3)
    parser.add_argument("--pretrain-epochs", type=int, default=200)
    parser.add_argument("--pretrain-lr", type=float, default=1e-3)
    parser.add_argument("--eval-episodes", type=int, default=200)
    parser.add_argument(
        "--ema-horizon-ratio", type=float, default=EMA_HORIZON_RATIO, help="EMA horizon / planned iterations (§3.5)"
    )
    parser.add_argument("--expert", default="shared", choices=("shared", "cross"))
    parser.add_argument("--variant", default="pi0", choices=("pi0", "pi05"), help="π0 or π0.5 (AdaRMS) expert")
    parser.add_argument("--expert-width", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=IMAGE_SIZE, help="camera pixels (patches of 8)")
    parser.add_argument(
        "--state-prompt", action="store_true", help="π0.5's prompt: the discretised state written into the instruction"
    )
    parser.add_argument(
        "--eval-seed-offset", type=int, default=0, help="evaluate on other episodes than the learning test (seed + offset)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    th.set_num_threads(args.threads)
    results = [run(seed, args) for seed in args.seeds]
    pre = np.array([r["pretrained"] for r in results])
    post = np.array([r["stepnft"] for r in results])
    demo = np.array([r["demonstrator"] for r in results])
    lines = [
        "# StepNFT on a tiny VLA (LangReach)",
        "",
        "Command: `python benchmarks/vla_langreach.py " + " ".join(argv if argv is not None else sys.argv[1:]) + "`",
        "",
        f"Expert {args.expert!r}, chunk {args.chunk_size} env steps per decision, StepNFT lr {args.lr}, "
        f"n_steps {args.n_steps}, EMA horizon ratio {args.ema_horizon_ratio:.3g}, "
        f"{args.n_envs} envs; {args.demos} demonstrations ({args.imperfect_fraction:.0%} wandering), pretraining "
        f"{args.pretrain_epochs} epochs at lr {args.pretrain_lr}; success over {args.eval_episodes} evaluation episodes "
        '(stochastic student, ODE sampler). "StepNFT steps" counts decisions (chunks) over all envs.',
        "",
        "| seeds | demonstrator | pretrained | StepNFT | StepNFT steps | learn time (s) |",
        "|---|---|---|---|---|---|",
        f"| {len(results)} | {demo.mean():.2f} | {pre.mean():.2f} ± {pre.std():.2f} | {post.mean():.2f} ± {post.std():.2f} "
        f"| {args.steps} | {np.mean([r['learn_s'] for r in results]):.0f} |",
        "",
        "Per seed: " + "; ".join(f"seed {r['seed']}: {r['pretrained']:.2f} → {r['stepnft']:.2f}" for r in results),
        "",
        "Backbone passes per decision (prefix cached in the buffer): "
        + ", ".join(f"{r['backbone_observations'] / max(r['rollout_observations'], 1):.2f}" for r in results),
    ]
    print("\n".join(lines))
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
