"""Bad inputs get a clear answer (issue 10): safe checkpoint loading, checkpoint diagnostics, success flags,
hyper-parameters that cannot learn or explode, divergence, and messages that name the right cause."""

import base64
import json
import os
import pathlib
import signal
import stat
import subprocess
import sys
import textwrap
import warnings
import zipfile

import cloudpickle
import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.utils import LinearSchedule

from sb3_stepnft import FlowGRPO, FlowPPO, StepNFT
from sb3_stepnft.common import persistence
from sb3_stepnft.common.checks import (
    NOISE_LEVEL_MAX,
    NOISE_LEVEL_MIN,
    DivergenceError,
    DivergenceMonitor,
    DivergenceWarning,
    check_divergence,
    check_group_outcomes,
    check_schedule,
    success_flag,
)
from sb3_stepnft.common.on_policy import FinishedEpisode
from sb3_stepnft.common.persistence import CheckpointError, UnsafeCheckpointError, decode_value, encode_value
from sb3_stepnft.policies import MlpPolicy
from sb3_stepnft.sft import Demonstrations, pretrain
from sb3_stepnft.wrappers import ActionChunk, SuccessInfo
from tests.helpers import point_reach_vec

SMALL = dict(n_steps=8, batch_size=16, n_epochs=1, seed=0, policy_kwargs=dict(net_arch=[16]))


def small_stepnft(**kwargs):
    return StepNFT("MlpPolicy", point_reach_vec(), **{**SMALL, **kwargs})


# ================================================================================ 1. safe loading
class Payload:
    """Unpickling this object creates the marker file: proof that code from the checkpoint ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickled(obj) -> dict:
    return {":type:": "<class 'object'>", ":serialized:": base64.b64encode(cloudpickle.dumps(obj)).decode()}


def rewrite_member(path, name, transform):
    """Rewrite one member of a zip (a valid zip again: CRCs match the new bytes)."""
    path = pathlib.Path(path)
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: archive.read(info.filename) for info in archive.infolist()}
    members[name] = transform(members[name])
    if members[name] is None:
        del members[name]
    with zipfile.ZipFile(path, "w") as archive:
        for member, content in members.items():
            archive.writestr(member, content)


def edit_data(path, **changes):
    def transform(raw):
        data = json.loads(raw)
        data.update(changes)
        return json.dumps(data).encode()

    rewrite_member(path, "data", transform)


@pytest.fixture
def saved(tmp_path):
    model = small_stepnft()
    model.learn(32)
    path = tmp_path / "model.zip"
    model.save(path)
    return model, path


@pytest.mark.parametrize("key", ["lr_schedule", "observation_space", "ep_info_buffer"])
def test_payload_in_a_rebuilt_entry_never_runs(saved, tmp_path, key):
    model, path = saved
    marker = tmp_path / f"ran-{key}"
    edit_data(path, **{key: pickled(Payload(marker))})
    loaded = StepNFT.load(path)  # the entry comes from the JSON-only description: the blob is ignored
    assert not marker.exists()
    assert loaded.observation_space == model.observation_space
    assert loaded.lr_schedule(1.0) == pytest.approx(model.lr_schedule(1.0))


def test_payload_in_an_unknown_entry_is_refused_and_runs_only_when_trusted(saved, tmp_path):
    _, path = saved
    marker = tmp_path / "ran"
    edit_data(path, sneaky=pickled(Payload(marker)))
    with pytest.raises(UnsafeCheckpointError, match=r"sneaky.*trust_checkpoint=True"):
        StepNFT.load(path)
    assert not marker.exists()
    StepNFT.load(path, trust_checkpoint=True)  # the documented risk of the opt-in: the file's code runs
    assert marker.exists()


def test_payload_in_an_old_checkpoint_is_refused(saved, tmp_path):
    _, path = saved
    marker = tmp_path / "ran"
    rewrite_member(path, persistence.SAFE_MEMBER, lambda raw: None)
    edit_data(path, lr_schedule=pickled(Payload(marker)))
    with pytest.raises(UnsafeCheckpointError, match="trust_checkpoint=True"):
        StepNFT.load(path)
    assert not marker.exists()


def test_policy_file_with_payload_is_refused(tmp_path):
    marker = tmp_path / "ran"
    policy = small_stepnft().policy
    th.save({"state_dict": policy.state_dict(), "data": {"evil": Payload(marker)}}, tmp_path / "policy.pt")
    with pytest.raises(UnsafeCheckpointError, match="trust_checkpoint=True"):
        MlpPolicy.load(tmp_path / "policy.pt")
    assert not marker.exists()


def test_old_checkpoint_loads_with_the_opt_in_and_a_message(tmp_path):
    model = small_stepnft()
    model.learn(32)
    OnPolicyAlgorithm.save(model, tmp_path / "old.zip")  # how checkpoints were written before safe checkpoints
    with pytest.raises(UnsafeCheckpointError, match=r"saved before .*safe checkpoints.*trust_checkpoint=True"):
        StepNFT.load(tmp_path / "old.zip")
    with pytest.warns(UserWarning, match="trust_checkpoint=True. Save it again"):
        loaded = StepNFT.load(tmp_path / "old.zip", trust_checkpoint=True)
    obs = model.env.reset()
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0])
    loaded.save(tmp_path / "new.zip")  # re-saved: now safe
    StepNFT.load(tmp_path / "new.zip")


def test_old_policy_file_loads_with_the_opt_in(tmp_path):
    policy = small_stepnft().policy
    BasePolicy.save(policy, tmp_path / "old.pt")  # SB3's format: pickled constructor parameters
    with pytest.raises(UnsafeCheckpointError):
        MlpPolicy.load(tmp_path / "old.pt")
    with pytest.warns(UserWarning, match="old-format policy file"):
        loaded = MlpPolicy.load(tmp_path / "old.pt", trust_checkpoint=True)
    assert th.equal(loaded.velocity_net[0].weight, policy.velocity_net[0].weight)


def test_policy_round_trip_is_safe_and_exact(tmp_path):
    policy = small_stepnft(policy_kwargs=dict(net_arch=[16], activation_fn=th.nn.ReLU)).policy
    policy.save(tmp_path / "policy.pt")
    state = th.load(tmp_path / "policy.pt", weights_only=True)  # nothing but tensors and a JSON string
    assert set(state) == {"state_dict", persistence.POLICY_KEY}
    loaded = MlpPolicy.load(tmp_path / "policy.pt")
    assert loaded.activation_fn is th.nn.ReLU and loaded.net_arch == [16]
    obs = th.zeros((1, 6))
    assert th.equal(loaded._predict(obs, deterministic=True), policy._predict(obs, deterministic=True))


@pytest.mark.parametrize(
    "space",
    [
        spaces.Box(np.array([-1, -np.inf], np.float32), np.array([2, np.inf], np.float32)),
        spaces.Box(0, 255, (3, 4, 4), np.uint8),
        spaces.Discrete(5, start=2),
        spaces.MultiBinary(3),
        spaces.MultiDiscrete([3, 2]),
        spaces.Dict({"b": spaces.Box(-1, 1, (2,)), "a": spaces.Discrete(3)}),
    ],
    ids=lambda s: type(s).__name__,
)
def test_spaces_round_trip_through_json(space):
    encoded = json.loads(json.dumps(encode_value(space)))
    decoded = decode_value(encoded)
    assert decoded == space and decoded.dtype == space.dtype
    if isinstance(space, spaces.Dict):
        assert list(decoded.spaces) == list(space.spaces)  # key order kept


def test_schedules_round_trip(tmp_path):
    model = FlowPPO("MlpPolicy", point_reach_vec(), **SMALL, learning_rate=LinearSchedule(1e-3, 1e-4, 0.5), clip_range=0.3)
    model.save(tmp_path / "ppo.zip")
    loaded = FlowPPO.load(tmp_path / "ppo.zip")
    for progress in (1.0, 0.7, 0.2):
        assert loaded.lr_schedule(progress) == model.lr_schedule(progress)
    assert loaded.clip_range(0.5) == 0.3
    custom = small_stepnft(learning_rate=lambda p: 1e-4 * p + 1e-5)
    custom.save(tmp_path / "custom.zip")
    with pytest.warns(UserWarning, match="piecewise-linear"):
        loaded = StepNFT.load(tmp_path / "custom.zip")
    assert loaded.lr_schedule(0.25) == pytest.approx(1e-4 * 0.25 + 1e-5)


class MyActivation(th.nn.ReLU):
    pass


def test_classes_outside_the_allow_list_need_registration(tmp_path):
    model = small_stepnft(policy_kwargs=dict(net_arch=[16], activation_fn=MyActivation))
    with pytest.warns(UserWarning, match="policy_kwargs"):
        model.save(tmp_path / "model.zip")
    with pytest.raises(UnsafeCheckpointError, match="policy_kwargs"):
        StepNFT.load(tmp_path / "model.zip")
    persistence.allow_class(MyActivation)
    try:
        model.save(tmp_path / "model.zip")
        assert StepNFT.load(tmp_path / "model.zip").policy.activation_fn is MyActivation
    finally:
        persistence._EXTRA_ALLOWED.pop(persistence.class_path(MyActivation))


@pytest.mark.parametrize("path", ["subprocess.Popen", "builtins.eval", "os.system", "torch.nn.modules.module.sys"])
def test_only_allowed_classes_resolve(path):
    with pytest.raises(UnsafeCheckpointError):
        persistence.resolve_class(path)
    assert persistence.resolve_class("torch.nn.modules.activation.ReLU") is th.nn.ReLU


def test_file_objects_are_saved_and_loaded_safely(tmp_path):
    import io

    model = small_stepnft()
    buffer = io.BytesIO()
    model.save(buffer)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as archive:
        assert persistence.SAFE_MEMBER in archive.namelist()
    buffer.seek(0)
    assert StepNFT.load(buffer).observation_space == model.observation_space


# ================================================================================ 6. checkpoint diagnostics
def test_truncated_checkpoint(saved, tmp_path):
    _, path = saved
    raw = path.read_bytes()
    (tmp_path / "cut.zip").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        StepNFT.load(tmp_path / "cut.zip")


def test_damaged_inner_member_is_named(saved):
    _, path = saved
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("policy.pth")
    name_len = int.from_bytes(raw[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_len = int.from_bytes(raw[info.header_offset + 28 : info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    raw[start + info.compress_size // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="policy.pth"):
        StepNFT.load(path)


def test_damaged_data_member(saved):
    _, path = saved
    rewrite_member(path, "data", lambda raw: raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="'data' member is not valid JSON"):
        StepNFT.load(path)


def test_checkpoint_of_another_flow_algorithm_names_it(tmp_path):
    FlowPPO("MlpPolicy", point_reach_vec(), **SMALL).save(tmp_path / "ppo.zip")
    with pytest.raises(CheckpointError, match=r"saved by FlowPPO.*FlowPPO.load"):
        StepNFT.load(tmp_path / "ppo.zip")
    grpo = FlowGRPO("MlpPolicy", point_reach_vec(4), **SMALL, group_size=2)
    OnPolicyAlgorithm.save(grpo, tmp_path / "old_grpo.zip")  # old format: the saver is recognised too
    with pytest.raises(CheckpointError, match="saved by FlowGRPO"):
        StepNFT.load(tmp_path / "old_grpo.zip", trust_checkpoint=True)


def test_read_only_target_is_not_replaced(saved):
    model, path = saved
    before = path.read_bytes()
    os.chmod(path, 0o444)
    try:
        with pytest.raises(PermissionError, match="read-only"):
            model.save(path)
        assert path.read_bytes() == before and stat.S_IMODE(path.stat().st_mode) == 0o444
        assert sorted(p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")) == []
    finally:
        os.chmod(path, 0o644)


@pytest.mark.parametrize(
    "changes, name",
    [(dict(noise_level=-1.0), "noise_level"), (dict(n_steps=0), "n_steps"), (dict(objective="bogus"), "objective")],
)
def test_edited_hyper_parameters_are_validated_on_load(saved, changes, name):
    _, path = saved
    edit_data(path, **changes)
    with pytest.raises(CheckpointError, match=name):
        StepNFT.load(path)


def test_out_of_range_value_given_to_load_is_rejected(saved):
    _, path = saved
    with pytest.raises(CheckpointError, match="noise_level"):
        StepNFT.load(path, noise_level=5000.0)
    edit_data(path, noise_level=-1.0)
    assert StepNFT.load(path, noise_level=0.3).noise_level == 0.3  # the documented fix


def test_killed_save_leaves_no_temp_file_for_the_next_save(saved):
    model, path = saved
    before = path.read_bytes()
    script = textwrap.dedent(f"""
        import os, signal
        from sb3_stepnft.common.persistence import atomic_save

        def half_written(file):
            file.write(b"x" * 1_000_000)
            file.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        atomic_save(half_written, {str(path)!r})
        """)
    result = subprocess.run([sys.executable, "-c", script], cwd=pathlib.Path(__file__).parents[1], timeout=120)
    assert result.returncode == -signal.SIGKILL
    leftovers = [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1 and path.read_bytes() == before  # the kill left its temp file; the target is intact
    model.save(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.zip"]


def test_save_fsyncs_before_the_rename(saved, monkeypatch):
    model, path = saved
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    model.save(path)
    assert "replace" in events and events.index("fsync") < events.index("replace")


# ================================================================================ 3. success flags
def test_success_flag_accepts_bool_likes_only():
    assert success_flag({}) is None and success_flag({"is_success": None}) is None
    assert success_flag({"is_success": np.bool_(True)}) is True
    assert success_flag({"is_success": 0}) is False and success_flag({"is_success": 1.0}) is True
    assert success_flag({"is_success": np.array([True])}) is True
    assert success_flag({"is_success": th.tensor(False)}) is False
    with pytest.raises(TypeError, match=r"info\['is_success'\] is the string 'False'"):
        success_flag({"is_success": "False"})
    with pytest.raises(ValueError, match="'is_success'"):
        success_flag({"is_success": 0.5})
    with pytest.raises(ValueError, match="'done'"):
        success_flag({"done": [1, 0]}, key="done")


class FlagEnv(gym.Env):
    """Box(2) actions, episodes of 2 steps; ``flag(episode)`` gives the final info's is_success (absent if missing)."""

    MISSING = object()

    def __init__(self, flag):
        self.observation_space = spaces.Box(-1, 1, (3,), np.float32)
        self.action_space = spaces.Box(-1, 1, (2,), np.float32)
        self.flag, self.episode, self.t = flag, -1, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.episode += 1
        self.t = 0
        return np.zeros(3, np.float32), {}

    def step(self, action):
        self.t += 1
        done = self.t >= 2
        flag = self.flag(self.episode)
        info = {} if (not done or flag is self.MISSING) else {"is_success": flag}
        return np.zeros(3, np.float32), 1.0, done, False, info


def test_string_success_flag_is_an_error_naming_the_key():
    env = make_vec_env(lambda: FlagEnv(lambda ep: "False"), n_envs=2, seed=0)
    model = StepNFT("MlpPolicy", env, **SMALL)
    with pytest.raises(TypeError, match="is_success"):
        model.learn(16)


def test_wrappers_reject_string_flags():
    chunked = ActionChunk(FlagEnv(lambda ep: "False"), 2)
    chunked.reset(seed=0)
    with pytest.raises(TypeError, match="is_success"):
        chunked.step(np.zeros((2, 2), np.float32))

    class Named(FlagEnv):
        def step(self, action):
            obs, reward, terminated, truncated, info = super().step(action)
            return obs, reward, terminated, truncated, {"success": "no"}

    wrapped = SuccessInfo(Named(lambda ep: True), key="success")
    wrapped.reset(seed=0)
    with pytest.raises(TypeError, match="'success'"):
        wrapped.step(np.zeros(2, np.float32))


def test_auto_outcome_does_not_silently_switch_to_returns():
    env = make_vec_env(lambda: FlagEnv(lambda ep: FlagEnv.MISSING if ep == 0 else True), n_envs=1, seed=0)
    model = StepNFT("MlpPolicy", env, **SMALL)
    with pytest.warns(UserWarning, match="graded episode returns"), pytest.raises(ValueError, match="later episode"):
        model.learn(16)


def test_grpo_never_mixes_success_and_returns_in_a_group():
    members = [FinishedEpisode(0, 0, True, 3.0), FinishedEpisode(1, 1, None, 7.0)]
    with pytest.raises(ValueError, match=r"envs \[1\]"):
        check_group_outcomes(members)
    check_group_outcomes([FinishedEpisode(0, 0, None, 3.0), FinishedEpisode(1, 1, None, 7.0)])

    def make(index):
        return lambda: FlagEnv(lambda ep: True if index == 0 else FlagEnv.MISSING)

    from stable_baselines3.common.vec_env import DummyVecEnv

    model = FlowGRPO("MlpPolicy", DummyVecEnv([make(0), make(1)]), **SMALL, group_size=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no GroupSeed: its warning is not what this test is about
        with pytest.raises(ValueError, match="mix success"):
            model.learn(16)


# ================================================================================ 4. hyper-parameters
@pytest.mark.parametrize("algorithm", [StepNFT, FlowPPO, FlowGRPO])
@pytest.mark.parametrize("noise_level", [0.0, 1e-6, 1000.0, float("nan")])
def test_noise_levels_that_cannot_learn_or_explode(algorithm, noise_level):
    extra = dict(group_size=2) if algorithm is FlowGRPO else {}
    with pytest.raises(ValueError, match="noise_level"):
        algorithm("MlpPolicy", point_reach_vec(), **SMALL, noise_level=noise_level, **extra)


def test_noise_level_bounds_are_inclusive_and_ode_needs_no_noise():
    small_stepnft(noise_level=NOISE_LEVEL_MIN)
    small_stepnft(noise_level=NOISE_LEVEL_MAX)
    small_stepnft(noise_level=0.0, sampler="ode", target="terminal")  # Euler rollouts: the noise is unused


@pytest.mark.parametrize(
    "schedule, match",
    [(lambda p: -1e-4, "positive"), (lambda p: float("nan"), "finite"), (lambda p: 1 / 0, "ZeroDivisionError"),
     (lambda p: "fast", "finite")],
)  # fmt: skip
def test_learning_rate_schedule_is_validated_like_a_constant(schedule, match):
    with pytest.raises(ValueError, match=match):
        small_stepnft(learning_rate=schedule)
    with pytest.raises(ValueError, match="clip_range"):
        FlowPPO("MlpPolicy", point_reach_vec(), **SMALL, clip_range=schedule)


def test_schedule_decaying_to_zero_is_accepted():
    check_schedule("learning_rate", lambda p: 3e-4 * p)
    with pytest.raises(ValueError):
        check_schedule("learning_rate", lambda p: 3e-4 * (p - 0.5))


def test_divergence_monitor_flags_growth_by_orders_of_magnitude():
    monitor = DivergenceMonitor("StepNFT")
    for loss in (0.7, 0.69, 0.71, 5.0):  # a factor 7: fine
        monitor.observe_loss(loss)
    with pytest.warns(DivergenceWarning, match="learning_rate"):
        monitor.observe_loss(1e4)
    with pytest.warns(DivergenceWarning, match="noise_level"):
        monitor.observe_samples(np.array([1.0, -4e22]))
    strict = DivergenceMonitor(on_divergence="raise")
    with pytest.raises(DivergenceError):
        strict.observe_samples(th.tensor([1e6]))


def test_diverging_velocity_field_is_reported_during_learning():
    model = small_stepnft()
    with th.no_grad():
        model.policy.velocity_net[-1].bias.fill_(1e5)  # a field that exploded
    model.ema.copy_from_student()
    with pytest.warns(DivergenceWarning, match="flow sampler produced"):
        model.learn(48)


def test_check_divergence_can_raise_or_be_switched_off():
    model = small_stepnft()
    model.divergence_check = "raise"
    with pytest.raises(DivergenceError):
        check_divergence(model, samples=np.array([1e9]))
    model.divergence_check = "off"
    check_divergence(model, samples=np.array([1e9]))


# ================================================================================ 7. messages
class RewardEnv(FlagEnv):
    def step(self, action):
        obs, _, terminated, truncated, info = super().step(action)
        return obs, float("nan"), terminated, truncated, info


def test_nan_reward_is_named_as_the_cause():
    env = make_vec_env(lambda: RewardEnv(lambda ep: True), n_envs=2, seed=0)
    model = StepNFT("MlpPolicy", env, **SMALL)
    with pytest.raises(FloatingPointError, match=r"non-finite reward.*VecCheckNan"):
        model.learn(16)


def test_constant_action_dimension_is_rejected():
    class ConstantDim(FlagEnv):
        def __init__(self):
            super().__init__(lambda ep: True)
            self.action_space = spaces.Box(np.array([-1, 0.5], np.float32), np.array([1, 0.5], np.float32))

    with pytest.raises(ValueError, match=r"dimension\(s\) \[1\].*low >= high"):
        StepNFT("MlpPolicy", make_vec_env(ConstantDim, n_envs=1), **SMALL)


def test_tuple_observations_are_rejected_at_construction():
    class TupleEnv(FlagEnv):
        def __init__(self):
            super().__init__(lambda ep: True)
            self.observation_space = spaces.Tuple((spaces.Box(-1, 1, (2,)), spaces.Discrete(2)))

    with pytest.raises(NotImplementedError, match="Tuple observation spaces are not supported"):
        StepNFT("MlpPolicy", TupleEnv(), **{**SMALL, "policy_kwargs": None})


def test_old_net_arch_format_is_accepted_with_sb3_warning():
    with pytest.warns(UserWarning, match="net_arch=dict"):
        model = FlowPPO("MlpPolicy", point_reach_vec(), **{**SMALL, "policy_kwargs": dict(net_arch=[dict(pi=[8], vf=[4])])})
    assert model.policy.pi_arch == [8] and model.policy.vf_arch == [4]
    with pytest.raises(ValueError, match="positive integers"):
        small_stepnft(policy_kwargs=dict(net_arch=[16, 0]))


def demos(n=40, action_scale=1.0, obs_dim=6, action_dim=2):
    rng = np.random.default_rng(0)
    starts = np.zeros(n, bool)
    starts[::10] = True
    actions = rng.uniform(-1, 1, (n, action_dim)) * action_scale
    return Demonstrations(rng.normal(size=(n, obs_dim)).astype(np.float32), actions, starts)


def test_nan_observations_in_demonstrations():
    good = demos()
    observations = good.observations.copy()
    observations[7, 1] = np.nan
    with pytest.raises(ValueError, match=r"observations contain NaN or inf \(first at step 7"):
        Demonstrations(observations, good.actions, good.episode_starts)
    with pytest.raises(ValueError, match=r"\['cam'\]"):
        Demonstrations({"cam": observations}, good.actions, good.episode_starts)


def test_pretrain_reports_out_of_range_actions():
    model = small_stepnft()
    with pytest.warns(UserWarning, match=r"of the demonstrated action values lie outside"):
        pretrain(model, demos(action_scale=3.0), epochs=1)
    with pytest.raises(ValueError, match="outside"):
        pretrain(model, demos(action_scale=3.0), epochs=1, action_bounds="error")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pretrain(model, demos(action_scale=3.0), epochs=1, action_bounds="clip")
        pretrain(model, demos(), epochs=1)  # in range: no warning


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(epochs=0), "epochs"), (dict(batch_size=-4), "batch_size"), (dict(learning_rate=0.0), "learning_rate"),
     (dict(batch_size=2.5), "batch_size")],
)  # fmt: skip
def test_pretrain_rejects_non_positive_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pretrain(small_stepnft(), demos(), **kwargs)


def test_pretrain_rejects_wrong_action_width():
    with pytest.raises(ValueError, match=r"shape \(3,\) per step.*needs 2 values"):
        pretrain(small_stepnft(), demos(action_dim=3), epochs=1)


def test_missing_demonstrations_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="No demonstrations file"):
        Demonstrations.load(tmp_path / "nothing.npz")
    demos().save(tmp_path / "demos")
    assert len(Demonstrations.load(tmp_path / "demos")) == 40  # the suffix save added is found
