"""Device-resident rollouts (docs/scaling.md, "Device-resident rollouts"): the tensor VecEnv contract, the fake tensor
env, host<->device copies per step and per iteration, equality with the NumPy path, save/load and bad input.

There is no GPU here, so "device" is the CPU and a host<->device copy is recognised by the calls that would make one
on a GPU (see :class:`CopyCounter`)."""

import collections
import sys

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.vec_env import VecNormalize

from sb3_stepnft import FlowGRPO, FlowPPO, StepNFT
from sb3_stepnft.common.buffers import DecisionBuffer
from sb3_stepnft.common.tensor_env import is_tensor_env, tensor_infos_to_list
from sb3_stepnft.envs.testing import TorchPointReachVecEnv
from tests.helpers import record_training_data

pytestmark = pytest.mark.filterwarnings("ignore:FlowGRPO. its sub-envs are not wrapped")  # no GroupSeed: not needed here

SMALL = dict(policy_kwargs=dict(net_arch=[32, 32]), device="cpu", seed=3)
ALGORITHMS = {"StepNFT": (StepNFT, {}), "FlowPPO": (FlowPPO, {}), "FlowGRPO": (FlowGRPO, dict(group_size=2))}

# The per-iteration budget of the StepNFT tensor path (measured with n_epochs=1 and one minibatch: 19 in an iteration
# without an update, 45 with one, up to 53 in the first update): the end-of-rollout bookkeeping (one copy per tracked
# field, the next episode id), the labelling (label lookup, counts, pending ids), the action bounds, the permutation,
# the loss statistics and the divergence check. It does not grow with n_steps or n_envs; per step the count is 0.
ITERATION_BUDGET = 60


class CopyCounter:
    """Counts the calls that copy between host and device on a GPU.

    device -> host: ``Tensor.cpu``, ``.numpy``, ``.item``, ``.tolist``, ``__array__`` (``np.asarray(tensor)``) and the
    implicit syncs ``bool(t)``, ``float(t)``, ``int(t)``, ``operator.index(t)``. host -> device: ``torch.as_tensor``,
    ``torch.tensor`` and ``torch.from_numpy`` of host data (not of a tensor) that is a NumPy array or is given a
    ``device`` (a ``torch.tensor`` of a Python tuple without a device is host-side metadata, e.g. a sampling plan's
    flags, and is not counted). Conservative: a ``.item()`` of a tensor that lives on the host anyway is counted."""

    D2H = ("cpu", "numpy", "item", "tolist", "__array__", "__bool__", "__float__", "__int__", "__index__")
    H2D = ("as_tensor", "tensor", "from_numpy")

    def __init__(self, monkeypatch):
        self.total = 0
        self.where: collections.Counter = collections.Counter()
        for name in self.D2H:
            self._wrap(monkeypatch, th.Tensor, name, lambda *args, **kwargs: True)
        for name in self.H2D:
            self._wrap(monkeypatch, th, name, self._from_host)

    @staticmethod
    def _from_host(data, *args, **kwargs) -> bool:
        return not isinstance(data, th.Tensor) and (isinstance(data, np.ndarray) or kwargs.get("device") is not None)

    def _wrap(self, monkeypatch, owner, name, counts) -> None:
        original = getattr(owner, name)

        def counted(*args, **kwargs):
            if counts(*args, **kwargs):
                self.total += 1
                frame = sys._getframe(1)
                self.where[(name, frame.f_code.co_filename.rsplit("/", 1)[-1], frame.f_lineno)] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)


class RecordingEnv(TorchPointReachVecEnv):
    """Remembers the copy count at every ``step_wait``, and whether the step is the first of a rollout."""

    def __init__(self, counter: CopyCounter | None = None, **kwargs):
        super().__init__(**kwargs)
        self.counter = counter
        self.snapshots: list[int] = []

    def step_wait(self):
        if self.counter is not None:
            self.snapshots.append(self.counter.total)
        return super().step_wait()


def _copies(monkeypatch, algorithm: str, n_steps: int, as_tensors: bool = True, iterations: int = 4, n_envs: int = 4):
    """(per-step counts inside rollouts, per-iteration counts between rollouts) over ``iterations`` iterations."""
    algo, extra = ALGORITHMS[algorithm]
    counter = CopyCounter(monkeypatch)
    env = RecordingEnv(counter, num_envs=n_envs, as_tensors=as_tensors)
    model = algo("MlpPolicy", env, n_steps=n_steps, batch_size=4096, n_epochs=1, **SMALL, **extra)
    model.learn(n_steps * n_envs * iterations)
    differences = np.diff(env.snapshots)
    boundary = np.arange(len(differences)) % n_steps == n_steps - 1  # from a rollout's last step to the next's first
    return differences[~boundary], differences[boundary], counter


def test_stepnft_tensor_rollouts_make_no_copy_per_step(monkeypatch):
    per_step, per_iteration, counter = _copies(monkeypatch, "StepNFT", n_steps=8)
    assert per_step.tolist() == [0] * len(per_step), counter.where
    assert 0 < per_iteration.max() <= ITERATION_BUDGET, (per_iteration, counter.where)
    # ... and the per-iteration count does not grow with the rollout's length
    _, longer, _ = _copies(monkeypatch, "StepNFT", n_steps=24)
    assert longer.max() <= per_iteration.max()


def test_the_numpy_path_copies_every_step(monkeypatch):
    # the counter sees the NumPy path's per-step conversions (so the zero above is not a blind counter)
    per_step, _, _ = _copies(monkeypatch, "StepNFT", n_steps=8, as_tensors=False)
    assert per_step.min() >= 5


@pytest.mark.parametrize("algorithm", ["FlowPPO", "FlowGRPO"])
def test_policy_gradient_tensor_rollouts_copies_per_step(monkeypatch, algorithm):
    per_step, per_iteration, counter = _copies(monkeypatch, algorithm, n_steps=8)
    # Per step: the shared SDE step j is drawn on the host generator (one .item() of a host tensor: no device copy),
    # the solver validates the stored step index (one bool: FlowSolver.check_step_index), and FlowPPO reads one bool
    # (whether an env was truncated: its bootstrap). Nothing else.
    assert per_step.max() <= (2 if algorithm == "FlowGRPO" else 3), counter.where
    assert per_iteration.max() <= ITERATION_BUDGET + 20, (per_iteration, counter.where)


def _trained(algorithm: str, as_tensors: bool, steps: int = 384, **kwargs):
    algo, extra = ALGORITHMS[algorithm]
    env = TorchPointReachVecEnv(num_envs=4, as_tensors=as_tensors)
    model = algo("MlpPolicy", env, n_steps=16, batch_size=32, n_epochs=2, **SMALL, **extra, **kwargs)
    initial = {k: v.clone() for k, v in model.policy.state_dict().items()}
    model.learn(steps)
    return model, initial


@pytest.mark.parametrize("algorithm", ["StepNFT", "FlowGRPO", "FlowPPO"])
def test_tensor_env_trains_like_the_same_numpy_env(algorithm):
    # The same task, seed and random streams through both paths: the same decisions, labels and minibatches, so the
    # same parameters (FlowPPO batches its truncation bootstrap on the tensor path: float rounding only).
    numpy_model, initial = _trained(algorithm, as_tensors=False)
    tensor_model, _ = _trained(algorithm, as_tensors=True)
    assert tensor_model._n_updates == numpy_model._n_updates > 0
    expected, got = numpy_model.policy.state_dict(), tensor_model.policy.state_dict()
    assert any(not th.equal(initial[key], got[key]) for key in got)  # it trained
    tolerance = 1e-5 if algorithm == "FlowPPO" else 0.0
    for key in expected:
        assert th.allclose(expected[key], got[key], atol=tolerance, rtol=0), key
    assert list(tensor_model.ep_info_buffer) == [
        {"r": float(ep["r"]), "l": int(ep["l"])} for ep in numpy_model.ep_info_buffer
    ]  # the rollout/* statistics (filled at the rollout's end on the tensor path)
    assert list(tensor_model.ep_success_buffer) == list(numpy_model.ep_success_buffer)
    assert tensor_model.rollout_buffer.n_pending == numpy_model.rollout_buffer.n_pending
    if algorithm == "StepNFT":
        for key, value in numpy_model.ema.shadow.items():
            assert th.equal(value, tensor_model.ema.shadow[key]), key


def test_stepnft_tensor_env_save_load_and_resume(tmp_path):
    model, _ = _trained("StepNFT", as_tensors=True, steps=64)
    seen = record_training_data(model)
    model.learn(128, reset_num_timesteps=False)
    assert any(data is not None for data in seen)
    assert all(isinstance(data["x_k"], th.Tensor) for data in seen if data is not None)  # stored as tensors
    model.save(tmp_path / "model.zip")
    env = TorchPointReachVecEnv(num_envs=4, as_tensors=True)
    loaded = StepNFT.load(tmp_path / "model.zip", env=env, device="cpu")
    for key, value in model.policy.state_dict().items():
        assert th.equal(value, loaded.policy.state_dict()[key])
    loaded.learn(128, reset_num_timesteps=False)  # resumes training on the tensor path
    assert loaded.num_timesteps == model.num_timesteps + 128
    # predict takes NumPy observations (the env's NumPy mode, e.g. for evaluation)
    numpy_env = TorchPointReachVecEnv(num_envs=4, as_tensors=False)
    actions, _ = loaded.predict(numpy_env.reset(), deterministic=True)
    assert actions.shape == (4, 2)


def test_switching_between_numpy_and_tensor_envs_keeps_episode_ids():
    model = StepNFT("MlpPolicy", TorchPointReachVecEnv(num_envs=4, as_tensors=False), n_steps=8, batch_size=32, **SMALL)
    model.learn(64)
    next_id = model._next_episode_id
    model.set_env(TorchPointReachVecEnv(num_envs=4, as_tensors=True))
    model.learn(64, reset_num_timesteps=False)
    assert isinstance(model._episode_ids, th.Tensor) and model._next_episode_id >= next_id
    model.set_env(TorchPointReachVecEnv(num_envs=4, as_tensors=False))
    model.learn(64, reset_num_timesteps=False)
    assert isinstance(model._episode_ids, np.ndarray)


def test_fake_tensor_env_modes_agree():
    tensor_env, numpy_env = TorchPointReachVecEnv(num_envs=3), TorchPointReachVecEnv(num_envs=3, as_tensors=False)
    assert is_tensor_env(tensor_env) and not is_tensor_env(numpy_env)
    tensor_env.seed(7)
    numpy_env.seed(7)
    assert np.array_equal(tensor_env.reset().numpy(), numpy_env.reset())
    rng = np.random.default_rng(0)
    ended = 0
    for _ in range(30):
        actions = rng.uniform(-1, 1, (3, 2)).astype(np.float32)
        obs, rewards, dones, infos = tensor_env.step(th.as_tensor(actions))
        obs_np, rewards_np, dones_np, infos_np = numpy_env.step(actions)
        assert isinstance(obs, th.Tensor) and obs.device == tensor_env.device and dones.dtype == th.bool
        assert isinstance(infos, dict) and isinstance(infos_np, list)
        assert np.array_equal(obs.numpy(), obs_np) and np.array_equal(rewards.numpy(), rewards_np)
        assert np.array_equal(dones.numpy(), dones_np)
        for i in np.flatnonzero(dones_np):
            ended += 1
            assert np.array_equal(infos_np[i]["terminal_observation"], infos["terminal_observation"][i].numpy())
            assert infos_np[i]["is_success"] == bool(infos["is_success"][i]) and "episode" in infos_np[i]
    assert ended > 0


def test_tensor_infos_to_list_only_puts_end_of_episode_keys_where_done():
    infos = {"is_success": th.tensor([True, False]), "TimeLimit.truncated": th.tensor([False, True]), "note": "x"}
    out = tensor_infos_to_list(infos, np.array([False, True]))
    assert out[0] == {"is_success": True, "note": "x"}
    assert out[1] == {"is_success": False, "TimeLimit.truncated": True, "note": "x"}


def test_vec_env_wrapper_around_a_tensor_env_is_a_clear_error():
    env = VecNormalize(TorchPointReachVecEnv(num_envs=2))
    with pytest.raises(TypeError, match="as_tensors=False"):
        StepNFT("MlpPolicy", env, n_steps=4, batch_size=8, **SMALL).learn(8)


def test_decision_buffer_labels_tensors_like_arrays():
    # the same adds and labels as tensors and as arrays: the same labelled, dropped and pending decisions
    buffers = {kind: DecisionBuffer(TorchPointReachVecEnv(2).observation_space, 2) for kind in ("numpy", "tensor")}
    for step in range(4):
        ids = np.array([step // 2, 10 + step // 3])
        obs = np.full((2, 6), step, np.float32)
        value = np.array([step, -step], np.float32)
        buffers["numpy"].add(obs, ids, value=value)
        buffers["tensor"].add(th.as_tensor(obs), th.as_tensor(ids), value=th.as_tensor(value))
    for buffer in buffers.values():
        buffer.label({0: 1.0, 10: None, 99: 0.5})
        buffer.finish_rollout()
    numpy_data, tensor_data = buffers["numpy"].pop_labelled(), buffers["tensor"].pop_labelled()
    assert DecisionBuffer.holds_tensors(tensor_data) and not DecisionBuffer.holds_tensors(numpy_data)
    for key in numpy_data:
        assert np.array_equal(numpy_data[key], tensor_data[key].numpy()), key
    assert buffers["numpy"].dropped_decisions == buffers["tensor"].dropped_decisions == 3
    assert buffers["numpy"].n_pending == buffers["tensor"].n_pending == 3
    assert buffers["numpy"].cap_pending(1) == buffers["tensor"].cap_pending(1) == 2
    assert buffers["numpy"]._labels.keys() == buffers["tensor"]._labels.keys()
    index = th.tensor([1, 0])
    batch = buffers["tensor"].to_torch(tensor_data, index)
    assert th.equal(batch["value"], tensor_data["value"][index])


def _data_parallel_worker(rank: int, init_file: str, out: str) -> None:
    from sb3_stepnft.common import distributed
    from tests.algorithms.test_distributed import _init_worker, _state

    _init_worker(rank, init_file)
    try:
        for name, (algo, extra) in ALGORITHMS.items():
            env = TorchPointReachVecEnv(num_envs=2)  # seeded with seed + rank·offset by the algorithm
            model = algo("MlpPolicy", env, n_steps=8, batch_size=16, n_epochs=1, **SMALL, **extra)
            model.learn(64)
            assert model.num_timesteps == 64 and model._n_updates > 0, name
            assert distributed.replicas_identical(_state(model)), f"{name}: replicas differ after learn"
            assert not distributed.replicas_identical([model._last_obs.flatten()]), f"{name}: ranks' envs alike"
    finally:
        th.distributed.destroy_process_group()


def test_tensor_env_trains_data_parallel(tmp_path):
    # gloo on the CPU, 2 forked ranks; FlowPPO normalises its device-resident advantages over both ranks
    from tests.algorithms.test_distributed import _spawn

    _spawn(_data_parallel_worker, tmp_path)


def test_evaluate_success_runs_a_tensor_env_in_its_numpy_mode():
    from sb3_stepnft.common.evaluation import evaluate_success

    model, _ = _trained("StepNFT", as_tensors=True, steps=64)
    tensor_env, numpy_env = TorchPointReachVecEnv(num_envs=2), TorchPointReachVecEnv(num_envs=2, as_tensors=False)
    on_tensor_env = evaluate_success(model, tensor_env, n_eval_episodes=6, seed=1)
    assert tensor_env.returns_tensors and is_tensor_env(tensor_env)  # switched back
    assert on_tensor_env == evaluate_success(model, numpy_env, n_eval_episodes=6, seed=1)
