"""Pure tensor functions of the πRL baselines (ALGORITHM.md §4): the chunk log-likelihood of the one stochastic
solver step, the clipped surrogate of PPO/GRPO and the clipped Huber critic loss of FlowPPO.

Shapes: ``B`` decisions, ``H`` chunk rows, ``D`` action dims.
"""

import torch as th
import torch.nn.functional as F

from sb3_stepnft.common.flow import gaussian_log_prob, sde_mean


def sde_step_row_log_prob(
    x_k: th.Tensor,
    velocity: th.Tensor,
    x_next: th.Tensor,
    step_index: th.Tensor,
    num_denoise_steps: int,
    noise_level: float,
) -> th.Tensor:
    """``Σ_d log N(x_{k+1,h,d}; μ_{k,h,d}, s_k²)`` per sample and chunk row, in float32.

    Pass only the executed rows and real action dims: the Flow-SDE mean is element-wise in ``x_k`` and ``v``, so
    slicing before or after the mean is the same.

    :param x_k: ``(B, H, D)`` state before the step.
    :param velocity: ``(B, H, D)`` velocity ``v(x_k, t_k)``.
    :param x_next: ``(B, H, D)`` realised next state.
    :param step_index: ``(B,)`` LongTensor, the stochastic step k of each sample.
    :return: ``(B, H)`` row log-likelihoods.
    """
    mean, std = sde_mean(x_k, velocity, step_index, num_denoise_steps, noise_level)
    return gaussian_log_prob(x_next, mean, std).sum(dim=-1)


def chunk_log_prob(row_log_prob: th.Tensor, row_mask: th.Tensor | None = None) -> th.Tensor:
    """``log π`` of a chunk: the sum of its row log-likelihoods over the rows that ran (``row_mask``), ``(B,)``."""
    if row_mask is None:
        return row_log_prob.sum(dim=-1)
    return (row_log_prob * row_mask.to(row_log_prob.dtype)).sum(dim=-1)


def clipped_surrogate_loss(
    log_prob: th.Tensor, old_log_prob: th.Tensor, advantages: th.Tensor, clip_range: float
) -> tuple[th.Tensor, dict[str, float]]:
    """PPO's clipped surrogate ``-mean(min(ρ·A, clip(ρ, 1-ε, 1+ε)·A))`` with ``ρ = exp(log π_θ - log π_old)``.

    :return: the loss and ``dict(policy_loss, clip_fraction, approx_kl, ratio_error)`` where ``approx_kl`` is SB3's
        ``mean((ρ - 1) - log ρ)`` and ``ratio_error`` is ``max |ρ - 1|`` (0 on the first minibatch of an iteration).
    """
    log_ratio = log_prob - old_log_prob
    ratio = th.exp(log_ratio)
    advantages = advantages.to(ratio.dtype)
    unclipped = advantages * ratio
    clipped = advantages * th.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = -th.min(unclipped, clipped).mean()
    with th.no_grad():
        stats = dict(
            policy_loss=float(loss.item()),
            clip_fraction=float(((ratio - 1.0).abs() > clip_range).float().mean().item()),
            approx_kl=float(((ratio - 1.0) - log_ratio).mean().item()),
            ratio_error=float((ratio - 1.0).abs().max().item()) if ratio.numel() else 0.0,
        )
    return loss, stats


def clipped_value_loss(
    values: th.Tensor,
    old_values: th.Tensor,
    returns: th.Tensor,
    clip_range_vf: float | None,
    huber_delta: float,
) -> th.Tensor:
    """Huber critic loss with value clipping, as πRL's ``critic_loss_fn``.

    ``mean(max(huber(R - V), huber(R - V_clip)))`` with ``V_clip = V_old + clip(V - V_old, ±clip_range_vf)``;
    ``clip_range_vf=None`` gives ``mean(huber(R - V))``. ``huber`` is ``F.huber_loss`` (½e² inside ±δ).
    """
    values, old_values, returns = values.float(), old_values.float(), returns.float()
    loss = F.huber_loss(values, returns, reduction="none", delta=huber_delta)
    if clip_range_vf is not None:
        # πRL keeps the larger of the clipped and unclipped losses (PPO2); SB3's PPO uses the clipped one only.
        clipped = old_values + th.clamp(values - old_values, -clip_range_vf, clip_range_vf)
        loss = th.max(loss, F.huber_loss(clipped, returns, reduction="none", delta=huber_delta))
    return loss.mean()
