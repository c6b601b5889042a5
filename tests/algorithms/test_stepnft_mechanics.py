"""Pending labels, discards, empty iterations, EMA schedule and guard rails of StepNFT (ALGORITHM.md §3)."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import DummyVecEnv

from sb3_stepnft import StepNFT
from sb3_stepnft.common.ema import ema_decay_at
from sb3_stepnft.envs import PointReachEnv
from sb3_stepnft.stepnft import MissingSuccessSignalError, NonFiniteLossError
from sb3_stepnft.wrappers import SuccessInfo
from tests.helpers import point_reach_vec, record_training_data


class FixedLengthEnv(gym.Env):
    """Episodes of exactly ``length`` steps; episode i succeeds iff i is even; obs = (episode, step)."""

    def __init__(self, length=6, report_success=True):
        self.length, self.report_success = length, report_success
        self.observation_space = spaces.Box(-1e6, 1e6, (2,), np.float32)
        self.action_space = spaces.Box(-1, 1, (1,), np.float32)
        self.episode, self.t = -1, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.episode, self.t = self.episode + 1, 0
        return np.array([self.episode, 0], np.float32), {}

    def step(self, action):
        self.t += 1
        done = self.t >= self.length
        info = {"is_success": done and self.episode % 2 == 0} if self.report_success else {}
        return np.array([self.episode, self.t], np.float32), float(self.episode), done, False, info


def fixed_model(n_steps=4, length=6, **kwargs):
    env = DummyVecEnv([lambda: FixedLengthEnv(length)])
    return StepNFT("MlpPolicy", env, n_steps=n_steps, batch_size=64, n_epochs=1, seed=0, **kwargs)


def test_pending_labels_across_rollouts():
    model = fixed_model(n_steps=4, length=6)
    seen = record_training_data(model)
    model.learn(4)  # episode 0 still running after 4 steps: nothing labelled
    assert seen == [None] and model.rollout_buffer.n_pending == 4
    model.learn(4, reset_num_timesteps=False)  # episode 0 ends at step 6: its 6 decisions are labelled, 2 pending
    data = seen[-1]
    assert len(data["label"]) == 6
    assert np.all(data["label"] == 1.0)  # episode 0 succeeded
    assert np.array_equal(data["obs"][:, 0], np.zeros(6)) and sorted(data["obs"][:, 1]) == [0, 1, 2, 3, 4, 5]
    assert model.rollout_buffer.n_pending == 2
    model.learn(4, reset_num_timesteps=False)  # episode 1 (failure) ends at step 12
    data = seen[-1]
    assert len(data["label"]) == 6 and np.all(data["label"] == 0.0)
    assert np.all(data["obs"][:, 0] == 1)
    assert model.discarded_decisions == 0


def test_empty_iteration_no_step_no_nan_but_ema_advances():
    model = fixed_model(n_steps=4, length=50)
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(4)
    assert all(th.equal(a, b) for a, b in zip(before, model.policy.parameters()))
    assert model.ema_iteration == 1
    values = model.logger.name_to_value
    assert values["train/n_labelled"] == 0 and values["train/n_pending"] == 4
    assert all(not (isinstance(v, float) and math.isnan(v)) for v in values.values())


def test_outside_resets_discard_pending():
    model = fixed_model(n_steps=4, length=6)
    model.learn(4)
    assert model.rollout_buffer.n_pending == 4
    model.learn(4, reset_num_timesteps=True)  # the env is reset: episode 0 can never end
    assert model.discarded_decisions == 4
    model.set_env(DummyVecEnv([lambda: FixedLengthEnv(6)]), force_reset=True)
    model.learn(4, reset_num_timesteps=False)
    assert model.discarded_decisions == 8
    assert model.logger.name_to_value["train/discarded_decisions"] == 8


def test_pending_decisions_are_not_saved(tmp_path):
    model = fixed_model(n_steps=4, length=6)
    model.learn(4)
    model.save(tmp_path / "m")
    loaded = StepNFT.load(tmp_path / "m", env=DummyVecEnv([lambda: FixedLengthEnv(6)]))
    assert loaded.rollout_buffer.n_pending == 0


def test_ema_schedule_end_points_and_constant():
    assert ema_decay_at(0, 10, (0.1, 0.995)) == pytest.approx(0.1)
    assert ema_decay_at(10, 10, (0.1, 0.995)) == pytest.approx(0.995)
    assert ema_decay_at(25, 10, (0.1, 0.995)) == pytest.approx(0.995)
    assert ema_decay_at(5, 10, (0.1, 0.995)) == pytest.approx((0.1 + 0.995) / 2)
    assert ema_decay_at(3, 10, 0.9) == 0.9


def _record_decays(model):
    decays = []
    update = model.ema.update

    def recording(decay):
        decays.append(decay)
        update(decay)

    model.ema.update = recording
    return decays


def test_ema_default_horizon_is_the_authors_effective_schedule():
    # 16 env steps per iteration; 240 steps = 15 planned iterations; T = ceil(5/3 · 15) = 25 (ALGORITHM.md §3.5).
    model = StepNFT("MlpPolicy", point_reach_vec(n_envs=2), n_steps=8, batch_size=32, n_epochs=1, seed=0)
    decays = _record_decays(model)
    model.learn(240)
    assert model._ema_schedule_horizon == 25 and model.ema_iteration == 15
    assert decays == pytest.approx([ema_decay_at(g, 25, (0.1, 0.995)) for g in range(15)])
    # the rule's end value: the rollout decay ends at d(1/ratio) = d(0.6), about 0.686, not at 0.995
    assert model.current_ema_decay() == pytest.approx(ema_decay_at(0.6, 1.0, (0.1, 0.995)))
    assert model.current_ema_decay() == pytest.approx(0.6855, abs=1e-3)
    model.learn(16)  # reset_num_timesteps=True restarts the schedule
    assert model.ema_iteration == 1 and model._ema_schedule_horizon == 2
    fixed = StepNFT("MlpPolicy", point_reach_vec(n_envs=2), n_steps=8, ema_horizon=3, ema_decay=0.5, seed=0)
    fixed.learn(16)
    assert fixed._ema_schedule_horizon == 3 and fixed.logger.name_to_value["train/ema_decay"] == 0.5


def test_ema_schedule_is_continuous_across_chunked_learn_calls():
    model = StepNFT("MlpPolicy", point_reach_vec(n_envs=2), n_steps=8, batch_size=32, n_epochs=1, seed=0)
    decays = _record_decays(model)
    model.learn(64)
    for _ in range(3):
        model.learn(64, reset_num_timesteps=False)
    assert len(decays) == 16 and decays[0] == pytest.approx(0.1)
    # never restarts or jumps back (the first version fell from 0.96 to 0.55 at every call)
    assert all(later >= earlier - 1e-12 for earlier, later in zip(decays, decays[1:]))
    # with a fixed horizon, chunked calls follow exactly the schedule of one call
    one = StepNFT("MlpPolicy", point_reach_vec(n_envs=2), n_steps=8, batch_size=32, n_epochs=1, ema_horizon=20, seed=0)
    one_decays = _record_decays(one)
    one.learn(256)
    chunked = StepNFT("MlpPolicy", point_reach_vec(n_envs=2), n_steps=8, batch_size=32, n_epochs=1, ema_horizon=20, seed=0)
    chunked_decays = _record_decays(chunked)
    chunked.learn(64)
    for _ in range(3):
        chunked.learn(64, reset_num_timesteps=False)
    assert chunked_decays == pytest.approx(one_decays)


def test_ema_schedule_is_continuous_across_save_and_load(tmp_path):
    def fresh():
        return StepNFT("MlpPolicy", point_reach_vec(n_envs=2), n_steps=8, batch_size=32, n_epochs=1, seed=0)

    straight = fresh()
    straight_decays = _record_decays(straight)
    straight.learn(64)
    straight.learn(64, reset_num_timesteps=False)

    first = fresh()
    first_decays = _record_decays(first)
    first.learn(64)
    first.save(tmp_path / "half")
    resumed = StepNFT.load(tmp_path / "half", env=point_reach_vec(n_envs=2))
    assert resumed.ema_progress == pytest.approx(first.ema_progress) and resumed.ema_iteration == 4
    resumed_decays = _record_decays(resumed)
    resumed.learn(64, reset_num_timesteps=False)
    assert first_decays + resumed_decays == pytest.approx(straight_decays)


def test_ema_update_formula_and_sync_at_start():
    model = StepNFT("MlpPolicy", point_reach_vec(n_envs=2), n_steps=8, batch_size=32, n_epochs=1, seed=0)
    # A student changed from outside (set_parameters / pretrain / load) is what the first rollout uses.
    with th.no_grad():
        for p in model.policy.parameters():
            p.add_(0.5)
    student = {n: p.detach().clone() for n, p in model.policy.named_parameters()}

    class Check(BaseCallback):
        def _on_step(self):
            if self.n_calls == 1:
                for n, p in self.model.policy.named_parameters():
                    assert th.equal(p, student[n])  # θ_old (swapped in) == θ at g = 0
            return True

    model.learn(16, callback=Check())
    # after the update: θ_old = d(0)·θ_at_start + (1 - d(0))·θ_new with d(0) = 0.1
    new_student = {n: p.detach() for n, p in model.policy.named_parameters()}
    for name, tensor in model.ema.shadow.items():
        expected = 0.1 * student[name] + 0.9 * new_student[name]
        assert th.allclose(tensor, expected, atol=1e-6)


def test_ema_covers_trainable_parameters_only():
    model = StepNFT("MlpPolicy", point_reach_vec(n_envs=1), n_steps=8, seed=0)
    first = next(iter(model.policy.velocity_net.parameters()))
    first.requires_grad_(False)
    from sb3_stepnft.common.ema import EMAWeights

    ema = EMAWeights(model.policy)
    names = dict(model.policy.named_parameters())
    assert all(names[n].requires_grad for n in ema.shadow)
    assert len(ema.shadow) == len(names) - 1


def test_graded_labels_for_returns():
    model = fixed_model(n_steps=12, length=3, outcome="return")
    seen = record_training_data(model)
    model.learn(12)  # 4 episodes with returns 0, 3, 6, 9 (reward = episode index)
    labels = {int(e): float(value) for e, value in zip(seen[-1]["obs"][:, 0], seen[-1]["label"])}
    returns = np.array([0, 3, 6, 9.0]) * 3
    adv = (returns - returns.mean()) / (returns.std() + 1e-8)
    expected = np.clip(np.clip(adv, -1, 1) / 2 + 0.5, 0, 1)
    assert [labels[i] for i in range(4)] == pytest.approx(expected.tolist(), abs=1e-6)


# ------------------------------------------------------------------------------------------------ guard rails
def test_non_box_and_unbounded_action_spaces_are_sb3_assertions():
    with pytest.raises(AssertionError, match="Box"):
        StepNFT("MlpPolicy", "CartPole-v1")

    class Unbounded(PointReachEnv):
        def __init__(self):
            super().__init__()
            self.action_space = spaces.Box(-np.inf, np.inf, (2,), np.float32)

    with pytest.raises(AssertionError, match="finite lower and upper bound.*ActionWrapper"):
        StepNFT("MlpPolicy", Unbounded())


def test_three_dimensional_box_is_rejected():
    class Cube(PointReachEnv):
        def __init__(self):
            super().__init__()
            self.action_space = spaces.Box(-1, 1, (2, 2, 2), np.float32)

    with pytest.raises(ValueError, match=r"Box\(A\) or Box\(H, A\)"):
        StepNFT("MlpPolicy", Cube())


def test_success_requested_without_success_signal():
    model = StepNFT("MlpPolicy", "Pendulum-v1", outcome="success", n_steps=256, seed=0)
    with pytest.raises(MissingSuccessSignalError, match="outcome='auto'") as error:
        model.learn(512)
    assert isinstance(error.value, ValueError)
    assert "SuccessInfo" in str(error.value) and "outcome='return'" in str(error.value)


def test_success_adapter_gives_binary_labels():
    class OtherKey(gym.Wrapper):
        def step(self, action):
            obs, r, term, trunc, info = self.env.step(action)
            return obs, r, term, trunc, {"success": info.pop("is_success")}

    env = DummyVecEnv([lambda: SuccessInfo(OtherKey(PointReachEnv()), key="success")])
    model = StepNFT("MlpPolicy", env, outcome="success", n_steps=32, seed=0)
    model.learn(32)
    assert model.outcome_resolved == "success"


def test_nan_loss_is_a_clear_error():
    class NanObs(gym.ObservationWrapper):
        def observation(self, obs):
            return np.full_like(obs, np.nan)

    model = StepNFT("MlpPolicy", DummyVecEnv([lambda: NanObs(PointReachEnv())]), n_steps=32, seed=0)
    with pytest.raises(NonFiniteLossError, match="learning_rate"):
        model.learn(64)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sampler="ode"), "target='terminal'"),
        (dict(use_sde=True), "noise_level"),
        (dict(sde_sample_freq=4), "sampler"),
        (dict(learning_rate=-1.0), "learning_rate"),
        (dict(n_steps=0), "n_steps"),
        (dict(batch_size=0), "batch_size"),
        (dict(n_epochs=1.5), "n_epochs"),
        (dict(noise_level=-0.1), "noise_level"),
        (dict(num_denoise_steps=0), "num_denoise_steps"),
        (dict(step_selection=4), "step_selection"),
        (dict(step_selection="first"), "step_selection"),
        (dict(ema_decay=(0.1, 1.5)), "ema_decay"),
        (dict(ema_horizon=0), "ema_horizon"),
        (dict(objective="dpo"), "objective"),
        (dict(target="mean"), "target"),
        (dict(outcome="reward"), "outcome"),
        (dict(trust_region=0.0), "trust_region"),
        (dict(max_drift=-1.0), "max_drift"),
        (dict(kl_coef=-1.0), "kl_coef"),
        (dict(max_grad_norm=0.0), "max_grad_norm"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StepNFT("MlpPolicy", point_reach_vec(n_envs=1), **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(sampler="ode", target="terminal"),
        dict(target="terminal"),
        dict(objective="wmse"),
        dict(objective="positive"),
        dict(objective="negative"),
        dict(step_selection=3),
        dict(ema_decay=0.9),
        dict(max_drift=None),
    ],
)
def test_ablations_run(kwargs):
    model = StepNFT("MlpPolicy", point_reach_vec(n_envs=2), n_steps=32, batch_size=32, n_epochs=1, seed=0, **kwargs)
    model.learn(128)
    assert all(th.isfinite(p).all() for p in model.policy.parameters())


def test_eval_callback_sees_the_student_not_the_ema_weights():
    model = StepNFT("MlpPolicy", point_reach_vec(n_envs=2), n_steps=8, batch_size=32, n_epochs=1, seed=0)
    model.learn(64)  # after a few updates θ_old != θ
    student = {n: p.detach().clone() for n, p in model.policy.named_parameters()}
    assert any(not th.equal(model.ema.shadow[n], student[n]) for n in student)

    class Check(BaseCallback):
        def _on_step(self):
            for n, p in self.model.policy.named_parameters():
                assert th.equal(p, student[n])
            return True

    model.learn(8, callback=Check(), reset_num_timesteps=False)


def test_longer_model_chunk_than_executed_rows():
    model = StepNFT(
        "MlpPolicy", point_reach_vec(n_envs=2), n_steps=16, batch_size=32, n_epochs=1, seed=0,
        policy_kwargs=dict(chunk_size=4, action_dim=3),
    )  # fmt: skip
    model.learn(64)
    assert model.policy.chunk_size == 4 and model.policy.executed_rows == 1
    assert model.predict(model.env.reset(), deterministic=True)[0].shape == (2, 2)


def test_num_denoise_steps_has_one_owner_the_policy_solver():
    # K set only through policy_kwargs (as pi0_policy_kwargs(num_denoise_steps=10) does): rollouts, stored
    # transitions and the loss all use the policy's solver.
    model = StepNFT("MlpPolicy", point_reach_vec(n_envs=2), n_steps=8, batch_size=16, n_epochs=1, seed=0,
                    policy_kwargs=dict(num_denoise_steps=10))  # fmt: skip
    assert model.num_denoise_steps == 10 and model.policy.solver.num_denoise_steps == 10
    seen = {}
    original = model._loss

    def spy(batch, index):
        if "loss" not in seen:
            seen["batch"] = batch
            seen["loss"] = original(batch, index)
        return original(batch, index)

    model._loss = spy
    model.learn(48)  # 12-step episodes: labelled decisions from the second iteration on
    batch = seen["batch"]
    assert int(batch.step_index.max()) > 3  # steps of the 10-step chain were stored
    rows = model.policy.executed_rows
    mean, std = model.policy.solver.transition_mean(batch.x_k[:, :rows], batch.v_old, batch.step_index)
    residual = (batch.x_next - mean) / std  # exactly the injected noise: the loss's coefficients match the rollout
    assert residual.abs().max() < 8 and abs(float(residual.std()) - 1.0) < 0.2
    # the first minibatch after θ_old ← θ gives exactly log 2 (+ κ·0)
    loss, stats = seen["loss"]
    assert stats["policy_loss"] == pytest.approx(math.log(2), abs=1e-6)
    with pytest.raises(ValueError, match="set twice"):
        StepNFT("MlpPolicy", point_reach_vec(n_envs=1), num_denoise_steps=6, policy_kwargs=dict(num_denoise_steps=10))
    with pytest.raises(ValueError, match="noise_level"):
        StepNFT("MlpPolicy", point_reach_vec(n_envs=1), noise_level=0.3, policy_kwargs=dict(noise_level=0.4))
    with pytest.raises(ValueError, match="step_selection"):
        StepNFT("MlpPolicy", point_reach_vec(n_envs=1), step_selection=7, policy_kwargs=dict(num_denoise_steps=6))
    assert StepNFT("MlpPolicy", point_reach_vec(n_envs=1), step_selection=7,
                   policy_kwargs=dict(num_denoise_steps=10)).step_selection == 7  # fmt: skip
