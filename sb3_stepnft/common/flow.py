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


def _sde_coefficients_tensor(step_index: th.Tensor, num_denoise_steps: int, noise_level: float):
    k = step_index.to(th.float64)
    delta = 1.0 / num_denoise_steps
    t = 1.0 - k * delta
    # σ at t_0 = 1 would be infinite: use t̃_0 = t_1 there (ALGORITHM.md §2, pitfall 1).
    t_tilde = th.where(step_index == 0, th.full_like(t, 1.0 - delta), t)
    sigma = noise_level * th.sqrt(t / (1.0 - t_tilde))
    sigma_sq = sigma**2
    coef_x = 1.0 - sigma_sq * delta / (2.0 * t)  # A_k
    coef_v = -delta * (1.0 + sigma_sq * (1.0 - t) / (2.0 * t))  # B_k
    std = math.sqrt(delta) * sigma  # s_k
    return coef_x.float(), coef_v.float(), std.float()


def sde_coefficients(step_index, num_denoise_steps: int = 4, noise_level: float = 0.2):
    """Coefficients of one Flow-SDE transition ``x_{k+1} = A_k x_k + B_k v + std·ξ`` (ALGORITHM.md §2).

    :param step_index: the transition index k in ``0..K-1``: a Python int (returns Python floats) or a
        LongTensor (returns float32 tensors of its shape).
    :param num_denoise_steps: K, the number of solver steps.
    :param noise_level: the noise level ``a`` (0 gives the Euler step: A = 1, B = -Δ, std = 0).
    :return: ``(A, B, std)`` where ``std`` is ``s_k = sqrt(Δ)·σ_k``, the standard deviation of ``x_{k+1}``
        given ``x_k`` (not σ_k, and without the 1e-4 floor of the loss).
    """
    _check_num_steps(num_denoise_steps)
    if noise_level < 0:
        raise ValueError(f"noise_level must be >= 0, got {noise_level}")
    if isinstance(step_index, th.Tensor):
        if step_index.dtype.is_floating_point:
            raise TypeError("step_index must be an integer tensor (LongTensor)")
        if ((step_index < 0) | (step_index >= num_denoise_steps)).any():
            raise ValueError(f"step_index must lie in [0, {num_denoise_steps - 1}]")
        return _sde_coefficients_tensor(step_index, num_denoise_steps, noise_level)
    if int(step_index) != step_index or not 0 <= step_index < num_denoise_steps:
        raise ValueError(f"step_index must be an integer in [0, {num_denoise_steps - 1}], got {step_index!r}")
    return _sde_coefficients_float(int(step_index), num_denoise_steps, noise_level)


def _sde_coefficients_float(step_index: int, num_denoise_steps: int, noise_level: float) -> tuple[float, float, float]:
    """The same formulas as :func:`_sde_coefficients_tensor`, in Python floats rounded to float32."""
    delta = 1.0 / num_denoise_steps
    t = 1.0 - step_index * delta
    t_tilde = 1.0 - delta if step_index == 0 else t
    sigma_sq = noise_level**2 * t / (1.0 - t_tilde)
    coef_x = 1.0 - sigma_sq * delta / (2.0 * t)
    coef_v = -delta * (1.0 + sigma_sq * (1.0 - t) / (2.0 * t))
    std = math.sqrt(delta) * math.sqrt(sigma_sq)
    as_f32 = th.tensor([coef_x, coef_v, std], dtype=th.float64).float().tolist()
    return as_f32[0], as_f32[1], as_f32[2]


def _broadcast(coef: th.Tensor, like: th.Tensor) -> th.Tensor:
    """Reshape a ``(B,)`` coefficient so that it broadcasts against a ``(B, ...)`` tensor."""
    return coef.to(like.device).reshape(coef.shape + (1,) * (like.dim() - coef.dim()))


def step_times(step_index: th.Tensor, num_denoise_steps: int) -> th.Tensor:
    """``t_k`` for a LongTensor of step indices (float32)."""
    return 1.0 - step_index.float() / num_denoise_steps


def sde_mean(x_k: th.Tensor, velocity: th.Tensor, step_index: th.Tensor, num_denoise_steps: int, noise_level: float):
    """Mean and std of the Flow-SDE transition, ``μ_k = A_k x_k + B_k v`` (float32).

    ``step_index`` is a ``(B,)`` LongTensor; the result has the shape of ``x_k`` (std: ``(B, 1, ..)``).
    """
    coef_x, coef_v, std = sde_coefficients(step_index, num_denoise_steps, noise_level)
    x_k, velocity = x_k.float(), velocity.float()
    mean = _broadcast(coef_x, x_k) * x_k + _broadcast(coef_v, x_k) * velocity
    return mean, _broadcast(std, x_k)


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
    """Run the K-step solver from ``x_0`` and keep every state and velocity.

    :param velocity_fn: ``(x_t, t) -> v`` with the observation features already bound.
    :param x_0: ``(B, H, D)`` start of the chain (``N(0, I)`` noise, or zeros for the deterministic ODE).
    :param sampler: ``"ode"`` (Euler everywhere), ``"sde"`` (Flow-SDE at every step, StepNFT) or
        ``"one_step_sde"`` (Flow-SDE at ``stochastic_step`` only, Euler elsewhere: πRL's hybrid).
    :param noise_level: the SDE noise level ``a``.
    :param stochastic_step: the SDE step j of ``"one_step_sde"``.
    :param generator: optional torch generator for the injected noise.
    """
    _check_num_steps(num_denoise_steps)
    if sampler not in SAMPLERS:
        raise ValueError(f"Unknown sampler {sampler!r}: use one of {SAMPLERS}")
    if sampler == "one_step_sde" and (stochastic_step is None or not 0 <= stochastic_step < num_denoise_steps):
        raise ValueError(f"sampler='one_step_sde' needs stochastic_step in [0, {num_denoise_steps - 1}]")
    batch = x_0.shape[0]
    grid = time_grid(num_denoise_steps).to(x_0.device)
    x = x_0.float()
    states, velocities, stochastic = [x], [], []
    for k in range(num_denoise_steps):
        noisy = sampler == "sde" or (sampler == "one_step_sde" and k == stochastic_step)
        v = velocity_fn(x, grid[k].expand(batch)).float()
        if noisy:
            coef_x, coef_v, std = _sde_coefficients_float(k, num_denoise_steps, noise_level)
            noise = th.randn(x.shape, generator=generator, device=x.device, dtype=th.float32)
            x = coef_x * x + coef_v * v + std * noise
        else:
            x = euler_step(x, v, num_denoise_steps)
        states.append(x)
        velocities.append(v)
        stochastic.append(noisy)
    return FlowChain(th.stack(states), th.stack(velocities), th.tensor(stochastic))
