"""LIBERO adapter and evaluation protocol (skipped without the [libero] extra; `make test` installs it).

These tests prove the adapter and the protocol, not LIBERO learning: no LIBERO demonstrations exist offline.

PLACEHOLDER ASSETS: the offline asset bundle (../shared/data, LIBERO commit 8f1084e) lacks 30 large visual files
(background meshes, the black-bowl and basket visuals, some 4K textures), and every LIBERO scene references at least one
of them. The fixture below builds a test-only copy of the assets (symlinks) in which those 30 files are placeholders:
a 4 cm box mesh (.msh/.obj), a grey 64x64 texture (.png) or an empty .zip. Collision geometry is untouched, so physics
and success checks are exact; images show boxes where those objects should be. The installed assets are not modified.
"""

import os
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.sim
pytest.importorskip("robosuite", reason="needs the [libero] extra (bash scripts/install_sim.sh venv)")
pytest.importorskip("bddl", reason="needs the [libero] extra (bash scripts/install_sim.sh venv)")
if __import__("importlib").util.find_spec("libero") is None:
    pytest.skip("needs LIBERO (bash scripts/install_sim.sh venv)", allow_module_level=True)

from sb3_stepnft.envs.libero import (  # noqa: E402
    BUNDLE_MARKER,
    LIBERO_MAX_STEPS,
    LiberoEnv,
    bundle_missing_files,
    evaluate_libero,
    make_libero_env,
    resolve_libero_assets,
)
from sb3_stepnft.wrappers import ActionChunk  # noqa: E402
from tests.helpers import load_script  # noqa: E402

SUITE, TASK = "libero_goal", 0  # "open the middle drawer of the cabinet"


def _box() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    half = 0.02
    vertices = np.array([[x, y, z] for x in (-half, half) for y in (-half, half) for z in (-half, half)], np.float32)
    faces = np.array(
        [[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1], [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4],
         [1, 5, 7], [1, 7, 3]], np.int32,
    )  # fmt: skip
    texcoords = np.array([[i % 2, (i // 2) % 2] for i in range(8)], np.float32)
    return vertices, faces, texcoords


def write_placeholder(path: Path) -> None:
    """A stand-in for a missing visual asset (test set-ups only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    vertices, faces, texcoords = _box()
    if path.suffix == ".msh":  # MuJoCo's binary mesh: counts, then vertices, (no normals), texcoords, faces
        path.write_bytes(
            struct.pack("4i", len(vertices), 0, len(texcoords), len(faces))
            + vertices.tobytes()
            + texcoords.tobytes()
            + faces.tobytes()
        )
    elif path.suffix == ".obj":
        lines = [f"v {x} {y} {z}" for x, y, z in vertices] + [f"vt {u} {v}" for u, v in texcoords]
        lines += [f"f {a + 1}/{a + 1} {b + 1}/{b + 1} {c + 1}/{c + 1}" for a, b, c in faces]
        path.write_text("\n".join(lines) + "\n")
    elif path.suffix == ".png":
        from PIL import Image

        Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(path)
    elif path.suffix == ".zip":
        zipfile.ZipFile(path, "w").close()
    else:
        raise ValueError(f"no placeholder for {path}")


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
    source = installed_assets
    missing = bundle_missing_files(source)
    if not missing:
        return str(source)  # LIBERO's own complete assets: nothing to fill
    overlay = tmp_path_factory.mktemp("libero") / "assets"
    shutil.copytree(source, overlay, symlinks=False, copy_function=os.symlink)  # real folders, symlinked files
    for relative in missing:
        write_placeholder(overlay / relative)
    (overlay / BUNDLE_MARKER).unlink()
    (overlay / BUNDLE_MARKER).write_text("".join(f"{m}\n" for m in missing))  # still a bundle, now complete
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
        self.first_states = []

    def predict(self, obs, state=None, episode_start=None, deterministic=False):
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


def test_missing_bundle_visuals_give_an_error_naming_the_fix(installed_assets):
    source = installed_assets
    if not bundle_missing_files(source):
        pytest.skip("LIBERO's complete assets are installed")
    with pytest.raises(FileNotFoundError, match="complete assets"):
        LiberoEnv(SUITE, TASK, camera_size=None, assets_path=source)
