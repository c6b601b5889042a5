"""Checkpoints written by LeRobot's own π0 / π0.5 classes load into FlowVLAPolicy and give LeRobot's numbers.

tests/data/lerobot_{pi0,pi05}/ were made by scripts/make_lerobot_fixtures.py (tiny random-init models built with
LeRobot's ``PI0Pytorch`` / ``PI05Pytorch``; the LeRobot commit is in tests/data/lerobot_SOURCE.txt): the state dict
in LeRobot's key layout, the inputs, the velocities of its ``denoise_step`` at a few ``(x_t, t)`` and the chunk of
its ``sample_actions`` from injected noise over 10 Euler steps.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch as th

transformers = pytest.importorskip("transformers")

from gymnasium import spaces  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from sb3_stepnft.policies import FlowVLAPolicy  # noqa: E402
from sb3_stepnft.vla import load_norm_stats, openpi_config  # noqa: E402
from tests.helpers import lerobot_fixture_spaces, lerobot_fixture_vlm  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data"
TOLERANCE = 1e-4


tiny_vlm = lerobot_fixture_vlm
spaces_of = lerobot_fixture_spaces


def load(path, io, **kwargs):
    observation_space, action_space = spaces_of(io)
    with pytest.warns(UserWarning, match="No normalisation statistics"):
        return FlowVLAPolicy.from_openpi_checkpoint(
            path,
            observation_space,
            action_space,
            vlm_config=tiny_vlm(),
            num_denoise_steps=io["num_steps"],
            **kwargs,
        )


def observation(io):
    return dict(image=io["images"], state=io["state"], instruction_ids=io["tokens"], instruction_mask=io["masks"])


def assert_reproduces(policy, io):
    with th.no_grad():
        feats = policy.encode(observation(io))
        for x_t, t, expected in zip(io["x_t"], io["times"], io["velocities"]):
            th.testing.assert_close(policy.velocity(x_t, t, feats), expected, atol=TOLERANCE, rtol=0)
        chain = policy.sample(feats, "ode", x_0=io["noise"])
    th.testing.assert_close(chain.sample, io["sample"], atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_lerobot_checkpoint_reproduces_lerobot_velocities_and_samples(variant):
    io = th.load(DATA / f"lerobot_{variant}" / "io.pt")
    policy = load(DATA / f"lerobot_{variant}", io)
    assert policy.variant == variant
    assert_reproduces(policy, io)
    # the numbers depend on the weights: a perturbed expert does not reproduce them
    with th.no_grad():
        policy.expert.action_out_proj.bias.add_(0.01)
    with pytest.raises(AssertionError):
        assert_reproduces(policy, io)


def test_unprefixed_openpi_layout_and_variant_errors(tmp_path):
    io = th.load(DATA / "lerobot_pi05" / "io.pt")
    tensors = load_file(DATA / "lerobot_pi05" / "model.safetensors")
    (tmp_path / "openpi").mkdir()
    unprefixed = {k.removeprefix("model."): v for k, v in tensors.items()}
    del unprefixed["paligemma_with_expert.paligemma.lm_head.weight"]  # tied: often stored once
    save_file(unprefixed, str(tmp_path / "openpi" / "model.safetensors"))
    shutil.copy(DATA / "lerobot_pi05" / "config.json", tmp_path / "openpi" / "config.json")
    assert_reproduces(load(tmp_path / "openpi", io), io)

    observation_space, action_space = spaces_of(io)
    vlm = tiny_vlm()
    with pytest.raises(ValueError, match="π0.5 checkpoint, not π0: use from_pi05"):
        FlowVLAPolicy.from_pi0(DATA / "lerobot_pi05", observation_space, action_space, vlm_config=vlm)
    with pytest.raises(ValueError, match="π0 checkpoint, not π0.5"):
        FlowVLAPolicy.from_pi05(DATA / "lerobot_pi0", observation_space, action_space, vlm_config=vlm)
    broken = dict(unprefixed)
    broken["time_mlp_in.weight"] = th.zeros(32, 16)
    (tmp_path / "broken").mkdir()
    save_file(broken, str(tmp_path / "broken" / "model.safetensors"))
    policy = load(tmp_path / "openpi", io)
    with pytest.raises(ValueError, match=r"expert.time_mlp_in.weight has shape \(32, 16\)"):
        policy.load_checkpoint(tmp_path / "broken")


def test_norm_stats_openpi_and_lerobot_files(tmp_path):
    io = th.load(DATA / "lerobot_pi05" / "io.pt")
    directory = tmp_path / "pi05"
    shutil.copytree(DATA / "lerobot_pi05", directory)
    (directory / "config.json").write_text(json.dumps({"chunk_size": 3, "max_state_dim": 8, "discrete_state_input": False}))
    q01, q99 = [-2.0] * 8, [2.0] * 8
    (directory / "assets" / "robot").mkdir(parents=True)
    stats = {"norm_stats": {"state": {"q01": q01, "q99": q99}, "actions": {"q01": [0.0] * 4, "q99": [10.0] * 4}}}
    (directory / "assets" / "robot" / "norm_stats.json").write_text(json.dumps(stats))
    config = openpi_config(directory, vlm_config=tiny_vlm())
    assert config.variant == "pi05" and not config.state_in_prompt
    assert config.norm_stats["state"]["q99"] == q99

    observation_space, action_space = spaces_of(io)
    policy = FlowVLAPolicy.from_openpi_checkpoint(
        directory, observation_space, spaces.Box(-100, 100, action_space.shape), vlm_config=config.vlm
    )
    state = th.tensor([[2.0, -2.0, 0.0, 1.0, 0, 0, 0, 0]])
    th.testing.assert_close(policy.normalize_state(state)[0, :4], th.tensor([1.0, -1.0, 0.0, 0.5]), atol=1e-5, rtol=0)
    chunk = th.tensor([-1.0, 0.0, 1.0, 0.5]).expand(1, 3, 4)
    th.testing.assert_close(policy.to_env_units(chunk)[0, 0], th.tensor([0.0, 5.0, 10.0, 7.5]))

    # π0 with LeRobot's normalizer processor file (mean / std)
    pi0 = tmp_path / "pi0"
    shutil.copytree(DATA / "lerobot_pi0", pi0)
    save_file(
        {
            "observation.state.mean": th.ones(8),
            "observation.state.std": th.full((8,), 2.0),
            "action.mean": th.zeros(4),
            "action.std": th.ones(4),
        },
        str(pi0 / "policy_preprocessor_step_3_normalizer_processor.safetensors"),
    )
    assert load_norm_stats(pi0, "pi0")["state"]["std"] == [2.0] * 8
    with pytest.raises(ValueError, match=r"lack \['q01', 'q99'\]"):
        load_norm_stats(pi0, "pi05")
    with pytest.warns(UserWarning, match="No normalisation statistics"):
        assert load_norm_stats(DATA / "lerobot_pi0", "pi0") is None
