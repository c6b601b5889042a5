"""``VLAConfig``: the architecture and data layout of a :class:`~sb3_stepnft.vla.policy.FlowVLAPolicy`.

One dataclass instead of two dozen loose constructor arguments. Pass it as ``policy_kwargs=dict(config=VLAConfig(...))``
or give its fields as loose keywords (``policy_kwargs=dict(vlm=..., expert_width=32)``); loose fields override the
config's. What every flow policy shares (``num_denoise_steps``, ``noise_level``, ``value_head``, ``net_arch``,
the optimizer) stays a policy keyword, because the algorithms set those. Importing this module does not import
``transformers``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch as th

PREFIX_CACHE_MODES = ("auto", "buffer", "recompute")
VLM_DTYPES = {"float32": th.float32, "bfloat16": th.bfloat16, "float16": th.float16}
HALF_DTYPES = (th.bfloat16, th.float16)
_DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}
EXPERTS = ("shared", "cross")
VARIANTS = ("pi0", "pi05")


@dataclass(frozen=True)
class VLAConfig:
    """Backbone, action expert, observation keys and prefix caching of a :class:`FlowVLAPolicy`.

    :param vlm: The backbone: a Hub id or local directory (``AutoModelForImageTextToText.from_pretrained``), a
        ``transformers`` config (``from_config``, random weights) or an ``nn.Module``. Families: PaliGemma (π0) and
        SmolVLM / Idefics3.
    :param expert: ``"shared"`` (π0: the expert's tokens attend to the VLM's per-layer keys/values) or ``"cross"``
        (a small cross-attention decoder over the prefix hidden states).
    :param expert_width: Width of the expert (default: half the VLM text width, as π0's 1024 vs 2048).
    :param expert_intermediate_size: MLP size of the shared expert (default 4 × width).
    :param expert_layers: Layers of the cross expert (the shared expert has the VLM's layer count).
    :param expert_heads: Attention heads of the cross expert.
    :param chunk_size: Rows the expert outputs (>= the executed rows of the action space; None: those rows).
    :param action_dim: Action dims the expert outputs (>= the env's; extra dims are padding, 32 in π0).
    :param state_dim: Padded proprio state size (default: the state's size; 32 in π0).
    :param camera_keys: Image keys fed to the VLM, in order (default: every image key, sorted).
    :param state_key: Proprio state key (None: no state; the state token is then zero). The default ``"state"`` is
        dropped silently when the observation has no such key.
    :param instruction_keys: ``(ids_key, mask_key)`` of the tokenised instruction (absent keys: no text).
    :param prefix_cache: ``"buffer"`` (algorithms store the prefix features, the update runs only the expert),
        ``"recompute"`` (they store observations and recompute the prefix under ``no_grad`` once per minibatch) or
        ``"auto"`` (buffer when the features of one rollout fit in ``prefix_cache_budget`` bytes).
    :param prefix_cache_budget: Byte budget of ``"auto"`` (default 2 GB).
    :param freeze_vlm: Keep the VLM frozen and in eval mode (required for caching; the default).
    :param vlm_dtype: Storage and compute dtype of the frozen VLM: ``"bfloat16"`` (or ``torch.bfloat16``) halves
        its weight memory and runs the prefix pass in bf16; ``"float16"`` likewise (bf16 is safer: Gemma's
        activations can overflow float16); ``"float32"``; None keeps the dtype the VLM is built or loaded in.
        The action expert always keeps float32 weights (its master weights; gradients and optimiser state are
        float32 too) and the prefix features handed to it (hidden states, keys/values, pooled) are cast to
        float32. A half-precision VLM needs ``freeze_vlm=True`` (it has no float32 master copy to train).
        After building, the resolved config holds the VLM's actual dtype.
    :param expert_autocast: Run the expert's forward passes under ``torch.autocast(dtype=torch.bfloat16)`` on the
        device of its inputs (CPU or CUDA): bf16 matmuls and activations, float32 weights, gradients and optimiser
        state; the velocity comes back as float32. Less activation memory and faster on a GPU with bf16; the
        velocities differ from float32 by bf16 rounding (docs/vla.md, "Memory on one GPU").
    :param variant: ``"pi0"`` (a ``state_proj`` state token; the flow time enters through ``action_time_mlp_*``
        mixed with each action token) or ``"pi05"`` (π0.5: no state token; the time goes through ``time_mlp_in/out``
        into adaptive RMSNorms of the expert, which give a scale, shift and gate per norm; needs ``expert="shared"``).
        :meth:`pi05` is the preset.
    :param state_in_prompt: π0.5 only: the (normalised, 256-bin discretised) state is written into the prompt by
        :class:`sb3_stepnft.vla.prompt.Pi05Prompt`; False for checkpoints trained without it (openpi's
        ``pi05_libero``: ``discrete_state_input=False``). The expert never reads the state in π0.5.
    :param expert_gradient_checkpointing: Recompute each layer of the shared expert in the backward pass instead of
        keeping its activations (less memory per minibatch sample, about one more expert forward per update).
    :param norm_stats: Normalisation statistics of a checkpoint (``dict(mode="mean_std", state=dict(mean=[...],
        std=[...]), actions=dict(...))`` or ``mode="quantiles"`` with ``q01``/``q99``), as
        :func:`sb3_stepnft.vla.pi0.load_norm_stats` reads them: the state is normalised before the policy reads it
        (``(s - mean) / std`` or ``2 (s - q01) / (q99 - q01) - 1`` on its first dims) and the flow's [-1, 1] actions
        map to ``mean ± std`` or ``[q01, q99]`` instead of the action space's bounds (SB3 still clips to them).
    """

    vlm: Any = None
    expert: str = "shared"
    expert_width: int | None = None
    expert_intermediate_size: int | None = None
    expert_layers: int = 2
    expert_heads: int = 2
    chunk_size: int | None = None
    action_dim: int | None = None
    state_dim: int | None = None
    camera_keys: tuple[str, ...] | None = None
    state_key: str | None = "state"
    instruction_keys: tuple[str, str] = ("instruction_ids", "instruction_mask")
    prefix_cache: str = "auto"
    prefix_cache_budget: float = 2e9
    freeze_vlm: bool = True
    vlm_dtype: th.dtype | str | None = None
    variant: str = "pi0"
    state_in_prompt: bool = True
    norm_stats: dict[str, Any] | None = None
    expert_gradient_checkpointing: bool = False
    expert_autocast: bool = False

    def __post_init__(self):
        if self.expert_gradient_checkpointing and self.expert != "shared":
            raise ValueError("expert_gradient_checkpointing is implemented for expert='shared' only")
        if self.norm_stats is not None:
            keys = {"mean_std": ("mean", "std"), "quantiles": ("q01", "q99")}.get(self.norm_stats.get("mode"))
            if keys is None or any(k not in self.norm_stats.get(part, {}) for part in ("state", "actions") for k in keys):
                raise ValueError(
                    "norm_stats must be dict(mode='mean_std', state=dict(mean=..., std=...), actions=dict(mean=..., "
                    f"std=...)) or mode='quantiles' with q01/q99, got keys {sorted(self.norm_stats)}"
                )
        if self.variant not in VARIANTS:
            raise ValueError(f"Unknown variant={self.variant!r}: use one of {VARIANTS}")
        if self.variant == "pi05" and self.expert != "shared":
            raise ValueError(
                "variant='pi05' needs expert='shared': π0.5's adaptive RMSNorms live in the layers of the Gemma-style "
                "expert that shares the VLM's keys/values. Use expert='shared' (or variant='pi0' with expert='cross')."
            )
        object.__setattr__(self, "state_in_prompt", bool(self.state_in_prompt))
        if self.expert not in EXPERTS:
            raise ValueError(f"Unknown expert={self.expert!r}: use one of {EXPERTS}")
        if self.prefix_cache not in PREFIX_CACHE_MODES:
            raise ValueError(f"Unknown prefix_cache={self.prefix_cache!r}: use one of {PREFIX_CACHE_MODES}")
        if self.prefix_cache == "buffer" and not self.freeze_vlm:
            raise ValueError("prefix_cache='buffer' needs freeze_vlm=True: only a frozen backbone may be cached")
        if self.camera_keys is not None:
            object.__setattr__(self, "camera_keys", tuple(self.camera_keys))
        object.__setattr__(self, "instruction_keys", tuple(self.instruction_keys))
        object.__setattr__(self, "expert_layers", int(self.expert_layers))
        object.__setattr__(self, "expert_heads", int(self.expert_heads))
        object.__setattr__(self, "prefix_cache_budget", float(self.prefix_cache_budget))
        object.__setattr__(self, "freeze_vlm", bool(self.freeze_vlm))
        object.__setattr__(self, "expert_autocast", bool(self.expert_autocast))
        object.__setattr__(self, "vlm_dtype", resolve_vlm_dtype(self.vlm_dtype))
        if self.vlm_dtype in HALF_DTYPES and not self.freeze_vlm:
            raise ValueError(
                f"vlm_dtype={str(self.vlm_dtype).replace('torch.', '')!r} (the VLM's dtype) needs freeze_vlm=True: "
                "a VLM in half precision has no float32 master weights to train. Keep the VLM frozen, or train it in "
                "float32 (vlm_dtype='float32')."
            )

    @classmethod
    def pi05(cls, **fields) -> VLAConfig:
        """The π0.5 preset: ``variant="pi05"``, ``expert="shared"``, plus the given fields."""
        return cls(**{"variant": "pi05", "expert": "shared", **fields})

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def merge(cls, config: VLAConfig | None = None, **fields) -> VLAConfig:
        """``config`` (default: all defaults) with the given fields replaced; a TypeError names unknown fields."""
        if config is not None and not isinstance(config, VLAConfig):
            raise TypeError(
                f"config must be a VLAConfig, got {type(config).__name__}. Pass the backbone as vlm=... (a keyword) or "
                "config=VLAConfig(vlm=...)."
            )
        unknown = sorted(set(fields) - set(cls.field_names()))
        if unknown:
            raise TypeError(f"Unknown FlowVLAPolicy argument(s) {unknown}: VLAConfig fields are {list(cls.field_names())}")
        return dataclasses.replace(config or cls(), **fields)

    def replace(self, **fields) -> VLAConfig:
        """A copy with the given fields replaced."""
        return dataclasses.replace(self, **fields)

    def to_kwargs(self) -> dict[str, Any]:
        """The fields as a dict of loose ``policy_kwargs`` (shallow: the VLM is not copied)."""
        return {name: getattr(self, name) for name in self.field_names()}


def resolve_vlm_dtype(dtype: th.dtype | str | None) -> th.dtype | None:
    """``vlm_dtype`` as a torch dtype: a name (``"bfloat16"``, ``"torch.bfloat16"``, ``"bf16"``) or a dtype among
    :data:`VLM_DTYPES`; None stays None. Anything else is a ValueError naming the choices."""
    if dtype is None:
        return None
    resolved = dtype
    if isinstance(dtype, str):
        name = dtype.removeprefix("torch.")
        name = _DTYPE_ALIASES.get(name, name)
        resolved = VLM_DTYPES.get(name)
    if resolved not in VLM_DTYPES.values():
        raise ValueError(f"vlm_dtype must be None or one of {list(VLM_DTYPES)} (or the torch dtype), got {dtype!r}")
    return resolved
