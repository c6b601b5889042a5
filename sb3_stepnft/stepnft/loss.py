"""The π-StepNFT loss as a pure function of tensors (ALGORITHM.md §3.3-3.4), in the paper's stages.

One screen maps the paper to code (equation numbers of Wang et al., "Wider Space Needs Finer Steps in Online RL for
Flow-based VLAs"):

=============================  ================================  =====================================
paper                          stage                             ablation alternatives (same place)
=============================  ================================  =====================================
Eq. 4-5 mirrored branches      :func:`mirrored_branches`         --
Eq. 3   transition means       :func:`branch_means`              ``target="terminal"``: :func:`branch_endpoints`
Eq. 6   step errors            :func:`step_errors`               ``weighting="adaptive"``: :func:`adaptive_errors`
Eq. 7   ranking objective      :func:`ranking_objective`         §4.4 wMSE: :func:`wmse_objective`;
                                                                 positive/negative: :func:`objective_rows`
§3.4    KL regulariser         :func:`velocity_kl`               --
=============================  ================================  =====================================

:func:`stepnft_loss` chains them; every coefficient comes from the :class:`~sb3_stepnft.common.flow.FlowSolver`
that sampled the rollouts.
"""

from typing import Any, NamedTuple

import torch as th
import torch.nn.functional as F

from sb3_stepnft.common.flow import FlowSolver, predict_x0

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


# ------------------------------------------------------------------------------------------------------ stages
class Branches(NamedTuple):
    """The mirrored velocity candidates ``v± = v_old ± β·Δv_c`` and the rows whose drift was clipped."""

    plus: th.Tensor
    minus: th.Tensor
    clipped_rows: th.Tensor


def mirrored_branches(v_theta: th.Tensor, v_old: th.Tensor, trust_region: float, max_drift: float | None) -> Branches:
    """Eq. 4-5: ``Δv = v_θ - v_old``, drift-clipped per row (``max_drift``), mirrored around the rollout velocity."""
    delta_v, clipped_rows = clip_drift(v_theta - v_old, max_drift)
    return Branches(v_old + trust_region * delta_v, v_old - trust_region * delta_v, clipped_rows)


def branch_means(solver: FlowSolver, x_k: th.Tensor, branches: Branches, step_index: th.Tensor):
    """Eq. 3 for both branches: ``μ± = A_k x_k + B_k v±`` (the rollout's own coefficients)."""
    return (
        solver.transition_mean(x_k, branches.plus, step_index)[0],
        solver.transition_mean(x_k, branches.minus, step_index)[0],
    )


def branch_endpoints(solver: FlowSolver, x_k: th.Tensor, branches: Branches, step_index: th.Tensor):
    """Ablation ``target="terminal"``: the endpoint predictions ``x̂0(x_k, v±, t_k)`` instead of the step means."""
    t_k = solver.times(step_index)
    return predict_x0(x_k, branches.plus, t_k), predict_x0(x_k, branches.minus, t_k)


def step_errors(solver: FlowSolver, target: th.Tensor, predictions, step_index: th.Tensor, row_mask: th.Tensor):
    """Eq. 6: ``E± = Σ_d (x_{k+1} - μ±)² / (s_k² + 1e-4)`` per sample and chunk row (all output dims)."""
    inv_var = 1.0 / (solver.step_std(step_index, target) ** 2 + VARIANCE_FLOOR)
    return tuple(((target - prediction) ** 2 * inv_var).sum(dim=-1) for prediction in predictions)


def adaptive_errors(solver: FlowSolver, target: th.Tensor, predictions, step_index: th.Tensor, row_mask: th.Tensor):
    """Ablation ``weighting="adaptive"`` (``sampler="ode"``): Diffusion-NFT's weight instead of the variance."""
    return tuple(_adaptive_error(prediction, target, row_mask) for prediction in predictions)


def ranking_objective(err_plus: th.Tensor, err_minus: th.Tensor, reward: th.Tensor, ranking_beta: float):
    """Eq. 7: ``softplus(ℓ)`` with the logit ``ℓ = (β_dpo/2)·y·(E⁺ - E⁻)``, ``y = 2r - 1``; returns (per row, ℓ)."""
    logit = 0.5 * ranking_beta * (2.0 * reward - 1.0)[:, None] * (err_plus - err_minus)
    return F.softplus(logit), logit


def wmse_objective(err_plus: th.Tensor, err_minus: th.Tensor, reward: th.Tensor, ranking_beta: float):
    """§4.4 ablation (Diffusion-NFT form): ``r·E⁺ + (1 - r)·E⁻``; no logit."""
    return reward[:, None] * err_plus + (1.0 - reward[:, None]) * err_minus, None


def objective_rows(row_mask: th.Tensor, reward: th.Tensor, objective: str) -> th.Tensor:
    """The rows an objective averages over: all valid rows, or (ablations) those with r > ½ / r < ½ only."""
    if objective == "positive":
        return row_mask & (reward > 0.5)[:, None]
    if objective == "negative":
        return row_mask & (reward < 0.5)[:, None]
    return row_mask


def velocity_kl(v_theta: th.Tensor, v_old: th.Tensor, row_mask: th.Tensor) -> th.Tensor:
    """The regulariser ``mean((v_θ - v_old)²)`` over the selected rows (0, still connected, when none)."""
    element_mask = row_mask[..., None].expand_as(v_theta)
    if element_mask.any():
        return ((v_theta - v_old) ** 2)[element_mask].mean()
    return v_theta.sum() * 0.0


PREDICTIONS = {"step": branch_means, "terminal": branch_endpoints}
ERRORS = {"variance": step_errors, "adaptive": adaptive_errors}
OBJECTIVE_STAGES = {"ranking": ranking_objective, "wmse": wmse_objective, "positive": ranking_objective,
                    "negative": ranking_objective}  # fmt: skip


def stepnft_loss(
    v_theta: th.Tensor,
    v_old: th.Tensor,
    x_k: th.Tensor,
    x_next: th.Tensor,
    step_index: th.Tensor,
    success: th.Tensor,
    num_denoise_steps: int | None = None,
    noise_level: float | None = None,
    trust_region: float = 1.0,
    max_drift: float | None = 0.5,
    kl_coef: float = 1e-4,
    ranking_beta: float = 1.0,
    objective: str = "ranking",
    mask: th.Tensor | None = None,
    target: str = "step",
    weighting: str = "variance",
    solver: FlowSolver | None = None,
) -> tuple[th.Tensor, dict[str, Any]]:
    """π-StepNFT loss: rank two mirrored velocity candidates by how well they explain a solver transition.

    :param v_theta: ``(B, H, D)`` velocity of the trained policy at ``(x_k, t_k, obs)``; the only input with gradients.
    :param v_old: ``(B, H, D)`` velocity of the rollout policy stored at sampling time (a constant).
    :param x_k: ``(B, H, D)`` solver state before the transition (a constant).
    :param x_next: ``(B, H, D)`` realised next state ``x_{k+1}``; with ``target="terminal"`` the final sample ``x_K``.
    :param step_index: ``(B,)`` LongTensor, the transition index k.
    :param success: ``(B,)`` label ``r`` in [0, 1] (bool, int or float); ``y = 2r - 1``.
    :param num_denoise_steps: K of the rollout's solver (default 4); give either these two or ``solver``.
    :param noise_level: ``a`` of the rollout's solver (default 0.2).
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
    :param solver: the :class:`~sb3_stepnft.common.flow.FlowSolver` that sampled the transitions (algorithms pass
        ``policy.solver``); a different ``num_denoise_steps``/``noise_level`` beside it is an error.
    :return: the scalar loss and a dict of float statistics.
    """
    solver = _loss_solver(solver, num_denoise_steps, noise_level)
    _check_options(objective, target, weighting)
    if v_theta.dim() != 3 or v_theta.shape != v_old.shape or x_k.shape != v_old.shape or x_next.shape != v_old.shape:
        raise ValueError(
            "v_theta, v_old, x_k and x_next must all be (B, H, D) tensors of one shape, got "
            f"{tuple(v_theta.shape)}, {tuple(v_old.shape)}, {tuple(x_k.shape)}, {tuple(x_next.shape)}"
        )
    device = v_theta.device
    v_theta32 = v_theta.float()
    v_old, x_k, x_next = v_old.detach().float(), x_k.detach().float(), x_next.detach().float()
    step_index = solver.check_step_index(step_index.to(device=device))
    reward = success.to(device=device, dtype=th.float32).reshape(-1)
    row_mask = objective_rows(_normalise_mask(mask, v_theta.shape, device), reward, objective)

    branches = mirrored_branches(v_theta32, v_old, trust_region, max_drift)  # Eq. 4-5
    predictions = PREDICTIONS[target](solver, x_k, branches, step_index)  # Eq. 3 (or x̂0)
    err_plus, err_minus = ERRORS[weighting](solver, x_next, predictions, step_index, row_mask)  # Eq. 6
    per_row, logit = OBJECTIVE_STAGES[objective](err_plus, err_minus, reward, ranking_beta)  # Eq. 7 (or wMSE)
    policy_loss = _masked_sample_mean(per_row, row_mask, v_theta32)
    kl = velocity_kl(v_theta32, v_old, row_mask)
    loss = policy_loss + kl_coef * kl

    n_rows = int(row_mask.sum())
    with th.no_grad():
        stats = {
            "policy_loss": float(policy_loss),
            "kl": float(kl),
            "logit_mean": float(logit[row_mask].mean()) if (logit is not None and n_rows) else 0.0,
            "drift_clip_fraction": float(branches.clipped_rows[row_mask].float().mean()) if n_rows else 0.0,
            "positive_fraction": float((reward > 0.5).float().mean()) if reward.numel() else 0.0,
            "n_valid_rows": n_rows,
        }
    return loss, stats


def _loss_solver(solver: FlowSolver | None, num_denoise_steps: int | None, noise_level: float | None) -> FlowSolver:
    if solver is None:
        return FlowSolver(4 if num_denoise_steps is None else num_denoise_steps, 0.2 if noise_level is None else noise_level)
    for name, value in (("num_denoise_steps", num_denoise_steps), ("noise_level", noise_level)):
        if value is not None and value != getattr(solver, name):
            raise ValueError(
                f"stepnft_loss got {name}={value!r} and a solver with {name}={getattr(solver, name)!r}: "
                "pass the solver that sampled the rollouts alone"
            )
    return solver


def _check_options(objective: str, target: str, weighting: str) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"Unknown objective {objective!r}: use one of {OBJECTIVES}")
    if target not in TARGETS:
        raise ValueError(f"Unknown target {target!r}: use one of {TARGETS}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"Unknown weighting {weighting!r}: use one of {WEIGHTINGS}")
    if weighting == "adaptive" and target != "terminal":
        raise ValueError("weighting='adaptive' compares endpoint predictions: it needs target='terminal'")


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
