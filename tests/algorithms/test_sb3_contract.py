"""StepNFT, FlowPPO and FlowGRPO honour the SB3 contract the way PPO does (API.md "The SB3 contract").

Shared checks are parametrised over ``ALGOS``; where the algorithms differ by design (StepNFT's EMA, outcome labels
and pretraining; the baselines' clip range and importance ratio) the check is a separate test over the algorithms it
concerns. FlowGRPO trains on grouped envs (``make_grouped_vec_env``), the others on a plain ``make_vec_env``.
"""

import inspect
import os
import zipfile

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback, EvalCallback, StopTrainingOnRewardThreshold
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecNormalize

from sb3_stepnft import FlowGRPO, FlowPPO, StepNFT
from sb3_stepnft.common.checks import UnsupportedActionSpaceError
from sb3_stepnft.common.on_policy import FlowOnPolicyAlgorithm
from sb3_stepnft.envs import PointReachEnv, make_grouped_vec_env
from sb3_stepnft.policies import CnnFlowPolicy, MlpFlowPolicy, MultiInputFlowPolicy
from sb3_stepnft.sft import Demonstrations, pretrain
from sb3_stepnft.wrappers import ActionChunk
from tests.helpers import DictReachEnv, ImageReachEnv, point_reach_vec

ALGOS = [StepNFT, FlowPPO, FlowGRPO]
BASELINES = [FlowPPO, FlowGRPO]
SMALL = dict(n_steps=16, batch_size=32, n_epochs=1, policy_kwargs=dict(net_arch=[32, 32]))


def make_env(algo, env_fn=PointReachEnv, n_envs=2, vec_env_cls=DummyVecEnv, seed=0):
    """``n_envs`` envs; for FlowGRPO ``n_envs // 2`` groups of two."""
    if algo is FlowGRPO:
        return make_grouped_vec_env(env_fn, n_groups=n_envs // 2, group_size=2, seed=seed, vec_env_cls=vec_env_cls)
    return make_vec_env(env_fn, n_envs=n_envs, seed=seed, vec_env_cls=vec_env_cls)


def algo_kwargs(algo, **kwargs):
    return {**SMALL, **(dict(group_size=2) if algo is FlowGRPO else {}), **kwargs}


def small_model(algo, env=None, **kwargs):
    return algo("MlpPolicy", env if env is not None else make_env(algo), seed=0, **algo_kwargs(algo, **kwargs))


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


# ------------------------------------------------------------------------------------------------ construction


@pytest.mark.parametrize("algo", ALGOS)
def test_is_an_sb3_on_policy_algorithm_with_named_arguments(algo):
    assert issubclass(algo, OnPolicyAlgorithm) and issubclass(algo, FlowOnPolicyAlgorithm)
    params = inspect.signature(algo.__init__).parameters
    for name in ("learning_rate", "n_steps", "batch_size", "n_epochs", "gamma", "max_grad_norm", "stats_window_size",
                 "tensorboard_log", "policy_kwargs", "verbose", "seed", "device", "_init_setup_model",
                 "num_denoise_steps", "noise_level"):  # fmt: skip
        assert name in params and params[name].default is not inspect.Parameter.empty, name
    assert set(algo.policy_aliases) >= {"MlpPolicy", "CnnPolicy", "MultiInputPolicy"}
    rollout_args = ["self", "env", "callback", "rollout_buffer", "n_rollout_steps"]
    assert list(inspect.signature(algo.collect_rollouts).parameters) == rollout_args
    assert algo.collect_rollouts is FlowOnPolicyAlgorithm.collect_rollouts  # one shared rollout loop


@pytest.mark.parametrize("algo", BASELINES)
def test_baselines_noise_level_and_clip_range_defaults(algo):
    params = inspect.signature(algo.__init__).parameters
    assert "clip_range" in params
    assert params["noise_level"].default == 0.5 and params["clip_range"].default == 0.2


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize(
    "env_fn, alias, policy_class",
    [(PointReachEnv, "MlpPolicy", MlpFlowPolicy), (ImageReachEnv, "CnnPolicy", CnnFlowPolicy),
     (DictReachEnv, "MultiInputPolicy", MultiInputFlowPolicy)],
)  # fmt: skip
def test_policy_aliases_learn_and_predict(algo, env_fn, alias, policy_class):
    env = make_env(algo, env_fn)
    model = algo(alias, env, seed=0, **algo_kwargs(algo, n_steps=8, batch_size=16, policy_kwargs=None))
    assert isinstance(model.policy, policy_class)
    assert model.policy.value_head is (algo is FlowPPO)
    assert model.learn(32) is model
    actions, state = model.predict(env.reset(), deterministic=True)
    assert actions.shape == (2, 2) and state is None and np.all(np.abs(actions) <= 1.0)


@pytest.mark.parametrize("algo", ALGOS)
def test_dict_obs_with_mlp_alias_is_sb3_value_error(algo):
    with pytest.raises(ValueError, match="MultiInputPolicy"):
        algo("MlpPolicy", make_env(algo, DictReachEnv), **algo_kwargs(algo, policy_kwargs=None))
    with pytest.raises(ValueError, match="unknown"):
        algo("NoSuchPolicy", make_env(algo), **algo_kwargs(algo, policy_kwargs=None))


@pytest.mark.parametrize("algo", BASELINES)
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(use_sde=True), "noise_level"),
        (dict(sde_sample_freq=4), "noise_level"),
        (dict(noise_level=0.0), "noise_level"),
        (dict(clip_range=0.0), "clip_range"),
        (dict(learning_rate=-1.0), "learning_rate"),
        (dict(n_steps=0), "n_steps"),
        (dict(batch_size=0), "batch_size"),
        (dict(num_denoise_steps=0), "num_denoise_steps"),
        (dict(max_grad_norm=0.0), "max_grad_norm"),
    ],
)
def test_invalid_arguments(algo, kwargs, match):
    """(StepNFT's argument checks: test_stepnft_mechanics.py::test_invalid_arguments.)"""
    with pytest.raises(ValueError, match=match):
        small_model(algo, **kwargs)


@pytest.mark.parametrize("algo", ALGOS)
def test_non_box_action_space_is_sb3_assertion_that_names_the_fix(algo):
    with pytest.raises(UnsupportedActionSpaceError, match=r"only supports Box .* got Discrete\(2\).*PPO, A2C or DQN"):
        algo("MlpPolicy", make_env(algo, "CartPole-v1"), **algo_kwargs(algo))
    assert issubclass(UnsupportedActionSpaceError, AssertionError)  # SB3's exception type (API.md)


@pytest.mark.parametrize("algo", ALGOS)
def test_set_env_and_load_with_a_non_box_env_name_the_fix(algo, tmp_path):
    model = small_model(algo)
    model.save(tmp_path / "model.zip")
    discrete = make_env(algo, "CartPole-v1")
    with pytest.raises(UnsupportedActionSpaceError, match=f"{algo.__name__} only supports Box"):
        model.set_env(discrete)
    with pytest.raises(UnsupportedActionSpaceError, match="got Discrete"):
        algo.load(tmp_path / "model.zip", env=discrete)


@pytest.mark.parametrize("algo", ALGOS)
def test_gaussian_policy_options_are_named(algo):
    """RL Zoo configs for PPO carry ActorCriticPolicy options; the error names them and the flow counterpart."""
    kwargs = algo_kwargs(algo)
    kwargs["policy_kwargs"] = dict(net_arch=[32], log_std_init=-1.0, ortho_init=False)
    with pytest.raises(TypeError, match=r"\['log_std_init', 'ortho_init'\] are options of SB3's Gaussian.*noise_level"):
        algo("MlpPolicy", make_env(algo), **kwargs)


@pytest.mark.parametrize("algo", ALGOS)
def test_a_policy_that_is_not_a_flow_policy_is_named(algo):
    with pytest.raises(TypeError, match=r"needs a flow policy, got ActorCriticPolicy.*'MlpPolicy'.*BaseFlowPolicy"):
        algo(ActorCriticPolicy, make_env(algo), **algo_kwargs(algo))


# ------------------------------------------------------------------------------------------------ acting


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


@pytest.mark.parametrize("algo", ALGOS)
def test_chunked_actions(algo):
    env = make_env(algo, lambda: ActionChunk(PointReachEnv(), size=3))
    model = small_model(algo, env)
    assert model.policy.executed_rows == 3 and model.action_space.shape == (3, 2)
    model.learn(64)
    actions, _ = model.predict(env.reset(), deterministic=True)
    assert actions.shape == (2, 3, 2)


@pytest.mark.parametrize("algo", BASELINES)
def test_first_minibatch_ratio_is_one_with_chunks(algo):
    """ρ = exp(log π_θ - log π_old) is 1 on the first minibatch of every iteration (ALGORITHM.md §4)."""
    env = make_env(algo, lambda: ActionChunk(PointReachEnv(), size=3), n_envs=4)
    model = small_model(algo, env, n_steps=32, batch_size=16, n_epochs=2)
    errors = []
    original_train = model.train

    def train():
        original_train()
        errors.append(model.first_minibatch_ratio_error)

    model.train = train
    model.learn(4 * 32 * 4)
    fresh = [e for e in errors if e is not None]
    assert len(fresh) >= 3 and max(fresh) <= 1e-5, errors
    if algo is FlowPPO:  # (GRPO's untrained groups all fail: zero advantages, nothing moves)
        assert model.logger.name_to_value["train/approx_kl"] > 0  # later minibatches did move the policy


# ------------------------------------------------------------------------------------------------ callbacks, envs, logs


@pytest.mark.parametrize("algo", ALGOS)
def test_callbacks_order_locals_and_stop(algo):
    callback = RecordingCallback()
    small_model(algo).learn(64, callback=callback)
    assert callback.events[:2] == ["training_start", "rollout_start"]
    assert callback.events.count("step") == 32 and callback.events.count("rollout_end") == 2
    assert callback.events[-1] == "training_end"
    assert callback.seen_locals == {"new_obs", "rewards", "dones", "infos", "actions"}
    stopper = RecordingCallback(stop_after=5)
    model = small_model(algo)
    model.learn(1000, callback=stopper)
    assert stopper.events.count("step") == 5 and model.num_timesteps == 10
    model.learn(32, reset_num_timesteps=False)  # the stopped rollout's steps are trained with the next one


@pytest.mark.parametrize("algo", ALGOS)
def test_eval_checkpoint_and_threshold_callbacks(algo, tmp_path):
    model = small_model(algo)
    eval_env = point_reach_vec(n_envs=1, seed=5)
    stop = StopTrainingOnRewardThreshold(reward_threshold=2.0)  # unreachable: must not stop
    eval_cb = EvalCallback(eval_env, eval_freq=16, n_eval_episodes=3, log_path=str(tmp_path), callback_on_new_best=stop)
    ckpt = CheckpointCallback(save_freq=16, save_path=str(tmp_path / "ckpt"))
    model.learn(96, callback=[eval_cb, ckpt])
    assert model.num_timesteps == 96
    assert (tmp_path / "evaluations.npz").exists() and len(list((tmp_path / "ckpt").iterdir())) >= 2
    mean_reward, _ = evaluate_policy(model, eval_env, n_eval_episodes=4)
    assert 0.0 <= mean_reward <= 1.0


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("vec_cls", [DummyVecEnv, SubprocVecEnv])
def test_vec_env_classes(algo, vec_cls):
    env = make_env(algo, vec_env_cls=vec_cls)
    try:
        model = small_model(algo, env)
        model.learn(64)
        assert model.num_timesteps == 64
    finally:
        env.close()


@pytest.mark.parametrize("algo", ALGOS)
def test_vec_normalize(algo):
    model = small_model(algo, VecNormalize(make_env(algo), norm_reward=True))
    model.learn(64)
    assert model.num_timesteps == 64


@pytest.mark.parametrize("algo", ALGOS)
def test_progress_bar_and_tensorboard(algo, tmp_path):
    small_model(algo, tensorboard_log=str(tmp_path)).learn(32, progress_bar=True)
    runs = os.listdir(tmp_path)
    assert runs == [f"{algo.__name__}_1"]
    assert any(name.startswith("events") for name in os.listdir(tmp_path / runs[0]))


LOGGED_KEYS = {
    StepNFT: ["train/ema_decay", "train/positive_fraction", "train/logit_mean", "train/drift_clip_fraction",
              "train/n_pending", "train/discarded_decisions"],
    FlowPPO: ["train/policy_loss", "train/clip_fraction", "train/approx_kl", "train/clip_range", "train/n_updates",
              "train/first_minibatch_ratio_error", "train/value_loss", "train/explained_variance",
              "train/critic_learning_rate", "train/clip_range_vf"],
    FlowGRPO: ["train/policy_loss", "train/clip_fraction", "train/approx_kl", "train/clip_range", "train/n_updates",
               "train/first_minibatch_ratio_error", "train/n_pending", "train/discarded_decisions"],
}  # fmt: skip


@pytest.mark.parametrize("algo", ALGOS)
def test_logged_keys(algo):
    model = small_model(algo)
    model.learn(64)
    logged = set(model.logger.name_to_value) | set(model.logger.name_to_excluded)
    for key in ["train/learning_rate", "train/loss", "train/n_labelled", *LOGGED_KEYS[algo]]:
        assert key in logged, key
    model.dump_logs()


# ------------------------------------------------------------------------------------------------ persistence


@pytest.mark.parametrize("algo", ALGOS)
def test_save_load_roundtrip_and_env_none(algo, tmp_path):
    model = small_model(algo)
    model.learn(64)
    obs = model.env.reset()
    before, _ = model.predict(obs, deterministic=True)
    model.save(tmp_path / "model")
    loaded = algo.load(tmp_path / "model")  # env=None
    after, _ = loaded.predict(obs, deterministic=True)
    assert np.array_equal(before, after)
    opt_a, opt_b = model.policy.optimizer.state_dict(), loaded.policy.optimizer.state_dict()
    assert opt_a["state"].keys() == opt_b["state"].keys()
    key = next(iter(opt_a["state"]))
    assert th.equal(opt_a["state"][key]["exp_avg"], opt_b["state"][key]["exp_avg"])
    assert len(opt_b["param_groups"]) == (2 if algo is FlowPPO else 1)  # FlowPPO: actor and critic learning rates
    assert set(model.get_parameters()) == {"policy", "policy.optimizer"} | ({"ema"} if algo is StepNFT else set())
    resumed = algo.load(tmp_path / "model", env=make_env(algo, n_envs=4))  # another number of envs
    resumed.learn(64, reset_num_timesteps=False)
    assert resumed.num_timesteps == model.num_timesteps + 64
    model.policy.save(tmp_path / "policy.pt")  # a policy round-trips on its own too
    again, _ = type(model.policy).load(tmp_path / "policy.pt").predict(obs, deterministic=True)
    assert np.array_equal(before, again)


def test_stepnft_save_load_keeps_ema_and_outcome(tmp_path):
    model = small_model(StepNFT)
    model.learn(64)
    model.save(tmp_path / "model")
    loaded = StepNFT.load(tmp_path / "model")
    for name, tensor in model.ema.state_dict().items():
        assert th.equal(tensor, loaded.ema.state_dict()[name])
    assert loaded.ema_iteration == model.ema_iteration and loaded.outcome_resolved == model.outcome_resolved


@pytest.mark.parametrize("algo", ALGOS)
def test_saved_with_weights_only_loading(algo, tmp_path):
    model = small_model(algo)
    model.save(tmp_path / "m.zip")
    with zipfile.ZipFile(tmp_path / "m.zip") as archive:
        tensors = [name for name in archive.namelist() if name.endswith(".pth")]
        assert {"policy.pth", "policy.optimizer.pth"} <= set(tensors)
        assert ("ema.pth" in tensors) is (algo is StepNFT)
        states = {}
        for name in tensors:
            with archive.open(name) as f:
                states[name] = th.load(f, weights_only=True)
    if algo is StepNFT:
        assert set(states["ema.pth"]) == set(model.ema.shadow)


@pytest.mark.parametrize("algo", ALGOS)
def test_seeding_reproduces(algo):
    def run():
        model = small_model(algo)
        model.learn(96)
        actions = model.predict(model.env.reset(), deterministic=True)[0]
        return actions, [p.detach().clone() for p in model.policy.parameters()]

    a, pa = run()
    b, pb = run()
    assert np.array_equal(a, b)
    assert all(th.equal(x, y) for x, y in zip(pa, pb))


@pytest.mark.parametrize("algo", ALGOS)
def test_train_eval_modes(algo):
    model = small_model(algo)
    modes = []
    original_sample, original_loss = model._sample_decisions, model._loss
    model._sample_decisions = lambda obs: modes.append(("rollout", model.policy.training)) or original_sample(obs)
    model._loss = lambda *args: modes.append(("train", model.policy.training)) or original_loss(*args)
    model.learn(64)
    assert {mode for kind, mode in modes if kind == "rollout"} == {False}
    assert {mode for kind, mode in modes if kind == "train"} == {True}


# ------------------------------------------------------------------------------------------------ beside SB3


def test_ppo_style_comparison_runs_side_by_side():
    """Sanity: the same env and API run SB3's PPO and the flow algorithms (the comparison is a loop over classes)."""
    for cls in (PPO, *ALGOS):
        env = make_env(cls) if cls in ALGOS else point_reach_vec()
        extra = dict(group_size=2) if cls is FlowGRPO else {}
        cls("MlpPolicy", env, n_steps=16, batch_size=32, n_epochs=1, seed=0, **extra).learn(32)


def test_pretrain_then_learn_keeps_counters(tmp_path):
    model = small_model(StepNFT)
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
        assert th.equal(model.ema.shadow[name], param.detach())  # StepNFT: the EMA starts from the pretrained weights
    demos.save(tmp_path / "demos")
    again = Demonstrations.load(tmp_path / "demos.npz")
    assert np.array_equal(again.actions, demos.actions)
