"""FlowPPO and FlowGRPO honour the SB3 contract the way PPO does (API.md "The SB3 contract")."""

import inspect

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.callbacks import CheckpointCallback, EvalCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

from sb3_stepnft import FlowGRPO, FlowPPO
from sb3_stepnft.common.on_policy import FlowOnPolicyAlgorithm
from sb3_stepnft.envs import PointReachEnv, make_grouped_vec_env
from sb3_stepnft.policies import CnnFlowPolicy, MlpFlowPolicy, MultiInputFlowPolicy
from sb3_stepnft.wrappers import ActionChunk
from tests.helpers import DictReachEnv, ImageReachEnv, point_reach_vec
from tests.test_stepnft_contract import RecordingCallback

ALGOS = [FlowPPO, FlowGRPO]
SMALL = dict(n_steps=16, batch_size=32, n_epochs=1, policy_kwargs=dict(net_arch=[32, 32]))


def make_env(algo, env_fn=PointReachEnv, n_envs=2, vec_env_cls=DummyVecEnv, seed=0):
    if algo is FlowGRPO:
        return make_grouped_vec_env(env_fn, n_groups=n_envs // 2, group_size=2, seed=seed, vec_env_cls=vec_env_cls)
    return make_vec_env(env_fn, n_envs=n_envs, seed=seed, vec_env_cls=vec_env_cls)


def algo_kwargs(algo, **kwargs):
    return {**SMALL, **(dict(group_size=2) if algo is FlowGRPO else {}), **kwargs}


def small_model(algo, env=None, **kwargs):
    return algo("MlpPolicy", env if env is not None else make_env(algo), seed=0, **algo_kwargs(algo, **kwargs))


@pytest.mark.parametrize("algo", ALGOS)
def test_is_an_sb3_on_policy_algorithm_with_named_arguments(algo):
    assert issubclass(algo, OnPolicyAlgorithm) and issubclass(algo, FlowOnPolicyAlgorithm)
    params = inspect.signature(algo.__init__).parameters
    for name in ("learning_rate", "n_steps", "batch_size", "n_epochs", "gamma", "max_grad_norm", "stats_window_size",
                 "tensorboard_log", "policy_kwargs", "verbose", "seed", "device", "_init_setup_model",
                 "num_denoise_steps", "noise_level", "clip_range"):  # fmt: skip
        assert name in params and params[name].default is not inspect.Parameter.empty, name
    assert params["noise_level"].default == 0.5 and params["clip_range"].default == 0.2
    assert set(algo.policy_aliases) >= {"MlpPolicy", "CnnPolicy", "MultiInputPolicy"}
    rollout_args = ["self", "env", "callback", "rollout_buffer", "n_rollout_steps"]
    assert list(inspect.signature(algo.collect_rollouts).parameters) == rollout_args
    assert algo.collect_rollouts is FlowOnPolicyAlgorithm.collect_rollouts  # one shared rollout loop


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
def test_eval_and_checkpoint_callbacks(algo, tmp_path):
    model = small_model(algo)
    eval_env = point_reach_vec(n_envs=1, seed=5)
    eval_cb = EvalCallback(eval_env, eval_freq=16, n_eval_episodes=3, log_path=str(tmp_path))
    ckpt = CheckpointCallback(save_freq=16, save_path=str(tmp_path / "ckpt"))
    model.learn(96, callback=[eval_cb, ckpt])
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
def test_progress_bar_and_tensorboard(algo, tmp_path):
    small_model(algo, tensorboard_log=str(tmp_path)).learn(32, progress_bar=True)
    assert [p.name for p in tmp_path.iterdir()] == [f"{algo.__name__}_1"]


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
    key = next(iter(opt_a["state"]))
    assert th.equal(opt_a["state"][key]["exp_avg"], opt_b["state"][key]["exp_avg"])
    assert len(opt_b["param_groups"]) == (2 if algo is FlowPPO else 1)
    assert set(model.get_parameters()) == {"policy", "policy.optimizer"}
    resumed = algo.load(tmp_path / "model", env=make_env(algo, n_envs=4))  # another number of envs
    resumed.learn(64, reset_num_timesteps=False)
    assert resumed.num_timesteps == model.num_timesteps + 64
    model.policy.save(tmp_path / "policy.pt")
    again, _ = type(model.policy).load(tmp_path / "policy.pt").predict(obs, deterministic=True)
    assert np.array_equal(before, again)


@pytest.mark.parametrize("algo", ALGOS)
def test_seeding_reproduces(algo):
    def run():
        model = small_model(algo)
        model.learn(96)
        return [p.detach().clone() for p in model.policy.parameters()]

    assert all(th.equal(a, b) for a, b in zip(run(), run()))


@pytest.mark.parametrize("algo", ALGOS)
def test_train_eval_modes(algo):
    model = small_model(algo)
    modes = []
    original_sample, original_step = model._sample_decisions, model._loss
    model._sample_decisions = lambda obs: modes.append(("rollout", model.policy.training)) or original_sample(obs)
    model._loss = lambda *args: modes.append(("train", model.policy.training)) or original_step(*args)
    model.learn(64)
    assert {mode for kind, mode in modes if kind == "rollout"} == {False}
    assert {mode for kind, mode in modes if kind == "train"} == {True}


@pytest.mark.parametrize("algo", ALGOS)
def test_logged_keys(algo):
    model = small_model(algo)
    model.learn(64)
    logged = set(model.logger.name_to_value) | set(model.logger.name_to_excluded)
    keys = ["train/learning_rate", "train/loss", "train/policy_loss", "train/clip_fraction", "train/approx_kl",
            "train/clip_range", "train/n_updates", "train/n_labelled", "train/first_minibatch_ratio_error"]  # fmt: skip
    if algo is FlowPPO:
        keys += ["train/value_loss", "train/explained_variance", "train/critic_learning_rate", "train/clip_range_vf"]
    else:
        keys += ["train/n_pending", "train/discarded_decisions"]
    for key in keys:
        assert key in logged, key
    model.dump_logs()


@pytest.mark.parametrize("algo", ALGOS)
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
    with pytest.raises(ValueError, match=match):
        small_model(algo, **kwargs)


@pytest.mark.parametrize("algo", ALGOS)
def test_non_box_action_space_is_sb3_assertion(algo):
    with pytest.raises(AssertionError, match="Box"):
        algo("MlpPolicy", make_vec_env("CartPole-v1", n_envs=2), **algo_kwargs(algo))
