"""LangReach: a language-conditioned toy task whose goal only the instruction tells."""

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.env_checker import check_env
from stable_baselines3.common.env_util import make_vec_env

from sb3_stepnft.envs import LANG_REACH_ID, LangReachEnv, collect_lang_reach_demonstrations, make_lang_reach_env
from sb3_stepnft.envs.lang_reach import TARGET_NAMES, demonstrator_action, target_from_instruction
from sb3_stepnft.sft import Demonstrations

transformers = pytest.importorskip("transformers")

# check_env's advice for SB3's default CnnPolicy (36x36 minimum); LangReach's 16x16 images target small VLA encoders
pytestmark = pytest.mark.filterwarnings("ignore:The minimal resolution for an image")


@pytest.fixture(scope="module")
def tok():
    return transformers.ByT5Tokenizer()


def rollout_success(policy, n_episodes=200, seed=0, **env_kwargs):
    """Success rate of ``policy(obs, info, env, rng, first)`` on the raw env."""
    env, rng, successes = LangReachEnv(**env_kwargs), np.random.default_rng(seed), []
    for episode in range(n_episodes):
        obs, info = env.reset(seed=1_000 + episode)
        done, first, success = False, True, False
        while not done:
            obs, _, terminated, truncated, info = env.step(policy(obs, info, env, rng, first))
            first, done, success = False, terminated or truncated, success or info["is_success"]
        successes.append(success)
    return float(np.mean(successes))


# ---------------------------------------------------------------------------------------------------- the env
def test_registration_and_spaces():
    env = gym.make(LANG_REACH_ID)
    assert LANG_REACH_ID == "sb3_stepnft/LangReach-v0"
    assert set(env.observation_space.spaces) == {"image", "state"}
    assert env.observation_space["image"].shape == (3, 16, 16) and env.observation_space["image"].dtype == np.uint8
    assert env.observation_space["state"].shape == (4,) and env.observation_space["state"].dtype == np.float32
    assert env.action_space.shape == (2,)
    obs, info = env.reset(seed=0)
    assert obs["image"].dtype == np.uint8 and obs["image"].shape == (3, 16, 16) and obs["image"].max() > 0
    assert target_from_instruction(info["instruction"]) == info["target"] == env.unwrapped.target
    assert env.unwrapped.instruction == info["instruction"]
    check_env(LangReachEnv())


def test_cameras_and_image_size():
    env = LangReachEnv(cameras=("agentview", "wrist"), image_size=24)
    obs, _ = env.reset(seed=0)
    assert set(obs) == {"agentview", "wrist", "state"}
    assert obs["agentview"].shape == obs["wrist"].shape == (3, 24, 24)
    assert not np.array_equal(obs["agentview"], obs["wrist"])
    # the scene view shows the point move; the wrist view, centred on the point, shows a target once it is near
    before = {k: obs[k].copy() for k in ("agentview", "wrist")}
    obs, *_ = env.step(np.array([1.0, 0.0], np.float32))
    assert not np.array_equal(before["agentview"], obs["agentview"])
    for _ in range(3):
        obs, *_ = env.step(np.array([1.0, 0.0], np.float32))
    assert (obs["wrist"].reshape(3, -1).T == (230, 40, 40)).all(axis=1).any()  # red, at (0.7, 0)
    with pytest.raises(ValueError, match="reserved"):
        LangReachEnv(cameras=("image", "state"))


def test_image_does_not_tell_the_goal():
    env = LangReachEnv()
    images = {target: env.reset(seed=5, options={"target": target})[0]["image"] for target in TARGET_NAMES}
    assert all(np.array_equal(images["red"], image) for image in images.values())
    # all four target colours are visible
    pixels = {tuple(p) for p in images["red"].reshape(3, -1).T}
    assert {(230, 40, 40), (40, 200, 60), (50, 90, 250), (240, 220, 40)} <= pixels


def test_seeded_resets_and_instruction_variety():
    a, b = LangReachEnv(), LangReachEnv()
    for seed in range(5):
        (obs_a, info_a), (obs_b, info_b) = a.reset(seed=seed), b.reset(seed=seed)
        assert info_a == info_b and np.array_equal(obs_a["state"], obs_b["state"])
    instructions = {a.reset()[1]["instruction"] for _ in range(40)}
    assert instructions == {f"go to the {name} target" for name in TARGET_NAMES}
    seeded = LangReachEnv(seed=3)
    assert seeded.reset()[1] == LangReachEnv().reset(seed=3)[1]


def test_step_info_and_success():
    env = LangReachEnv()
    obs, info = env.reset(seed=0, options={"target": "blue"})
    assert info["instruction"] == "go to the blue target" == env.instruction
    for _ in range(12):
        action = demonstrator_action(obs["state"], env.targets["blue"], 0.0, np.random.default_rng(0))
        obs, reward, terminated, truncated, info = env.step(action)
        assert info["instruction"] == "go to the blue target" and "is_success" in info
        if terminated or truncated:
            break
    assert terminated and info["is_success"] and reward == 1.0
    # the wrong target does not count; the episode is truncated after 12 steps
    obs, _ = env.reset(seed=0, options={"target": "red"})
    for step in range(12):
        obs, _, terminated, truncated, info = env.step(
            demonstrator_action(obs["state"], env.targets["blue"], 0.0, np.random.default_rng(step))
        )
        assert not terminated
    assert truncated and not info["is_success"]


# ---------------------------------------------------------------------------------------------------- wrapped env
def test_make_lang_reach_env(tok):
    env = make_lang_reach_env(tok, max_length=24, seed=0)
    assert set(env.observation_space.spaces) == {"image", "state", "instruction_ids", "instruction_mask"}
    obs, info = env.reset()
    ids, mask = obs["instruction_ids"], obs["instruction_mask"]
    assert ids.dtype == np.int64 and mask.dtype == np.int8 and ids.shape == (24,)
    assert tok.decode(ids[mask == 1].tolist(), skip_special_tokens=True) == info["instruction"]
    check_env(env)
    chunked = make_lang_reach_env(tok, chunk_size=3)
    assert chunked.action_space.shape == (3, 2)
    chunked.reset(seed=0)
    _, _, _, _, info = chunked.step(np.zeros((3, 2), np.float32))
    assert info["env_steps"] == 3


def test_text_observation_mode(tok):
    env = make_lang_reach_env(tok, instruction_in_observation=True)
    assert "instruction" not in env.observation_space.spaces
    env.reset(seed=0)
    assert env.get_wrapper_attr("instruction_source") == "observation"


def test_vec_env(tok):
    venv = make_vec_env(make_lang_reach_env, n_envs=2, seed=0, env_kwargs=dict(tokenizer=tok, max_length=24))
    obs = venv.reset()
    assert obs["instruction_ids"].dtype == np.int64 and obs["instruction_mask"].dtype == np.int8
    assert obs["image"].dtype == np.uint8 and obs["image"].shape == (2, 3, 16, 16)
    decoded = [
        tok.decode(i[m == 1].tolist(), skip_special_tokens=True)
        for i, m in zip(obs["instruction_ids"], obs["instruction_mask"])
    ]
    assert decoded == [info["instruction"] for info in venv.reset_infos]


# ---------------------------------------------------------------------------------------------------- demonstrator
def test_demonstrations(tok):
    demos, rate = collect_lang_reach_demonstrations(20, seed=0, tokenizer=tok, max_length=24)
    assert isinstance(demos, Demonstrations) and demos.n_episodes == 20
    n = len(demos)
    shapes = {key: (value.shape, value.dtype) for key, value in demos.observations.items()}
    assert shapes == {
        "image": ((n, 3, 16, 16), np.uint8),
        "state": ((n, 4), np.float32),
        "instruction_ids": ((n, 24), np.int64),
        "instruction_mask": ((n, 24), np.int8),
    }
    assert demos.actions.shape == (n, 2) and np.abs(demos.actions).max() <= 1.0
    assert 0.0 <= rate <= 1.0
    again, rate_again = collect_lang_reach_demonstrations(20, seed=0, tokenizer=tok, max_length=24)
    assert rate_again == rate and np.array_equal(again.actions, demos.actions)
    assert all(np.array_equal(again.observations[k], demos.observations[k]) for k in demos.observations)
    other, _ = collect_lang_reach_demonstrations(20, seed=1, tokenizer=tok, max_length=24)
    assert len(other) != n or not np.array_equal(other.actions, demos.actions)


def test_demonstrator_success_rates(tok):
    _, expert = collect_lang_reach_demonstrations(100, seed=0, imperfect_fraction=0.0, tokenizer=tok)
    _, imperfect = collect_lang_reach_demonstrations(200, seed=0, imperfect_fraction=0.5, tokenizer=tok)
    _, wanderer = collect_lang_reach_demonstrations(50, seed=0, imperfect_fraction=1.0, tokenizer=tok)
    assert expert == 1.0
    assert 0.35 <= imperfect <= 0.65
    assert wanderer <= 0.1


def test_ignoring_the_instruction_fails():
    def expert(obs, info, env, rng, first):
        return demonstrator_action(obs["state"], env.targets[target_from_instruction(info["instruction"])], 0.0, rng)

    def always_red(obs, info, env, rng, first):
        return demonstrator_action(obs["state"], env.targets["red"], 0.0, rng)

    chosen = {}

    def nearest_target(obs, info, env, rng, first):
        if first:
            chosen["goal"] = min(env.targets.values(), key=lambda goal: np.linalg.norm(goal - obs["state"][:2]))
        return demonstrator_action(obs["state"], chosen["goal"], 0.0, rng)

    assert rollout_success(expert) == 1.0
    assert rollout_success(always_red) <= 0.4
    assert rollout_success(nearest_target) <= 0.4
