import math

import pytest
import torch as th

from sb3_stepnft.common.flow import gaussian_log_prob, sde_coefficients, sde_mean
from sb3_stepnft.stepnft.loss import VARIANCE_FLOOR, clip_drift, stepnft_loss

B, H, D, K, A = 6, 3, 4, 4, 0.2


def make_batch(seed=0, drift=0.05):
    gen = th.Generator().manual_seed(seed)
    x_k = th.randn(B, H, D, generator=gen)
    v_old = th.randn(B, H, D, generator=gen)
    step = th.randint(0, K, (B,), generator=gen)
    mean, std = sde_mean(x_k, v_old, step, K, A)
    x_next = mean + std * th.randn(B, H, D, generator=gen)
    v_theta = (v_old + drift * th.randn(B, H, D, generator=gen)).requires_grad_(True)
    return v_theta, v_old, x_k, x_next, step


def errors(v_theta, v_old, x_k, x_next, step, beta=1.0, max_drift=0.5):
    delta, _ = clip_drift(v_theta - v_old, max_drift)
    coef_x, coef_v, std = sde_coefficients(step, K, A)
    var = (std**2 + VARIANCE_FLOOR).view(-1, 1, 1)
    mu_p = coef_x.view(-1, 1, 1) * x_k + coef_v.view(-1, 1, 1) * (v_old + beta * delta)
    mu_m = coef_x.view(-1, 1, 1) * x_k + coef_v.view(-1, 1, 1) * (v_old - beta * delta)
    e_p = ((x_next - mu_p) ** 2 / var).sum(-1)
    e_m = ((x_next - mu_m) ** 2 / var).sum(-1)
    return e_p, e_m, delta, coef_x, coef_v, var, mu_p, mu_m


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_closed_form_of_error_difference(beta):
    v_theta, v_old, x_k, x_next, step = make_batch(drift=1.0)  # large drift: the clip is active
    e_p, e_m, delta, coef_x, coef_v, var, _, _ = errors(v_theta, v_old, x_k, x_next, step, beta)
    residual = x_next - coef_x.view(-1, 1, 1) * x_k - coef_v.view(-1, 1, 1) * v_old
    closed = -4 * beta * coef_v.view(-1, 1) * (residual * delta).sum(-1) / var.view(-1, 1)
    assert th.allclose(e_p - e_m, closed, rtol=1e-4, atol=1e-3)


def test_lemma_4_2_log_density_ratio():
    v_theta, v_old, x_k, x_next, step = make_batch()
    e_p, e_m, _, _, _, var, mu_p, mu_m = errors(v_theta, v_old, x_k, x_next, step)
    std = var.sqrt()
    log_ratio = (gaussian_log_prob(x_next, mu_p, std) - gaussian_log_prob(x_next, mu_m, std)).sum(-1)
    assert th.allclose(-0.5 * (e_p - e_m), log_ratio, rtol=1e-4, atol=1e-3)
    # hence L = -log sigmoid(β_dpo·y·ΔlogN)
    y = th.tensor([1.0, -1.0, 1.0, 1.0, -1.0, -1.0])
    loss, _ = stepnft_loss(v_theta, v_old, x_k, x_next, step, (y + 1) / 2, kl_coef=0.0)
    expected = -th.nn.functional.logsigmoid(y[:, None] * log_ratio).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)


def test_log2_and_nonzero_gradient_at_old_policy():
    _, v_old, x_k, x_next, step = make_batch()
    v_theta = v_old.clone().requires_grad_(True)
    loss, stats = stepnft_loss(v_theta, v_old, x_k, x_next, step, th.ones(B))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert stats["logit_mean"] == pytest.approx(0.0, abs=1e-7)
    loss.backward()
    assert v_theta.grad.abs().sum() > 1e-3


def test_success_and_failure_give_opposite_gradients():
    _, v_old, x_k, x_next, step = make_batch()
    grads = []
    for label in (th.ones(B), th.zeros(B)):
        v_theta = v_old.clone().requires_grad_(True)
        loss, _ = stepnft_loss(v_theta, v_old, x_k, x_next, step, label, kl_coef=0.0)
        loss.backward()
        grads.append(v_theta.grad.clone())
    assert th.allclose(grads[0], -grads[1], atol=1e-7)
    assert grads[0].abs().sum() > 0
    # and success moves v_θ towards explaining the observed transition: one step lowers E⁺ for y = +1
    v_theta = (v_old - 1e-3 * grads[0]).requires_grad_(True)
    e_p, e_m, *_ = errors(v_theta, v_old, x_k, x_next, step)
    assert (e_p - e_m).mean() < 0


def test_drift_clip_bounds_branches_but_keeps_gradient():
    v_theta, v_old, x_k, x_next, step = make_batch(drift=3.0)
    delta, clipped = clip_drift(v_theta - v_old, 0.5)
    assert th.all(delta.norm(dim=-1) <= 0.5 + 1e-5)
    assert clipped.all()
    loss, stats = stepnft_loss(v_theta, v_old, x_k, x_next, step, th.ones(B))
    assert stats["drift_clip_fraction"] == 1.0
    loss.backward()
    assert v_theta.grad.abs().sum() > 0
    small, clipped_small = clip_drift(th.full((1, 1, 2), 0.1), 0.5)
    assert th.allclose(small, th.full((1, 1, 2), 0.1)) and not clipped_small.any()


def test_mask_rows_and_kl():
    v_theta, v_old, x_k, x_next, step = make_batch()
    mask = th.ones(B, H, dtype=th.bool)
    mask[:, 1:] = False
    loss_masked, stats = stepnft_loss(v_theta, v_old, x_k, x_next, step, th.ones(B), mask=mask)
    loss_first, _ = stepnft_loss(v_theta[:, :1], v_old[:, :1], x_k[:, :1], x_next[:, :1], step, th.ones(B))
    assert loss_masked.item() == pytest.approx(loss_first.item(), rel=1e-5)
    assert stats["n_valid_rows"] == B
    loss_kl, s_kl = stepnft_loss(v_theta, v_old, x_k, x_next, step, th.ones(B), kl_coef=1.0)
    loss_nokl, _ = stepnft_loss(v_theta, v_old, x_k, x_next, step, th.ones(B), kl_coef=0.0)
    assert (loss_kl - loss_nokl).item() == pytest.approx(((v_theta - v_old) ** 2).mean().item(), rel=1e-4)
    with pytest.raises(ValueError):
        stepnft_loss(v_theta, v_old, x_k, x_next, step, th.ones(B), mask=th.ones(B, H + 1, dtype=th.bool))


@pytest.mark.parametrize("objective", ["positive", "negative"])
def test_selection_objectives_and_empty_selection(objective):
    v_theta, v_old, x_k, x_next, step = make_batch()
    labels = th.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    loss, _ = stepnft_loss(v_theta, v_old, x_k, x_next, step, labels, objective=objective, kl_coef=0.0)
    keep = labels > 0.5 if objective == "positive" else labels < 0.5
    ref, _ = stepnft_loss(v_theta[keep], v_old[keep], x_k[keep], x_next[keep], step[keep], labels[keep], kl_coef=0.0)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    empty = th.zeros(B) if objective == "positive" else th.ones(B)
    loss, _ = stepnft_loss(v_theta, v_old, x_k, x_next, step, empty, objective=objective)
    assert loss.item() == 0.0 and loss.requires_grad and not th.isnan(loss)
    loss.backward()
    assert th.isfinite(v_theta.grad).all()


def test_wmse_terminal_and_adaptive():
    v_theta, v_old, x_k, x_next, step = make_batch()
    labels = th.tensor([1.0, 0.0, 0.5, 1.0, 0.0, 0.25])
    e_p, e_m, *_ = errors(v_theta, v_old, x_k, x_next, step)
    loss, _ = stepnft_loss(v_theta, v_old, x_k, x_next, step, labels, objective="wmse", kl_coef=0.0)
    expected = (labels[:, None] * e_p + (1 - labels[:, None]) * e_m).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    for weighting in ("variance", "adaptive"):
        loss, _ = stepnft_loss(v_theta, v_old, x_k, x_next, step, labels, target="terminal", weighting=weighting)
        assert th.isfinite(loss)
        loss.backward()
        assert th.isfinite(v_theta.grad).all()
        v_theta.grad = None
    with pytest.raises(ValueError, match="terminal"):
        stepnft_loss(v_theta, v_old, x_k, x_next, step, labels, weighting="adaptive")
    with pytest.raises(ValueError):
        stepnft_loss(v_theta, v_old, x_k, x_next, step, labels, objective="dpo")


def test_label_types_accepted():
    v_theta, v_old, x_k, x_next, step = make_batch()
    for label in (th.ones(B, dtype=th.bool), th.ones(B, dtype=th.long), th.ones(B)):
        loss, _ = stepnft_loss(v_theta, v_old, x_k, x_next, step, label)
        assert th.isfinite(loss)
