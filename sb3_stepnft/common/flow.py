"""Pure tensor functions of the flow sampler (ALGORITHM.md §1-2).

Conventions: time runs from ``t = 1`` (noise) to ``t = 0`` (data); the grid has ``num_denoise_steps``
(K) uniform steps ``t_k = 1 - k/K``; transition ``k`` goes from ``t_k`` to ``t_{k+1}``. Every step is
computed in float32, whatever the dtype of the velocity network.

Shapes: chains are ``(B, H, D)`` tensors (batch, chunk rows, action dims).
"""

import math
from collections.abc import Callable
from typing import NamedTuple

import torch as th

VelocityFn = Callable[[th.Tensor, th.Tensor], th.Tensor]
"""``velocity_fn(x_t, t) -> v``: x_t is ``(B, H, D)``, t is ``(B,)``; observation features are bound inside."""

SAMPLERS = ("ode", "sde", "one_step_sde")


def time_grid(num_denoise_steps: int) -> th.Tensor:
    """The K + 1 grid times ``t_k = 1 - k/K`` (float32), from 1 down to 0."""
    _check_num_steps(num_denoise_steps)
    return 1.0 - th.arange(num_denoise_steps + 1, dtype=th.float32) / num_denoise_steps


def _check_num_steps(num_denoise_steps: int) -> None:
    if int(num_denoise_steps) != num_denoise_steps or num_denoise_steps < 1:
        raise ValueError(f"num_denoise_steps must be a positive integer, got {num_denoise_steps!r}")


def sde_coefficients(step_index, num_denoise_steps: int = 4, noise_level: float = 0.2):
    """Coefficients of one Flow-SDE transition ``x_{k+1} = A_k x_k + B_k v + std·ξ`` (ALGORITHM.md §2).

    A thin wrapper over :meth:`FlowSolver.coefficients`, the one place they are computed.

    :param step_index: the transition index k in ``0..K-1``: a Python int (returns Python floats) or a
        LongTensor (returns float32 tensors of its shape).
    :param num_denoise_steps: K, the number of solver steps.
    :param noise_level: the noise level ``a`` (0 gives the Euler step: A = 1, B = -Δ, std = 0).
    :return: ``(A, B, std)`` where ``std`` is ``s_k = sqrt(Δ)·σ_k``, the standard deviation of ``x_{k+1}``
        given ``x_k`` (not σ_k, and without the 1e-4 floor of the loss).
    """
    return FlowSolver(num_denoise_steps, noise_level).coefficients(step_index)


def _broadcast(coef: th.Tensor, like: th.Tensor) -> th.Tensor:
    """Reshape a ``(B,)`` coefficient so that it broadcasts against a ``(B, ...)`` tensor."""
    return coef.to(like.device).reshape(coef.shape + (1,) * (like.dim() - coef.dim()))


def step_times(step_index: th.Tensor, num_denoise_steps: int) -> th.Tensor:
    """``t_k`` for a LongTensor of step indices (float32)."""
    return 1.0 - step_index.float() / num_denoise_steps


def sde_mean(x_k: th.Tensor, velocity: th.Tensor, step_index: th.Tensor, num_denoise_steps: int, noise_level: float):
    """Mean and std of the Flow-SDE transition, ``μ_k = A_k x_k + B_k v`` (float32): :meth:`FlowSolver.transition_mean`.

    ``step_index`` is a ``(B,)`` LongTensor; the result has the shape of ``x_k`` (std: ``(B, 1, ..)``).
    """
    return FlowSolver(num_denoise_steps, noise_level).transition_mean(x_k, velocity, step_index)


def euler_step(x_k: th.Tensor, velocity: th.Tensor, num_denoise_steps: int) -> th.Tensor:
    """``x_{k+1} = x_k - Δ·v`` (ALGORITHM.md §1), float32."""
    return x_k.float() - velocity.float() / num_denoise_steps


def predict_x0(x_t: th.Tensor, velocity: th.Tensor, t: th.Tensor) -> th.Tensor:
    """Endpoint (data) prediction ``x̂0 = x - t·v``; ``t`` is ``(B,)``."""
    return x_t.float() - _broadcast(t.float(), x_t) * velocity.float()


def predict_x1(x_t: th.Tensor, velocity: th.Tensor, t: th.Tensor) -> th.Tensor:
    """Endpoint (noise) prediction ``x̂1 = x + (1 - t)·v``; ``t`` is ``(B,)``."""
    return x_t.float() + (1.0 - _broadcast(t.float(), x_t)) * velocity.float()


def gaussian_log_prob(x: th.Tensor, mean: th.Tensor, std: th.Tensor | float) -> th.Tensor:
    """Element-wise ``log N(x; mean, std²)`` in float32."""
    std_t = th.as_tensor(std, dtype=th.float32, device=x.device)
    var = std_t**2
    return -((x.float() - mean.float()) ** 2) / (2 * var) - th.log(std_t) - 0.5 * math.log(2 * math.pi)


def flow_matching_interpolate(actions: th.Tensor, noise: th.Tensor, t: th.Tensor):
    """Training pair of flow matching: ``x_t = t·ε + (1-t)·a`` and the target ``u = ε - a``."""
    t_b = _broadcast(t.float(), actions)
    return t_b * noise + (1.0 - t_b) * actions, noise - actions


def sample_flow_times(batch_size: int, generator: th.Generator | None = None, device="cpu") -> th.Tensor:
    """SFT time samples ``t = 0.999·Beta(1.5, 1) + 0.001`` (ALGORITHM.md §1, from the authors' code).

    Beta(1.5, 1) has CDF ``u^1.5``, so it is drawn by inverse transform ``u^(2/3)`` (seedable).
    """
    uniform = th.rand(batch_size, generator=generator, device=device)
    return 0.999 * uniform ** (2.0 / 3.0) + 0.001


class FlowChain(NamedTuple):
    """All states and velocities of one sampled chain.

    :param states: ``(K + 1, B, H, D)`` float32, ``states[0] = x_0`` (noise) ... ``states[K] = x_K`` (the sample).
    :param velocities: ``(K, B, H, D)`` float32, ``velocities[k] = v(x_k, t_k)`` of the sampling weights.
    :param stochastic: ``(K,)`` bool, which transitions injected noise.
    """

    states: th.Tensor
    velocities: th.Tensor
    stochastic: th.Tensor

    @property
    def sample(self) -> th.Tensor:
        return self.states[-1]

    def transition(self, step_index: th.Tensor):
        """Per-sample ``(x_k, x_{k+1}, v_k)`` at a ``(B,)`` LongTensor of step indices."""
        batch = th.arange(self.states.shape[1], device=self.states.device)
        step_index = step_index.to(self.states.device)
        return self.states[step_index, batch], self.states[step_index + 1, batch], self.velocities[step_index, batch]


def sample_chain(
    velocity_fn: VelocityFn,
    x_0: th.Tensor,
    num_denoise_steps: int,
    sampler: str = "ode",
    noise_level: float = 0.0,
    stochastic_step: int | None = None,
    generator: th.Generator | None = None,
) -> FlowChain:
    """Run the K-step solver from ``x_0`` and keep every state and velocity: :meth:`FlowSolver.sample`.

    :param sampler: ``"ode"``, ``"sde"`` or ``"one_step_sde"`` (see :meth:`SamplingPlan.named`).
    """
    solver = FlowSolver(num_denoise_steps, noise_level)
    return solver.sample(velocity_fn, x_0, SamplingPlan.named(sampler, num_denoise_steps, stochastic_step), generator)


class SamplingPlan(NamedTuple):
    """Which of the K solver transitions inject noise (a Flow-SDE step); the others are Euler steps.

    Build one with :meth:`ode` (evaluation, ``predict``), :meth:`sde` (every step stochastic: StepNFT's rollouts) or
    :meth:`one_step` (only step j: πRL's hybrid rollouts), or :meth:`named` from a sampler name.
    """

    stochastic: tuple[bool, ...]

    @classmethod
    def ode(cls, num_denoise_steps: int) -> "SamplingPlan":
        return cls((False,) * num_denoise_steps)

    @classmethod
    def sde(cls, num_denoise_steps: int) -> "SamplingPlan":
        return cls((True,) * num_denoise_steps)

    @classmethod
    def one_step(cls, num_denoise_steps: int, stochastic_step: int) -> "SamplingPlan":
        if stochastic_step is None or not 0 <= int(stochastic_step) < num_denoise_steps:
            raise ValueError(f"sampler='one_step_sde' needs stochastic_step in [0, {num_denoise_steps - 1}]")
        return cls(tuple(k == int(stochastic_step) for k in range(num_denoise_steps)))

    @classmethod
    def named(cls, sampler: str, num_denoise_steps: int, stochastic_step: int | None = None) -> "SamplingPlan":
        """The plan of a sampler name of :data:`SAMPLERS` (``stochastic_step`` only for ``"one_step_sde"``)."""
        _check_num_steps(num_denoise_steps)
        if sampler == "ode":
            return cls.ode(num_denoise_steps)
        if sampler == "sde":
            return cls.sde(num_denoise_steps)
        if sampler == "one_step_sde":
            return cls.one_step(num_denoise_steps, stochastic_step)
        raise ValueError(f"Unknown sampler {sampler!r}: use one of {SAMPLERS}")


class FlowSolver:
    """The flow sampler of ALGORITHM.md §1-2: K, the noise level ``a``, the time grid, the Flow-SDE coefficients, the
    transition mean and density, and the sampling loop. It is the one owner of K and ``a``: a flow policy builds it
    (``policy.solver``), rollouts sample with it and every loss (StepNFT's branches, the πRL log-likelihoods) reads
    its coefficients, so the stored transitions and the losses cannot disagree.

    The coefficients are computed once, in float64, and kept as float32 tables of K entries (Eq. 3 of the paper:
    ``μ_k = A_k x_k + B_k v``, ``x_{k+1} = μ_k + s_k ξ``); sampling and losses index the same tables.

    :param num_denoise_steps: K, the number of solver steps (grid ``t_k = 1 - k/K``).
    :param noise_level: ``a`` of the Flow-SDE steps (0: every step is the Euler step).
    """

    def __init__(self, num_denoise_steps: int = 4, noise_level: float = 0.2):
        _check_num_steps(num_denoise_steps)
        if isinstance(noise_level, bool) or not isinstance(noise_level, (int, float)) or not math.isfinite(noise_level):
            raise ValueError(f"noise_level must be a finite number >= 0, got {noise_level!r}")
        if noise_level < 0:
            raise ValueError(f"noise_level must be >= 0, got {noise_level}")
        self.num_denoise_steps = int(num_denoise_steps)
        self.noise_level = float(noise_level)
        k = th.arange(self.num_denoise_steps, dtype=th.float64)
        delta = 1.0 / self.num_denoise_steps
        t = 1.0 - k * delta
        # σ at t_0 = 1 would be infinite: use t̃_0 = t_1 there (ALGORITHM.md §2, pitfall 1).
        t_tilde = t.clone()
        t_tilde[0] = 1.0 - delta
        sigma_sq = self.noise_level**2 * t / (1.0 - t_tilde)
        self._coef_x = (1.0 - sigma_sq * delta / (2.0 * t)).float()  # A_k
        self._coef_v = (-delta * (1.0 + sigma_sq * (1.0 - t) / (2.0 * t))).float()  # B_k
        self._std = (math.sqrt(delta) * th.sqrt(sigma_sq)).float()  # s_k = sqrt(Δ)·σ_k
        self._tables: dict[th.device, tuple[th.Tensor, th.Tensor, th.Tensor]] = {}
        # Python floats of the same float32 values, for the sampling loop (no tensor indexing per step)
        self._step_floats = list(zip(self._coef_x.tolist(), self._coef_v.tolist(), self._std.tolist()))
        self._grids: dict[th.device, th.Tensor] = {}
        self._plan_flags: dict[tuple[bool, ...], th.Tensor] = {}  # FlowChain.stochastic of each plan (read-only)

    def __repr__(self) -> str:
        return f"FlowSolver(num_denoise_steps={self.num_denoise_steps}, noise_level={self.noise_level})"

    def __eq__(self, other) -> bool:
        return (
            isinstance(other, FlowSolver)
            and other.num_denoise_steps == self.num_denoise_steps
            and other.noise_level == self.noise_level
        )

    def __hash__(self) -> int:
        return hash((self.num_denoise_steps, self.noise_level))

    # ----------------------------------------------------------------------------------------------- the grid
    @property
    def delta(self) -> float:
        """Δ = 1/K."""
        return 1.0 / self.num_denoise_steps

    def time_grid(self) -> th.Tensor:
        """The K + 1 times ``t_k = 1 - k/K`` (float32), from 1 down to 0."""
        return time_grid(self.num_denoise_steps)

    def times(self, step_index: th.Tensor) -> th.Tensor:
        """``t_k`` of a LongTensor of step indices (float32, same device)."""
        return step_times(step_index, self.num_denoise_steps)

    def check_step_index(self, step_index: th.Tensor) -> th.Tensor:
        """A LongTensor of valid transition indices ``0..K-1``, or a ValueError naming K."""
        if step_index.dtype.is_floating_point:
            raise TypeError("step_index must be an integer tensor (LongTensor)")
        # one host sync (a bool) on a device tensor, not two (min and max); the values only for the message
        if step_index.numel() and bool(((step_index < 0) | (step_index >= self.num_denoise_steps)).any()):
            raise ValueError(
                f"step_index must lie in [0, {self.num_denoise_steps - 1}] for this solver (K={self.num_denoise_steps}), "
                f"got values in [{int(step_index.min())}, {int(step_index.max())}]"
            )
        return step_index.long()

    # ------------------------------------------------------------------------------------- Eq. 3: the transition
    def coefficients(self, step_index):
        """``(A_k, B_k, s_k)`` of transition k: Python floats (float32 values) for an int, float32 tensors of the
        index's shape and device for a LongTensor."""
        if isinstance(step_index, th.Tensor):
            step_index = self.check_step_index(step_index)
            coef_x, coef_v, std = self._device_tables(step_index.device)
            return coef_x[step_index], coef_v[step_index], std[step_index]
        if isinstance(step_index, bool) or int(step_index) != step_index or not 0 <= step_index < self.num_denoise_steps:
            raise ValueError(f"step_index must be an integer in [0, {self.num_denoise_steps - 1}], got {step_index!r}")
        return self._step_floats[int(step_index)]

    def _device_tables(self, device: th.device) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        if device not in self._tables:
            self._tables[device] = (self._coef_x.to(device), self._coef_v.to(device), self._std.to(device))
        return self._tables[device]

    def transition_mean(self, x_k: th.Tensor, velocity: th.Tensor, step_index: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        """Eq. 3: ``μ_k = A_k x_k + B_k v`` (float32, shape of ``x_k``) and ``s_k`` broadcastable against it.

        ``step_index`` is a ``(B,)`` LongTensor. The same tables as the sampling loop: the rollout's mean is
        reproduced exactly from the stored ``x_k`` and ``v``.
        """
        coef_x, coef_v, std = self.coefficients(step_index.to(x_k.device))
        x_k, velocity = x_k.float(), velocity.float()
        return _broadcast(coef_x, x_k) * x_k + _broadcast(coef_v, x_k) * velocity, _broadcast(std, x_k)

    def step_std(self, step_index: th.Tensor, like: th.Tensor) -> th.Tensor:
        """``s_k`` of each sample, broadcastable against ``like`` (``(B, ...)``)."""
        return _broadcast(self.coefficients(step_index.to(like.device))[2], like)

    def row_log_prob(self, x_next: th.Tensor, x_k: th.Tensor, velocity: th.Tensor, step_index: th.Tensor) -> th.Tensor:
        """``(B, H)`` log-likelihoods ``Σ_d log N(x_{k+1}; μ_k, s_k²)`` of the transition (needs ``a > 0``)."""
        if self.noise_level <= 0:
            raise ValueError("log-likelihoods of a transition need noise_level > 0 (the Euler step is deterministic)")
        mean, std = self.transition_mean(x_k, velocity, step_index)
        return gaussian_log_prob(x_next, mean, std).sum(dim=-1)

    def euler_step(self, x_k: th.Tensor, velocity: th.Tensor) -> th.Tensor:
        """``x_{k+1} = x_k - Δ·v`` (ALGORITHM.md §1), float32."""
        return euler_step(x_k, velocity, self.num_denoise_steps)

    # ---------------------------------------------------------------------------------------------- sampling
    def plan(self, sampler: str | SamplingPlan, stochastic_step: int | None = None) -> SamplingPlan:
        """A :class:`SamplingPlan` for this K from a plan or a sampler name; a plan of another K is an error."""
        if isinstance(sampler, SamplingPlan):
            if len(sampler.stochastic) != self.num_denoise_steps:
                raise ValueError(
                    f"The sampling plan has {len(sampler.stochastic)} steps but the solver has K={self.num_denoise_steps}"
                )
            return sampler
        return SamplingPlan.named(sampler, self.num_denoise_steps, stochastic_step)

    def sample(
        self,
        velocity_fn: VelocityFn,
        x_0: th.Tensor,
        plan: str | SamplingPlan = "ode",
        generator: th.Generator | None = None,
        stochastic_step: int | None = None,
    ) -> FlowChain:
        """Run the K-step solver from ``x_0`` and keep every state and velocity.

        :param velocity_fn: ``(x_t, t) -> v`` with the observation features already bound.
        :param x_0: ``(B, H, D)`` start of the chain (``N(0, I)`` noise, or zeros for the deterministic ODE).
        :param plan: a :class:`SamplingPlan` or a sampler name (``"ode"``, ``"sde"``, ``"one_step_sde"``).
        :param generator: optional torch generator for the injected noise (default: torch's global generator).
        :param stochastic_step: the SDE step j of ``plan="one_step_sde"``.
        """
        plan = self.plan(plan, stochastic_step)
        batch = x_0.shape[0]
        grid = self._grids.get(x_0.device)
        if grid is None:
            grid = self._grids[x_0.device] = self.time_grid().to(x_0.device)
        x = x_0.float()
        states, velocities = [x], []
        for k, noisy in enumerate(plan.stochastic):
            v = velocity_fn(x, grid[k].expand(batch)).float()
            if noisy:
                coef_x, coef_v, std = self._step_floats[k]
                noise = th.randn(x.shape, generator=generator, device=x.device, dtype=th.float32)
                x = coef_x * x + coef_v * v + std * noise
            else:
                x = self.euler_step(x, v)
            states.append(x)
            velocities.append(v)
        stochastic = self._plan_flags.get(plan.stochastic)
        if stochastic is None:
            stochastic = self._plan_flags[plan.stochastic] = th.tensor(plan.stochastic)
        return FlowChain(th.stack(states), th.stack(velocities), stochastic)
