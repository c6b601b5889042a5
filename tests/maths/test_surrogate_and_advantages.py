"""Pure functions of the baselines (ALGORITHM.md §4): GAE, group-relative advantages, the chunk log-likelihood of
Flow-SDE steps and the clipped surrogate and value losses."""

import numpy as np
import pytest
import torch as th

from sb3_stepnft.common.flow import sde_coefficients
from sb3_stepnft.common.surrogate import chunk_log_prob, clipped_surrogate_loss, clipped_value_loss, sde_step_row_log_prob
from sb3_stepnft.flow_grpo import group_advantages
from sb3_stepnft.flow_ppo import compute_gae

A_RETURNS = 0.25 / (np.sqrt(0.125) + 1e-6)  # returns 2.5 against 2.0: deviation .25, unbiased std √.125


def test_gae_hand_computed_termination_cut_and_truncation_bootstrap():
    gamma, lam = 0.9, 0.8
    # env 0: the episode terminates with decision 1 (no bootstrap: the cut).
    # env 1: the episode is truncated with decision 1, V(terminal obs) = 0.7 enters the reward as SB3 adds it.
    rewards = np.array([[1.0, 0.0], [0.0, 0.0 + gamma * 0.7], [1.0, 0.0]])
    values = np.array([[0.5, 0.1], [0.2, 0.3], [0.4, 0.2]])
    dones = np.array([[False, False], [True, True], [False, False]])
    last_values = np.array([0.6, 0.0])
    advantages, returns = compute_gae(rewards, values, dones, last_values, gamma, lam)
    # env 0: δ2 = 1 + .9·.6 - .4 = 1.14; δ1 = 0 - .2 (cut); A0 = (1 + .9·.2 - .5) + .9·.8·(-.2) = .536
    # env 1: δ2 = -.2; δ1 = .63 - .3 = .33; A0 = (0 + .9·.3 - .1) + .72·.33 = .4076
    expected = np.array([[0.536, 0.4076], [-0.2, 0.33], [1.14, -0.2]])
    assert np.allclose(advantages, expected, atol=1e-6)
    assert np.allclose(returns, expected + values, atol=1e-6)


def test_group_advantages_hand_computed():
    # mean .5, unbiased std sqrt(4·.25/3) = .57735
    assert group_advantages([1, 0, 0, 1]) == pytest.approx([0.8660239, -0.8660239, -0.8660239, 0.8660239], rel=1e-6)
    assert group_advantages([2.0, 2.5]).tolist() == pytest.approx([-A_RETURNS, A_RETURNS], rel=1e-9)
    assert np.all(group_advantages([1, 1, 1]) == 0.0)
    with pytest.raises(ValueError):
        group_advantages([1.0])


def test_chunk_log_likelihood_matches_gaussian_formula():
    th.manual_seed(0)
    x_k, velocity, noise = th.randn(3, 2, 4), th.randn(3, 2, 4), th.randn(3, 2, 4)
    step = th.tensor([0, 2, 3])
    coef_x, coef_v, std = sde_coefficients(step, 4, 0.5)
    mean = coef_x[:, None, None] * x_k + coef_v[:, None, None] * velocity
    x_next = mean + std[:, None, None] * noise
    rows = sde_step_row_log_prob(x_k, velocity, x_next, step, 4, 0.5)
    expected = (-0.5 * noise**2 - th.log(std)[:, None, None] - 0.5 * np.log(2 * np.pi)).sum(-1)
    assert th.allclose(rows, expected, atol=1e-5)
    mask = th.tensor([[True, True], [True, False], [False, False]])
    assert th.allclose(chunk_log_prob(rows, mask), (rows * mask).sum(-1))


def test_clipped_surrogate_and_value_loss():
    advantages = th.tensor([1.0, -1.0, 1.0])
    old = th.zeros(3)
    new = th.log(th.tensor([1.5, 1.5, 0.9]))
    loss, stats = clipped_surrogate_loss(new, old, advantages, 0.2)
    assert loss.item() == pytest.approx(-(1.2 - 1.5 + 0.9) / 3)
    assert stats["clip_fraction"] == pytest.approx(2 / 3)
    values, old_values, returns = th.tensor([1.0, 30.0]), th.tensor([0.0, 29.0]), th.tensor([0.5, 0.0])
    # unclipped Huber(δ=10): .125, 10·(30 - 5) = 250; clipped values (.2, 29.2): .045, 10·(29.2 - 5) = 242
    assert clipped_value_loss(values, old_values, returns, 0.2, 10.0).item() == pytest.approx((0.125 + 250) / 2)
    assert clipped_value_loss(values, old_values, returns, None, 10.0).item() == pytest.approx((0.125 + 250) / 2)
    # V moved from 0 to 1 towards R = 2: the clipped prediction 0.2 errs by 1.8, and the max keeps its loss (πRL)
    values, old_values, returns = th.tensor([1.0]), th.tensor([0.0]), th.tensor([2.0])
    assert clipped_value_loss(values, old_values, returns, 0.2, 10.0).item() == pytest.approx(0.5 * 1.8**2)
    assert clipped_value_loss(values, old_values, returns, None, 10.0).item() == pytest.approx(0.5)
