"""StepNFT honours the SB3 contract the way PPO does (API.md "The SB3 contract")."""

import inspect
import os

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback, EvalCallback, StopTrainingOnRewardThreshold
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecNormalize

from sb3_stepnft import StepNFT
from sb3_stepnft.envs import PointReachEnv
from sb3_stepnft.policies import CnnFlowPolicy, MlpFlowPolicy, MultiInputFlowPolicy
from sb3_stepnft.sft import Demonstrations, pretrain
from sb3_stepnft.wrappers import ActionChunk
from tests.helpers import DictReachEnv, ImageReachEnv, point_reach_vec

SMALL = dict(n_steps=16, batch_size=32, n_epochs=1, policy_kwargs=dict(net_arch=[32, 32]))


def small_model(env=None, **kwargs):
    return StepNFT("MlpPolicy", env if env is not None else point_reach_vec(), seed=0, **{**SMALL, **kwargs})


def test_is_an_sb3_on_policy_algorithm_with_named_arguments():
    assert issubclass(StepNFT, OnPolicyAlgorithm)
    params = inspect.signature(StepNFT.__init__).parameters
    for name in ("learning_rate", "n_steps", "batch_size", "n_epochs", "gamma", "max_grad_norm", "stats_window_size",
                 "tensorboard_log", "policy_kwargs", "verbose", "seed", "device", "_init_setup_model"):  # fmt: skip
        assert name in params and params[name].default is not inspect.Parameter.empty, name
    assert set(StepNFT.policy_aliases) >= {"MlpPolicy", "CnnPolicy", "MultiInputPolicy"}
    sig = inspect.signature(StepNFT.collect_rollouts)
    assert list(sig.parameters) == ["self", "env", "callback", "rollout_buffer", "n_rollout_steps"]


@pytest.mark.parametrize(
    "env_fn, alias, policy_class",
    [(PointReachEnv, "MlpPolicy", MlpFlowPolicy), (ImageReachEnv, "CnnPolicy", CnnFlowPolicy),
     (DictReachEnv, "MultiInputPolicy", MultiInputFlowPolicy)],
)  # fmt: skip
def test_policy_aliases_learn_and_predict(env_fn, alias, policy_class):
    env = make_vec_env(env_fn, n_envs=2, seed=0)
    model = StepNFT(alias, env, seed=0, n_steps=8, batch_size=16, n_epochs=1)
    assert isinstance(model.policy, policy_class)
    assert model.learn(32) is model
    obs = env.reset()
    actions, state = model.predict(obs, deterministic=True)
    assert actions.shape == (2, 2) and state is None
    assert np.all(np.abs(actions) <= 1.0)


def test_dict_obs_with_mlp_alias_is_sb3_value_error():
    with pytest.raises(ValueError, match="MultiInputPolicy"):
        StepNFT("MlpPolicy", make_vec_env(DictReachEnv, n_envs=1))
    with pytest.raises(ValueError, match="unknown"):
        StepNFT("NoSuchPolicy", point_reach_vec())


def test_predict_units_deterministic_and_stochastic():
    env = gym.make("Pendulum-v1")  # Box(-2, 2): env units differ from the normalised flow space
    model = StepNFT("MlpPolicy", env, seed=0, **SMALL)
    obs, _ = env.reset(seed=0)
    a1, _ = model.predict(obs, deterministic=True)
    a2, _ = model.predict(obs, deterministic=True)
    assert np.array_equal(a1, a2)  # x_0 = 0: a pure function of the observation
    with th.no_grad():
        chain = model.policy.sample(model.policy.encode(model.policy.obs_to_tensor(obs)[0]), deterministic=True)
    assert np.allclose(a1, np.clip(2.0 * chain.sample.numpy()[0, 0], -2, 2), atol=1e-5)
    th.manual_seed(0)
    s1, _ = model.predict(obs, deterministic=False)
    th.manual_seed(0)
    s2, _ = model.predict(obs, deterministic=False)
    s3, _ = model.predict(obs, deterministic=False)
    assert np.array_equal(s1, s2) and not np.array_equal(s2, s3)


def test_pendulum_defaults_without_success_flag_warn_and_run():
    model = StepNFT("MlpPolicy", "Pendulum-v1", seed=0)
    with pytest.warns(UserWarning, match="outcome='success'"):
        model.learn(600)
    assert model.outcome_resolved == "return"
    assert model.num_timesteps == 640


def test_chunked_actions():
    env = make_vec_env(lambda: ActionChunk(PointReachEnv(), size=3), n_envs=2, seed=0)
    model = small_model(env)
    assert model.policy.executed_rows == 3 and model.action_space.shape == (3, 2)
    model.learn(64)
    actions, _ = model.predict(env.reset(), deterministic=True)
    assert actions.shape == (2, 3, 2)


class RecordingCallback(BaseCallback):
    def __init__(self, stop_after=None):
        super().__init__()
        self.events, self.stop_after, self.seen_locals = [], stop_after, set()

    def _on_training_start(self):
        self.events.append("training_start")

    def _on_rollout_start(self):
        self.events.append("rollout_start")

    def _on_step(self):
        self.seen_locals |= {k for k in ("new_obs", "rewards", "dones", "infos", "actions") if k in self.locals}
        self.events.append("step")
        return self.stop_after is None or self.n_calls < self.stop_after

    def _on_rollout_end(self):
        self.events.append("rollout_end")

    def _on_training_end(self):
        self.events.append("training_end")


def test_callbacks_order_locals_and_stop():
    model = small_model()
    callback = RecordingCallback()
    model.learn(64, callback=callback)
    assert callback.events[:2] == ["training_start", "rollout_start"]
    assert callback.events.count("step") == 32 and callback.events.count("rollout_end") == 2
    assert callback.events[-1] == "training_end"
    assert callback.seen_locals == {"new_obs", "rewards", "dones", "infos", "actions"}
    stopper = RecordingCallback(stop_after=5)
    model = small_model()
    model.learn(1000, callback=stopper)
    assert stopper.events.count("step") == 5 and model.num_timesteps == 10


def test_eval_checkpoint_and_threshold_callbacks(tmp_path):
    model = small_model()
    eval_env = point_reach_vec(n_envs=1, seed=5)
    stop = StopTrainingOnRewardThreshold(reward_threshold=2.0)  # unreachable: must not stop
    eval_cb = EvalCallback(eval_env, eval_freq=16, n_eval_episodes=3, log_path=str(tmp_path), callback_on_new_best=stop)
    ckpt = CheckpointCallback(save_freq=16, save_path=str(tmp_path / "ckpt"))
    model.learn(96, callback=[eval_cb, ckpt])
    assert os.path.exists(tmp_path / "evaluations.npz")
    assert len(os.listdir(tmp_path / "ckpt")) >= 2
    mean_reward, _ = evaluate_policy(model, eval_env, n_eval_episodes=4)
    assert 0.0 <= mean_reward <= 1.0


@pytest.mark.parametrize("vec_cls", [DummyVecEnv, SubprocVecEnv])
def test_vec_env_classes(vec_cls):
    env = make_vec_env(PointReachEnv, n_envs=2, seed=0, vec_env_cls=vec_cls)
    try:
        model = small_model(env)
        model.learn(64)
        assert model.num_timesteps == 64
    finally:
        env.close()


def test_vec_normalize_and_tensorboard(tmp_path):
    env = VecNormalize(point_reach_vec(), norm_reward=True)
    model = small_model(env, tensorboard_log=str(tmp_path))
    model.learn(64)
    runs = os.listdir(tmp_path)
    assert runs == ["StepNFT_1"]
    assert any(name.startswith("events") for name in os.listdir(tmp_path / runs[0]))


def test_progress_bar():
    small_model().learn(32, progress_bar=True)


def test_save_load_roundtrip_and_env_none(tmp_path):
    model = small_model()
    model.learn(64)
    obs = model.env.reset()
    before, _ = model.predict(obs, deterministic=True)
    model.save(tmp_path / "model")
    loaded = StepNFT.load(tmp_path / "model")  # env=None
    after, _ = loaded.predict(obs, deterministic=True)
    assert np.array_equal(before, after)
    for name, tensor in model.ema.state_dict().items():
        assert th.equal(tensor, loaded.ema.state_dict()[name])
    opt_a, opt_b = model.policy.optimizer.state_dict(), loaded.policy.optimizer.state_dict()
    assert opt_a["state"].keys() == opt_b["state"].keys()
    key = next(iter(opt_a["state"]))
    assert th.equal(opt_a["state"][key]["exp_avg"], opt_b["state"][key]["exp_avg"])
    assert loaded.ema_iteration == model.ema_iteration and loaded.outcome_resolved == model.outcome_resolved
    params = model.get_parameters()
    assert set(params) == {"policy", "policy.optimizer", "ema"}
    resumed = StepNFT.load(tmp_path / "model", env=point_reach_vec(n_envs=3))  # another number of envs
    resumed.learn(48, reset_num_timesteps=False)
    assert resumed.num_timesteps == model.num_timesteps + 48
    # a policy round-trips on its own too
    model.policy.save(tmp_path / "policy.pt")
    policy = MlpFlowPolicy.load(tmp_path / "policy.pt")
    again, _ = policy.predict(obs, deterministic=True)
    assert np.array_equal(before, again)


def test_saved_with_weights_only_loading(tmp_path):
    model = small_model()
    model.save(tmp_path / "m.zip")
    import zipfile

    with zipfile.ZipFile(tmp_path / "m.zip") as archive:
        assert "ema.pth" in archive.namelist()
        with archive.open("ema.pth") as f:
            state = th.load(f, weights_only=True)
    assert set(state) == set(model.ema.shadow)


def test_seeding_reproduces():
    def run():
        model = small_model()
        model.learn(96)
        return model.predict(model.env.reset(), deterministic=True)[0], [p.detach().clone() for p in model.policy.parameters()]

    a, pa = run()
    b, pb = run()
    assert np.array_equal(a, b)
    assert all(th.equal(x, y) for x, y in zip(pa, pb))


def test_train_eval_modes():
    model = small_model()
    modes = []
    original_sample, original_step = model._sample_decisions, model._loss

    def sample(obs):
        modes.append(("rollout", model.policy.training))
        return original_sample(obs)

    def step(batch, index):
        modes.append(("train", model.policy.training))
        return original_step(batch, index)

    model._sample_decisions, model._loss = sample, step
    model.learn(64)
    assert {mode for kind, mode in modes if kind == "rollout"} == {False}
    assert {mode for kind, mode in modes if kind == "train"} == {True}


def test_logged_keys():
    model = small_model()
    model.learn(64)
    logged = set(model.logger.name_to_value) | set(model.logger.name_to_excluded)
    for key in ("train/learning_rate", "train/loss", "train/ema_decay", "train/positive_fraction", "train/logit_mean",
                "train/drift_clip_fraction", "train/n_labelled", "train/n_pending", "train/discarded_decisions"):  # fmt: skip
        assert key in logged, key
    model.dump_logs()


def test_ppo_style_comparison_runs_side_by_side():
    """Sanity: the same env and API run SB3's PPO and StepNFT (the comparison is a loop over classes)."""
    for cls in (PPO, StepNFT):
        cls("MlpPolicy", point_reach_vec(), n_steps=16, batch_size=32, n_epochs=1, seed=0).learn(32)


def test_pretrain_then_learn_keeps_counters(tmp_path):
    model = small_model()
    env = PointReachEnv()
    obs, _ = env.reset(seed=0)
    observations, actions = [], []
    for _ in range(20):
        action = np.clip(obs[2:4] * 10, -1, 1).astype(np.float32)
        observations.append(obs)
        actions.append(action)
        obs, *_ = env.step(action)
    demos = Demonstrations(np.array(observations), np.array(actions), np.r_[True, np.zeros(19, dtype=bool)])
    metrics = pretrain(model, demos, epochs=5, seed=0)
    assert metrics["gradient_steps"] == 5 and model.num_timesteps == 0
    for name, param in model.policy.named_parameters():
        assert th.equal(model.ema.shadow[name], param.detach())
    demos.save(tmp_path / "demos")
    again = Demonstrations.load(tmp_path / "demos.npz")
    assert np.array_equal(again.actions, demos.actions)
