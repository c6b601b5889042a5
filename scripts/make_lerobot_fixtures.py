"""Write tests/data/lerobot_{pi0,pi05}/: tiny random-init π0 / π0.5 models built by LeRobot's own classes.

Each directory holds what a LeRobot checkpoint holds (``model.safetensors`` in LeRobot's key layout, with the
``model.`` prefix of ``PI0Policy`` / ``PI05Policy``, and a ``config.json``) plus ``io.pt``: the inputs (images,
tokens, state), velocities of LeRobot's ``denoise_step`` at a few ``(x_t, t)`` and the chunk of its
``sample_actions`` from injected noise over 10 Euler steps (t = 1 is noise). tests/policies/test_lerobot_parity.py
loads the checkpoint into FlowVLAPolicy and must reproduce them to 1e-4.

Run once, offline, from the repository root, with a LeRobot source checkout and a Python whose transformers
LeRobot supports (LeRobot pins transformers>=5.4,<5.6; its PiGemma layers pass ``past_key_values`` to the
attention, which transformers 5.24 no longer reads)::

    python -m venv /tmp/lrvenv && /tmp/lrvenv/bin/pip install "transformers==5.5.*" torch safetensors
    git clone https://github.com/huggingface/lerobot /tmp/lerobot
    /tmp/lrvenv/bin/python scripts/make_lerobot_fixtures.py --lerobot /tmp/lerobot

LeRobot itself is not installed: the modeling files it needs (``pi0/modeling_pi0.py``, ``pi05/modeling_pi05.py``,
``pi_gemma.py``, ``common/{vla_utils,flow_matching}.py``, ``pi05/memory.py``) are copied into a temporary package
next to small stubs for the training-only imports (configs, processors, RTC). Three LeRobot functions are wrapped
to shrink the sizes it hard-codes (``get_gemma_config`` -> tiny widths, the PaliGemma vision tower and vocabulary,
the expert's vocabulary); the computation is LeRobot's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import torch

COPIED = [
    "policies/pi_gemma.py",
    "policies/common/vla_utils.py",
    "policies/common/flow_matching.py",
    "policies/pi0/modeling_pi0.py",
    "policies/pi05/modeling_pi05.py",
    "policies/pi05/memory.py",
]
STUBS = {
    "__init__.py": "",
    "utils/__init__.py": "",
    "utils/import_utils.py": "_transformers_available = True\n\ndef require_package(*args, **kwargs):\n    pass\n",
    "utils/device_utils.py": "def get_safe_dtype(dtype, device_type):\n    return dtype\n",
    "utils/constants.py": (
        "ACTION = 'action'\nOBS_STATE = 'observation.state'\nOBS_IMAGES = 'observation.images'\n"
        "OBS_LANGUAGE_TOKENS = 'observation.language.tokens'\n"
        "OBS_LANGUAGE_ATTENTION_MASK = 'observation.language.attention_mask'\n"
        "OPENPI_ATTENTION_MASK_VALUE = -2.3819763e38\n"
    ),
    "configs/__init__.py": "class PreTrainedConfig:\n    pass\n",
    "policies/__init__.py": "",
    "policies/common/__init__.py": "",
    "policies/pretrained.py": (
        "from typing import TypeVar\nfrom torch import nn\nT = TypeVar('T')\nPreTrainedPolicy = nn.Module\n"
    ),
    "policies/rtc/__init__.py": "",
    "policies/rtc/modeling_rtc.py": "class RTCProcessor:\n    pass\n",
    "policies/pi0/__init__.py": "",
    "policies/pi0/configuration_pi0.py": "DEFAULT_IMAGE_SIZE = 224\nclass PI0Config:\n    pass\n",
    "policies/pi05/__init__.py": "",
    "policies/pi05/configuration_pi05.py": "DEFAULT_IMAGE_SIZE = 224\nclass PI05Config:\n    pass\n",
}

# the tiny sizes: the same as sb3_stepnft.vla.testing.tiny_paligemma_config(image_size=16, patch_size=8)
IMAGE, PATCH, VOCAB = 16, 8, 400
VLM = dict(width=64, depth=2, mlp_dim=128, num_heads=2, num_kv_heads=1, head_dim=16)
EXPERT = dict(width=32, depth=2, mlp_dim=64, num_heads=2, num_kv_heads=1, head_dim=16)
CHUNK, ACTION_DIM, STATE_DIM, TOKENS, BATCH, STEPS = 3, 4, 8, 12, 2, 10


def build_package(lerobot: Path, root: Path) -> None:
    src = lerobot / "src" / "lerobot" if (lerobot / "src" / "lerobot").is_dir() else lerobot
    for relative, text in STUBS.items():
        (root / "lerobot" / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / "lerobot" / relative).write_text(text)
    for relative in COPIED:
        shutil.copy(src / relative, root / "lerobot" / relative)


def shrink(module) -> None:
    """Wrap the three places where LeRobot hard-codes π0's real sizes."""
    module.get_gemma_config = lambda variant: module.GemmaConfig(**(VLM if variant == "tiny_vlm" else EXPERT))
    paligemma_class, expert_class = module.PaliGemmaForConditionalGenerationWithPiGemma, module.PiGemmaForCausalLM

    def paligemma(config):
        vision = config.vision_config
        vision.hidden_size, vision.intermediate_size, vision.num_hidden_layers = 32, 64, 1
        vision.num_attention_heads, vision.image_size, vision.patch_size = 2, IMAGE, PATCH
        vision.projection_dim = VLM["width"]
        config.text_config.vocab_size = VOCAB
        config._vocab_size = VOCAB
        config.image_token_index = VOCAB - 1
        config.projection_dim = config.hidden_size = VLM["width"]
        return paligemma_class(config=config)

    def expert(config):
        config.vocab_size = 8
        return expert_class(config=config)

    module.PaliGemmaForConditionalGenerationWithPiGemma = paligemma
    module.PiGemmaForCausalLM = expert


def lerobot_config(variant: str):
    return types.SimpleNamespace(
        type=variant,
        paligemma_variant="tiny_vlm",
        action_expert_variant="tiny_expert",
        dtype="float32",
        image_resolution=(IMAGE, IMAGE),
        freeze_vision_encoder=False,
        train_expert_only=False,
        max_action_dim=ACTION_DIM,
        max_state_dim=STATE_DIM,
        chunk_size=CHUNK,
        n_action_steps=CHUNK,
        compile_model=False,
        compile_mode=None,
        min_period=4e-3,
        max_period=4.0,
        num_inference_steps=STEPS,
        use_proprioceptive_memory=False,
        rtc_config=None,
        memory_temporal_attention_every=4,
    )


def make(variant: str, out: Path) -> None:
    if variant == "pi0":
        from lerobot.policies.pi0 import modeling_pi0 as module

        model_class = module.PI0Pytorch
    else:
        from lerobot.policies.pi05 import modeling_pi05 as module

        model_class = module.PI05Pytorch
    shrink(module)
    torch.manual_seed(0 if variant == "pi0" else 1)
    model = model_class(lerobot_config(variant)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "dense.weight" in name:  # LeRobot zero-initialises them: random, so the time matters
                param.normal_(0.0, 0.05)
            elif "norm" in name:  # zero-initialised (1 + w) norms would not notice a wrong key map
                param.add_(0.1 * torch.randn_like(param))

    generator = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (BATCH, IMAGE, IMAGE, 3), dtype=torch.uint8, generator=generator)
    pixels = images.permute(0, 3, 1, 2).float() / 255.0 * 2.0 - 1.0
    tokens = torch.randint(1, VOCAB - 1, (BATCH, TOKENS), generator=generator)
    masks = torch.ones(BATCH, TOKENS, dtype=torch.bool)
    masks[1, 8:] = False  # a padded prompt
    tokens[~masks] = 0
    state = torch.rand(BATCH, STATE_DIM, generator=generator) * 2 - 1
    noise = torch.randn(BATCH, CHUNK, ACTION_DIM, generator=generator)
    x_t = torch.randn(3, BATCH, CHUNK, ACTION_DIM, generator=generator)
    times = torch.tensor([[1.0, 0.9], [0.5, 0.25], [0.1, 0.05]])
    img_masks = [torch.ones(BATCH, dtype=torch.bool)]

    with torch.no_grad():
        prefix_embs, prefix_pad_masks, prefix_att_masks = model.embed_prefix([pixels], img_masks, tokens, masks)
        att_2d = module.make_att_2d_masks(prefix_pad_masks, prefix_att_masks)
        positions = torch.cumsum(prefix_pad_masks, dim=1) - 1
        _, past = model.paligemma_with_expert.forward(
            attention_mask=module.prepare_attention_masks_4d(att_2d),
            position_ids=positions,
            past_key_values=None,
            inputs_embeds=[prefix_embs, None],
            use_cache=True,
        )
        velocities = []
        for x, t in zip(x_t, times):
            if variant == "pi0":
                v = model.denoise_step(state, prefix_pad_masks, past, x, t)
            else:
                v = model.denoise_step(prefix_pad_masks, past, x, t)
            velocities.append(v)
        if variant == "pi0":
            sample = model.sample_actions([pixels], img_masks, tokens, masks, state, noise=noise.clone(), num_steps=STEPS)
        else:
            sample = model.sample_actions([pixels], img_masks, tokens, masks, noise=noise.clone(), num_steps=STEPS)

    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(out / "model.safetensors"))
    config = dict(type=variant, chunk_size=CHUNK, n_action_steps=CHUNK, max_state_dim=STATE_DIM, max_action_dim=ACTION_DIM)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    torch.save(
        dict(
            images=images,
            tokens=tokens,
            masks=masks.to(torch.int8),
            state=state,
            noise=noise,
            x_t=x_t,
            times=times,
            velocities=torch.stack(velocities),
            sample=sample,
            num_steps=STEPS,
        ),
        out / "io.pt",
    )
    print(f"{out}: {len(tensors)} tensors, {sum(v.numel() for v in tensors.values())} parameters")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lerobot", type=Path, required=True, help="a LeRobot source checkout (or its src/lerobot)")
    parser.add_argument("--out", type=Path, default=Path("tests/data"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        build_package(args.lerobot, Path(tmp))
        sys.path.insert(0, tmp)
        for variant in ("pi0", "pi05"):
            make(variant, args.out / f"lerobot_{variant}")
    commit = subprocess.run(["git", "-C", str(args.lerobot), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    if commit.strip():
        (args.out / "lerobot_COMMIT").write_text(commit)


if __name__ == "__main__":
    main()
