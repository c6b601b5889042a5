"""Data-parallel training on torch.distributed (gloo, 2 processes on the CPU): docs/scaling.md.

The workers are forked by ``torch.multiprocessing.start_processes``; they report by files in ``tmp_path`` and by
raising (``start_processes`` re-raises a worker's exception here). Each start covers the three algorithms.
"""

import copy
import datetime
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch as th
import torch._dynamo  # noqa: F401 (a first optimiser imports it, for seconds: once here, before the workers fork)
import torch.distributed as dist
import torch.multiprocessing as mp
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger

from sb3_stepnft import FlowGRPO, FlowPPO, StepNFT
from sb3_stepnft.common import distributed
from sb3_stepnft.common.optim import NonFiniteLossError
from sb3_stepnft.envs import PointReachEnv, make_grouped_vec_env
from tests.helpers import point_reach_vec, record_training_data

WORLD_SIZE = 2
BATCH = 8  # per-rank minibatch B of the equivalence check; the single process uses 2B
ALGORITHMS = {"stepnft": StepNFT, "flowppo": FlowPPO, "flowgrpo": FlowGRPO}
COMMON = dict(policy_kwargs=dict(net_arch=[16, 16]), num_denoise_steps=3, learning_rate=3e-3)


def _make_env(name: str, seed: int, n_envs: int = 1):
    if name == "flowgrpo":  # groups of 2 inside one rank: FlowGRPO's groups are per rank
        return make_grouped_vec_env(PointReachEnv, n_groups=1, group_size=2, seed=seed)
    return point_reach_vec(n_envs=n_envs, seed=seed)


def _make_model(name: str, env, seed: int = 0, sgd: bool = False, **kwargs):
    extra = dict(group_size=2) if name == "flowgrpo" else {}
    settings = dict(COMMON)
    if sgd:  # Adam's first steps are nearly blind to the gradient's scale: plain SGD makes the comparisons strict
        settings.update(policy_kwargs=dict(net_arch=[16, 16], optimizer_class=th.optim.SGD), learning_rate=0.05)
        settings.update(max_grad_norm=1e6)
    return ALGORITHMS[name]("MlpPolicy", env, seed=seed, n_steps=8, n_epochs=2, **settings, **extra, **kwargs)


def _state(model) -> list[th.Tensor]:
    tensors = [p.detach().clone() for p in model.policy.parameters()]
    if isinstance(model, StepNFT):
        tensors += [t.clone() for t in model.ema.shadow.values()]
    return tensors


def _init_worker(rank: int, init_file: str) -> None:
    th.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)


def _spawn(worker, tmp_path, *args, timeout: float = 120.0) -> None:
    """Run ``worker(rank, init_file, out, *args)`` on 2 forked ranks; a worker's exception is raised here, and workers
    that are still running after ``timeout`` seconds (a deadlock) are killed and fail the test."""
    # fork: the workers inherit the imported modules (a spawned worker pays ~5 s of imports on a loaded machine).
    context = mp.start_processes(
        worker, args=(str(tmp_path / "pg_init"), str(tmp_path), *args), nprocs=WORLD_SIZE, join=False, start_method="fork"
    )
    deadline = time.time() + timeout
    while not context.join(timeout=1.0):
        if time.time() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the ranks were still running after {timeout} s: a deadlock")


# --------------------------------------------------------------------------------------------- learn on 2 ranks
class StopOnRankZero(BaseCallback):
    def _on_step(self) -> bool:
        return not (dist.get_rank() == 0 and self.n_calls >= 5)


def _learn_worker(rank: int, init_file: str, out: str) -> None:
    _init_worker(rank, init_file)
    try:
        for name in ALGORITHMS:
            # Each rank its own envs (the CLI does the same): FlowGRPO's GroupSeed envs take the seed at construction.
            model = _make_model(name, _make_env(name, seed=distributed.rank_seed(0)), batch_size=16)
            before = _state(model)
            # Constructed with seed + rank·offset: the replicas differ until learn broadcasts rank 0's weights.
            assert not distributed.replicas_identical(before), f"{name}: ranks were built identical (seeding per rank?)"
            model.learn(total_timesteps=64)
            after = _state(model)
            assert distributed.replicas_identical(after), f"{name}: replicas differ after learn"
            moments = [t for state in model.policy.optimizer.state.values() for t in state.values() if t.dim() > 0]
            assert moments and distributed.replicas_identical(moments), f"{name}: the optimisers differ"
            assert model.num_timesteps == 64, f"{name}: num_timesteps {model.num_timesteps} is not the global count"
            assert model._n_updates > 0 and any(not th.equal(a, b) for a, b in zip(before, after))
            obs = th.as_tensor(model._last_obs).flatten()
            assert not distributed.replicas_identical([obs]), f"{name}: the ranks' envs are seeded alike"
            model.save(os.path.join(out, f"{name}.zip"))
            model.save(os.path.join(out, f"{name}_rank{rank}.zip"))  # written by rank 0 only
            dist.barrier()
            if rank == 0:
                th.save(after, os.path.join(out, f"{name}_state.pt"))
            loaded = type(model).load(os.path.join(out, f"{name}.zip"), env=_make_env(name, seed=1))
            assert all(th.equal(a, b) for a, b in zip(_state(loaded), after)), f"{name}: rank {rank} loaded other weights"
            if name == "stepnft":  # resumes data-parallel from the checkpoint
                loaded.learn(total_timesteps=32, reset_num_timesteps=False)
                assert distributed.replicas_identical(_state(loaded)), f"{name}: replicas differ after resuming"
                # a callback that stops rank 0 only stops both ranks (no rank waits in the next update)
                loaded.learn(total_timesteps=100_000, callback=StopOnRankZero(), reset_num_timesteps=False)
                assert loaded.num_timesteps < 1_000
    finally:
        dist.destroy_process_group()


def test_learn_on_two_ranks_keeps_replicas_identical_and_saves_once(tmp_path):
    start = time.time()
    _spawn(_learn_worker, tmp_path)
    for name in ALGORITHMS:
        assert (tmp_path / f"{name}_rank0.zip").is_file() and not (tmp_path / f"{name}_rank1.zip").exists()
        saved = th.load(tmp_path / f"{name}_state.pt")
        loaded = ALGORITHMS[name].load(tmp_path / f"{name}.zip")  # without a process group, in this process
        assert loaded.num_timesteps == 64
        assert all(th.equal(a, b) for a, b in zip(_state(loaded), saved))
    assert time.time() - start < 60


# ------------------------------------------------------------------------ 2 ranks × B equal 1 rank × 2B
def _recorded_data(name: str, n_rows: int) -> dict:
    """A real rollout's labelled decisions (one process), the first ``n_rows`` of them."""
    model = _make_model(name, _make_env(name, seed=3, n_envs=2), batch_size=n_rows)
    seen = record_training_data(model)
    while not any(d is not None and len(d["episode_id"]) >= n_rows for d in seen):
        model.learn(total_timesteps=64, reset_num_timesteps=False)
    data = next(d for d in seen if d is not None and len(d["episode_id"]) >= n_rows)
    if name == "flowgrpo":  # PointReach groups of 2 mostly tie (advantage 0): spread the labels so that there is a step
        data["label"] = np.linspace(-1.0, 1.0, len(data["label"]), dtype=np.float32)
    return {key: (value[:n_rows] if not isinstance(value, dict) else {k: v[:n_rows] for k, v in value.items()})
            for key, value in data.items()}  # fmt: skip


def _rows(data: dict | None, start: int, stop: int) -> dict | None:
    if data is None or stop <= start:
        return None
    return {key: value[start:stop] for key, value in data.items()}


def _initial_state(model) -> dict:
    initial = dict(policy={k: v.clone() for k, v in model.policy.state_dict().items()})
    initial["optimizer"] = copy.deepcopy(model.policy.optimizer.state_dict())
    if isinstance(model, StepNFT):
        initial["ema"] = model.ema.state_dict()
    return initial


def _train_on(model, data: dict | None, initial: dict) -> list[th.Tensor]:
    """One ``train`` of ``model`` from the weights ``initial`` on exactly ``data`` (recorded decisions)."""
    model.policy.load_state_dict(initial["policy"])
    model.policy.optimizer.load_state_dict(initial["optimizer"])
    model._n_updates = 0
    if isinstance(model, StepNFT):
        model.ema.load_state_dict(initial["ema"])
        model.ema_progress, model.ema_iteration = 0.0, 0
    model.set_logger(Logger(folder=None, output_formats=[]))
    model.rollout_buffer._labelled = [] if data is None else [data]
    model.train()
    return _state(model)


def _equivalence_worker(rank: int, init_file: str, out: str) -> None:
    _init_worker(rank, init_file)
    try:
        # broadcast handles what gloo cannot send as it is: bool and non-contiguous tensors
        flags, transposed = th.tensor([rank == 0, rank == 1]), (th.arange(6.0).reshape(2, 3) * (rank + 1)).t()
        distributed.broadcast_tensors([flags, transposed])
        assert flags.tolist() == [True, False] and th.equal(transposed, th.arange(6.0).reshape(2, 3).t())
        for name in ALGORITHMS:
            recorded = th.load(os.path.join(out, f"{name}_data.pt"), weights_only=False)
            model = _make_model(name, _make_env(name, seed=rank), batch_size=BATCH, sgd=True)
            # Split one batch of 2B recorded decisions across the ranks: rank r trains on rows [rB, (r+1)B).
            split = _train_on(model, _rows(recorded["data"], rank * BATCH, (rank + 1) * BATCH), recorded["initial"])
            # Uneven end: rank 1 has no labelled decision; it still takes part in every step (zero weight).
            uneven = _train_on(model, _rows(recorded["data"], 0, BATCH if rank == 0 else 0), recorded["initial"])
            assert distributed.replicas_identical(split) and distributed.replicas_identical(uneven)
            # A non-finite loss on rank 1 only: both ranks raise, neither waits for the other.
            bad = _rows(recorded["data"], 0, BATCH)
            if rank == 1:
                bad["x_k"] = np.full_like(bad["x_k"], np.nan)
            try:
                _train_on(model, bad, recorded["initial"])
            except NonFiniteLossError as error:
                assert rank == 1 or "another data-parallel rank" in str(error), str(error)
            else:
                raise AssertionError(f"rank {rank} did not raise on rank 1's NaN loss")
            if rank == 0:
                th.save(dict(split=split, uneven=uneven), os.path.join(out, f"{name}_ranks.pt"))
    finally:
        dist.destroy_process_group()


def test_two_ranks_of_batch_b_equal_one_process_of_batch_2b(tmp_path):
    references = {}
    for name in ALGORITHMS:
        data = _recorded_data(name, 2 * BATCH)
        model = _make_model(name, _make_env(name, seed=5, n_envs=2), batch_size=2 * BATCH, sgd=True)
        initial = _initial_state(model)
        th.save(dict(data=data, initial=initial), tmp_path / f"{name}_data.pt")
        # The reference: one process, batch 2B, on all the rows; and one process, batch B, on rank 0's rows alone.
        full = _train_on(model, _rows(data, 0, 2 * BATCH), initial)
        single = _make_model(name, _make_env(name, seed=5, n_envs=2), batch_size=BATCH, sgd=True)
        alone = _train_on(single, _rows(data, 0, BATCH), initial)
        references[name] = (full, alone, initial)
    _spawn(_equivalence_worker, tmp_path)
    for name, (full, alone, initial) in references.items():
        ranks = th.load(tmp_path / f"{name}_ranks.pt")
        start = [p for p in initial["policy"].values()]
        assert any(not th.allclose(a, b) for a, b in zip(full, start)), f"{name}: the update changed nothing"
        for got, want in zip(ranks["split"], full):
            th.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=f"{name}: 2 ranks × B differ from 1 × 2B")
        for got, want in zip(ranks["uneven"], alone):
            th.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=f"{name}: a rank without data changed the step")
        # and the check can fail: the step on half the rows is another step
        assert any(not th.allclose(a, b, atol=1e-4) for a, b in zip(full, alone)), f"{name}: the halves look alike"


# --------------------------------------------------------------------------------- a rank that raises
FAILING_JOB = textwrap.dedent("""
    import sys, traceback, torch as th, torch._dynamo, torch.distributed as dist, torch.multiprocessing as mp
    from stable_baselines3.common.callbacks import BaseCallback
    from sb3_stepnft import StepNFT
    from tests.helpers import point_reach_vec

    class FailOnRankOne(BaseCallback):
        def _on_step(self):
            if dist.get_rank() == 1 and self.num_timesteps > 40:
                raise RuntimeError("simulator crashed on rank 1")
            return True

    def worker(rank, init_file):
        th.set_num_threads(1)
        dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank, world_size=2)
        model = StepNFT("MlpPolicy", point_reach_vec(n_envs=1), n_steps=8, batch_size=8, seed=0)
        try:
            model.learn(total_timesteps=10_000, callback=FailOnRankOne())
        except BaseException:
            # Every rank prints its error, as torchrun's console shows each worker's output: torch.multiprocessing
            # re-raises only the first failure it notices, which under load can be the survivor's.
            traceback.print_exc()
            raise

    if __name__ == "__main__":
        mp.start_processes(worker, args=(sys.argv[1],), nprocs=2, join=True, start_method="fork")
    """)


def test_a_rank_that_raises_ends_the_job_with_its_error(tmp_path):
    script = tmp_path / "failing_job.py"
    script.write_text(FAILING_JOB)
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    start = time.time()
    try:
        result = subprocess.run(
            [sys.executable, str(script), str(tmp_path / "pg_init")], capture_output=True, text=True, timeout=90, env=env
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the job hung after a rank raised")
    assert result.returncode != 0
    assert "simulator crashed on rank 1" in result.stderr
    assert time.time() - start < 90


def _peer_gone_worker(rank: int, init_file: str, out: str) -> None:
    th.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE,
                            timeout=datetime.timedelta(seconds=30))  # fmt: skip
    if rank == 1:  # leaves without taking part in the next collective (as a rank that crashed does)
        dist.destroy_process_group()
        return
    try:
        distributed.max_over_ranks(3)
    except distributed.PeerRankFailedError as error:
        with open(os.path.join(out, "survivor.txt"), "w") as file:
            file.write(str(error))
    finally:
        dist.destroy_process_group()


def test_a_survivor_blocked_in_a_collective_says_where_the_cause_is(tmp_path):
    _spawn(_peer_gone_worker, tmp_path, timeout=90.0)
    message = (tmp_path / "survivor.txt").read_text()
    assert message.startswith("rank 0: the collective 'max over ranks' failed")
    assert "another data-parallel rank stopped with an error" in message


def test_without_a_process_group_nothing_changes(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "MASTER_ADDR"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.init_from_env("cpu") == "cpu" and not dist.is_initialized()
    assert (distributed.get_rank(), distributed.get_world_size(), distributed.is_main_process()) == (0, 1, True)
    assert distributed.rank_seed(7) == 7 and distributed.rank_seed(None) is None
    assert distributed.max_over_ranks(3) == 3 and distributed.sum_over_ranks([1, 2.5]) == [1.0, 2.5]
    assert distributed.average_gradients([], weight=1.0, failed=True) is True


# ------------------------------------------------------------------------------ gradient accumulation
@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_gradient_accumulation_matches_the_unaccumulated_step(name):
    data = _recorded_data(name, 2 * BATCH)
    model = _make_model(name, _make_env(name, seed=5, n_envs=2), batch_size=2 * BATCH, sgd=True)
    initial = _initial_state(model)
    whole = _train_on(model, _rows(data, 0, 2 * BATCH), initial)
    accumulating = _make_model(
        name, _make_env(name, seed=5, n_envs=2), batch_size=2 * BATCH, sgd=True, gradient_accumulation_steps=4
    )
    accumulated = _train_on(accumulating, _rows(data, 0, 2 * BATCH), initial)
    assert any(not th.allclose(a, b) for a, b in zip(whole, initial["policy"].values()))
    for got, want in zip(accumulated, whole):
        th.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_gradient_accumulation_is_checked():
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        StepNFT("MlpPolicy", point_reach_vec(), batch_size=4, gradient_accumulation_steps=8)
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        StepNFT("MlpPolicy", point_reach_vec(), gradient_accumulation_steps=0)


# ------------------------------------------------------------------------------- the command line under torchrun
CLI_ARGS = ["train", "--algo", "stepnft", "--env", "point_reach", "-n", "256", "--set", "n_envs=2", "--set", "n_steps=16",
            "--set", "batch_size=32", "--checkpoint-freq", "0", "--no-tensorboard", "--verbose", "0"]  # fmt: skip


def _cli_worker(rank: int, init_file: str, out: str, port: int) -> None:
    # What torchrun gives each worker: the command line initialises the process group from it (init_from_env).
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))  # fmt: skip
    th.set_num_threads(1)
    from sb3_stepnft.cli import main

    assert main([*CLI_ARGS, "--out", out]) == 0
    assert not dist.is_initialized(), "the command line leaves the process group it started"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_command_line_trains_data_parallel_under_torchruns_environment(tmp_path):
    _spawn(_cli_worker, tmp_path, _free_port())
    import yaml

    config = yaml.safe_load((tmp_path / "config.yml").read_text())
    assert config["world_size"] == WORLD_SIZE
    model = StepNFT.load(tmp_path / "model.zip")
    assert model.num_timesteps == 256  # global env steps: 2 ranks × 2 envs × 16 steps × 4 iterations


@pytest.mark.slow
def test_torchrun_trains_stepnft_from_the_command_line(tmp_path):
    """The documented entry point itself (~50 s on a loaded 2-core machine: three processes import torch)."""
    command = [os.path.join(os.path.dirname(sys.executable), "torchrun"), "--nproc_per_node=2", "-m", "sb3_stepnft",
               *CLI_ARGS, "--out", str(tmp_path)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert StepNFT.load(tmp_path / "model.zip").num_timesteps == 256
