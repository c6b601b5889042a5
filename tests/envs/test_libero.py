"""LIBERO adapter and evaluation protocol (skipped without the [libero] extra; `make test` installs it).

These tests prove the adapter and the protocol, not LIBERO learning: no LIBERO demonstrations exist offline.

PLACEHOLDER ASSETS: the offline asset bundle (../shared/data, LIBERO commit 8f1084e) lacks 30 large visual files
(background meshes, the black-bowl and basket visuals, some 4K textures), and every LIBERO scene references at least one
of them. The fixture below builds a test-only copy of the assets (symlinks) in which those 30 files are placeholders
(scripts/libero_placeholder_assets.py): a 4 cm box mesh (.msh/.obj), a grey 64x64 texture (.png) or an empty .zip.
Collision geometry is untouched, so physics and success checks are exact; images show boxes where those objects should
be. The installed assets are not modified.
"""

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.sim
pytest.importorskip("robosuite", reason="needs the [libero] extra (bash scripts/install_sim.sh venv)")
pytest.importorskip("bddl", reason="needs the [libero] extra (bash scripts/install_sim.sh venv)")
if __import__("importlib").util.find_spec("libero") is None:
    pytest.skip("needs LIBERO (bash scripts/install_sim.sh venv)", allow_module_level=True)

from sb3_stepnft.envs.libero import (  # noqa: E402
    LIBERO_MAX_STEPS,
    OBJECT_POSE_SIZE,
    LiberoEnv,
    bundle_missing_files,
    evaluate_libero,
    make_libero_env,
    relevant_objects,
    resolve_libero_assets,
)
from sb3_stepnft.wrappers import ActionChunk  # noqa: E402
from tests.helpers import load_script  # noqa: E402

SUITE, TASK = "libero_goal", 0  # "open the middle drawer of the cabinet"


@pytest.fixture(scope="session")
def installed_assets(tmp_path_factory) -> Path:
    """The installed LIBERO assets; when there are none, the offline bundle unpacked into a temporary folder by
    scripts/setup_libero_assets.py (installing is not the library's job; `make test` has installed them)."""
    try:
        return resolve_libero_assets()
    except FileNotFoundError:
        setup = load_script("setup_libero_assets")
        if setup.find_bundle() is None:
            raise
        return setup.install_libero_assets(parent=tmp_path_factory.mktemp("libero_bundle"))


@pytest.fixture(scope="session")
def libero_assets(installed_assets, tmp_path_factory) -> str:
    """The installed LIBERO assets, with the bundle's missing visuals as placeholders in a test-only symlink copy."""
    overlay = load_script("libero_placeholder_assets").placeholder_assets(tmp_path_factory.mktemp("libero"), installed_assets)
    assert not bundle_missing_files(overlay)
    return str(overlay)


def test_smoke_physics_only_reset_init_state_step_and_success(libero_assets):
    env = make_libero_env(SUITE, TASK, camera_size=None, init_state_ids=[3, 4], settle_steps=2, assets_path=libero_assets)
    assert isinstance(env, LiberoEnv) and env.max_episode_steps == LIBERO_MAX_STEPS[SUITE]
    assert "drawer" in env.instruction and set(env.observation_space.spaces) == {"state"}
    obs, info = env.reset()
    assert env.init_state_id == 3 and info["init_state_id"] == 3 and info["is_success"] is False
    assert obs["state"].shape == (8,) and obs["state"].dtype == np.float32 and env.observation_space.contains(obs)
    for _ in range(3):
        obs, reward, terminated, truncated, info = env.step(np.array([0, 0, 0.3, 0, 0, 0, -1], np.float32))
    assert not terminated and not truncated and reward == 0.0 and info["instruction"] == env.instruction
    env.reset()
    assert env.init_state_id == 4  # cycled in order
    env.reset(seed=0)
    assert env.init_state_id == 3  # a seed selects the position in the cycle

    # The BDDL goal: open the middle drawer by hand, then step (LIBERO's own success check on CPU).
    assert not env.check_success()
    sim = env.sim
    joint = sim.model.joint_name2id("wooden_cabinet_1_middle_level")
    address = sim.model.jnt_qposadr[joint]
    low, high = sim.model.jnt_range[joint]
    sim.data.qpos[address] = low if abs(low) > abs(high) else high
    sim.forward()
    assert env.check_success()
    _, reward, terminated, truncated, info = env.step(np.zeros(7, np.float32))
    assert terminated and not truncated and info["is_success"] and reward == 1.0
    env.close()


def test_init_states_are_reproducible_and_chunks_work(libero_assets):
    env = make_libero_env(SUITE, TASK, camera_size=None, chunk_size=4, settle_steps=0, max_episode_steps=6,
                          assets_path=libero_assets)  # fmt: skip
    assert isinstance(env, ActionChunk) and env.action_space.shape == (4, 7)
    first, _ = env.reset(options={"init_state_id": 7})
    again, _ = env.reset(options={"init_state_id": 7})
    other, _ = env.reset(options={"init_state_id": 8})
    assert np.allclose(first["state"], again["state"]) and env.unwrapped.init_state_id == 8
    _, _, _, truncated, info = env.step(np.zeros((4, 7), np.float32))
    assert info["env_steps"] == 4 and not truncated
    _, _, _, truncated, info = env.step(np.zeros((4, 7), np.float32))
    assert truncated and info["env_steps"] == 2  # 6 env steps
    env.close()
    with pytest.raises(ValueError, match="init_state_ids"):
        make_libero_env(SUITE, TASK, camera_size=None, init_state_ids=[99], assets_path=libero_assets)
    with pytest.raises(ValueError, match="suite"):
        make_libero_env("libero_nope", 0, assets_path=libero_assets)


def test_images_and_one_short_evaluation_episode(libero_assets):
    from sb3_stepnft import StepNFT

    env = make_libero_env(SUITE, TASK, camera_size=64, settle_steps=1, max_episode_steps=3, assets_path=libero_assets)
    obs, _ = env.reset()
    assert obs["agentview_image"].shape == (64, 64, 3) and obs["wrist_image"].dtype == np.uint8
    assert obs["agentview_image"].std() > 0  # rendered (EGL/OSMesa on CPU), not blank
    model = StepNFT("MultiInputPolicy", env, n_steps=4, batch_size=4, seed=0)
    env.close()
    result = evaluate_libero(
        model, SUITE, tasks=[TASK], init_states=[0], camera_size=64, max_steps=3, settle_steps=1, assets_path=libero_assets
    )
    assert result["episodes"] == 1 and result["max_steps"] == 3 and result["settle_steps"] == 1
    (task,) = result["tasks"]
    assert task["task_id"] == TASK and task["lengths"] == [3] and task["successes"] == [False]
    assert result["success_rate"] == 0.0 and "drawer" in task["instruction"]


class ScriptedModel:
    """A stand-in for an SB3 model: zero actions, and the first state of every episode it sees."""

    def __init__(self, action_space):
        self.action_space = action_space
        self.first_states, self.deterministic = [], set()

    def predict(self, obs, state=None, episode_start=None, deterministic=False):
        self.deterministic.add(deterministic)
        if episode_start[0]:
            self.first_states.append(obs["state"][0].copy())
        return np.zeros((1, *self.action_space.shape), np.float32), None


def test_evaluation_runs_the_init_states_in_order_through_the_one_loop(libero_assets):
    env = make_libero_env(SUITE, TASK, camera_size=None, chunk_size=2, settle_steps=0, assets_path=libero_assets)
    expected = [env.reset(options={"init_state_id": k})[0]["state"] for k in (5, 2, 5)]
    model = ScriptedModel(env.action_space)
    env.close()
    result = evaluate_libero(
        model, SUITE, tasks=[TASK], init_states=[5, 2, 5], camera_size=None, max_steps=3, settle_steps=0,
        assets_path=libero_assets,
    )  # fmt: skip
    (task,) = result["tasks"]
    assert task["lengths"] == [3, 3, 3] and task["successes"] == [False] * 3  # env steps (chunks of 2, then 1)
    assert len(model.first_states) == 3
    assert model.deterministic == {False}  # the paper's sampler (ALGORITHM.md §1) by default
    for seen, wanted in zip(model.first_states, expected):
        assert np.allclose(seen, wanted)
    assert not np.allclose(expected[0], expected[1])
    with pytest.raises(ValueError, match="init_states is empty"):
        evaluate_libero(model, SUITE, tasks=[TASK], init_states=[], assets_path=libero_assets)


def test_missing_config_names_the_setup_script(monkeypatch, tmp_path):
    from sb3_stepnft.envs.libero import check_libero_config

    monkeypatch.setenv("LIBERO_CONFIG_PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="scripts/setup_libero_assets.py"):
        check_libero_config()
    (tmp_path / "config.yaml").write_text("benchmark_root: /nonexistent\n")
    with pytest.raises(FileNotFoundError, match="do not exist.*benchmark_root"):
        check_libero_config()
    config = load_script("setup_libero_assets").ensure_libero_config()  # rewrites the invalid config
    assert config == tmp_path / "config.yaml" and check_libero_config() == config


def test_each_venv_has_its_own_config_and_a_second_install_does_not_repoint_the_first(monkeypatch, tmp_path):
    import sys

    import yaml

    from sb3_stepnft.envs.libero import check_libero_config, libero_config_file

    setup = load_script("setup_libero_assets")
    monkeypatch.delenv("LIBERO_CONFIG_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(sys, "base_prefix", str(tmp_path / "python"))
    # another checkout's venv wrote ~/.libero for its LIBERO (a folder that exists): valid, so it stays as it is
    other = tmp_path / "other_libero"
    for sub in ("bddl_files", "init_files"):
        (other / sub).mkdir(parents=True)
    home = tmp_path / "home" / ".libero" / "config.yaml"
    home.parent.mkdir(parents=True)
    paths = dict(benchmark_root=str(other), bddl_files=str(other / "bddl_files"), init_states=str(other / "init_files"))
    home.write_text(setup.CONFIG_HEADER + yaml.safe_dump(paths))
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    assert libero_config_file() == home  # before this venv's install: LIBERO's default
    config = setup.ensure_libero_config()
    assert config == tmp_path / "venv" / "etc" / "libero" / "config.yaml" == libero_config_file()
    assert check_libero_config() == config and yaml.safe_load(config.read_text())["benchmark_root"] != str(other)
    assert yaml.safe_load(home.read_text())["benchmark_root"] == str(other)  # the other checkout still works
    # when the other checkout is deleted, ~/.libero is rewritten for LIBERO's own scripts; the venv's is unchanged
    for sub in ("bddl_files", "init_files"):
        (other / sub).rmdir()
    assert setup.ensure_libero_config() == config
    assert yaml.safe_load(home.read_text())["benchmark_root"] == yaml.safe_load(config.read_text())["benchmark_root"]
    # $LIBERO_CONFIG_PATH still wins
    monkeypatch.setenv("LIBERO_CONFIG_PATH", str(tmp_path / "chosen"))
    assert libero_config_file() == tmp_path / "chosen" / "config.yaml"


def test_missing_bundle_visuals_give_an_error_naming_the_fix(installed_assets):
    source = installed_assets
    if not bundle_missing_files(source):
        pytest.skip("LIBERO's complete assets are installed")
    with pytest.raises(FileNotFoundError, match="complete assets"):
        LiberoEnv(SUITE, TASK, camera_size=None, assets_path=source)


# --------------------------------------------------------------------------- privileged state, demonstrator, training
def test_object_state_layout_and_errors(libero_assets):
    env = LiberoEnv("libero_object", 0, camera_size=None, object_state=True, settle_steps=2, assets_path=libero_assets)
    assert env.object_state_names == ["alphabet_soup_1", "basket_1"]  # the BDDL's objects of interest, in order
    assert env.observation_space["object_state"].shape == (2 * OBJECT_POSE_SIZE,)
    obs, _ = env.reset(options={"init_state_id": 0})
    assert env.observation_space.contains(obs) and obs["object_state"].dtype == np.float32
    # object by object: position, then x y z w quaternion of the root body, read from MuJoCo now; robosuite's own
    # observables hold the same values sampled a few physics substeps earlier in the control step
    raw, data, ids = env._last_raw, env.sim.data, env.libero_env.obj_body_id
    for k, name in enumerate(env.object_state_names):
        pose = obs["object_state"][k * OBJECT_POSE_SIZE : (k + 1) * OBJECT_POSE_SIZE]
        assert np.allclose(pose[:3], data.body_xpos[ids[name]], atol=1e-6)
        assert np.allclose(pose[3:], data.body_xquat[ids[name]][[1, 2, 3, 0]], atol=1e-6)
        assert np.allclose(pose[:3], raw[f"{name}_pos"], atol=1e-3) and np.allclose(pose[3:], raw[f"{name}_quat"], atol=1e-3)
    assert np.allclose(env.object_poses(["basket_1"])[0], obs["object_state"][7:], atol=1e-6)
    env.close()
    plain = LiberoEnv(SUITE, TASK, camera_size=None, settle_steps=0, assets_path=libero_assets)
    assert set(plain.observation_space.spaces) == {"state"}  # off by default
    plain.close()
    # libero_goal 0 ("open the middle drawer"): its object of interest is a region of the cabinet, a fixture
    env = LiberoEnv(SUITE, TASK, camera_size=None, object_state=["wooden_cabinet_1", "plate_1"], assets_path=libero_assets)
    assert env.object_state_names == ["wooden_cabinet_1", "plate_1"] and env.observation_space["object_state"].shape == (14,)
    assert relevant_objects(env.libero_env) == ["wooden_cabinet_1"]
    env.close()
    for bad, match in (("basket_1", "sequence of object names"), (["nope_1"], "Unknown object 'nope_1'"), ([], "non-empty")):
        with pytest.raises(ValueError, match=match):
            LiberoEnv("libero_object", 0, camera_size=None, object_state=bad, assets_path=libero_assets)


def test_demonstrator_succeeds_and_few_shot_sft_then_one_stepnft_iteration(libero_assets):
    from stable_baselines3.common.env_util import make_vec_env

    from sb3_stepnft import StepNFT
    from sb3_stepnft.envs.libero_demos import pick_place_goal, run_demonstrator
    from sb3_stepnft.envs.maniskill_demos import normalize_like_demos
    from sb3_stepnft.sft import pretrain

    env = LiberoEnv("libero_object", 0, camera_size=None, object_state=True, assets_path=libero_assets)
    goal = pick_place_goal(env)
    assert (goal.obj, goal.target, goal.relation) == ("alphabet_soup_1", "basket_1", "in")
    demos, stats = run_demonstrator(env, [0, 1], imperfect_fraction=0.5, seed=1)
    assert stats["imperfect"] == [False, True]  # seed 1: the second episode grasps off-centre
    assert stats["successes"][0] and stats["lengths"][0] < env.max_episode_steps  # the clean episode reaches the goal
    assert demos.n_episodes == 2 and len(demos) == sum(stats["lengths"])
    assert demos.observations["object_state"].shape == (len(demos), 14) and demos.actions.shape == (len(demos), 7)
    assert np.abs(demos.actions).max() <= 1.0
    with pytest.raises(ValueError, match="only one \\(In obj region\\)"):
        pick_place_goal(LiberoEnv(SUITE, TASK, camera_size=None, settle_steps=0, assets_path=libero_assets))
    env.close()

    kwargs = dict(suite="libero_object", task_id=0, camera_size=None, chunk_size=4, max_episode_steps=16, settle_steps=1,
                  object_state=True, assets_path=libero_assets)  # fmt: skip
    vec_env = normalize_like_demos(make_vec_env(make_libero_env, n_envs=2, seed=0, env_kwargs=kwargs), demos)
    model = StepNFT("MultiInputPolicy", vec_env, n_steps=4, batch_size=8, n_epochs=1, seed=0)
    pretrain(model, demos, epochs=2, seed=0)
    model.learn(8)  # one iteration: 2 envs x 4 decisions x 4 env steps, episodes of 16 env steps end inside it
    assert model.num_timesteps == 8 and model._n_updates > 0 and len(model.ep_info_buffer) == 2
    vec_env.close()


def test_cli_demos_records_the_demonstrator_on_a_pick_and_place_task(libero_assets, tmp_path, capsys):
    """``sb3-stepnft demos libero:<suite>/<id>``: one demonstrator episode per initial state, saved with the
    physics-only observations (object_state) that ``train --set env_kwargs.object_state=true`` gives; tasks that
    are not single-object pick-and-place and too many initial states are refused with the reason."""
    from sb3_stepnft.cli import main
    from sb3_stepnft.sft import Demonstrations

    out = tmp_path / "d.npz"
    argv = ["demos", "libero:libero_object/0", "-n", "1", "--first-init-state", "2", "--assets-path", libero_assets]
    assert main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "initial states 2-2" in printed and "env_kwargs.object_state=true" in printed
    demos = Demonstrations.load(out)
    assert demos.n_episodes == 1 and demos.actions.shape[1] == 7
    assert set(demos.observations) == {"state", "object_state"} and demos.observations["object_state"].shape[1] == 14
    env = make_libero_env("libero_object", 0, camera_size=None, object_state=True, assets_path=libero_assets)
    assert set(env.observation_space.spaces) == set(demos.observations)  # what train builds for the same task
    env.close()

    assert main(["demos", "libero:libero_goal/0", "-n", "1", "--assets-path", libero_assets]) == 2
    assert "(In obj region)" in capsys.readouterr().err
    assert main(["demos", "libero:libero_object/0", "-n", "60", "--assets-path", libero_assets]) == 2
    assert "initial states" in capsys.readouterr().err
