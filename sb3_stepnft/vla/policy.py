"""``FlowVLAPolicy``: a frozen ``transformers`` vision-language backbone and a trainable flow action expert.

The policy has the interface of every flow policy (:class:`~sb3_stepnft.common.policies.BaseFlowPolicy`): ``encode``
runs the frozen VLM once per observation (under ``no_grad``) and returns :class:`VLAFeatures`; ``velocity`` is one
pass of the action expert; ``sample`` reuses the features for all K solver steps. Because the backbone is frozen,
the algorithms may store the features in their buffer and skip the backbone at update time (``prefix_cache``,
ALGORITHM.md §3.6).

``transformers`` is imported when the policy is built, not when this module is imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.preprocessing import is_image_space, is_image_space_channels_first
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from torch import nn

from sb3_stepnft.common.policies import BaseFlowPolicy
from sb3_stepnft.vla import backbones, experts
from sb3_stepnft.vla.config import EXPERTS, PREFIX_CACHE_MODES, VLM_DTYPES, VLAConfig
from sb3_stepnft.vla.prompt import quantile_normalize

__all__ = ["EXPERTS", "PREFIX_CACHE_MODES", "FlowVLAPolicy", "VLAConfig", "VLAFeatures"]


@dataclass
class VLAFeatures:
    """What ``encode`` computes once per observation (the prefix), for all K steps and, cached, for the update.

    ``mask`` (B, L) valid prefix tokens; ``state`` (B, S) padded proprio state; ``pooled`` (B, Dv) masked mean of
    the prefix hidden states (the critic's input); ``kv`` (B, n_layers, 2, n_kv, L, head_dim) per-layer prefix
    keys/values (shared-attention expert); ``hidden`` (B, L, Dv) prefix hidden states (cross-attention expert).
    """

    mask: th.Tensor
    state: th.Tensor
    pooled: th.Tensor
    kv: th.Tensor | None = None
    hidden: th.Tensor | None = None

    def __len__(self) -> int:
        return self.mask.shape[0]


def _config_field(name: str) -> property:
    return property(lambda self: getattr(self.config, name), doc=f"``config.{name}`` (see :class:`VLAConfig`).")


class FlowVLAPolicy(BaseFlowPolicy):
    """π0 / π0.5-style vision-language-action flow policy (alias ``"VLAPolicy"``); a sibling of the MLP-family
    :class:`~sb3_stepnft.common.policies.FlowPolicy` under :class:`~sb3_stepnft.common.policies.BaseFlowPolicy`.
    ``config=VLAConfig.pi05(...)`` builds π0.5 (AdaRMS time conditioning, state in the prompt).

    Observations are a Dict with one or more camera images (``Box`` uint8, channel-first or -last), an optional
    proprio ``state`` vector, and the instruction as token ids plus a mask (``instruction_ids``: ``Box(int64)``,
    ``instruction_mask``: ``MultiBinary``; see :class:`sb3_stepnft.wrappers.TokenizeInstruction`).

    :param observation_space: Dict observation space.
    :param action_space: Box(A) or Box(H_exec, A) action space with finite bounds.
    :param lr_schedule: Learning-rate schedule.
    :param config: The architecture: backbone, expert, observation keys, prefix caching (:class:`VLAConfig`).
    :param config_fields: :class:`VLAConfig` fields given as loose keywords (``vlm=..., expert_width=32``); they
        override ``config``'s. After building, ``policy.config`` holds the resolved values (the VLM as its config,
        the camera keys, widths and sizes actually used).
    :param num_denoise_steps: K, solver steps (rollouts, ``predict`` and the losses; the policy's solver owns it).
    :param noise_level: ``a`` of the Flow-SDE rollout steps (set by the algorithm's ``noise_level``).
    :param net_arch: ``dict(vf=[...])`` or a list: hidden sizes of the optional value head (FlowPPO).
    :param activation_fn: Activation of the value head.
    :param optimizer_class: Optimizer of the trainable parameters (expert, heads, critic).
    :param optimizer_kwargs: Its keyword arguments (default AdamW betas (0.9, 0.95), eps 1e-5, weight decay 0.01).
    :param value_head: Add a critic on the detached pooled prefix and state (FlowPPO switches it on).
    :param normalize_images: Divide camera pixels by 255 before mapping them to [-1, 1].
    """

    default_vf_arch = (256, 256)

    expert_kind = _config_field("expert")
    expert_width = _config_field("expert_width")
    expert_intermediate_size = _config_field("expert_intermediate_size")
    expert_layers = _config_field("expert_layers")
    expert_heads = _config_field("expert_heads")
    state_dim = _config_field("state_dim")
    camera_keys = _config_field("camera_keys")
    state_key = _config_field("state_key")
    instruction_keys = _config_field("instruction_keys")
    prefix_cache = _config_field("prefix_cache")
    prefix_cache_budget = _config_field("prefix_cache_budget")
    freeze_vlm = _config_field("freeze_vlm")
    vlm_dtype = _config_field("vlm_dtype")
    expert_autocast = _config_field("expert_autocast")
    variant = _config_field("variant")
    state_in_prompt = _config_field("state_in_prompt")
    norm_stats = _config_field("norm_stats")

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Box,
        lr_schedule: Schedule,
        config: VLAConfig | None = None,
        *,
        num_denoise_steps: int = 4,
        noise_level: float = 0.2,
        net_arch: dict[str, list[int]] | list[int] | None = None,
        activation_fn: type[nn.Module] = nn.SiLU,
        optimizer_class: type[th.optim.Optimizer] = th.optim.AdamW,
        optimizer_kwargs: dict[str, Any] | None = None,
        value_head: bool = False,
        normalize_images: bool = True,
        **config_fields,
    ):
        backbones.import_transformers()  # ImportError naming the [vla] extra
        config = VLAConfig.merge(config, **config_fields)
        if config.vlm is None:
            raise ValueError(
                "FlowVLAPolicy needs a backbone: policy_kwargs=dict(vlm=...) with a Hub id / local directory, a "
                "transformers config (e.g. sb3_stepnft.vla.testing.tiny_paligemma_config()) or a module."
            )
        if not isinstance(observation_space, spaces.Dict):
            raise TypeError(
                f"FlowVLAPolicy needs Dict observations (cameras, state, instruction tokens), got {observation_space}. "
                "Wrap the env with sb3_stepnft.wrappers.TokenizeInstruction (it also turns the observation into a Dict)."
            )
        # BasePolicy set-up without a features extractor: the VLM is the encoder.
        super().__init__(
            observation_space,
            action_space,
            num_denoise_steps=num_denoise_steps,
            noise_level=noise_level,
            chunk_size=config.chunk_size,
            action_dim=config.action_dim,
            net_arch=net_arch if net_arch is not None else dict(vf=list(self.default_vf_arch)),
            activation_fn=activation_fn,
            value_head=value_head,
            normalize_images=normalize_images,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
        )
        self.config = self._resolve_keys(
            observation_space, config.replace(chunk_size=self.chunk_size, action_dim=self.action_dim)
        )
        self.backbone_observations = 0  # observations the backbone has encoded (each costs one prefix pass)
        self.backbone_calls = 0
        self._build(lr_schedule)

    def _build_networks(self) -> None:
        """The VLM (frozen by default), its prefix-encoder adapter, the action expert and the feature layout."""
        config = self.config
        self.vlm = backbones.build_vlm(config.vlm, dtype=config.vlm_dtype)
        if config.vlm_dtype is not None:
            self.vlm.to(config.vlm_dtype)
        self.backbone = backbones.make_backbone(self.vlm)
        self._check_vocab()
        if config.freeze_vlm:
            self.vlm.requires_grad_(False)
            self.vlm.eval()
        state_dim = int(config.state_dim or self._state_size or 1)
        if self._state_size and state_dim < self._state_size:
            raise ValueError(f"state_dim={state_dim} is smaller than the observation's state ({self._state_size})")
        expert_width = int(config.expert_width or max(8, self.backbone.hidden_size // 2))
        if expert_width % 2:
            raise ValueError(f"expert_width must be even (sine-cosine time embedding), got {expert_width}")
        # the resolved architecture, with the VLM as its config (portable: rebuilt offline on load) and its dtype
        self.config = config = config.replace(
            vlm=self.vlm.config,
            state_dim=state_dim,
            expert_width=expert_width,
            vlm_dtype=self.backbone.dtype if self.backbone.dtype in VLM_DTYPES.values() else config.vlm_dtype,
        )
        if config.expert == "shared":
            self.expert = experts.SharedAttentionExpert(
                self.backbone.text_config,
                expert_width,
                self.action_dim,
                state_dim,
                config.expert_intermediate_size,
                variant=config.variant,
            )
            self.expert.gradient_checkpointing = bool(config.expert_gradient_checkpointing)
        else:
            self.expert = experts.CrossAttentionExpert(
                self.backbone.hidden_size,
                expert_width,
                self.action_dim,
                state_dim,
                self.chunk_size,
                layers=config.expert_layers,
                heads=config.expert_heads,
            )
        self.features_dim = self.backbone.hidden_size + state_dim  # the critic's input
        self._layout = self._feature_layout()
        self._apply_action_stats()

    def _apply_action_stats(self) -> None:
        """With ``norm_stats``, the flow's [-1, 1] actions map to ``mean ± std`` / ``[q01, q99]`` (the checkpoint's
        unnormalisation) instead of the action space's bounds."""
        stats = self.norm_stats
        if stats is None:
            return
        first, second = (stats["actions"][k] for k in (("mean", "std") if stats["mode"] == "mean_std" else ("q01", "q99")))
        first = th.as_tensor(first, dtype=th.float32)[: self.real_action_dim]
        second = th.as_tensor(second, dtype=th.float32)[: self.real_action_dim]
        if first.numel() < self.real_action_dim:
            raise ValueError(
                f"norm_stats has action statistics for {first.numel()} dims, the action space has {self.real_action_dim}"
            )
        low, high = (first - second, first + second) if stats["mode"] == "mean_std" else (first, second)
        self.set_action_bounds(low, high)

    def normalize_state(self, state: th.Tensor) -> th.Tensor:
        """``(B, S)`` raw state → normalised with ``norm_stats`` (its first dims; identity without statistics)."""
        stats = self.norm_stats
        if stats is None:
            return state
        if stats["mode"] == "mean_std":
            center, spread = (th.as_tensor(stats["state"][k], dtype=state.dtype, device=state.device) for k in ("mean", "std"))
            n = min(state.shape[1], center.numel())
            normalized = (state[:, :n] - center[:n]) / (spread[:n] + 1e-6)
        else:
            q01, q99 = (th.as_tensor(stats["state"][k], dtype=state.dtype, device=state.device) for k in ("q01", "q99"))
            n = min(state.shape[1], q01.numel())
            normalized = quantile_normalize(state[:, :n], q01[:n], q99[:n])
        return th.cat([normalized, state[:, n:]], dim=1)

    @classmethod
    def from_openpi_checkpoint(cls, path, observation_space: spaces.Dict, action_space: spaces.Box, **kwargs) -> FlowVLAPolicy:
        """A policy with the architecture, weights and normalisation statistics of a local π0 or π0.5 checkpoint
        (LeRobot / openpi PyTorch layout; the variant is detected from ``time_mlp_in`` / AdaRMS keys), loaded strictly.
        With an algorithm: ``StepNFT(FlowVLAPolicy, env, policy_kwargs=openpi_policy_kwargs(path))`` then
        ``model.policy.load_checkpoint(path)`` (docs/vla.md)."""
        from sb3_stepnft.vla.pi0 import from_openpi_checkpoint

        return from_openpi_checkpoint(cls, path, observation_space, action_space, **kwargs)

    @classmethod
    def from_pi0(cls, path, observation_space: spaces.Dict, action_space: spaces.Box, **kwargs) -> FlowVLAPolicy:
        """:meth:`from_openpi_checkpoint` for a π0 checkpoint (a π0.5 one is an error)."""
        from sb3_stepnft.vla.pi0 import from_pi0

        return from_pi0(cls, path, observation_space, action_space, **kwargs)

    @classmethod
    def from_pi05(cls, path, observation_space: spaces.Dict, action_space: spaces.Box, **kwargs) -> FlowVLAPolicy:
        """:meth:`from_openpi_checkpoint` for a π0.5 checkpoint (a π0 one is an error)."""
        from sb3_stepnft.vla.pi0 import from_pi05

        return from_pi05(cls, path, observation_space, action_space, **kwargs)

    def load_checkpoint(self, path) -> None:
        """Load a local π0 / π0.5 checkpoint (LeRobot / openpi PyTorch layout) of this policy's variant, strictly."""
        from sb3_stepnft.vla.pi0 import load_checkpoint_into

        load_checkpoint_into(self, path)

    load_pi0 = load_checkpoint

    # ------------------------------------------------------------------------------------------------- set-up
    def _resolve_keys(self, space: spaces.Dict, config: VLAConfig) -> VLAConfig:
        """Check the observation keys against the config; returns it with the camera and state keys resolved."""
        keys = set(space.spaces)
        camera_keys = config.camera_keys
        if camera_keys is None:
            camera_keys = tuple(sorted(k for k, s in space.spaces.items() if is_image_space(s, check_channels=False)))
        missing = [k for k in camera_keys if k not in keys]
        if missing:
            raise KeyError(f"camera_keys {missing} are not in the observation space (keys: {sorted(keys)})")
        for key in camera_keys:
            if not is_image_space(space[key], check_channels=False):
                raise ValueError(f"Observation key {key!r} is not an image (Box uint8 of 3 dims): {space[key]}")
        state_key = config.state_key
        if state_key is not None and state_key not in keys:
            if state_key != "state":
                raise KeyError(f"state_key {state_key!r} is not in the observation space (keys: {sorted(keys)})")
            state_key = None
        self._state_size = int(np.prod(space[state_key].shape)) if state_key else 0
        ids_key, mask_key = config.instruction_keys
        self.has_instruction = ids_key in keys
        if self.has_instruction and mask_key not in keys:
            raise KeyError(f"Observation has {ids_key!r} but no {mask_key!r}: use sb3_stepnft.wrappers.TokenizeInstruction")
        if self.has_instruction and not np.issubdtype(space[ids_key].dtype, np.integer):
            raise TypeError(f"{ids_key!r} must hold integer token ids (Box int64), got {space[ids_key]}")
        if not camera_keys and not self.has_instruction:
            raise ValueError(
                f"FlowVLAPolicy found neither camera images nor instruction tokens in the observation (keys: {sorted(keys)}). "
                "Add image keys (Box uint8) and/or wrap the env with sb3_stepnft.wrappers.TokenizeInstruction; for "
                "state-only tasks use MlpPolicy."
            )
        unused = keys - set(camera_keys) - {state_key} - ({ids_key, mask_key} if self.has_instruction else set())
        self.unused_keys = tuple(sorted(unused))
        return config.replace(camera_keys=tuple(camera_keys), state_key=state_key)

    def _check_vocab(self) -> None:
        if not self.has_instruction:
            return
        high = int(np.max(self.observation_space[self.instruction_keys[0]].high))
        if high >= self.backbone.vocab_size:
            raise ValueError(
                f"Instruction token ids go up to {high} but the VLM's vocabulary has {self.backbone.vocab_size} entries: "
                "tokenise with the VLM's own tokenizer (or give the test VLM a larger vocab_size)."
            )

    @property
    def prefix_length(self) -> int:
        """Prefix tokens per observation: every camera's image tokens, then the instruction's (padded) tokens."""
        text = int(self.observation_space[self.instruction_keys[0]].shape[-1]) if self.has_instruction else 0
        return len(self.camera_keys) * self.backbone.tokens_per_image + text

    def _feature_layout(self) -> list[tuple[str, tuple[int, ...]]]:
        """Field shapes of one observation's flat feature vector (:class:`VLAFeatures`), derived from the configs
        (no VLM pass; tests/policies/test_vla.py checks it against a real ``encode``)."""
        length, hidden = self.prefix_length, self.backbone.hidden_size
        layout = [("mask", (length,)), ("state", (self.state_dim,)), ("pooled", (hidden,))]
        if self.expert_kind == "shared":
            layout.append(("kv", self.backbone.kv_shape(length)))
        else:
            layout.append(("hidden", (length, hidden)))
        return layout

    @property
    def vf_arch(self) -> list[int]:
        """``net_arch["vf"]``, or ``net_arch`` itself when it is a list (the VLA has no MLP velocity net)."""
        return super().vf_arch if isinstance(self.net_arch, dict) else list(self.net_arch)

    def train(self, mode: bool = True) -> FlowVLAPolicy:
        """Train mode for the expert only: a frozen VLM stays in eval mode (SB3's set_training_mode cannot flip it)."""
        super().train(mode)
        if self.freeze_vlm:
            self.vlm.eval()
        return self

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        del data["chunk_size"], data["action_dim"]  # in the config
        data["config"] = self.config  # resolved; the VLM as its config, the weights come from the state dict
        return data

    def portable_policy_kwargs(self, policy_kwargs: dict[str, Any]) -> dict[str, Any]:
        """``policy_kwargs`` to store in a model checkpoint: the VLM as its config, so ``load`` rebuilds it without
        the Hub or the original directory (the weights come from the checkpoint)."""
        kwargs = dict(policy_kwargs)
        kwargs["vlm"] = self.vlm.config
        return kwargs

    # ------------------------------------------------------------------------------------------ flow interface
    @property
    def encoder_is_frozen(self) -> bool:
        return self.freeze_vlm

    def resolve_feature_cache(self, n_observations: int) -> bool:
        """Decide (and remember in ``cache_features``) whether algorithms store the prefix features."""
        if self.prefix_cache == "auto":
            self.cache_features = self.freeze_vlm and self.feature_bytes * n_observations <= self.prefix_cache_budget
        else:
            self.cache_features = self.prefix_cache == "buffer"
        return self.cache_features

    @property
    def feature_size(self) -> int:
        """Floats in one observation's flat feature vector."""
        return int(sum(np.prod(shape) for _, shape in self._layout))

    @property
    def feature_bytes(self) -> int:
        return 4 * self.feature_size

    def _pixels(self, image: th.Tensor, space: spaces.Box) -> th.Tensor:
        """uint8 image batch → float pixels in [-1, 1] at the vision tower's resolution, channel-first."""
        if not is_image_space_channels_first(space):
            image = image.permute(0, 3, 1, 2)
        pixels = image.float()
        if self.normalize_images:
            pixels = pixels / 255.0
        pixels = pixels * 2.0 - 1.0
        return backbones.resize_with_pad(pixels, self.backbone.image_size)

    def encode(self, obs: PyTorchObs) -> VLAFeatures:
        """Run the frozen VLM once over the prefix (cameras + instruction) of a batch of observations."""
        if not isinstance(obs, dict):
            raise TypeError("FlowVLAPolicy.encode needs a dict of observation tensors")
        grad = th.enable_grad() if (not self.freeze_vlm and th.is_grad_enabled()) else th.no_grad()
        with grad:
            images = [self._pixels(obs[key], self.observation_space[key]) for key in self.camera_keys]
            ids = mask = None
            if self.has_instruction:
                ids = obs[self.instruction_keys[0]].long()  # raw ids: never through preprocess_obs (VLA.md §4)
                mask = obs[self.instruction_keys[1]].bool()
            hidden, kv, valid = self.backbone.encode(images, ids, mask)
        batch = valid.shape[0]
        self.backbone_observations += batch
        self.backbone_calls += 1
        if self.state_key is not None:
            state = self.normalize_state(obs[self.state_key].reshape(batch, -1).float())
            state = nn.functional.pad(state, (0, self.state_dim - state.shape[1]))
        else:
            state = th.zeros(batch, self.state_dim, device=valid.device)
        # the boundary: whatever the VLM's dtype (vlm_dtype), the expert (float32 weights) reads float32 features
        weights = valid.float()[..., None]
        pooled = (hidden.float() * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return VLAFeatures(
            mask=valid,
            state=state,
            pooled=pooled,
            kv=kv.float() if self.expert_kind == "shared" else None,
            hidden=hidden.float() if self.expert_kind == "cross" else None,
        )

    def features_to_flat(self, feats: VLAFeatures) -> th.Tensor:
        """``(B, feature_size)`` float32 rows, to store in a buffer."""
        for name, shape in self._layout:
            if tuple(getattr(feats, name).shape[1:]) != shape:
                raise RuntimeError(
                    f"VLA feature {name!r} has shape {tuple(getattr(feats, name).shape[1:])}, the layout derived from the "
                    f"configs expects {shape}: the backbone adapter's tokens_per_image does not match this VLM "
                    "(report it with the model id; prefix_cache='recompute' avoids the flat layout meanwhile)."
                )
        return th.cat([getattr(feats, name).reshape(len(feats), -1).float() for name, _ in self._layout], dim=1)

    def features_from_flat(self, flat: th.Tensor) -> VLAFeatures:
        """Inverse of :meth:`features_to_flat` (views, no copy)."""
        fields, start = {}, 0
        for name, shape in self._layout:
            size = int(np.prod(shape))
            fields[name] = flat[:, start : start + size].reshape(flat.shape[0], *shape)
            start += size
        fields["mask"] = fields["mask"] > 0.5
        return VLAFeatures(**fields)

    def velocity(self, x_t: th.Tensor, t: th.Tensor, features: VLAFeatures) -> th.Tensor:
        """One pass of the action expert: ``(B, chunk_size, action_dim)`` from ``x_t`` of that shape and ``t`` (B,);
        float32 (with ``expert_autocast``, computed under bf16 autocast on the inputs' device)."""
        t = th.as_tensor(t, device=x_t.device, dtype=th.float32)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        if not self.config.expert_autocast:
            return self.expert(x_t.float(), t, features)
        with th.autocast(device_type=x_t.device.type, dtype=th.bfloat16):
            velocity = self.expert(x_t.float(), t, features)
        return velocity.float()

    def value_input(self, features: VLAFeatures) -> th.Tensor:
        """The critic's input: the pooled prefix and the padded state."""
        return th.cat([features.pooled, features.state], dim=1)
