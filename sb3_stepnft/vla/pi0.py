"""Loading π0 and π0.5 PyTorch checkpoints (LeRobot / openpi layout) into :class:`FlowVLAPolicy`.

A checkpoint directory holds ``model.safetensors`` and usually ``config.json`` (and normalisation statistics). The
variant is detected from the tensors (:func:`checkpoint_variant`: AdaRMS expert norms or a square ``time_mlp_in``
make π0.5), the weights are renamed with :data:`PI0_KEY_MAP` / :data:`PI05_KEY_MAP` (regular expressions, first
match wins) and loaded **strictly**: a missing, unexpected or misshaped key is an error, never a silent random
initialisation. Only stock ``transformers`` classes are used (PaliGemma and a Gemma expert, whose norms are
:class:`~sb3_stepnft.vla.experts.AdaRMSNorm` in π0.5).

The key names come from LeRobot's ``PI0Pytorch`` / ``PI05Pytorch`` (``model.paligemma_with_expert.{paligemma,
gemma_expert}.*`` and the heads ``model.{state_proj,action_in_proj,action_out_proj,action_time_mlp_*}`` /
``model.{action_in_proj,action_out_proj,time_mlp_*}``), openpi's PyTorch port (the same without the leading
``model.``) and the older transformers-4 PaliGemma layout (``paligemma.language_model.model.*``). Tiny checkpoints
written by LeRobot's own classes load and reproduce LeRobot's velocities and samples
(tests/policies/test_lerobot_parity.py); no real checkpoint was downloaded here.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from typing import Any

import torch as th
from gymnasium import spaces

from sb3_stepnft.vla import backbones
from sb3_stepnft.vla.config import VLAConfig

_P = r"^(?:model\.)?paligemma_with_expert\."
BACKBONE_KEY_MAP: list[tuple[str, str]] = [
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
    # action expert trunk (π0.5: its norms are AdaRMS, ``*layernorm.dense.*`` and ``norm.dense.*``)
    (_P + r"gemma_expert\.model\.", "expert.gemma."),
]
PI0_KEY_MAP: list[tuple[str, str]] = BACKBONE_KEY_MAP + [
    # π0 heads (older files: time_mlp_* with π0's (width, 2·width) input layer)
    (r"^(?:model\.)?(state_proj|action_in_proj|action_out_proj|action_time_mlp_in|action_time_mlp_out)\.", r"expert.\1."),
    (r"^(?:model\.)?time_mlp_(in|out)\.", r"expert.action_time_mlp_\1."),
]
"""π0 checkpoint names → :class:`FlowVLAPolicy` names (regular expressions, first match wins)."""
PI05_KEY_MAP: list[tuple[str, str]] = BACKBONE_KEY_MAP + [
    (r"^(?:model\.)?(action_in_proj|action_out_proj|time_mlp_in|time_mlp_out)\.", r"expert.\1."),
    (r"^(?:model\.)?action_time_mlp_(in|out)\.", r"expert.time_mlp_\1."),  # LeRobot's π0 → π0.5 rewrite
]
"""π0.5 checkpoint names → :class:`FlowVLAPolicy` names."""
PI0_IGNORED_KEYS = [_P + r"gemma_expert\.lm_head\.", _P + r"gemma_expert\.model\.embed_tokens\."]
"""Keys of a π0 / π0.5 checkpoint with no counterpart here (the expert has no token embedding or LM head)."""
PI05_DROPPED_KEYS = [
    r"^(?:model\.)?state_proj\.",
    _P + r"gemma_expert\.model\.layers\.\d+\.(?:input_layernorm|post_attention_layernorm)\.weight$",
    _P + r"gemma_expert\.model\.norm\.weight$",
]
"""π0 keys that LeRobot's π0 → π0.5 rewrite drops (π0.5 has no state token and AdaRMS expert norms); dropped with a
warning, the π0.5 keys they leave missing are still an error."""
EMBED, LM_HEAD = "vlm.model.language_model.embed_tokens.weight", "vlm.lm_head.weight"


def _is_adarms_key(key: str) -> bool:
    return bool(re.match(_P + r"gemma_expert\.model\.(?:layers\.\d+\.\w*layernorm|norm)\.dense\.", key))


def checkpoint_variant(shapes: dict[str, tuple[int, ...]]) -> str:
    """``"pi05"`` or ``"pi0"`` from a checkpoint's key names and shapes: AdaRMS expert norms, or a square
    ``time_mlp_in`` (openpi's converter tests for ``time_mlp_in``; π0 files of an older naming carry a
    ``time_mlp_in`` too, of shape ``(width, 2·width)``) make π0.5."""
    for key, shape in shapes.items():
        if _is_adarms_key(key):
            return "pi05"
        if re.match(r"^(?:model\.)?time_mlp_in\.weight$", key) and len(shape) == 2 and shape[0] == shape[1]:
            return "pi05"
    return "pi0"


def map_pi0_key(key: str, variant: str = "pi0") -> str | None:
    """Our parameter name for a π0 / π0.5 checkpoint key, None for an ignored key; KeyError for an unknown key."""
    if any(re.match(pattern, key) for pattern in PI0_IGNORED_KEYS):
        return None
    for pattern, replacement in PI05_KEY_MAP if variant == "pi05" else PI0_KEY_MAP:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key, count=1)
    raise KeyError(key)


def map_pi0_state_dict(state_dict: dict[str, th.Tensor], variant: str | None = "pi0") -> dict[str, th.Tensor]:
    """Rename a π0 / π0.5 state dict to :class:`FlowVLAPolicy` names; raises ValueError listing unknown keys.

    :param variant: ``"pi0"`` (the default) or ``"pi05"``; None detects it (:func:`checkpoint_variant`). A π0.5
        checkpoint given as ``"pi0"`` is an error; a π0 one given as ``"pi05"`` follows LeRobot's rewrite
        (:data:`PI05_DROPPED_KEYS`).
    """
    detected = checkpoint_variant({k: tuple(v.shape) for k, v in state_dict.items()})
    variant = variant or detected
    if variant == "pi0" and detected == "pi05":
        adarms = next((k for k in state_dict if _is_adarms_key(k)), "time_mlp_in.weight")
        raise ValueError(
            f"The checkpoint is π0.5 (AdaRMS expert norms / time_mlp_in: {adarms}), not π0: load it with "
            "FlowVLAPolicy.from_openpi_checkpoint(path, ...) or sb3_stepnft.vla.pi0.pi05_policy_kwargs(path)."
        )
    mapped, unknown, dropped = {}, [], []
    for key, tensor in state_dict.items():
        if variant == "pi05" and any(re.match(pattern, key) for pattern in PI05_DROPPED_KEYS):
            dropped.append(key)
            continue
        try:
            name = map_pi0_key(key, variant)
        except KeyError:
            unknown.append(key)
            continue
        if name is not None:
            mapped[name] = tensor
    if dropped:
        warnings.warn(
            f"Loading a π0 checkpoint as π0.5: dropped {len(dropped)} π0-only keys ({dropped[:3]}, ...), as LeRobot does",
            UserWarning,
            stacklevel=2,
        )
    if unknown:
        raise ValueError(
            f"{len(unknown)} checkpoint keys are not {'π0.5' if variant == 'pi05' else 'π0'} keys (first: {unknown[:3]}). "
            "Is this a π0 / π0.5 checkpoint from LeRobot or openpi? (sb3_stepnft.vla.pi0.PI0_KEY_MAP / PI05_KEY_MAP "
            "list the names understood.)"
        )
    # lm_head is tied to the Gemma token embedding: π0 reads only the embedding, files store either or both
    if EMBED in mapped:
        mapped[LM_HEAD] = mapped[EMBED]
    elif LM_HEAD in mapped:
        mapped[EMBED] = mapped[LM_HEAD]
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
            vision_use_head=False,  # SiglipVisionConfig's default is True; PaliGemma (and π0 files) have no head
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


def _shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape in a checkpoint, from the safetensors header (the weights are not read)."""
    from safetensors import safe_open

    try:
        with safe_open(_weights_file(path), framework="pt") as f:
            return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except FileNotFoundError:
        raise
    except Exception as error:  # corrupted header
        raise ValueError(f"{path} is not a readable safetensors checkpoint ({error}): re-download it.") from error


def openpi_config(path: str | os.PathLike, vlm_config=None, variant: str | None = None, **overrides) -> VLAConfig:
    """The :class:`~sb3_stepnft.vla.config.VLAConfig` of a π0 or π0.5 checkpoint (LeRobot / openpi PyTorch): the
    variant (:func:`checkpoint_variant`), widths and sizes read from its ``config.json`` and tensor shapes without
    loading the weights, and its normalisation statistics (:func:`load_norm_stats`) when the directory has them.

    :param vlm_config: The backbone config (default: π0's PaliGemma, :func:`pi0_paligemma_config`).
    :param variant: ``"pi0"`` / ``"pi05"`` to insist on one (a mismatch is an error); None: detect it.
    :param overrides: Other :class:`VLAConfig` fields (``camera_keys``, ``state_key``, ``prefix_cache``, ...).
    """
    config = read_pi0_config(path)
    shapes = _shapes(path)
    detected = checkpoint_variant(shapes)
    if variant is not None and variant != detected:
        names = {"pi0": "π0", "pi05": "π0.5"}
        loader = "from_pi05 / pi05_policy_kwargs" if detected == "pi05" else "from_pi0 / pi0_policy_kwargs"
        raise ValueError(
            f"{path} holds a {names[detected]} checkpoint, not {names[variant]}: use {loader}, or "
            "FlowVLAPolicy.from_openpi_checkpoint(path, ...) which detects the variant."
        )
    try:
        mapped = {name: shape for key, shape in shapes.items() if (name := map_pi0_key(key, detected)) is not None}
    except KeyError as error:
        raise ValueError(
            f"{path}: {error.args[0]!r} is not a π0 / π0.5 checkpoint key (see sb3_stepnft.vla.pi0.PI0_KEY_MAP)"
        ) from error
    heads = ["expert.action_in_proj.weight"] + (["expert.state_proj.weight"] if detected == "pi0" else [])
    if any(head not in mapped for head in heads):
        raise ValueError(f"{path} has no action expert heads ({', '.join(heads)}): not a π0 / π0.5 checkpoint")
    width, action_dim = mapped["expert.action_in_proj.weight"]
    state_dim = mapped["expert.state_proj.weight"][1] if detected == "pi0" else 32
    fields: dict[str, Any] = dict(
        vlm=vlm_config if vlm_config is not None else pi0_paligemma_config(),
        expert="shared",
        variant=detected,
        expert_width=int(width),
        expert_intermediate_size=mapped.get("expert.gemma.layers.0.mlp.up_proj.weight", (None,))[0],
        action_dim=int(config.get("max_action_dim", config.get("action_dim", action_dim))),
        state_dim=int(config.get("max_state_dim", state_dim)),
        chunk_size=int(config.get("chunk_size", config.get("action_horizon", 50))),
    )
    if detected == "pi05":
        # openpi: discrete_state_input (False in pi05_libero); LeRobot: the state leaves the prompt with MEM's projection
        fields["state_in_prompt"] = bool(
            config.get("discrete_state_input", not config.get("use_proprioceptive_memory", False))
        )
    stats = load_norm_stats(path, detected)
    if stats is not None:
        fields["norm_stats"] = stats
    fields.update(overrides)
    return VLAConfig.merge(**fields)


def pi0_config(path: str | os.PathLike, vlm_config=None, **overrides) -> VLAConfig:
    """:func:`openpi_config` of a π0 checkpoint (a π0.5 one is an error naming the π0.5 loader)."""
    return openpi_config(path, vlm_config, variant="pi0", **overrides)


def pi05_config(path: str | os.PathLike, vlm_config=None, **overrides) -> VLAConfig:
    """:func:`openpi_config` of a π0.5 checkpoint (a π0 one is an error naming the π0 loader)."""
    return openpi_config(path, vlm_config, variant="pi05", **overrides)


def openpi_policy_kwargs(path: str | os.PathLike, vlm_config=None, variant: str | None = None, **overrides) -> dict[str, Any]:
    """:class:`FlowVLAPolicy` keyword arguments with the architecture of a π0 / π0.5 checkpoint (:func:`openpi_config`,
    expanded into its fields), for ``StepNFT(FlowVLAPolicy, env, policy_kwargs=...)``.

    :param vlm_config: The backbone config (default: π0's PaliGemma, :func:`pi0_paligemma_config`).
    :param variant: ``"pi0"`` / ``"pi05"`` to insist on one; None: detect it.
    :param overrides: :class:`VLAConfig` fields (``camera_keys``, ...) and other :class:`FlowVLAPolicy` arguments
        (``num_denoise_steps``, ``value_head``, ...).
    """
    config_fields = {k: v for k, v in overrides.items() if k in VLAConfig.field_names()}
    policy_fields = {k: v for k, v in overrides.items() if k not in config_fields}
    return {**openpi_config(path, vlm_config, variant, **config_fields).to_kwargs(), **policy_fields}


def pi0_policy_kwargs(path: str | os.PathLike, vlm_config=None, **overrides) -> dict[str, Any]:
    """:func:`openpi_policy_kwargs` of a π0 checkpoint."""
    return openpi_policy_kwargs(path, vlm_config, "pi0", **overrides)


def pi05_policy_kwargs(path: str | os.PathLike, vlm_config=None, **overrides) -> dict[str, Any]:
    """:func:`openpi_policy_kwargs` of a π0.5 checkpoint."""
    return openpi_policy_kwargs(path, vlm_config, "pi05", **overrides)


def load_checkpoint_into(policy, path: str | os.PathLike) -> None:
    """Load a π0 / π0.5 checkpoint's weights into a :class:`FlowVLAPolicy` of the same architecture, strictly.
    The policy's ``variant`` decides how the names are read."""
    mapped = map_pi0_state_dict(load_pi0_weights(path), policy.variant)
    own = policy.state_dict()
    if LM_HEAD not in own:
        mapped.pop(LM_HEAD, None)
    missing = sorted(set(own) - set(mapped))
    unexpected = sorted(set(mapped) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"The checkpoint at {path} does not match the policy: missing {missing[:5]} ({len(missing)}), "
            f"unexpected {unexpected[:5]} ({len(unexpected)}). Build the policy with "
            "sb3_stepnft.vla.pi0.openpi_policy_kwargs(path) (and the backbone config the checkpoint was trained with)."
        )
    for name, tensor in mapped.items():
        if tuple(tensor.shape) != tuple(own[name].shape):
            raise ValueError(
                f"Checkpoint weight {name} has shape {tuple(tensor.shape)}, the policy expects {tuple(own[name].shape)}: "
                "build the policy with sb3_stepnft.vla.pi0.openpi_policy_kwargs(path) and the backbone config the "
                "checkpoint was trained with."
            )
    policy.load_state_dict(mapped, strict=True)


load_pi0_into = load_checkpoint_into


def from_openpi_checkpoint(
    policy_class,
    path,
    observation_space: spaces.Dict,
    action_space: spaces.Box,
    lr_schedule=None,
    vlm_config=None,
    variant: str | None = None,
    **kwargs,
):
    """A policy with a π0 / π0.5 checkpoint's architecture (:func:`openpi_policy_kwargs`) and its weights
    (:func:`load_checkpoint_into`); the variant is detected unless given."""
    kwargs = openpi_policy_kwargs(path, vlm_config, variant, **kwargs)
    policy = policy_class(observation_space, action_space, lr_schedule or (lambda _: 2.5e-5), **kwargs)
    load_checkpoint_into(policy, path)
    return policy


def from_pi0(policy_class, path, observation_space, action_space, lr_schedule=None, vlm_config=None, **kwargs):
    """:func:`from_openpi_checkpoint` for a π0 checkpoint (a π0.5 one is an error)."""
    return from_openpi_checkpoint(
        policy_class, path, observation_space, action_space, lr_schedule, vlm_config, "pi0", **kwargs
    )


def from_pi05(policy_class, path, observation_space, action_space, lr_schedule=None, vlm_config=None, **kwargs):
    """:func:`from_openpi_checkpoint` for a π0.5 checkpoint (a π0 one is an error)."""
    return from_openpi_checkpoint(
        policy_class, path, observation_space, action_space, lr_schedule, vlm_config, "pi05", **kwargs
    )


# ---------------------------------------------------------------------------------------- normalisation statistics
NORM_MODES = {"pi0": "mean_std", "pi05": "quantiles"}
"""How each variant normalises state and actions (openpi / LeRobot): mean/std for π0, 1 % / 99 % quantiles for π0.5."""


def load_norm_stats(path: str | os.PathLike, variant: str = "pi0") -> dict[str, Any] | None:
    """The state and action statistics stored with a checkpoint, or None (with a warning) when it has none.

    Read from openpi's ``norm_stats.json`` (in the directory or ``assets/*/``; ``{"norm_stats": {"state": {...},
    "actions": {...}}}``) or LeRobot's normalizer processor file (``*normalizer_processor*.safetensors`` with keys
    ``observation.state.mean``, ``action.q99``, ...). Returns ``dict(mode=..., state=dict(...), actions=dict(...))``
    with lists of floats: ``mean``/``std`` for π0 (``mode="mean_std"``), ``q01``/``q99`` for π0.5 (``"quantiles"``).
    """
    mode = NORM_MODES[variant]
    keys = ("mean", "std") if mode == "mean_std" else ("q01", "q99")
    directory = path if os.path.isdir(path) else os.path.dirname(os.fspath(path))
    raw: dict[str, dict[str, Any]] | None = None
    source = None
    candidates = [os.path.join(directory, "norm_stats.json")]
    assets = os.path.join(directory, "assets")
    if os.path.isdir(assets):
        candidates += sorted(os.path.join(assets, d, "norm_stats.json") for d in os.listdir(assets))
    for file in candidates:
        if os.path.isfile(file):
            with open(file, encoding="utf-8") as f:
                data = json.load(f)
            data = data.get("norm_stats", data)
            raw = {"state": data.get("state", {}), "actions": data.get("actions", {})}
            source = file
            break
    if raw is None:
        processor = sorted(f for f in os.listdir(directory) if "normalizer_processor" in f and f.endswith(".safetensors"))
        if processor:
            from safetensors.torch import load_file

            source = os.path.join(directory, processor[0])
            tensors = load_file(source)
            raw = {
                "state": {k.rsplit(".", 1)[1]: v for k, v in tensors.items() if k.startswith("observation.state.")},
                "actions": {k.rsplit(".", 1)[1]: v for k, v in tensors.items() if k.startswith("action.")},
            }
    if raw is None:
        warnings.warn(
            f"No normalisation statistics next to the checkpoint {directory} (norm_stats.json, assets/*/norm_stats.json "
            "or a LeRobot *normalizer_processor*.safetensors): the policy reads the state and writes actions as they "
            "are. Copy the statistics of the data set the checkpoint was trained on into that directory, or pass "
            "norm_stats=dict(mode=..., state=..., actions=...).",
            UserWarning,
            stacklevel=3,
        )
        return None
    stats: dict[str, Any] = {"mode": mode}
    for part in ("state", "actions"):
        missing = [k for k in keys if k not in raw[part]]
        if missing:
            raise ValueError(
                f"{source}: the {part} statistics lack {missing} ({'π0' if variant == 'pi0' else 'π0.5'} normalises "
                f"with {' and '.join(keys)}); has {sorted(raw[part])}"
            )
        stats[part] = {k: [float(x) for x in th.as_tensor(raw[part][k]).reshape(-1).tolist()] for k in keys}
    return stats
