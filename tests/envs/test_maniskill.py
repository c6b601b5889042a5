"""ManiSkill3 adapter, offline demonstrations and a short StepNFT run (skipped without the [maniskill] extra;
`make test` installs it, with Mesa's Vulkan, via scripts/install_sim.sh)."""

import os

import numpy as np
import pytest

pytest.importorskip("mani_skill", reason="needs the [maniskill] extra (bash scripts/install_sim.sh venv)")
pytestmark = [pytest.mark.sim, pytest.mark.filterwarnings("ignore::DeprecationWarning:mani_skill.*")]  # numpy 2 notes

from stable_baselines3.common.env_checker import check_env  # noqa: E402
from stable_baselines3.common.monitor import Monitor  # noqa: E402
from stable_baselines3.common.vec_env import SubprocVecEnv  # noqa: E402

from sb3_stepnft import StepNFT  # noqa: E402
from sb3_stepnft.common.evaluation import evaluate_success  # noqa: E402
from sb3_stepnft.envs import make_maniskill_env  # noqa: E402
from sb3_stepnft.envs import maniskill as maniskill_module  # noqa: E402
from sb3_stepnft.envs.maniskill import (  # noqa: E402
    ManiSkillSpec,
    as_spec,
    make_maniskill_base_env,
    make_maniskill_gym_env,
)
from sb3_stepnft.envs.maniskill_demos import (  # noqa: E402
    demo_action_bounds,
    episode_lengths,
    generate_demonstrations,
    normalize_like_demos,
    planner_python,
)
from sb3_stepnft.envs.maniskill_gpu import ManiSkillGPUVecEnv  # noqa: E402
from sb3_stepnft.sft import Demonstrations, pretrain  # noqa: E402


def _random_actions(vec_env, rng):
    return np.stack([rng.uniform(-1, 1, vec_env.action_space.shape).astype(np.float32) for _ in range(vec_env.num_envs)])


def test_pushcube_state_smoke_seeding_success_and_monitor():
    env = make_maniskill_env("PushCube-v1", num_envs=2, seed=3, max_episode_steps=5)
    assert env.observation_space.shape == (35,) and env.action_space.shape == (4,)
    obs = env.reset()
    again = make_maniskill_env("PushCube-v1", num_envs=2, seed=3).reset()
    assert np.allclose(obs, again) and not np.allclose(obs[0], obs[1])  # seed + i per sub-env, reproducible
    assert all(env.env_is_wrapped(Monitor))
    rng = np.random.default_rng(0)
    for _ in range(5):
        obs, rewards, dones, infos = env.step(_random_actions(env, rng))
        assert all("is_success" in info for info in infos)
    assert dones.all() and all(info["TimeLimit.truncated"] for info in infos)
    assert infos[0]["episode"]["l"] == 5 and "terminal_observation" in infos[0]
    env.close()
    check_env(make_maniskill_gym_env("PushCube-v1"))


def test_pickcube_state_chunks_instruction_and_subprocesses():
    env = make_maniskill_env(
        "PickCube-v1", num_envs=2, chunk_size=3, instruction=True, seed=0, max_episode_steps=7, vec_env_cls=SubprocVecEnv
    )
    assert env.observation_space.shape == (42,) and env.action_space.shape == (3, 4)
    env.reset()
    assert env.reset_infos[0]["instruction"] == maniskill_module.TASK_INSTRUCTIONS["PickCube-v1"]
    rng = np.random.default_rng(0)
    steps = []
    for _ in range(3):
        _, _, dones, infos = env.step(_random_actions(env, rng))
        steps.append(infos[0]["env_steps"])
    assert steps == [3, 3, 1] and dones.all()  # 7 underlying steps: the last chunk stops at truncation
    assert infos[0]["episode"]["l"] == 3  # Monitor counts decisions, like num_timesteps
    env.close()


def test_groups_share_initial_states():
    env = make_maniskill_env("PushCube-v1", num_envs=4, group_size=2, seed=1)
    obs = env.reset()
    assert np.allclose(obs[0], obs[1]) and np.allclose(obs[2], obs[3]) and not np.allclose(obs[0], obs[2])
    env.close()
    with pytest.raises(ValueError, match="multiple"):
        make_maniskill_env("PushCube-v1", num_envs=3, group_size=2)


def test_pushcube_rgb_smoke_and_pretraining_on_env_images():
    env = make_maniskill_env("PushCube-v1", obs_mode="rgb", camera_size=64, seed=0, max_episode_steps=3)
    assert set(env.observation_space.spaces) == {"state", "rgb"}
    obs = env.reset()
    assert obs["rgb"].shape == (1, 64, 64, 3) and obs["rgb"].dtype == np.uint8 and obs["rgb"].std() > 0
    seen, actions = [obs], []
    for _ in range(3):
        actions.append(_random_actions(env, np.random.default_rng(0)))
        obs, _, dones, infos = env.step(actions[-1])
        seen.append(obs)
    assert dones[0] and set(infos[0]["terminal_observation"]) == {"state", "rgb"}
    # The model sees channel-first images (SB3's VecTransposeImage); pretrain transposes the env's channel-last ones.
    model = StepNFT("MultiInputPolicy", env, n_steps=4, batch_size=4, seed=0)
    assert model.observation_space["rgb"].shape == (3, 64, 64)
    demos = Demonstrations(
        {key: np.concatenate([o[key] for o in seen[:3]]) for key in ("state", "rgb")}, np.concatenate(actions), [1, 0, 0]
    )
    assert demos.observations["rgb"].shape == (3, 64, 64, 3)
    assert np.isfinite(pretrain(model, demos, epochs=1, seed=0)["loss"])
    env.close()


def test_batched_vec_env_logic_on_cpu_and_gpu_error(monkeypatch):
    # ManiSkillGPUVecEnv is meant for the GPU simulator (untested: no GPU); its bookkeeping is checked here on a
    # batched CPU env with one sub-env.
    env = ManiSkillGPUVecEnv(make_maniskill_base_env("PushCube-v1", max_episode_steps=4), instruction="push")
    env.seed(5)
    first = env.reset()
    env.seed(5)
    assert np.allclose(first, env.reset()) and first.shape == (1, 35)
    for _ in range(4):
        obs, rewards, dones, infos = env.step(np.zeros((1, 4), np.float32))
    assert dones[0] and infos[0]["episode"]["l"] == 4 and infos[0]["TimeLimit.truncated"]
    assert "is_success" in infos[0] and infos[0]["instruction"] == "push" and env.env_is_wrapped(Monitor) == [True]
    assert not np.allclose(obs, infos[0]["terminal_observation"])  # reset after the end
    env.close()
    import torch as th

    monkeypatch.setattr(th.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="CUDA"):
        make_maniskill_env("PushCube-v1", sim_backend="gpu")
    with pytest.raises(NotImplementedError, match="chunk"):
        make_maniskill_env("PushCube-v1", sim_backend="gpu", chunk_size=2)


def test_batched_vec_env_tensor_mode_on_cpu():
    # The tensor mode (device-resident rollouts; docs/scaling.md) on the batched CPU env: the same first observation
    # as the NumPy mode, device tensors out, batched infos, the partial reset, and a short StepNFT run on that path.
    import torch as th

    from sb3_stepnft.common.tensor_env import is_tensor_env

    numpy_env = ManiSkillGPUVecEnv(make_maniskill_base_env("PushCube-v1", max_episode_steps=4))
    env = ManiSkillGPUVecEnv(make_maniskill_base_env("PushCube-v1", max_episode_steps=4), instruction="push", as_tensors=True)
    assert is_tensor_env(env) and not is_tensor_env(numpy_env)
    numpy_env.seed(5)
    env.seed(5)
    first = env.reset()
    assert isinstance(first, th.Tensor) and first.device == env.device and np.allclose(first.numpy(), numpy_env.reset())
    numpy_env.close()
    for _ in range(4):
        obs, rewards, dones, infos = env.step(th.zeros((1, 4)))
    assert isinstance(rewards, th.Tensor) and rewards.dtype == th.float32 and dones.tolist() == [True]
    assert infos["TimeLimit.truncated"].tolist() == [True] and infos["is_success"].dtype == th.bool
    assert infos["instruction"] == "push" and not th.allclose(obs, infos["terminal_observation"])  # reset after the end
    model = StepNFT("MlpPolicy", env, n_steps=4, batch_size=8, n_epochs=1, seed=0, device="cpu",
                    policy_kwargs=dict(net_arch=[16]))  # fmt: skip
    model.learn(8)
    assert model.num_timesteps == 8 and len(model.ep_info_buffer) == 2 and model._n_updates > 0
    env.close()


def test_ignore_terminations_runs_episodes_to_the_time_limit():
    # A success-terminating task with ignore_terminations: episodes end only at the time limit; NumPy mode reports
    # success_once at the end. (A forced termination checks it: the CPU PushCube rarely succeeds with zero actions.)
    import torch as th

    for as_tensors in (False, True):
        env = ManiSkillGPUVecEnv(
            make_maniskill_base_env("PushCube-v1", max_episode_steps=3), as_tensors=as_tensors, ignore_terminations=True
        )
        env.reset()
        base_step = env.env.step

        def step_with_success_at_first(action, calls=[0], base_step=base_step):  # noqa: B006 (a call counter)
            obs, reward, terminated, truncated, info = base_step(action)
            calls[0] += 1
            info = {**info, "success": th.tensor([calls[0] == 1])}
            return obs, reward, th.tensor([calls[0] == 1]), truncated, info

        env.env.step = step_with_success_at_first
        ended = [env.step(np.zeros((1, 4), np.float32)) for _ in range(3)]
        dones = [bool(np.asarray(step[2])[0]) for step in ended]
        assert dones == [False, False, True]  # the termination at step 1 was ignored
        last_info = ended[-1][3]
        if as_tensors:
            assert [bool(step[3]["is_success"][0]) for step in ended] == [True, False, False]  # per step; the loop ORs
        else:
            assert last_info[0]["is_success"] is True  # success_once at the episode's end
        env.close()


def test_spec_object_builds_the_same_env_as_the_keywords():
    spec = ManiSkillSpec("PushCube-v1", chunk_size=2, instruction=True, max_episode_steps=6)
    assert as_spec("PushCube-v1", chunk_size=2, instruction=True, max_episode_steps=6) == spec
    assert as_spec(spec, chunk_size=3).chunk_size == 3 and spec.chunk_size == 2  # frozen: replaced, not changed
    env = make_maniskill_gym_env(spec)
    assert env.action_space.shape == (2, 4)
    obs, info = env.reset(seed=0)
    assert info["instruction"] == maniskill_module.TASK_INSTRUCTIONS["PushCube-v1"]
    keyword_obs, _ = make_maniskill_gym_env("PushCube-v1", chunk_size=2, instruction=True).reset(seed=0)
    assert np.allclose(obs, keyword_obs)
    truncations = [env.step(np.zeros((2, 4), np.float32))[3] for _ in range(3)]
    assert truncations == [False, False, True]  # max_episode_steps=6 underlying steps
    env.close()
    for bad, match in ((dict(obs_mode="pointcloud"), "obs_mode"), (dict(chunk_size=0), "chunk_size")):
        with pytest.raises(ValueError, match=match):
            ManiSkillSpec("PushCube-v1", **bad)
    with pytest.raises(TypeError, match="ManiSkillSpec"):
        make_maniskill_gym_env(3)
    assert maniskill_module.ManiSkillGPUVecEnv is ManiSkillGPUVecEnv  # the old import path still works


def test_missing_planner_venv_names_the_install_script(monkeypatch, tmp_path):
    monkeypatch.setenv("SB3_STEPNFT_PLANNER_VENV", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="install_sim.sh"):
        planner_python()
    with pytest.raises(FileNotFoundError, match="install_sim.sh"):
        generate_demonstrations("PushCube-v1", n=1)


def test_clear_errors(monkeypatch):
    with pytest.raises(ValueError, match="obs_mode"):
        make_maniskill_env("PushCube-v1", obs_mode="pointcloud")
    with pytest.raises(ValueError, match="Unknown ManiSkill env id"):
        make_maniskill_env("NoSuchTask-v1")
    with pytest.raises(ValueError, match="default instruction"):
        make_maniskill_env("MS-CartpoleBalance-v1", instruction=True)
    import gymnasium as gym

    def no_vulkan(*args, **kwargs):
        raise RuntimeError("failed to find a rendering device")

    monkeypatch.setattr(gym, "make", no_vulkan)
    with pytest.raises(RuntimeError, match="bookworm-backports"):
        make_maniskill_env("PushCube-v1")

    monkeypatch.undo()
    from mani_skill.utils import download_asset

    if os.path.exists(os.path.expanduser("~/.maniskill/data/assets/mani_skill2_ycb")):
        pytest.skip("the YCB assets are installed here")
    with pytest.raises(FileNotFoundError, match="download_asset"):  # refused: no prompt, no download, no exit()
        make_maniskill_env("PickSingleYCB-v1")
    assert download_asset.prompt_yes_no.__name__ == "prompt_yes_no"  # ManiSkill's own prompt is restored


def test_motion_planned_pretraining_then_short_stepnft_run(tmp_path):
    # Motion planning (numpy<2 overlay venv), conversion to pd_ee_delta_pos and re-simulation in the training env.
    demos, stats = generate_demonstrations("PushCube-v1", n=10, out_dir=tmp_path)
    assert stats["kept"] >= 8 and demos.n_episodes == stats["kept"] and len(demos) == sum(stats["lengths"])
    assert list(episode_lengths(demos)) == stats["lengths"] and demos.actions.shape[1] == 4
    assert 45 < stats["mean"] < 80 and stats["recommended_max_episode_steps"] >= 1.5 * stats["mean"]
    assert min(stats["seeds"]) >= 0 and max(stats["seeds"]) < 100  # evaluation below uses seeds from 10_000
    again, _ = generate_demonstrations("PushCube-v1", n=10, out_dir=tmp_path)  # reused from out_dir
    assert np.array_equal(again.actions, demos.actions)

    # Few-shot pretraining, then a short StepNFT run (benchmarks/demo_maniskill.py runs the long version).
    limit, bounds = stats["recommended_max_episode_steps"], demo_action_bounds(demos)

    def make(num_envs, seed):
        env = make_maniskill_env(
            "PushCube-v1", num_envs, seed=seed, max_episode_steps=limit, chunk_size=8, action_bounds=bounds
        )
        return normalize_like_demos(env, demos)

    env = make(4, 1_000)
    assert env.action_space.shape == (8, 4) and np.allclose(env.action_space.high[0], bounds)
    model = StepNFT("MlpPolicy", env, learning_rate=5e-5, n_steps=64, batch_size=128, seed=0)
    pretrain(model, demos, seed=0)
    eval_env = make(1, 10_000)
    before = evaluate_success(model, eval_env, n_eval_episodes=20, seed=10_000)
    print(f"pretrained on {stats['kept']} motion-planned demos: success {before['success_rate']:.2f}")
    assert before["success_rate"] > 0.0, before  # random actions (almost) never succeed here
    model.learn(total_timesteps=512)  # two iterations: the mechanics on a real task, not a learning claim
    assert model.num_timesteps == 512 and len(model.ep_success_buffer) > 0  # success labels reached StepNFT
    env.close()
    eval_env.close()
