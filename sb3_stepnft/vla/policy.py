"""``FlowVLAPolicy``: a frozen ``transformers`` vision-language backbone and a trainable flow action expert.

The policy has the interface of every flow policy (:class:`~sb3_stepnft.common.policies.FlowPolicy`): ``encode``
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
from stable_baselines3.common.torch_layers import create_mlp
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from torch import nn

from sb3_stepnft.common.policies import DEFAULT_OPTIMIZER_KWARGS, FlowPolicy
from sb3_stepnft.vla import backbones

PREFIX_CACHE_MODES = ("auto", "buffer", "recompute")
EXPERTS = ("shared", "cross")


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


class FlowVLAPolicy(FlowPolicy):
    """π0-style vision-language-action flow policy (alias ``"VLAPolicy"``).

    Observations are a Dict with one or more camera images (``Box`` uint8, channel-first or -last), an optional
    proprio ``state`` vector, and the instruction as token ids plus a mask (``instruction_ids``: ``Box(int64)``,
    ``instruction_mask``: ``MultiBinary``; see :class:`sb3_stepnft.wrappers.TokenizeInstruction`).

    :param observation_space: Dict observation space.
    :param action_space: Box(A) or Box(H_exec, A) action space with finite bounds.
    :param lr_schedule: Learning-rate schedule.
    :param vlm: The backbone: a Hub id or local directory (``AutoModelForImageTextToText.from_pretrained``), a
        ``transformers`` config (``from_config``, random weights) or an ``nn.Module``. Families: PaliGemma (π0) and
        SmolVLM / Idefics3.
    :param expert: ``"shared"`` (π0: the expert's tokens attend to the VLM's per-layer keys/values) or ``"cross"``
        (a small cross-attention decoder over the prefix hidden states).
    :param expert_width: Width of the expert (default: half the VLM text width, as π0's 1024 vs 2048).
    :param expert_intermediate_size: MLP size of the shared expert (default 4 × width).
    :param expert_layers: Layers of the cross expert (the shared expert has the VLM's layer count).
    :param expert_heads: Attention heads of the cross expert.
    :param chunk_size: Rows the expert outputs (>= the executed rows of the action space).
    :param action_dim: Action dims the expert outputs (>= the env's; extra dims are padding, 32 in π0).
    :param state_dim: Padded proprio state size (default: the state's size; 32 in π0).
    :param num_denoise_steps: K, solver steps (rollouts, ``predict`` and the losses; the policy's solver owns it).
    :param noise_level: ``a`` of the Flow-SDE rollout steps (set by the algorithm's ``noise_level``).
    :param camera_keys: Image keys fed to the VLM, in order (default: every image key, sorted).
    :param state_key: Proprio state key (None: no state; the state token is then zero).
    :param instruction_keys: ``(ids_key, mask_key)`` of the tokenised instruction (absent keys: no text).
    :param prefix_cache: ``"buffer"`` (algorithms store the prefix features, the update runs only the expert),
        ``"recompute"`` (they store observations and recompute the prefix under ``no_grad`` once per minibatch) or
        ``"auto"`` (buffer when the features of one rollout fit in ``prefix_cache_budget`` bytes).
    :param prefix_cache_budget: Byte budget of ``"auto"`` (default 2 GB).
    :param freeze_vlm: Keep the VLM frozen and in eval mode (required for caching; the default).
    :param vlm_dtype: dtype of the VLM (e.g. ``torch.bfloat16`` on a GPU); the expert stays float32.
    :param net_arch: ``dict(vf=[...])``: hidden sizes of the optional value head (FlowPPO).
    :param activation_fn: Activation of the value head.
    :param optimizer_class: Optimizer of the trainable parameters (expert, heads, critic).
    :param optimizer_kwargs: Its keyword arguments (default AdamW betas (0.9, 0.95), eps 1e-5, weight decay 0.01).
    :param value_head: Add a critic on the detached pooled prefix and state (FlowPPO switches it on).
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Box,
        lr_schedule: Schedule,
        vlm: Any = None,
        expert: str = "shared",
        expert_width: int | None = None,
        expert_intermediate_size: int | None = None,
        expert_layers: int = 2,
        expert_heads: int = 2,
        chunk_size: int | None = None,
        action_dim: int | None = None,
        state_dim: int | None = None,
        num_denoise_steps: int = 4,
        noise_level: float = 0.2,
        camera_keys: list[str] | tuple[str, ...] | None = None,
        state_key: str | None = "state",
        instruction_keys: tuple[str, str] = ("instruction_ids", "instruction_mask"),
        prefix_cache: str = "auto",
        prefix_cache_budget: float = 2e9,
        freeze_vlm: bool = True,
        vlm_dtype: th.dtype | None = None,
        net_arch: dict[str, list[int]] | list[int] | None = None,
        activation_fn: type[nn.Module] = nn.SiLU,
        optimizer_class: type[th.optim.Optimizer] = th.optim.AdamW,
        optimizer_kwargs: dict[str, Any] | None = None,
        value_head: bool = False,
        normalize_images: bool = True,
    ):
        backbones.import_transformers()  # ImportError naming the [vla] extra
        if vlm is None:
            raise ValueError(
                "FlowVLAPolicy needs a backbone: policy_kwargs=dict(vlm=...) with a Hub id / local directory, a "
                "transformers config (e.g. sb3_stepnft.vla.tiny_paligemma_config()) or a module."
            )
        if expert not in EXPERTS:
            raise ValueError(f"Unknown expert={expert!r}: use one of {EXPERTS}")
        if prefix_cache not in PREFIX_CACHE_MODES:
            raise ValueError(f"Unknown prefix_cache={prefix_cache!r}: use one of {PREFIX_CACHE_MODES}")
        if prefix_cache == "buffer" and not freeze_vlm:
            raise ValueError("prefix_cache='buffer' needs freeze_vlm=True: only a frozen backbone may be cached")
        if optimizer_kwargs is None:
            optimizer_kwargs = dict(DEFAULT_OPTIMIZER_KWARGS) if optimizer_class is th.optim.AdamW else {}
        if not isinstance(observation_space, spaces.Dict):
            raise TypeError(
                f"FlowVLAPolicy needs Dict observations (cameras, state, instruction tokens), got {observation_space}. "
                "Wrap the env with sb3_stepnft.wrappers.TokenizeInstruction (it also turns the observation into a Dict)."
            )
        # BasePolicy set-up without a features extractor: the VLM is the encoder.
        super(FlowPolicy, self).__init__(
            observation_space,
            action_space,
            normalize_images=normalize_images,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
            squash_output=False,
        )
        self._setup_flow(action_space, chunk_size, action_dim, num_denoise_steps, noise_level)
        self.net_arch = net_arch if net_arch is not None else dict(vf=[256, 256])
        self.activation_fn = activation_fn
        self.value_head = bool(value_head)
        self.expert_kind = expert
        self.expert_intermediate_size = expert_intermediate_size
        self.expert_layers = int(expert_layers)
        self.expert_heads = int(expert_heads)
        self.prefix_cache = prefix_cache
        self.prefix_cache_budget = float(prefix_cache_budget)
        self.freeze_vlm = bool(freeze_vlm)
        self.vlm_dtype = vlm_dtype
        self._check_keys(observation_space, camera_keys, state_key, instruction_keys)

        self.vlm = backbones.build_vlm(vlm, dtype=vlm_dtype)
        if vlm_dtype is not None:
            self.vlm.to(vlm_dtype)
        self.backbone = backbones.make_backbone(self.vlm)
        self._check_vocab()
        if self.freeze_vlm:
            self.vlm.requires_grad_(False)
            self.vlm.eval()
        self.state_dim = int(state_dim or self._state_size or 1)
        if self._state_size and self.state_dim < self._state_size:
            raise ValueError(f"state_dim={self.state_dim} is smaller than the observation's state ({self._state_size})")
        self.expert_width = int(expert_width or max(8, self.backbone.hidden_size // 2))
        if self.expert_width % 2:
            raise ValueError(f"expert_width must be even (sine-cosine time embedding), got {self.expert_width}")
        if expert == "shared":
            self.expert = backbones.SharedAttentionExpert(
                self.backbone.text_config, self.expert_width, self.action_dim, self.state_dim, expert_intermediate_size
            )
        else:
            self.expert = backbones.CrossAttentionExpert(
                self.backbone.hidden_size,
                self.expert_width,
                self.action_dim,
                self.state_dim,
                self.chunk_size,
                layers=self.expert_layers,
                heads=self.expert_heads,
            )
        self.features_dim = self.backbone.hidden_size + self.state_dim  # the critic's input
        self.backbone_observations = 0  # observations the backbone has encoded (each costs one prefix pass)
        self.backbone_calls = 0
        self.cache_features = False
        self._layout = self._feature_layout()
        self._build_extra_heads()
        self.optimizer = self.optimizer_class(self._optimizer_parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    @classmethod
    def from_pi0(cls, path, observation_space: spaces.Dict, action_space: spaces.Box, **kwargs) -> FlowVLAPolicy:
        """A policy with π0's architecture and the weights of a local π0 checkpoint (LeRobot / openpi PyTorch layout),
        loaded strictly. With an algorithm: ``StepNFT(FlowVLAPolicy, env, policy_kwargs=pi0_policy_kwargs(path))``
        then ``model.policy.load_pi0(path)`` (docs/vla.md)."""
        from sb3_stepnft.vla.pi0 import from_pi0

        return from_pi0(cls, path, observation_space, action_space, **kwargs)

    def load_pi0(self, path) -> None:
        """Load a local π0 checkpoint (LeRobot / openpi PyTorch layout) into this policy, strictly."""
        from sb3_stepnft.vla.pi0 import load_pi0_into

        load_pi0_into(self, path)

    # ------------------------------------------------------------------------------------------------- set-up
    def _check_keys(self, space: spaces.Dict, camera_keys, state_key, instruction_keys) -> None:
        keys = set(space.spaces)
        if camera_keys is None:
            camera_keys = sorted(k for k, s in space.spaces.items() if is_image_space(s, check_channels=False))
        missing = [k for k in camera_keys if k not in keys]
        if missing:
            raise KeyError(f"camera_keys {missing} are not in the observation space (keys: {sorted(keys)})")
        for key in camera_keys:
            if not is_image_space(space[key], check_channels=False):
                raise ValueError(f"Observation key {key!r} is not an image (Box uint8 of 3 dims): {space[key]}")
        self.camera_keys = tuple(camera_keys)
        if state_key is not None and state_key not in keys:
            if state_key != "state":
                raise KeyError(f"state_key {state_key!r} is not in the observation space (keys: {sorted(keys)})")
            state_key = None
        self.state_key = state_key
        self._state_size = int(np.prod(space[state_key].shape)) if state_key else 0
        ids_key, mask_key = instruction_keys
        self.instruction_keys = (ids_key, mask_key)
        self.has_instruction = ids_key in keys
        if self.has_instruction and mask_key not in keys:
            raise KeyError(f"Observation has {ids_key!r} but no {mask_key!r}: use sb3_stepnft.wrappers.TokenizeInstruction")
        if self.has_instruction and not np.issubdtype(space[ids_key].dtype, np.integer):
            raise TypeError(f"{ids_key!r} must hold integer token ids (Box int64), got {space[ids_key]}")
        if not self.camera_keys and not self.has_instruction:
            raise ValueError(
                f"FlowVLAPolicy found neither camera images nor instruction tokens in the observation (keys: {sorted(keys)}). "
                "Add image keys (Box uint8) and/or wrap the env with sb3_stepnft.wrappers.TokenizeInstruction; for "
                "state-only tasks use MlpPolicy."
            )
        unused = (
            keys - set(self.camera_keys) - {self.state_key} - (set(self.instruction_keys) if self.has_instruction else set())
        )
        self.unused_keys = tuple(sorted(unused))

    def _check_vocab(self) -> None:
        if not self.has_instruction:
            return
        high = int(np.max(self.observation_space[self.instruction_keys[0]].high))
        if high >= self.backbone.vocab_size:
            raise ValueError(
                f"Instruction token ids go up to {high} but the VLM's vocabulary has {self.backbone.vocab_size} entries: "
                "tokenise with the VLM's own tokenizer (or give the test VLM a larger vocab_size)."
            )

    def _feature_layout(self) -> list[tuple[str, tuple[int, ...]]]:
        """Field shapes of one observation's flat feature vector, found by encoding a blank observation."""
        dummy = {}
        for key, space in self.observation_space.spaces.items():
            dummy[key] = th.as_tensor(np.zeros((1, *space.shape), dtype=space.dtype), device=self.device)
        if self.has_instruction:
            dummy[self.instruction_keys[1]][:] = 1
        feats = self.encode(dummy)
        self.backbone_observations, self.backbone_calls = 0, 0
        names = [name for name in ("mask", "state", "pooled", "kv", "hidden") if getattr(feats, name) is not None]
        return [(name, tuple(getattr(feats, name).shape[1:])) for name in names]

    def _build(self, lr_schedule: Schedule) -> None:  # FlowPolicy's MLP velocity net is not used
        raise NotImplementedError

    def _build_extra_heads(self) -> None:
        if self.value_head:
            self.value_net = nn.Sequential(*create_mlp(self.features_dim, 1, self.vf_arch, self.activation_fn))

    @property
    def vf_arch(self) -> list[int]:
        return list(self.net_arch.get("vf", [256, 256])) if isinstance(self.net_arch, dict) else list(self.net_arch)

    def train(self, mode: bool = True) -> FlowVLAPolicy:
        """Train mode for the expert only: a frozen VLM stays in eval mode (SB3's set_training_mode cannot flip it)."""
        super().train(mode)
        if self.freeze_vlm:
            self.vlm.eval()
        return self

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super(FlowPolicy, self)._get_constructor_parameters()
        data.update(
            dict(
                vlm=self.vlm.config,  # rebuilt from its config on load; the weights come from the state dict
                expert=self.expert_kind,
                expert_width=self.expert_width,
                expert_intermediate_size=self.expert_intermediate_size,
                expert_layers=self.expert_layers,
                expert_heads=self.expert_heads,
                chunk_size=self.chunk_size,
                action_dim=self.action_dim,
                state_dim=self.state_dim,
                num_denoise_steps=self.num_denoise_steps,
                noise_level=self.noise_level,
                camera_keys=self.camera_keys,
                state_key=self.state_key,
                instruction_keys=self.instruction_keys,
                prefix_cache=self.prefix_cache,
                prefix_cache_budget=self.prefix_cache_budget,
                freeze_vlm=self.freeze_vlm,
                vlm_dtype=self.vlm_dtype,
                net_arch=self.net_arch,
                activation_fn=self.activation_fn,
                optimizer_class=self.optimizer_class,
                optimizer_kwargs=self.optimizer_kwargs,
                value_head=self.value_head,
                lr_schedule=self._dummy_schedule,
            )
        )
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
            state = obs[self.state_key].reshape(batch, -1).float()
            state = nn.functional.pad(state, (0, self.state_dim - state.shape[1]))
        else:
            state = th.zeros(batch, self.state_dim, device=valid.device)
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
        """One pass of the action expert: ``(B, chunk_size, action_dim)`` from ``x_t`` of that shape and ``t`` (B,)."""
        t = th.as_tensor(t, device=x_t.device, dtype=th.float32)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        return self.expert(x_t.float(), t, features)

    def value_from_features(self, features: VLAFeatures) -> th.Tensor:
        if not self.value_head:
            return super().value_from_features(features)
        return self.value_net(th.cat([features.pooled, features.state], dim=1).detach().float())
