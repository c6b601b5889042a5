"""Where a VLA policy's time goes: rollout per decision and update per sample, with and without prefix caching.

Two PaliGemma-style backbones with the same attention geometry (layers, heads, KV heads, head_dim), so the
shared-attention expert is the same size for both; the larger one has about 10x the parameters. Reported
(median single-thread CPU time over repeats, batch ``--batch``):

* rollout time per decision (encode once + a K-step SDE chain) against 1 backbone pass + K expert passes;
* StepNFT update time per sample, with the prefix cached in the buffer ("buffer") or recomputed under
  ``no_grad`` once per minibatch ("recompute"). With caching the update cost must not grow with the backbone.

    python benchmarks/vla_cost.py --out benchmarks/results/vla_cost.md
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch as th
from gymnasium import spaces
from transformers import GemmaConfig, PaliGemmaConfig, SiglipVisionConfig

from sb3_stepnft import StepNFT
from sb3_stepnft.common.optim import optimizer_step
from sb3_stepnft.common.records import StepNFTDecisions
from sb3_stepnft.vla import FlowVLAPolicy

T = 16


def backbone_config(scale: str) -> PaliGemmaConfig:
    """``small``: ~130k parameters; ``large``: wider vision and text (same layers/heads/head_dim), ~10x."""
    vision, text, mlp = (32, 64, 128) if scale == "small" else (128, 224, 896)
    return PaliGemmaConfig(
        vision_config=SiglipVisionConfig(
            hidden_size=vision,
            intermediate_size=2 * vision,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ).to_dict(),
        text_config=GemmaConfig(
            hidden_size=text,
            intermediate_size=mlp,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            vocab_size=400,
            pad_token_id=0,
        ).to_dict(),
        image_token_index=399,
        projection_dim=text,
        hidden_size=text,
    )


def spaces_():
    obs = spaces.Dict(
        image=spaces.Box(0, 255, (3, 32, 32), np.uint8),
        state=spaces.Box(-1, 1, (8,), np.float32),
        instruction_ids=spaces.Box(0, 383, (T,), np.int64),
        instruction_mask=spaces.MultiBinary(T),
    )
    return obs, spaces.Box(-1, 1, (4, 7), np.float32)


def batch_obs(obs_space, batch: int, rng: np.random.Generator):
    obs = {key: th.as_tensor(np.stack([space.sample() for _ in range(batch)])) for key, space in obs_space.spaces.items()}
    obs["instruction_mask"][:, : T // 2] = 1
    return obs


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.thread_time()  # CPU time of this thread: robust to other processes on the machine
        fn()
        times.append(time.thread_time() - start)
    return 1000 * statistics.median(times)


def measure(scale: str, args) -> dict:
    obs_space, action_space = spaces_()
    rng = np.random.default_rng(0)
    results = {"scale": scale}
    policy = FlowVLAPolicy(
        obs_space,
        action_space,
        lambda _: 1e-4,
        vlm=backbone_config(scale),
        expert_width=32,
        chunk_size=8,
        action_dim=8,
        num_denoise_steps=args.k,
    )
    results["backbone_params"] = sum(p.numel() for p in policy.vlm.parameters())
    results["expert_params"] = sum(p.numel() for p in policy.trainable_parameters())
    obs = batch_obs(obs_space, args.batch, rng)
    with th.no_grad():
        feats = policy.encode(obs)
        x_t, t = th.randn(args.batch, policy.chunk_size, policy.action_dim), th.full((args.batch,), 0.5)
        results["backbone_ms"] = median_ms(lambda: policy.encode(obs), args.repeats)
        results["expert_ms"] = median_ms(lambda: policy.velocity(x_t, t, feats), args.repeats)
        results["decision_ms"] = median_ms(lambda: policy.sample(policy.encode(obs), "sde"), args.repeats)
    results["predicted_ms"] = results["backbone_ms"] + args.k * results["expert_ms"]

    # StepNFT update per sample: one optimiser step of its loss on a minibatch, prefix cached vs recomputed
    for mode in ("buffer", "recompute"):
        model = StepNFT(
            FlowVLAPolicy,
            None,
            policy_kwargs=dict(vlm=backbone_config(scale), expert_width=32, chunk_size=8, action_dim=8, prefix_cache=mode),
            num_denoise_steps=args.k,
            _init_setup_model=False,
        )
        model.observation_space, model.action_space, model.n_envs = obs_space, action_space, 1
        model._setup_model()
        model.policy.set_training_mode(True)
        obs = batch_obs(obs_space, args.batch, rng)
        with th.no_grad():
            flat = model.policy.features_to_flat(model.policy.encode(obs))
        rows = model.policy.executed_rows
        batch = dict(
            obs=obs,
            x_k=th.randn(args.batch, 8, 8),
            x_next=th.randn(args.batch, rows, 8),
            v_old=th.randn(args.batch, rows, 8),
            x_final=th.randn(args.batch, rows, 8),
            step_index=th.randint(0, args.k, (args.batch,)),
            label=th.randint(0, 2, (args.batch,)).float(),
            row_mask=th.ones(args.batch, rows, dtype=th.bool),
        )
        if mode == "buffer":
            batch["features"] = flat
        decisions = StepNFTDecisions.from_batch(dict(batch, episode_id=th.zeros(args.batch, dtype=th.long)))

        def step(model=model, decisions=decisions):
            loss, _ = model._loss(decisions, np.arange(args.batch))
            optimizer_step(model.policy.optimizer, loss, model.policy.trainable_parameters(), model.max_grad_norm)

        results[f"update_{mode}_ms_per_sample"] = median_ms(step, args.repeats) / args.batch
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    th.set_num_threads(args.threads)
    th.manual_seed(0)
    rows = [measure(scale, args) for scale in ("small", "large")]
    small, large = rows
    lines = [
        "# VLA cost: rollout per decision and update per sample",
        "",
        "Command: `python benchmarks/vla_cost.py " + " ".join(argv if argv is not None else sys.argv[1:]) + "`",
        "",
        f"Batch {args.batch}, K = {args.k}, chunk 8 x 8 (padded), one 32 px camera + {T} text tokens, "
        f"{args.threads} thread(s), median single-thread CPU time (`time.thread_time`) of {args.repeats} repeats (ms).",
        "",
        "| backbone | backbone params | expert params | 1 backbone pass | 1 expert pass | decision (encode + K steps) "
        "| 1 backbone + K expert | update/sample, cached | update/sample, recomputed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scale']} | {r['backbone_params']:,} | {r['expert_params']:,} | {r['backbone_ms']:.2f} "
            f"| {r['expert_ms']:.2f} "
            f"| {r['decision_ms']:.2f} | {r['predicted_ms']:.2f} | {r['update_buffer_ms_per_sample']:.3f} "
            f"| {r['update_recompute_ms_per_sample']:.3f} |"
        )
    lines += [
        "",
        f"Ratios (large / small): backbone params {large['backbone_params'] / small['backbone_params']:.1f}x, "
        f"backbone pass {large['backbone_ms'] / small['backbone_ms']:.2f}x, "
        f"update with cached prefix {large['update_buffer_ms_per_sample'] / small['update_buffer_ms_per_sample']:.2f}x, "
        "update with recomputed prefix "
        f"{large['update_recompute_ms_per_sample'] / small['update_recompute_ms_per_sample']:.2f}x.",
        f"Decision / (1 backbone + K expert): small {small['decision_ms'] / small['predicted_ms']:.2f}, "
        f"large {large['decision_ms'] / large['predicted_ms']:.2f}.",
    ]
    print("\n".join(lines))
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
