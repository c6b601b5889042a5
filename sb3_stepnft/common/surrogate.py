"""Pure tensor functions of the πRL baselines (ALGORITHM.md §4): the chunk log-likelihood of the one stochastic
solver step, the clipped surrogate of PPO/GRPO and the clipped Huber critic loss of FlowPPO.

Shapes: ``B`` decisions, ``H`` chunk rows, ``D`` action dims.
"""

import torch as th
import torch.nn.functional as F

from sb3_stepnft.common.flow import FlowSolver


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
    return FlowSolver(num_denoise_steps, noise_level).row_log_prob(x_next, x_k, velocity, step_index)


def chunk_log_prob(row_log_prob: th.Tensor, row_mask: th.Tensor | None = None) -> th.Tensor:
    """``log π`` of a chunk: the sum of its row log-likelihoods over the rows that ran (``row_mask``), ``(B,)``."""
    if row_mask is None:
        return row_log_prob.sum(dim=-1)
    return (row_log_prob * row_mask.to(row_log_prob.dtype)).sum(dim=-1)


DUAL_CLIP = 3.0  # πRL's clip_ratio_c, set by every Flow-SDE config (ALGORITHM.md §4)


def clipped_surrogate_loss(
    log_prob: th.Tensor,
    old_log_prob: th.Tensor,
    advantages: th.Tensor,
    clip_range: float,
    dual_clip: float | None = DUAL_CLIP,
) -> tuple[th.Tensor, dict[str, float]]:
    """PPO's clipped surrogate with πRL's dual clip, ``ρ = exp(log π_θ - log π_old)``:

    ``l = max(-ρ·A, -clip(ρ, 1-ε, 1+ε)·A)``; where ``A < 0`` it is capped at ``dual_clip·|A|``
    (``min(l, -dual_clip·A)``, πRL's ``clip_ratio_c``); the loss is ``mean(l)``. ``dual_clip=None`` gives plain PPO.

    :return: the loss and ``dict(policy_loss, clip_fraction, dual_clip_fraction, approx_kl, ratio_error)`` where
        ``approx_kl`` is SB3's ``mean((ρ - 1) - log ρ)`` and ``ratio_error`` is ``max |ρ - 1|`` (0 on the first
        minibatch of an iteration).
    """
    if dual_clip is not None and not dual_clip > 1.0:
        raise ValueError(f"dual_clip must be > 1 (πRL: 3.0) or None, got {dual_clip!r}")
    log_ratio = log_prob - old_log_prob
    ratio = th.exp(log_ratio)
    advantages = advantages.to(ratio.dtype)
    unclipped = -advantages * ratio
    clipped = -advantages * th.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    per_sample = th.max(unclipped, clipped)
    dual_clipped = th.zeros_like(per_sample, dtype=th.bool)
    if dual_clip is not None:
        cap = -advantages * dual_clip
        dual_clipped = (advantages < 0) & (per_sample > cap)
        per_sample = th.where(advantages < 0, th.min(per_sample, cap), per_sample)
    loss = per_sample.mean()
    with th.no_grad():
        stats = dict(
            policy_loss=float(loss.item()),
            clip_fraction=float(((ratio - 1.0).abs() > clip_range).float().mean().item()),
            dual_clip_fraction=float(dual_clipped.float().mean().item()) if ratio.numel() else 0.0,
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
