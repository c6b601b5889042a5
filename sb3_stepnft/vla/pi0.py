"""Loading π0-style PyTorch checkpoints (LeRobot / openpi layout) into :class:`FlowVLAPolicy`.

A π0 checkpoint directory holds ``config.json`` and ``model.safetensors``. The weights are renamed with
:data:`PI0_KEY_MAP` (regular expressions, first match wins) and loaded **strictly**: a missing or unexpected key
is an error, never a silent random initialisation. Only stock ``transformers`` classes are used (PaliGemma and a
Gemma expert); π0.5's AdaRMS expert norms are not supported and are reported as such.

The key names come from LeRobot's ``PI0Pytorch`` (``model.paligemma_with_expert.{paligemma,gemma_expert}.*`` and
``model.{state_proj,action_in_proj,action_out_proj,action_time_mlp_in,action_time_mlp_out}.*``), openpi's PyTorch
port (the same without the leading ``model.``) and the older transformers-4 PaliGemma layout
(``paligemma.language_model.model.*``). The mapping has been checked against these names, not against a
downloaded checkpoint (none can be fetched here).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import torch as th
from gymnasium import spaces

from sb3_stepnft.vla import backbones
from sb3_stepnft.vla.config import VLAConfig

_P = r"^(?:model\.)?paligemma_with_expert\."
PI0_KEY_MAP: list[tuple[str, str]] = [
    # PaliGemma backbone, transformers-5 layout (LeRobot) and transformers>=4.52 layout (openpi)
    (_P + r"paligemma\.model\.vision_tower\.(?:vision_model\.)?", "vlm.model.vision_tower."),
    (_P + r"paligemma\.model\.multi_modal_projector\.", "vlm.model.multi_modal_projector."),
    (_P + r"paligemma\.model\.language_model\.", "vlm.model.language_model."),
    (_P + r"paligemma\.lm_head\.", "vlm.lm_head."),
    # older transformers-4 layout
    (_P + r"paligemma\.vision_tower\.(?:vision_model\.)?", "vlm.model.vision_tower."),
    (_P + r"paligemma\.multi_modal_projector\.", "vlm.model.multi_modal_projector."),
    (_P + r"paligemma\.language_model\.model\.", "vlm.model.language_model."),
    (_P + r"paligemma\.language_model\.lm_head\.", "vlm.lm_head."),
    # action expert trunk
    (_P + r"gemma_expert\.model\.", "expert.gemma."),
    # π0 heads (older files: time_mlp_*)
    (r"^(?:model\.)?(state_proj|action_in_proj|action_out_proj|action_time_mlp_in|action_time_mlp_out)\.", r"expert.\1."),
    (r"^(?:model\.)?time_mlp_(in|out)\.", r"expert.action_time_mlp_\1."),
]
PI0_IGNORED_KEYS = [_P + r"gemma_expert\.lm_head\.", _P + r"gemma_expert\.model\.embed_tokens\."]
"""Keys of a π0 checkpoint with no counterpart here (the expert has no token embedding or LM head)."""


def map_pi0_key(key: str) -> str | None:
    """Our parameter name for a π0 checkpoint key, None for an ignored key; KeyError for an unknown key."""
    if any(re.match(pattern, key) for pattern in PI0_IGNORED_KEYS):
        return None
    for pattern, replacement in PI0_KEY_MAP:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key, count=1)
    raise KeyError(key)


def map_pi0_state_dict(state_dict: dict[str, th.Tensor]) -> dict[str, th.Tensor]:
    """Rename a π0 state dict to :class:`FlowVLAPolicy` names; raises ValueError listing unknown keys."""
    mapped, unknown, adarms = {}, [], []
    for key, tensor in state_dict.items():
        if ".dense." in key and "layernorm" in key:
            adarms.append(key)
            continue
        try:
            name = map_pi0_key(key)
        except KeyError:
            unknown.append(key)
            continue
        if name is not None:
            mapped[name] = tensor
    if adarms:
        raise ValueError(
            f"The checkpoint has AdaRMS expert norms ({adarms[0]}, ...): that is π0.5, which needs a custom expert norm "
            "not supported by FlowVLAPolicy yet. Use a π0 checkpoint."
        )
    if unknown:
        raise ValueError(
            f"{len(unknown)} checkpoint keys are not π0 keys (first: {unknown[:3]}). Is this a π0 checkpoint from "
            "LeRobot or openpi? (sb3_stepnft.vla.pi0.PI0_KEY_MAP lists the names understood.)"
        )
    return mapped


def pi0_paligemma_config(image_size: int = 224, vocab_size: int = 257152):
    """π0's PaliGemma backbone (SigLIP-So400m/14 + Gemma-2B), as LeRobot builds it (VLA.md §1.1)."""
    transformers = backbones.import_transformers()
    return transformers.PaliGemmaConfig(
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=1152,
            intermediate_size=4304,
            num_hidden_layers=27,
            num_attention_heads=16,
            image_size=image_size,
            patch_size=14,
            projection_dim=2048,
            projector_hidden_act="gelu_fast",
        ),
        text_config=dict(
            model_type="gemma",
            hidden_size=2048,
            intermediate_size=16384,
            num_hidden_layers=18,
            num_attention_heads=8,
            num_key_value_heads=1,
            head_dim=256,
            vocab_size=vocab_size,
            hidden_activation="gelu_pytorch_tanh",
        ),
        image_token_index=vocab_size,
        projection_dim=2048,
        hidden_size=2048,
        vocab_size=vocab_size,
    )


def read_pi0_config(path: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` of a π0 checkpoint directory (empty dict when absent)."""
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        return {}
    with open(config_file, encoding="utf-8") as f:
        return json.load(f)


def load_pi0_weights(path: str | os.PathLike) -> dict[str, th.Tensor]:
    """The raw tensors of ``model.safetensors`` in a π0 checkpoint directory (or of the file itself)."""
    from safetensors.torch import load_file

    file = _weights_file(path)
    try:
        return load_file(file)
    except Exception as error:  # safetensors raises its own error types for corrupted headers
        raise ValueError(f"{file} is not a readable safetensors file ({error}): re-download the checkpoint.") from error


def _weights_file(path: str | os.PathLike) -> str:
    file = os.path.join(path, "model.safetensors") if os.path.isdir(path) else os.fspath(path)
    if not os.path.isfile(file):
        raise FileNotFoundError(
            f"No π0 weights at {file}. Download the checkpoint first (e.g. `huggingface-cli download lerobot/pi0_base "
            "--local-dir DIR`) and pass DIR; nothing is fetched at run time."
        )
    return file


def pi0_config(path: str | os.PathLike, vlm_config=None, **overrides) -> VLAConfig:
    """The :class:`~sb3_stepnft.vla.config.VLAConfig` of a π0 checkpoint: its architecture, read from its config and
    tensor shapes without loading the weights.

    :param vlm_config: The backbone config (default: π0's PaliGemma, :func:`pi0_paligemma_config`).
    :param overrides: Other :class:`VLAConfig` fields (``camera_keys``, ``state_key``, ``prefix_cache``, ...).
    """
    from safetensors import safe_open

    config = read_pi0_config(path)
    shapes = {}
    try:
        with safe_open(_weights_file(path), framework="pt") as f:
            for key in f.keys():
                name = map_pi0_key(key) if not (".dense." in key and "layernorm" in key) else None
                if name in (
                    "expert.action_in_proj.weight",
                    "expert.state_proj.weight",
                    "expert.gemma.layers.0.mlp.up_proj.weight",
                ):
                    shapes[name] = tuple(f.get_slice(key).get_shape())
    except KeyError as error:
        raise ValueError(
            f"{path}: {error.args[0]!r} is not a π0 checkpoint key (see sb3_stepnft.vla.pi0.PI0_KEY_MAP)"
        ) from error
    except FileNotFoundError:
        raise
    except Exception as error:  # corrupted header
        raise ValueError(f"{path} is not a readable safetensors checkpoint ({error}): re-download it.") from error
    if "expert.action_in_proj.weight" not in shapes or "expert.state_proj.weight" not in shapes:
        raise ValueError(f"{path} has no π0 action expert heads (action_in_proj, state_proj): not a π0 checkpoint")
    width, action_dim = shapes["expert.action_in_proj.weight"]
    fields: dict[str, Any] = dict(
        vlm=vlm_config if vlm_config is not None else pi0_paligemma_config(),
        expert="shared",
        expert_width=int(width),
        expert_intermediate_size=shapes.get("expert.gemma.layers.0.mlp.up_proj.weight", (None,))[0],
        action_dim=int(config.get("max_action_dim", action_dim)),
        state_dim=int(config.get("max_state_dim", shapes["expert.state_proj.weight"][1])),
        chunk_size=int(config.get("chunk_size", 50)),
    )
    fields.update(overrides)
    return VLAConfig.merge(**fields)


def pi0_policy_kwargs(path: str | os.PathLike, vlm_config=None, **overrides) -> dict[str, Any]:
    """:class:`FlowVLAPolicy` keyword arguments with the architecture of a π0 checkpoint (:func:`pi0_config`,
    expanded into its fields), for ``StepNFT(FlowVLAPolicy, env, policy_kwargs=...)``.

    :param vlm_config: The backbone config (default: π0's PaliGemma, :func:`pi0_paligemma_config`).
    :param overrides: :class:`VLAConfig` fields (``camera_keys``, ...) and other :class:`FlowVLAPolicy` arguments
        (``num_denoise_steps``, ``value_head``, ...).
    """
    config_fields = {k: v for k, v in overrides.items() if k in VLAConfig.field_names()}
    policy_fields = {k: v for k, v in overrides.items() if k not in config_fields}
    return {**pi0_config(path, vlm_config, **config_fields).to_kwargs(), **policy_fields}


def load_pi0_into(policy, path: str | os.PathLike) -> None:
    """Load a π0 checkpoint's weights into a :class:`FlowVLAPolicy` of the same architecture, strictly."""
    mapped = map_pi0_state_dict(load_pi0_weights(path))
    own = policy.state_dict()
    # lm_head is tied to the Gemma token embedding: either may be absent from a file
    embed, head = "vlm.model.language_model.embed_tokens.weight", "vlm.lm_head.weight"
    if embed not in mapped and head in mapped:
        mapped[embed] = mapped[head]
    if head in own and head not in mapped and embed in mapped:
        mapped[head] = mapped[embed]
    missing = sorted(set(own) - set(mapped))
    unexpected = sorted(set(mapped) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"The π0 checkpoint at {path} does not match the policy: missing {missing[:5]} ({len(missing)}), "
            f"unexpected {unexpected[:5]} ({len(unexpected)}). Build the policy with "
            "sb3_stepnft.vla.pi0.pi0_policy_kwargs(path) (and the backbone config the checkpoint was trained with)."
        )
    for name, tensor in mapped.items():
        if tuple(tensor.shape) != tuple(own[name].shape):
            raise ValueError(
                f"π0 weight {name} has shape {tuple(tensor.shape)}, the policy expects {tuple(own[name].shape)}: build "
                "the policy with sb3_stepnft.vla.pi0.pi0_policy_kwargs(path)."
            )
    policy.load_state_dict(mapped, strict=True)


def from_pi0(
    policy_class, path, observation_space: spaces.Dict, action_space: spaces.Box, lr_schedule=None, vlm_config=None, **kwargs
):
    """A policy with a π0 checkpoint's architecture (:func:`pi0_policy_kwargs`) and its weights (:func:`load_pi0_into`)."""
    kwargs = pi0_policy_kwargs(path, vlm_config=vlm_config, **kwargs)
    policy = policy_class(observation_space, action_space, lr_schedule or (lambda _: 2.5e-5), **kwargs)
    load_pi0_into(policy, path)
    return policy
