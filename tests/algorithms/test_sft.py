import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from sb3_stepnft import StepNFT
from sb3_stepnft.envs import PointReachEnv, collect_demonstrations
from sb3_stepnft.policies import MlpFlowPolicy
from sb3_stepnft.sft import Demonstrations, build_chunks, pretrain, record_demonstrations, to_policy_layout
from sb3_stepnft.wrappers import ActionChunk
from tests.helpers import DictReachEnv, ImageReachEnv


def test_build_chunks_respects_episode_ends():
    actions = np.arange(10, dtype=np.float32).reshape(5, 2)
    demos = Demonstrations(np.zeros((5, 3)), actions, [1, 0, 0, 1, 0])
    chunks, mask = build_chunks(demos, rows=3, action_shape=(3, 2))
    assert chunks.shape == (5, 3, 2)
    assert mask.tolist() == [[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 0], [1, 0, 0]]
    assert np.array_equal(chunks[1, :2], actions[1:3]) and np.array_equal(chunks[3, :2], actions[3:5])


def test_demonstrations_validation_and_io(tmp_path):
    with pytest.raises(ValueError, match="same length"):
        Demonstrations(np.zeros((4, 3)), np.zeros((3, 2)), np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        Demonstrations(np.zeros((2, 3)), np.array([[0, np.nan], [0, 0]]), np.zeros(2))
    demos = Demonstrations({"a": np.ones((3, 2)), "b": np.zeros((3, 1))}, np.zeros((3, 2)), [0, 0, 1])
    assert demos.episode_starts.tolist() == [True, False, True] and demos.n_episodes == 2
    demos.save(tmp_path / "d.npz")
    loaded = Demonstrations.load(tmp_path / "d.npz")
    assert set(loaded.observations) == {"a", "b"} and np.array_equal(loaded.observations["a"], np.ones((3, 2)))
    (tmp_path / "bad.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="Cannot read"):
        Demonstrations.load(tmp_path / "bad.npz")
    np.savez(tmp_path / "foreign.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a Demonstrations file"):
        Demonstrations.load(tmp_path / "foreign.npz")


def test_pretrain_fits_imitates_and_is_seeded():
    demos, _ = collect_demonstrations(10, seed=0, imperfect_fraction=0.0)

    def fit(seed):
        model = StepNFT("MlpPolicy", make_vec_env(PointReachEnv, n_envs=1, seed=0), seed=0)
        return model, pretrain(model, demos, epochs=60, seed=seed)

    model, metrics = fit(1)
    assert metrics["loss"] < 0.5 * metrics["initial_loss"]
    again, _ = fit(1)
    other, _ = fit(2)
    params = [list(m.policy.parameters()) for m in (model, again, other)]
    assert all(th.equal(a, b) for a, b in zip(params[0], params[1]))
    assert not all(th.equal(a, b) for a, b in zip(params[0], params[2]))
    # deterministic actions point towards the goal like the demonstrator's
    obs = demos.observations[:50]
    actions, _ = model.predict(obs, deterministic=True)
    cosine = (actions * obs[:, 2:4]).sum(1) / (np.linalg.norm(actions, axis=1) * np.linalg.norm(obs[:, 2:4], axis=1))
    assert np.mean(cosine) > 0.8


def test_pretrain_bare_policy_chunks_and_dict_obs():
    env = ActionChunk(PointReachEnv(), size=4)
    policy = MlpFlowPolicy(env.observation_space, env.action_space, lambda _: 1e-3)
    demos, _ = collect_demonstrations(3, seed=0)
    metrics = pretrain(policy, demos, epochs=2, seed=0, progress_bar=True)
    assert metrics["gradient_steps"] > 0 and np.isfinite(metrics["loss"])

    dict_model = StepNFT("MultiInputPolicy", make_vec_env(DictReachEnv, n_envs=1), seed=0)
    dict_demos = Demonstrations({"position": demos.observations[:, :2], "goal": demos.observations[:, 2:]},
                                demos.actions, demos.episode_starts)  # fmt: skip
    pretrain(dict_model, dict_demos, epochs=2, seed=0)
    with pytest.raises(ValueError, match="lack the keys"):
        pretrain(dict_model, Demonstrations({"position": demos.observations[:, :2]}, demos.actions, demos.episode_starts))
    with pytest.raises(ValueError, match="shape"):
        pretrain(policy, Demonstrations(demos.observations[:, :3], demos.actions, demos.episode_starts))


def test_pretrain_uses_vec_normalize_statistics():
    env = VecNormalize(make_vec_env(PointReachEnv, n_envs=1), norm_reward=False)
    env.obs_rms.mean[:] = 5.0
    model = StepNFT("MlpPolicy", env, seed=0)
    seen = []
    original = model.policy.encode

    def encode(obs):
        seen.append(obs.detach().clone())
        return original(obs)

    model.policy.encode = encode
    demos, _ = collect_demonstrations(2, seed=0)
    pretrain(model, demos, epochs=1, seed=0)
    assert th.all(seen[0] < -1.0)  # (obs - 5)/std: normalised, not raw


class _DictImageEnv(gym.Env):
    """A channel-last RGB image next to a state vector: SB3 puts such an env in VecTransposeImage."""

    observation_space = spaces.Dict(
        {"rgb": spaces.Box(0, 255, (36, 36, 3), np.uint8), "state": spaces.Box(-2, 2, (4,), np.float32)}
    )
    action_space = spaces.Box(-1, 1, (2,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, True, False, {}


def test_pretrain_transposes_channel_last_image_demos():
    rng = np.random.default_rng(0)
    n = 12
    rgb_last = rng.integers(0, 256, (n, 36, 36, 3), dtype=np.uint8)  # what the env emits (and demos record)
    rgb_first = np.ascontiguousarray(np.moveaxis(rgb_last, -1, 1))
    state, actions = rng.normal(size=(n, 4)).astype(np.float32), rng.uniform(-1, 1, (n, 2)).astype(np.float32)
    starts = np.arange(n) % 6 == 0

    def fit(rgb):
        model = StepNFT("MultiInputPolicy", DummyVecEnv([_DictImageEnv]), seed=0)
        assert model.observation_space["rgb"].shape == (3, 36, 36)  # VecTransposeImage: the model sees C x H x W
        pretrain(model, Demonstrations({"rgb": rgb, "state": state}, actions, starts), epochs=2, batch_size=4, seed=0)
        return [p.detach().clone() for p in model.policy.parameters()]

    # channel-last demos are transposed: training is exactly that on channel-first demos
    assert all(th.equal(a, b) for a, b in zip(fit(rgb_last), fit(rgb_first)))

    # the helper itself: per key, only 3-D image spaces, only when the channel-last shape is what fits
    space = spaces.Dict({"rgb": spaces.Box(0, 255, (3, 36, 36), np.uint8), "state": spaces.Box(-2, 2, (4,), np.float32)})
    moved = to_policy_layout({"rgb": rgb_last, "state": state}, space)
    assert moved["rgb"].shape == (n, 3, 36, 36) and moved["rgb"][5, 2, 7, 9] == rgb_last[5, 7, 9, 2]
    assert moved["state"] is state and to_policy_layout({"rgb": rgb_first}, space)["rgb"] is rgb_first
    cnn_space = spaces.Box(0, 255, (1, 36, 36), np.uint8)
    gray = rgb_last[..., :1]
    assert to_policy_layout(gray, cnn_space).shape == (n, 1, 36, 36)
    assert to_policy_layout(gray, spaces.Box(0, 255, (36, 36, 1), np.uint8)) is gray  # env and model channel-last
    assert to_policy_layout(rgb_last, cnn_space) is rgb_last  # does not fit either way: pretrain reports the shape

    # a CnnPolicy model on a channel-last image env pretrains on the env's own (channel-last) observations
    model = StepNFT("CnnPolicy", make_vec_env(ImageReachEnv, n_envs=1), seed=0)
    pretrain(model, Demonstrations(gray, actions, starts), epochs=1, batch_size=6, seed=0)
    with pytest.raises(ValueError, match="shape"):
        pretrain(model, Demonstrations(rgb_last, actions, starts), epochs=1)


def test_record_demonstrations_seeds_episodes_and_asks_for_one_actor_each():
    env = DictReachEnv()
    resets, calls = [], []
    reset = env.reset
    env.reset = lambda seed=None, **kw: (resets.append(seed), reset(seed=seed, **kw))[1]

    def episode_actor(obs, info):
        calls.append(len(resets))
        return lambda obs: np.clip(obs["goal"][:2] - obs["position"], -1.0, 1.0).astype(np.float32)

    demos, success = record_demonstrations(env, n_episodes=3, seed=5, episode_actor=episode_actor)
    assert resets == [5 * 100_003 + e for e in range(3)]
    assert calls == [1, 2, 3]  # one actor per episode, after its reset
    assert isinstance(demos.observations, dict) and set(demos.observations) == set(env.observation_space.spaces)
    assert demos.n_episodes == 3 and len(demos.actions) == len(demos.observations["position"])
    assert 0.0 <= success <= 1.0
    first_obs = {key: value[0] for key, value in demos.observations.items()}
    np.testing.assert_array_equal(demos.actions[0], episode_actor(first_obs, {})(first_obs))  # rows pair obs and action


def test_point_reach_demonstrations_are_reproducible_per_seed():
    """Two calls of the scripted demonstrator (built on record_demonstrations) with one seed give the same rows."""
    first, rate = collect_demonstrations(n_episodes=4, seed=7)
    second, rate2 = collect_demonstrations(n_episodes=4, seed=7)
    np.testing.assert_array_equal(first.actions, second.actions)
    assert rate == rate2 and first.n_episodes == 4
