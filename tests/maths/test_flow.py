import math

import pytest
import torch as th

from sb3_stepnft.common.flow import (
    euler_step,
    gaussian_log_prob,
    predict_x0,
    predict_x1,
    sample_chain,
    sample_flow_times,
    sde_coefficients,
    sde_mean,
    time_grid,
)

# ALGORITHM.md §2, K = 4: (sigma, s, A, B) per step for a = 0.2 and a = 0.5
REFERENCE = {
    0.2: [(0.400, 0.2000, 0.9800, -0.2500), (0.346, 0.1732, 0.9800, -0.2550), (0.200, 0.1000, 0.9900, -0.2550),
          (0.115, 0.0577, 0.9933, -0.2550)],
    0.5: [(1.000, 0.500, 0.8750, -0.2500), (0.866, 0.433, 0.8750, -0.28125), (0.500, 0.250, 0.9375, -0.28125),
          (0.289, 0.144, 0.9583, -0.28125)],
}  # fmt: skip


def test_time_grid():
    assert th.allclose(time_grid(4), th.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    assert time_grid(4).dtype == th.float32
    with pytest.raises(ValueError):
        time_grid(0)


@pytest.mark.parametrize("noise_level", [0.2, 0.5])
@pytest.mark.parametrize("k", range(4))
def test_sde_coefficients_reference_table(noise_level, k):
    sigma, std_ref, coef_x_ref, coef_v_ref = REFERENCE[noise_level][k]
    coef_x, coef_v, std = sde_coefficients(k, num_denoise_steps=4, noise_level=noise_level)
    assert isinstance(coef_x, float) and isinstance(std, float)
    assert coef_x == pytest.approx(coef_x_ref, abs=6e-5)
    assert coef_v == pytest.approx(coef_v_ref, abs=6e-5)
    assert std == pytest.approx(std_ref, abs=6e-4)  # std is s_k = sqrt(Δ)·σ_k, not σ_k
    assert std == pytest.approx(math.sqrt(0.25) * sigma, abs=6e-4)


def test_sde_coefficients_tensor_and_zero_noise():
    index = th.tensor([[0, 1], [2, 3]])
    coef_x, coef_v, std = sde_coefficients(index, 4, 0.2)
    assert coef_x.shape == (2, 2) and coef_x.dtype == th.float32 and std.dtype == th.float32
    assert coef_v[1, 1].item() == pytest.approx(-0.255, abs=1e-5)
    coef_x, coef_v, std = sde_coefficients(index, 4, 0.0)
    assert th.all(coef_x == 1.0) and th.allclose(coef_v, th.full((2, 2), -0.25)) and th.all(std == 0)
    with pytest.raises(ValueError):
        sde_coefficients(4, 4, 0.2)
    with pytest.raises(ValueError):
        sde_coefficients(th.tensor([5]), 4, 0.2)


def test_mean_is_affine_form_of_endpoint_mix():
    """μ = x̂0·w0 + x̂1·w1 (ALGORITHM.md §2) equals A·x + B·v."""
    gen = th.Generator().manual_seed(0)
    x, v = th.randn(3, 2, 5, generator=gen), th.randn(3, 2, 5, generator=gen)
    for k in range(4):
        t, t_next, delta, a = 1 - k / 4, 1 - (k + 1) / 4, 0.25, 0.2
        t_tilde = t_next if k == 0 else t
        sigma = a * math.sqrt(t / (1 - t_tilde))
        w0, w1 = 1 - t_next, t_next - sigma**2 * delta / (2 * t)
        tk = th.full((3,), t)
        expected = predict_x0(x, v, tk) * w0 + predict_x1(x, v, tk) * w1
        mean, std = sde_mean(x, v, th.full((3,), k), 4, a)
        assert th.allclose(mean, expected, atol=1e-5)
        assert std.shape == (3, 1, 1)


def test_euler_and_log_prob():
    x, v = th.ones(1, 1, 2), th.full((1, 1, 2), 2.0)
    assert th.allclose(euler_step(x, v, 4), th.full((1, 1, 2), 0.5))
    lp = gaussian_log_prob(th.zeros(1), th.zeros(1), 1.0)
    assert lp.item() == pytest.approx(-0.5 * math.log(2 * math.pi))


def test_sample_chain_modes():
    gen = th.Generator().manual_seed(0)
    x0 = th.randn(5, 3, 2, generator=gen)

    def velocity(x, t):
        return x - 0.3  # any deterministic field

    ode = sample_chain(velocity, x0, 4, sampler="ode")
    assert ode.states.shape == (5, 5, 3, 2) and ode.velocities.shape == (4, 5, 3, 2)
    assert not ode.stochastic.any()
    for k in range(4):
        assert th.allclose(ode.states[k + 1], euler_step(ode.states[k], ode.velocities[k], 4))
    sde = sample_chain(velocity, x0, 4, sampler="sde", noise_level=0.2, generator=gen)
    assert sde.stochastic.all()
    # the residual of every SDE step is exactly the injected noise: (x_{k+1} - μ_k)/s_k ~ N(0, 1)
    residuals = []
    for k in range(4):
        mean, std = sde_mean(sde.states[k], sde.velocities[k], th.full((5,), k), 4, 0.2)
        residuals.append((sde.states[k + 1] - mean) / std)
    residuals = th.stack(residuals)
    assert residuals.abs().max() < 6 and residuals.std() > 0.5
    hybrid = sample_chain(velocity, x0, 4, sampler="one_step_sde", noise_level=0.5, stochastic_step=2, generator=gen)
    assert hybrid.stochastic.tolist() == [False, False, True, False]
    assert th.allclose(hybrid.states[2], ode.states[2])
    assert not th.allclose(hybrid.states[3], ode.states[3])
    step = th.tensor([0, 1, 2, 3, 0])
    x_k, x_next, v_k = sde.transition(step)
    assert th.equal(x_k[2], sde.states[2, 2]) and th.equal(x_next[3], sde.states[4, 3])
    assert th.equal(v_k[1], sde.velocities[1, 1])
    with pytest.raises(ValueError):
        sample_chain(velocity, x0, 4, sampler="one_step_sde")
    with pytest.raises(ValueError):
        sample_chain(velocity, x0, 4, sampler="euler")


def test_sft_times_in_range_and_seeded():
    t1 = sample_flow_times(10_000, th.Generator().manual_seed(1))
    t2 = sample_flow_times(10_000, th.Generator().manual_seed(1))
    assert th.equal(t1, t2)
    assert t1.min() >= 0.001 and t1.max() <= 1.0
    # Beta(1.5, 1) has mean 0.6
    assert (t1.mean().item() - 0.001) / 0.999 == pytest.approx(0.6, abs=0.01)
