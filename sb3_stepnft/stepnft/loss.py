"""The π-StepNFT loss as a pure function of tensors (ALGORITHM.md §3.3-3.4)."""

from typing import Any

import torch as th
import torch.nn.functional as F

from sb3_stepnft.common.flow import predict_x0, sde_coefficients, step_times

OBJECTIVES = ("ranking", "wmse", "positive", "negative")
TARGETS = ("step", "terminal")
WEIGHTINGS = ("variance", "adaptive")
VARIANCE_FLOOR = 1e-4  # added to s_k² in the step errors (ALGORITHM.md §3.3, pitfall 3)


def clip_drift(delta_v: th.Tensor, max_drift: float | None) -> tuple[th.Tensor, th.Tensor]:
    """Drift clip per sample and chunk row: ``Δv_c = Δv·min(1, max_drift/(‖Δv_h‖₂ + 1e-8))`` (not detached).

    :return: the clipped drift and a ``(B, H)`` bool tensor of the rows whose norm exceeded ``max_drift``.
    """
    norm = th.linalg.vector_norm(delta_v, dim=-1, keepdim=True) + 1e-8
    if max_drift is None:
        return delta_v, th.zeros(norm.shape[:-1], dtype=th.bool, device=delta_v.device)
    scale = th.clamp(max_drift / norm, max=1.0)
    return delta_v * scale, (norm.squeeze(-1) > max_drift)


def _normalise_mask(mask: th.Tensor | None, shape: th.Size, device) -> th.Tensor:
    batch, rows = shape[0], shape[1]
    if mask is None:
        return th.ones(batch, rows, dtype=th.bool, device=device)
    mask = mask.to(device=device, dtype=th.bool)
    if mask.dim() == 1:
        mask = mask[:, None].expand(batch, rows)
    if mask.shape != (batch, rows):
        raise ValueError(f"mask must have shape ({batch},) or ({batch}, {rows}), got {tuple(mask.shape)}")
    return mask


def _masked_sample_mean(values: th.Tensor, row_mask: th.Tensor, anchor: th.Tensor) -> th.Tensor:
    """Mean over the valid rows of each sample, then over samples with at least one valid row.

    An empty selection returns ``0·anchor.sum()``: zero, yet connected to the graph (never NaN).
    """
    rows_per_sample = row_mask.sum(dim=1)
    valid_samples = rows_per_sample > 0
    if not valid_samples.any():
        return anchor.sum() * 0.0
    per_sample = (values * row_mask).sum(dim=1)[valid_samples] / rows_per_sample[valid_samples]
    return per_sample.mean()


def stepnft_loss(
    v_theta: th.Tensor,
    v_old: th.Tensor,
    x_k: th.Tensor,
    x_next: th.Tensor,
    step_index: th.Tensor,
    success: th.Tensor,
    num_denoise_steps: int = 4,
    noise_level: float = 0.2,
    trust_region: float = 1.0,
    max_drift: float | None = 0.5,
    kl_coef: float = 1e-4,
    ranking_beta: float = 1.0,
    objective: str = "ranking",
    mask: th.Tensor | None = None,
    target: str = "step",
    weighting: str = "variance",
) -> tuple[th.Tensor, dict[str, Any]]:
    """π-StepNFT loss: rank two mirrored velocity candidates by how well they explain a solver transition.

    :param v_theta: ``(B, H, D)`` velocity of the trained policy at ``(x_k, t_k, obs)``; the only input with gradients.
    :param v_old: ``(B, H, D)`` velocity of the rollout policy stored at sampling time (a constant).
    :param x_k: ``(B, H, D)`` solver state before the transition (a constant).
    :param x_next: ``(B, H, D)`` realised next state ``x_{k+1}``; with ``target="terminal"`` the final sample ``x_K``.
    :param step_index: ``(B,)`` LongTensor, the transition index k.
    :param success: ``(B,)`` label ``r`` in [0, 1] (bool, int or float); ``y = 2r - 1``.
    :param trust_region: β, the branches are ``v_old ± β·Δv_c``.
    :param max_drift: per-row norm bound of the drift ``Δv = v_theta - v_old`` (None: no clip).
    :param kl_coef: κ of the ``κ·mean((v_theta - v_old)²)`` regulariser.
    :param ranking_beta: β_dpo, multiplies the logit ``ℓ = (β_dpo/2)·y·(E⁺ - E⁻)``.
    :param objective: ``"ranking"`` (softplus of the logit), ``"wmse"`` (``r·E⁺ + (1-r)·E⁻``), ``"positive"`` /
        ``"negative"`` (the ranking loss over the samples with r > ½ / r < ½ only).
    :param mask: ``(B,)`` or ``(B, H)`` bool, valid samples/rows.
    :param target: ``"step"`` (the SDE mean μ_k) or ``"terminal"`` (the endpoint prediction x̂0 against x_K).
    :param weighting: ``"variance"`` (divide by ``s_k² + 1e-4``) or ``"adaptive"`` (Diffusion-NFT weight,
        ``1/max(mean|x̂0 - x_K|, 1e-5)``, stop-grad, float64: the ``sampler="ode"`` ablation; needs ``target="terminal"``).
    :return: the scalar loss and a dict of float statistics.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"Unknown objective {objective!r}: use one of {OBJECTIVES}")
    if target not in TARGETS:
        raise ValueError(f"Unknown target {target!r}: use one of {TARGETS}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"Unknown weighting {weighting!r}: use one of {WEIGHTINGS}")
    if weighting == "adaptive" and target != "terminal":
        raise ValueError("weighting='adaptive' compares endpoint predictions: it needs target='terminal'")
    if v_theta.dim() != 3 or v_theta.shape != v_old.shape or x_k.shape != v_old.shape or x_next.shape != v_old.shape:
        raise ValueError(
            "v_theta, v_old, x_k and x_next must all be (B, H, D) tensors of one shape, got "
            f"{tuple(v_theta.shape)}, {tuple(v_old.shape)}, {tuple(x_k.shape)}, {tuple(x_next.shape)}"
        )
    device = v_theta.device
    v_theta32 = v_theta.float()
    v_old, x_k, x_next = v_old.detach().float(), x_k.detach().float(), x_next.detach().float()
    step_index = step_index.to(device=device, dtype=th.long)
    reward = success.to(device=device, dtype=th.float32).reshape(-1)
    row_mask = _normalise_mask(mask, v_theta.shape, device)
    if objective == "positive":
        row_mask = row_mask & (reward > 0.5)[:, None]
    elif objective == "negative":
        row_mask = row_mask & (reward < 0.5)[:, None]

    # Mirrored branches around the rollout velocity (§3.3).
    delta_v, clipped_rows = clip_drift(v_theta32 - v_old, max_drift)
    v_plus = v_old + trust_region * delta_v
    v_minus = v_old - trust_region * delta_v

    coef_x, coef_v, std = sde_coefficients(step_index, num_denoise_steps, noise_level)
    if target == "step":
        shape = (-1, 1, 1)
        pred_plus = coef_x.to(device).view(shape) * x_k + coef_v.to(device).view(shape) * v_plus
        pred_minus = coef_x.to(device).view(shape) * x_k + coef_v.to(device).view(shape) * v_minus
    else:
        t_k = step_times(step_index, num_denoise_steps)
        pred_plus, pred_minus = predict_x0(x_k, v_plus, t_k), predict_x0(x_k, v_minus, t_k)

    if weighting == "variance":
        inv_var = 1.0 / (std.to(device).view(-1, 1, 1) ** 2 + VARIANCE_FLOOR)
        err_plus = ((x_next - pred_plus) ** 2 * inv_var).sum(dim=-1)
        err_minus = ((x_next - pred_minus) ** 2 * inv_var).sum(dim=-1)
    else:
        err_plus = _adaptive_error(pred_plus, x_next, row_mask)
        err_minus = _adaptive_error(pred_minus, x_next, row_mask)

    if objective == "wmse":
        per_row = reward[:, None] * err_plus + (1.0 - reward[:, None]) * err_minus
        logit = None
    else:
        sign = 2.0 * reward - 1.0
        logit = 0.5 * ranking_beta * sign[:, None] * (err_plus - err_minus)
        per_row = F.softplus(logit)
    policy_loss = _masked_sample_mean(per_row, row_mask, v_theta32)

    element_mask = row_mask[..., None].expand_as(v_theta32)
    if element_mask.any():
        kl = ((v_theta32 - v_old) ** 2)[element_mask].mean()
    else:
        kl = v_theta32.sum() * 0.0
    loss = policy_loss + kl_coef * kl

    n_rows = int(row_mask.sum())
    with th.no_grad():
        stats = {
            "policy_loss": float(policy_loss),
            "kl": float(kl),
            "logit_mean": float(logit[row_mask].mean()) if (logit is not None and n_rows) else 0.0,
            "drift_clip_fraction": float(clipped_rows[row_mask].float().mean()) if n_rows else 0.0,
            "positive_fraction": float((reward > 0.5).float().mean()) if reward.numel() else 0.0,
            "n_valid_rows": n_rows,
        }
    return loss, stats


def _adaptive_error(prediction: th.Tensor, target: th.Tensor, row_mask: th.Tensor) -> th.Tensor:
    """Diffusion-NFT adaptive weighting: ``Σ_d (x̂0 - x_K)²·w`` with ``w = 1/max(mean_{h,d}|x̂0 - x_K|, 1e-5)``.

    The weight is a per-sample stop-grad computed in float64 over the valid rows (ALGORITHM.md §3.4).
    """
    diff = prediction - target
    with th.no_grad():
        abs_diff = diff.double().abs()
        rows = row_mask.double()[..., None].expand_as(abs_diff)
        count = rows.sum(dim=(1, 2)).clamp(min=1.0)
        mean_abs = (abs_diff * rows).sum(dim=(1, 2)) / count
        weight = (1.0 / mean_abs.clamp(min=1e-5)).float()
    return (diff**2).sum(dim=-1) * weight[:, None]
