"""Memory of π0 / π0.5 fine-tuning on one GPU: what the real sizes need and the largest minibatch that fits.

Real sizes, no download: PaliGemma-3B (SigLIP-So400m/14 + Gemma-2B, :func:`sb3_stepnft.vla.pi0_paligemma_config`)
and the 300M Gemma action expert are built on the ``meta`` device to count parameters and check shapes. The
expert's activations per sample are *measured* on the CPU: one forward with gradients of the real-size fp32 expert
(random prefix keys/values), summing the bytes of the tensors autograd saves for the backward pass
(``torch.autograd.graph.saved_tensors_hooks``), at two batch sizes. The rest is arithmetic:

* weights: VLM in bf16 (frozen; ``--vlm-dtype float32`` for the fp32 VLM, what ``vlm_dtype="bfloat16"`` saves),
  expert in fp32; gradients fp32 and AdamW's two fp32 moments for the expert only;
* ``--expert-autocast`` (``expert_autocast=True``): the activations are measured under CPU bf16 autocast, and the
  bf16 copies of the expert's weights that autocast keeps for the forward and backward pass are added to the fixed
  memory;
* cached prefix per decision: the per-layer keys/values, pooled features, state and mask the algorithms store
  (float32, ``FlowVLAPolicy.feature_bytes``) -- the rollout buffer can stay in host memory, a minibatch's share
  moves to the GPU;
* the stored chain per decision, ``(K + 1) x chunk x action_dim`` floats;
* per minibatch sample in the update: the expert's activations (one pass with gradients per sample for StepNFT and
  the one-step πRL baselines) plus its cached prefix.

The largest minibatch for a GPU of G GB is ``(0.9 G - fixed) / per-sample`` (10 % for the CUDA context,
allocator slack and the transient no-grad θ_old / prefix passes). No GPU was used: the numbers are untested on
one until a machine with one is lent.

    python benchmarks/vla_memory.py --out benchmarks/results/vla_memory.md
    python benchmarks/vla_memory.py --vlm-dtype float32 --out benchmarks/results/vla_memory_fp32_vlm.md
    python benchmarks/vla_memory.py --expert-autocast --out benchmarks/results/vla_memory_autocast.md
"""

from __future__ import annotations

import argparse
import os
import sys

import torch as th

from sb3_stepnft.vla import pi0_paligemma_config
from sb3_stepnft.vla.experts import SharedAttentionExpert
from sb3_stepnft.vla.policy import VLAFeatures

GB = 1e9
IMAGE_TOKENS = 256  # SigLIP-So400m/14 at 224 px
TOKENS = {"pi0": 48, "pi05": 200}  # openpi / LeRobot tokenizer_max_length
EXPERT_WIDTH, EXPERT_MLP, MAX_DIM = 1024, 4096, 32


def unique_parameters(module: th.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


def real_sizes(variant: str) -> dict[str, int]:
    """Parameter counts of the real π0 / π0.5 on the meta device (no memory, no download)."""
    import transformers

    config = pi0_paligemma_config()
    with th.device("meta"):
        vlm = transformers.AutoModelForImageTextToText.from_config(config)
        expert = SharedAttentionExpert(config.text_config, EXPERT_WIDTH, MAX_DIM, MAX_DIM, EXPERT_MLP, variant=variant)
    assert expert.gemma.layers[0].self_attn.k_proj.weight.shape == (256, EXPERT_WIDTH)  # one KV head of 256
    return dict(
        vision=unique_parameters(vlm.model.vision_tower) + unique_parameters(vlm.model.multi_modal_projector),
        language=unique_parameters(vlm.model.language_model),
        vlm=unique_parameters(vlm),
        expert=unique_parameters(expert),
    )


def measured_activations(
    variant: str, prefix_length: int, chunk: int, checkpointing: bool = False, autocast: bool = False
) -> int:
    """Bytes autograd saves per sample in one expert pass with gradients (real-size fp32 expert, on the CPU), with
    or without ``expert_gradient_checkpointing`` (then the peak of one recomputed layer is added: measured too),
    with or without bf16 autocast (``expert_autocast``; the cast weights are the same at every batch size, so the
    difference of two batch sizes leaves them out)."""
    expert = measured_activations.experts.get(variant)
    if expert is None:
        config = pi0_paligemma_config().text_config
        th.manual_seed(0)
        expert = measured_activations.experts[variant] = SharedAttentionExpert(
            config, EXPERT_WIDTH, MAX_DIM, MAX_DIM, EXPERT_MLP, variant=variant
        )
    params = {p.data_ptr() for p in expert.parameters()}
    expert.gradient_checkpointing = checkpointing

    def saved_bytes(batch: int) -> int:
        kv = th.randn(batch, 18, 2, 1, prefix_length, 256)
        feats = VLAFeatures(
            mask=th.ones(batch, prefix_length, dtype=th.bool), state=th.zeros(batch, MAX_DIM), pooled=None, kv=kv
        )
        storages: dict[int, int] = {}

        def pack(tensor):
            ptr = tensor.untyped_storage().data_ptr()
            if ptr not in params and ptr != kv.untyped_storage().data_ptr():
                storages[ptr] = tensor.untyped_storage().nbytes()
            # detached: an output saved as itself would hold its own graph (a cycle the garbage collector cannot see)
            return tensor.detach()

        with th.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            with th.autocast("cpu", dtype=th.bfloat16, enabled=autocast):
                out = expert(th.randn(batch, chunk, MAX_DIM), th.rand(batch), feats)
        del out
        return sum(storages.values())

    total = saved_bytes(2) - saved_bytes(1)
    if checkpointing:  # the backward recomputes one layer at a time: add one layer's activations
        expert.gradient_checkpointing = False
        total += (measured_activations(variant, prefix_length, chunk, autocast=autocast) - total) // len(expert.gemma.layers)
    return total


measured_activations.experts = {}


def feature_bytes(prefix_length: int) -> int:
    """Float32 bytes of one decision's cached prefix (the layout of FlowVLAPolicy._feature_layout for π0 sizes)."""
    kv = 18 * 2 * 1 * prefix_length * 256
    return 4 * (prefix_length + MAX_DIM + 2048 + kv)


def table(variants, cameras, chunk: int, steps: int, gpus, vlm_dtype: str = "bfloat16", autocast: bool = False) -> str:
    lines = []
    vlm_bytes = {"bfloat16": 2, "float32": 4}[vlm_dtype]
    for variant in variants:
        sizes = real_sizes(variant)
        weights = vlm_bytes * sizes["vlm"] + 4 * sizes["expert"]
        optimiser = (4 + 8) * sizes["expert"]  # fp32 gradients + AdamW's two moments
        cast_weights = 2 * sizes["expert"] if autocast else 0  # autocast's bf16 copies of the expert's weights
        fixed = weights + optimiser + cast_weights
        lines.append(
            f"**{'π0' if variant == 'pi0' else 'π0.5'}**: VLM {sizes['vlm'] / 1e9:.3f} B parameters (vision + projector "
            f"{sizes['vision'] / 1e6:.0f} M, Gemma-2B {sizes['language'] / 1e6:.0f} M), expert {sizes['expert'] / 1e6:.1f} M; "
            f"weights {weights / GB:.2f} GB (VLM {'bf16' if vlm_bytes == 2 else 'fp32'}, expert fp32), gradients + AdamW "
            f"{optimiser / GB:.2f} GB, "
            + (f"bf16 weight copies of the autocast expert {cast_weights / GB:.2f} GB, " if autocast else "")
            + f"fixed {fixed / GB:.2f} GB. Prompt {TOKENS[variant]} tokens, chunk {chunk}, K = {steps}"
            + (", expert under bf16 autocast" if autocast else "")
            + ".\n"
        )
        header = "| cameras | prefix tokens | cached prefix / decision | chain / decision | activations / sample (measured) |"
        header += " with expert checkpointing |" + "".join(f" max minibatch {g} GB |" for g in gpus)
        lines += [header, "|" + "---|" * (6 + len(gpus))]
        for n in cameras:
            length = n * IMAGE_TOKENS + TOKENS[variant]
            prefix = feature_bytes(length)
            chain = 4 * (steps + 1) * chunk * MAX_DIM
            activations = measured_activations(variant, length, chunk, autocast=autocast)
            checkpointed = measured_activations(variant, length, chunk, checkpointing=True, autocast=autocast)
            per_sample = [a + prefix + chain for a in (activations, checkpointed)]
            fits = [" / ".join(str(max(0, int((0.9 * g * GB - fixed) // b))) for b in per_sample) for g in gpus]
            lines.append(
                f"| {n} | {length} | {prefix / 1e6:.1f} MB | {chain / 1e3:.1f} kB | {activations / 1e6:.1f} MB | "
                f"{checkpointed / 1e6:.1f} MB |" + "".join(f" {f} |" for f in fits)
            )
        lines.append("")
    lines.append("Max minibatch: without / with `expert_gradient_checkpointing=True`.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["pi0", "pi05"], choices=["pi0", "pi05"])
    parser.add_argument("--cameras", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--chunk", type=int, default=50)
    parser.add_argument("--steps", type=int, default=10, help="K, denoising steps (stored chain per decision)")
    parser.add_argument("--gpus", nargs="+", type=int, default=[24, 48, 80], help="GPU memory sizes in GB")
    parser.add_argument("--vlm-dtype", default="bfloat16", choices=["bfloat16", "float32"], help="the frozen VLM's dtype")
    parser.add_argument(
        "--expert-autocast", action="store_true", help="measure the expert under bf16 autocast (expert_autocast=True)"
    )
    parser.add_argument("--out", default=None, help="also write the table to this Markdown file")
    args = parser.parse_args()
    th.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    text = table(args.variants, args.cameras, args.chunk, args.steps, args.gpus, args.vlm_dtype, args.expert_autocast)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(f"<!-- python {' '.join(sys.argv)} -->\n" + text + "\n")


if __name__ == "__main__":
    main()
