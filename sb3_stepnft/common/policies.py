"""Flow-matching policies: an SB3 ``BasePolicy`` whose action head is a velocity field.

:class:`BaseFlowPolicy` holds what every flow policy shares; :class:`FlowPolicy` (SB3 features extractor + MLP
velocity net: ``MlpFlowPolicy``, ``CnnFlowPolicy``, ``MultiInputFlowPolicy``) and
:class:`~sb3_stepnft.vla.policy.FlowVLAPolicy` (frozen VLM + action expert) are its siblings.

The policy acts (:meth:`BaseFlowPolicy.encode`, :meth:`BaseFlowPolicy.velocity`, :meth:`BaseFlowPolicy.sample`);
the algorithms decide which solver steps are stochastic and what to store. Actions live in [-1, 1] per Box
dimension inside the flow ("normalised"); :meth:`BaseFlowPolicy._predict` returns env units.
"""

import math
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.torch_layers import (
    BaseFeaturesExtractor,
    CombinedExtractor,
    FlattenExtractor,
    NatureCNN,
    create_mlp,
)
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from torch import nn

from sb3_stepnft.common.checks import check_action_bounds, check_observation_space, normalize_net_arch
from sb3_stepnft.common.flow import FlowChain, FlowSolver, SamplingPlan

DEFAULT_OPTIMIZER_KWARGS = dict(betas=(0.9, 0.95), eps=1e-5, weight_decay=0.01)  # ALGORITHM.md §3.7


def chunk_shape(action_space: spaces.Box) -> tuple[int, int]:
    """``(H, A)`` of a Box action space: Box(A) is a chunk of one row, Box(H, A) a chunk of H rows."""
    if not isinstance(action_space, spaces.Box):
        raise TypeError(f"Flow policies need a Box action space, got {action_space}")
    if len(action_space.shape) == 1:
        return 1, int(action_space.shape[0])
    if len(action_space.shape) == 2:
        return int(action_space.shape[0]), int(action_space.shape[1])
    raise ValueError(
        f"Flow policies support Box(A) or Box(H, A) action spaces, got shape {action_space.shape}. "
        "Flatten the extra dimensions with a gymnasium wrapper."
    )


class SinusoidalTimeEmbedding(nn.Module):
    """Fixed sinusoidal features of the flow time t in [0, 1]."""

    def __init__(self, dim: int, max_period: float = 100.0):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"time_embed_dim must be an even integer >= 2, got {dim}")
        freqs = th.exp(-math.log(max_period) * th.arange(dim // 2, dtype=th.float32) / (dim // 2))
        self.register_buffer("freqs", freqs * 2 * math.pi, persistent=False)

    def forward(self, t: th.Tensor) -> th.Tensor:
        angles = t.float()[:, None] * self.freqs[None]
        return th.cat([th.sin(angles), th.cos(angles)], dim=-1)


class BaseFlowPolicy(BasePolicy):
    """What every flow policy shares: an SB3 ``BasePolicy`` whose action head is a velocity field.

    Owns the policy's :class:`~sb3_stepnft.common.flow.FlowSolver` (``self.solver``: K and the noise level), the
    chunk geometry and action conversion, :meth:`sample` (with an injected ``x_0`` / ``generator``), SB3's
    :meth:`_predict`, the optional value head, :meth:`trainable_parameters` and the feature-cache interface.
    Subclasses set up their encoder and velocity network in :meth:`_build_networks` and define :meth:`encode` and
    :meth:`velocity`: :class:`FlowPolicy` (SB3 features extractor + MLP) and
    :class:`~sb3_stepnft.vla.policy.FlowVLAPolicy` (frozen VLM + action expert) are siblings under this base.
    Algorithms accept any ``BaseFlowPolicy``.

    A subclass's ``__init__`` calls ``super().__init__(...)``, sets its own attributes, then ``self._build(lr_schedule)``.

    :param num_denoise_steps: K, the number of solver steps (rollouts, ``predict`` and every loss).
    :param noise_level: ``a``, the noise level of the Flow-SDE steps of training rollouts. K and ``a`` live in the
        policy's :class:`~sb3_stepnft.common.flow.FlowSolver` (``policy.solver``), their one owner; algorithms pass
        their own ``num_denoise_steps``/``noise_level`` arguments here.
    :param chunk_size: Rows the velocity network outputs (>= the executed rows H of the action space; None: H).
    :param action_dim: Action dims the velocity network outputs (>= the env's A, extra dims are padding; None: A).
    :param net_arch: Network sizes (see the subclass); ``net_arch["vf"]`` sizes the value head.
    :param activation_fn: Activation of the MLPs.
    :param value_head: Add a critic: an MLP (:attr:`vf_arch`) on the detached observation features (the critic
        never trains the encoder, ALGORITHM.md §4). The optimizer then has two parameter groups, ``"actor"`` and
        ``"critic"``. Algorithms that need it (FlowPPO) switch it on.
    :param optimizer_kwargs: Optimizer keyword arguments, excluding the learning rate
        (default for AdamW: ``betas=(0.9, 0.95), eps=1e-5, weight_decay=0.01``).
    """

    default_vf_arch: tuple[int, ...] = (64, 64)
    features_dim: int  # size of the value head's input

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box,
        *,
        num_denoise_steps: int = 4,
        noise_level: float = 0.2,
        chunk_size: int | None = None,
        action_dim: int | None = None,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] = nn.SiLU,
        value_head: bool = False,
        features_extractor_class: type[BaseFeaturesExtractor] = FlattenExtractor,
        features_extractor_kwargs: dict[str, Any] | None = None,
        normalize_images: bool = True,
        optimizer_class: type[th.optim.Optimizer] = th.optim.AdamW,
        optimizer_kwargs: dict[str, Any] | None = None,
    ):
        if optimizer_kwargs is None:
            optimizer_kwargs = dict(DEFAULT_OPTIMIZER_KWARGS) if optimizer_class is th.optim.AdamW else {}
        super().__init__(
            observation_space,
            action_space,
            features_extractor_class,
            features_extractor_kwargs,
            normalize_images=normalize_images,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
            squash_output=False,
        )
        self._setup_flow(action_space, chunk_size, action_dim, num_denoise_steps, noise_level)
        self.net_arch = net_arch
        self.activation_fn = activation_fn
        self.value_head = bool(value_head)
        self.cache_features = False

    def _setup_flow(self, action_space: spaces.Box, chunk_size, action_dim, num_denoise_steps, noise_level=0.2) -> None:
        """Chunk geometry, the solver (K and the noise level) and action bounds (shared by every flow policy)."""
        self.executed_rows, self.real_action_dim = chunk_shape(action_space)
        check_action_bounds(action_space)  # finite bounds, and no dimension with low == high
        self.chunk_size = chunk_size or self.executed_rows
        self.action_dim = action_dim or self.real_action_dim
        if self.chunk_size < self.executed_rows or self.action_dim < self.real_action_dim:
            raise ValueError(
                f"chunk_size={self.chunk_size} and action_dim={self.action_dim} must be at least the action space's "
                f"(H, A) = ({self.executed_rows}, {self.real_action_dim})"
            )
        self.solver = FlowSolver(num_denoise_steps, noise_level)
        low = th.as_tensor(np.broadcast_to(action_space.low, action_space.shape).copy(), dtype=th.float32)
        high = th.as_tensor(np.broadcast_to(action_space.high, action_space.shape).copy(), dtype=th.float32)
        shape = (self.executed_rows, self.real_action_dim)
        for name in ("_action_low", "_action_high", "_action_span"):
            self.register_buffer(name, th.zeros(shape), persistent=False)
        self.set_action_bounds(low.reshape(shape), high.reshape(shape))

    @property
    def num_denoise_steps(self) -> int:
        """K, read from the solver (its one owner)."""
        return self.solver.num_denoise_steps

    @property
    def noise_level(self) -> float:
        """``a``, read from the solver (its one owner)."""
        return self.solver.noise_level

    # ----------------------------------------------------------------------------------------------------- build
    @property
    def vf_arch(self) -> list[int]:
        """Hidden sizes of the value head: ``net_arch["vf"]``, else :attr:`default_vf_arch`."""
        if isinstance(self.net_arch, dict):
            return list(self.net_arch.get("vf", self.default_vf_arch))
        return list(self.default_vf_arch)

    def _build(self, lr_schedule: Schedule) -> None:
        """The networks (:meth:`_build_networks`), the optional heads, then the optimizer of the trainable parameters."""
        self._build_networks()
        self._build_extra_heads()
        self.optimizer = self.optimizer_class(self._optimizer_parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def _build_networks(self) -> None:
        """Build the encoder and the velocity network, and set :attr:`features_dim` (the value head's input size)."""
        raise NotImplementedError

    def _build_extra_heads(self) -> None:
        """Hook for heads beyond the velocity field, built before the optimizer (the opt-in value head)."""
        if self.value_head:
            self.value_net = nn.Sequential(*create_mlp(self.features_dim, 1, self.vf_arch, self.activation_fn))

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters that train (``requires_grad``): everything but a frozen encoder such as a VLA backbone.
        The optimizer, the gradient clip, ``pretrain`` and the EMA rollout weights use exactly these."""
        return [p for p in self.parameters() if p.requires_grad]

    def _optimizer_parameters(self):
        """The trainable parameters, or their ``"actor"`` and ``"critic"`` groups when there is a value head."""
        trainable = self.trainable_parameters()
        if not self.value_head:
            return trainable
        critic_ids = {id(p) for p in self.value_net.parameters()}
        actor = [p for p in trainable if id(p) not in critic_ids]
        return [dict(params=actor, name="actor"), dict(params=list(self.value_net.parameters()), name="critic")]

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            dict(
                num_denoise_steps=self.num_denoise_steps,
                noise_level=self.noise_level,
                chunk_size=self.chunk_size,
                action_dim=self.action_dim,
                net_arch=self.net_arch,
                activation_fn=self.activation_fn,
                optimizer_class=self.optimizer_class,
                optimizer_kwargs=self.optimizer_kwargs,
                value_head=self.value_head,
                lr_schedule=self._dummy_schedule,
            )
        )
        return data

    # ------------------------------------------------------------------------------------------ flow interface
    @property
    def encoder_is_frozen(self) -> bool:
        """Whether ``encode`` has no trainable parameter (its output may then be reused for the update)."""
        raise NotImplementedError

    def resolve_feature_cache(self, n_observations: int) -> bool:
        """Whether algorithms store encoded features for the update (only a frozen encoder may be cached, §3.6);
        remembered in ``cache_features``. By default they store observations and re-encode them with gradients."""
        self.cache_features = False
        return False

    def features_to_flat(self, features):
        """``(B, F)`` float rows of encoded observations, to store in a buffer."""
        return features

    def features_from_flat(self, flat: th.Tensor):
        """Inverse of :meth:`features_to_flat`."""
        return flat

    def encode(self, obs: PyTorchObs):
        """Observation features, computed once per observation and reused for all K solver steps."""
        raise NotImplementedError

    def velocity(self, x_t: th.Tensor, t: th.Tensor, features) -> th.Tensor:
        """One pass of the velocity network: ``(B, chunk_size, action_dim)`` from ``x_t`` of that shape and ``t`` (B,)."""
        raise NotImplementedError

    def initial_noise(self, batch_size: int, deterministic: bool = False, generator: th.Generator | None = None) -> th.Tensor:
        """x_0: zeros when deterministic, else ``N(0, I)`` from ``generator`` (default: torch's global generator,
        seeded by SB3)."""
        shape = (batch_size, self.chunk_size, self.action_dim)
        if deterministic:
            return th.zeros(shape, device=self.device)
        return th.randn(shape, device=self.device, generator=generator)

    def sample(
        self,
        features,
        plan: str | SamplingPlan = "ode",
        stochastic_step: int | None = None,
        deterministic: bool = False,
        x_0: th.Tensor | None = None,
        generator: th.Generator | None = None,
    ) -> FlowChain:
        """Sample a whole chain for a batch of encoded observations with the policy's solver.

        :param features: what :meth:`encode` returned (computed once, reused for all K steps).
        :param plan: a :class:`~sb3_stepnft.common.flow.SamplingPlan` or a sampler name (``"ode"``, ``"sde"``,
            ``"one_step_sde"`` with ``stochastic_step``).
        :param deterministic: start from x_0 = 0 instead of noise (ignored when ``x_0`` is given).
        :param x_0: an injected ``(B, chunk_size, action_dim)`` start of the chain.
        :param generator: torch generator of x_0 and of the injected Flow-SDE noise.
        """
        if x_0 is None:
            x_0 = self.initial_noise(len(features), deterministic, generator)
        elif x_0.shape != (len(features), self.chunk_size, self.action_dim):
            raise ValueError(
                f"x_0 must have shape {(len(features), self.chunk_size, self.action_dim)} (batch, chunk_size, action_dim), "
                f"got {tuple(x_0.shape)}"
            )
        return self.solver.sample(
            lambda x_t, t: self.velocity(x_t, t, features), x_0, plan, generator, stochastic_step=stochastic_step
        )

    # -------------------------------------------------------------------------------------------- value head
    def value_input(self, features) -> th.Tensor:
        """The ``(B, features_dim)`` input of the value head, from encoded observations."""
        return features

    def value_from_features(self, features) -> th.Tensor:
        """``(B, 1)`` value estimates from encoded observations; the features are detached (the critic does not
        train the encoder, ALGORITHM.md §4)."""
        if not self.value_head:
            raise AttributeError(
                f"{type(self).__name__} has no value head: build the policy with value_head=True "
                "(FlowPPO does this for you), e.g. policy_kwargs=dict(value_head=True)."
            )
        return self.value_net(self.value_input(features).detach().float())

    def predict_values(self, obs: PyTorchObs) -> th.Tensor:
        """SB3's ``predict_values``: the critic's ``(B, 1)`` value estimates of preprocessed observations."""
        return self.value_from_features(self.encode(obs))

    # ------------------------------------------------------------------------------------ action conversion
    def executed(self, chunk: th.Tensor) -> th.Tensor:
        """The executed rows and real dims of a ``(B, chunk_size, action_dim)`` chunk."""
        return chunk[:, : self.executed_rows, : self.real_action_dim]

    def set_action_bounds(self, low: th.Tensor, high: th.Tensor) -> None:
        """The env units that [-1, 1] maps to, broadcastable to ``(executed_rows, real_action_dim)``: the one place
        that sets the bounds and their span."""
        with th.no_grad():
            self._action_low.copy_(low)
            self._action_high.copy_(high)
            self._action_span.copy_(self._action_high - self._action_low)

    def to_env_units(self, normalised: th.Tensor) -> th.Tensor:
        """[-1, 1] → Box bounds, shaped like the action space (``(B, A)`` or ``(B, H, A)``)."""
        actions = self._action_low + 0.5 * (self.executed(normalised) + 1.0) * self._action_span
        return actions.reshape((-1, *self.action_space.shape))

    def to_normalised(self, actions: th.Tensor) -> th.Tensor:
        """Box bounds → [-1, 1], as ``(B, H, A)`` rows."""
        actions = actions.reshape(-1, self.executed_rows, self.real_action_dim).float()
        return 2.0 * (actions - self._action_low) / self._action_span - 1.0

    # ------------------------------------------------------------------------------------------- SB3 acting
    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        """Student policy, Euler ODE from x_0 = 0 (deterministic) or x_0 ~ N(0, I) (ALGORITHM.md §1)."""
        chain = self.sample(self.encode(observation), "ode", deterministic=deterministic)
        return self.to_env_units(chain.sample)

    def forward(self, obs: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        return self._predict(obs, deterministic=deterministic)


class FlowPolicy(BaseFlowPolicy):
    """Flow policy with an SB3 features extractor + MLP velocity field ``v(x_t, t, features)`` (the MLP family).

    :param observation_space: Observation space.
    :param action_space: Box(A) or Box(H, A) action space with finite bounds.
    :param lr_schedule: Learning rate schedule (the optimizer starts at ``lr_schedule(1)``).
    :param net_arch: Hidden sizes of the velocity network (a list), or ``dict(pi=[...], vf=[...])``
        (``vf`` is used by algorithms with a value head). Default ``[256, 256]``.
    :param activation_fn: Activation of the velocity network.
    :param num_denoise_steps: K, the number of solver steps (rollouts, ``predict`` and every loss).
    :param noise_level: ``a``, the noise level of the Flow-SDE steps of training rollouts. K and ``a`` live in the
        policy's :class:`~sb3_stepnft.common.flow.FlowSolver` (``policy.solver``), their one owner; algorithms pass
        their own ``num_denoise_steps``/``noise_level`` arguments here.
    :param time_embed_dim: Size of the sinusoidal time embedding.
    :param chunk_size: Rows the velocity network outputs (>= the executed rows H of the action space;
        None: H).
    :param action_dim: Action dims the velocity network outputs (>= the env's A, extra dims are padding;
        None: A).
    :param features_extractor_class: SB3 features extractor class.
    :param features_extractor_kwargs: Its keyword arguments.
    :param normalize_images: Divide image observations by 255.
    :param optimizer_class: Optimizer class (default AdamW).
    :param optimizer_kwargs: Its keyword arguments, excluding the learning rate
        (default ``betas=(0.9, 0.95), eps=1e-5, weight_decay=0.01``).
    :param value_head: Add a critic: an MLP (``net_arch["vf"]``) on the observation features, whose input is
        detached so the critic never trains the encoder (ALGORITHM.md §4). The optimizer then has two parameter
        groups, ``"actor"`` and ``"critic"``. Algorithms that need it (FlowPPO) switch it on.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box,
        lr_schedule: Schedule,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] = nn.SiLU,
        num_denoise_steps: int = 4,
        noise_level: float = 0.2,
        time_embed_dim: int = 32,
        chunk_size: int | None = None,
        action_dim: int | None = None,
        features_extractor_class: type[BaseFeaturesExtractor] = FlattenExtractor,
        features_extractor_kwargs: dict[str, Any] | None = None,
        normalize_images: bool = True,
        optimizer_class: type[th.optim.Optimizer] = th.optim.AdamW,
        optimizer_kwargs: dict[str, Any] | None = None,
        value_head: bool = False,
    ):
        check_observation_space(observation_space)  # Tuple spaces rejected at construction, as SB3's PPO
        net_arch = normalize_net_arch(net_arch)  # SB3's old [dict(pi=..., vf=...)] accepted with SB3's warning
        super().__init__(
            observation_space,
            action_space,
            num_denoise_steps=num_denoise_steps,
            noise_level=noise_level,
            chunk_size=chunk_size,
            action_dim=action_dim,
            net_arch=[256, 256] if net_arch is None else net_arch,
            activation_fn=activation_fn,
            value_head=value_head,
            features_extractor_class=features_extractor_class,
            features_extractor_kwargs=features_extractor_kwargs,
            normalize_images=normalize_images,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
        )
        self.time_embed_dim = time_embed_dim
        self._build(lr_schedule)

    # ----------------------------------------------------------------------------------------------------- build
    @property
    def pi_arch(self) -> list[int]:
        return list(self.net_arch["pi"]) if isinstance(self.net_arch, dict) else list(self.net_arch)

    def _build_networks(self) -> None:
        self.features_extractor = self.make_features_extractor()
        self.features_dim = self.features_extractor.features_dim
        self.time_embedding = SinusoidalTimeEmbedding(self.time_embed_dim)
        flat_action = self.chunk_size * self.action_dim
        in_dim = self.features_dim + flat_action + self.time_embed_dim
        self.velocity_net = nn.Sequential(*create_mlp(in_dim, flat_action, self.pi_arch, self.activation_fn))

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            dict(
                time_embed_dim=self.time_embed_dim,
                features_extractor_class=self.features_extractor_class,
                features_extractor_kwargs=self.features_extractor_kwargs,
            )
        )
        return data

    # ------------------------------------------------------------------------------------------- persistence
    def save(self, path) -> None:
        """Save the weights and a JSON-only description of the constructor parameters (atomically), readable by
        :meth:`load` without unpickling anything (docs/safety.md)."""
        from sb3_stepnft.common.persistence import save_policy

        save_policy(self, path)

    @classmethod
    def load(cls, path, device: th.device | str = "auto", trust_checkpoint: bool = False):
        """Load a policy saved by :meth:`save`; nothing from the file is unpickled. Files written by SB3's
        ``BasePolicy.save`` (earlier versions) hold pickled objects: they need ``trust_checkpoint=True``, which
        unpickles them and so runs any code they contain -- only for files you trust."""
        from sb3_stepnft.common.persistence import load_policy

        return load_policy(cls, path, device=device, trust_checkpoint=trust_checkpoint)

    # ------------------------------------------------------------------------------------------ flow interface
    @property
    def encoder_is_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.features_extractor.parameters())

    def encode(self, obs: PyTorchObs) -> th.Tensor:
        """Observation features, computed once per observation and reused for all K solver steps."""
        return self.extract_features(obs, self.features_extractor)

    def velocity(self, x_t: th.Tensor, t: th.Tensor, features: th.Tensor) -> th.Tensor:
        """One pass of the velocity network: ``(B, chunk_size, action_dim)`` from ``x_t`` of that shape and ``t`` (B,)."""
        batch = x_t.shape[0]
        inputs = th.cat([features.float(), x_t.reshape(batch, -1).float(), self.time_embedding(t)], dim=-1)
        return self.velocity_net(inputs).reshape(batch, self.chunk_size, self.action_dim)


class MlpFlowPolicy(FlowPolicy):
    """Flow policy for vector observations (alias ``"MlpPolicy"``). See :class:`FlowPolicy`."""


class CnnFlowPolicy(FlowPolicy):
    """Flow policy for image observations with SB3's NatureCNN (alias ``"CnnPolicy"``). See :class:`FlowPolicy`."""

    def __init__(self, *args, features_extractor_class: type[BaseFeaturesExtractor] = NatureCNN, **kwargs):
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


class MultiInputFlowPolicy(FlowPolicy):
    """Flow policy for Dict observations with SB3's CombinedExtractor (alias ``"MultiInputPolicy"``)."""

    def __init__(self, *args, features_extractor_class: type[BaseFeaturesExtractor] = CombinedExtractor, **kwargs):
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)
