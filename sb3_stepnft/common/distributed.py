"""Data-parallel training on ``torch.distributed`` (docs/scaling.md).

When a process group is initialised (``torchrun --nproc_per_node=N ...``: gloo on CPU, NCCL on GPU), every flow
algorithm trains data-parallel without any change to user code:

- each rank steps its own VecEnv; the algorithm seeds its random generators and env with ``seed + rank·RANK_SEED_OFFSET``
  (:func:`rank_seed`), so ranks explore differently;
- at the start of every ``learn`` the policy's state (and StepNFT's EMA weights) is broadcast from rank 0
  (:func:`broadcast_tensors`): the replicas start identical;
- every minibatch, the gradients of the *trainable* parameters are averaged across ranks by one ``all_reduce``
  (:func:`average_gradients`, weighted by each rank's minibatch size) before the norm clip and the optimiser step, so
  the optimiser and the EMA stay identical on every rank. Frozen parameters (a VLM backbone) are never reduced;
- all ranks agree on the number of gradient steps (:func:`max_over_ranks`): a rank that ran out of labelled
  decisions makes the remaining steps with zero weight instead of leaving the others waiting (no deadlock);
- ``num_timesteps`` and the learning-rate / EMA schedules count the env steps of all ranks;
- logging and ``save`` happen on rank 0 only.

Without a process group (or with one rank) every function here is a no-op, and training is exactly as before.
"""

import contextlib
import os
from collections.abc import Iterable, Iterator

import torch as th
import torch.distributed as dist
from torch import nn

RANK_SEED_OFFSET = 100_003
"""Seed of rank r: ``seed + r·RANK_SEED_OFFSET`` (large, so that the per-env seeds ``seed + i`` of two ranks never
overlap, and away from the evaluation seeds 10_000 + i of the command line)."""


class PeerRankFailedError(RuntimeError):
    """A collective operation failed on this rank, most likely because another rank stopped with an error."""


@contextlib.contextmanager
def _collective(what: str) -> Iterator[None]:
    """Turn the backend's error of a collective whose peer went away (gloo: "Connection closed by peer", NCCL: a
    timeout) into one message that says where the real error is: in the log of the rank that stopped first."""
    try:
        yield
    except RuntimeError as error:
        if isinstance(error, PeerRankFailedError):
            raise
        raise PeerRankFailedError(
            f"rank {dist.get_rank()}: the collective '{what}' failed ({type(error).__name__}: {str(error)[:200]}). "
            "Most likely another data-parallel rank stopped with an error: its own traceback, printed by that rank "
            "(torchrun shows every rank's output), is the cause to fix; this rank stops too instead of waiting."
        ) from error


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Number of ranks (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0 (or no process group): the process that logs and saves."""
    return get_rank() == 0


def rank_seed(seed: int | None) -> int | None:
    """``seed + rank·RANK_SEED_OFFSET``: the seed of this rank's random generators and envs (None stays None)."""
    return None if seed is None else int(seed) + get_rank() * RANK_SEED_OFFSET


def launched_by_torchrun() -> bool:
    """Whether the environment of ``torchrun`` (``WORLD_SIZE`` > 1, ``RANK``, ``MASTER_ADDR``) is present."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ and "MASTER_ADDR" in os.environ


def init_from_env(device: str = "auto", backend: str | None = None) -> str:
    """Initialise the process group from ``torchrun``'s environment, if any; returns the device this rank should use.

    The backend is NCCL when this rank trains on CUDA, else gloo. With ``device="auto"`` (or ``"cuda"``) and GPUs,
    rank ``LOCAL_RANK`` uses ``cuda:LOCAL_RANK``. Without torchrun's environment nothing happens and ``device`` is
    returned unchanged.
    """
    if not launched_by_torchrun() or (dist.is_available() and dist.is_initialized()):
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = th.cuda.is_available() and device in ("auto", "cuda")
    if use_cuda:
        device = f"cuda:{local_rank}"
        th.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend or ("nccl" if use_cuda else "gloo"))
    return device


def broadcast_tensors(tensors: Iterable[th.Tensor], source: int = 0) -> None:
    """Overwrite ``tensors`` (in place) with rank ``source``'s values. No-op without a process group."""
    if not is_distributed():
        return
    with th.no_grad():
        for tensor in tensors:
            data = tensor.data
            if data.is_contiguous() and data.dtype != th.bool:
                with _collective("broadcast"):
                    dist.broadcast(data, src=source)
                continue
            staged = data.contiguous().to(th.uint8 if data.dtype == th.bool else data.dtype)  # gloo: no bool tensors
            with _collective("broadcast"):
                dist.broadcast(staged, src=source)
            data.copy_(staged.to(data.dtype))


def broadcast_module(module: nn.Module, source: int = 0) -> None:
    """The state of ``module`` from rank ``source``: every parameter (frozen ones too) and every persistent buffer (the
    ``state_dict``; non-persistent buffers such as position ids are constants of the architecture)."""
    broadcast_tensors(list(module.state_dict(keep_vars=True).values()), source)


def max_over_ranks(value: int) -> int:
    """The largest ``value`` over all ranks (``value`` itself without a process group)."""
    if not is_distributed():
        return int(value)
    tensor = th.tensor([int(value)], dtype=th.int64, device=_collective_device())
    with _collective("max over ranks"):
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def sum_over_ranks(values: list[float]) -> list[float]:
    """Element-wise sums of ``values`` over all ranks, in float64 (``values`` themselves without a process group)."""
    if not is_distributed():
        return [float(v) for v in values]
    tensor = th.tensor(values, dtype=th.float64, device=_collective_device())
    with _collective("sum over ranks"):
        dist.all_reduce(tensor)
    return tensor.tolist()


def average_gradients(parameters: list[nn.Parameter], weight: float, failed: bool = False) -> bool:
    """Replace the gradients of ``parameters`` by their average over ranks, weighted by ``weight`` (this rank's
    minibatch size): ``g = Σ_r w_r·g_r / Σ_r w_r``. With equal minibatch sizes this is the plain mean, and ``N`` ranks
    of batch ``B`` make the same step as one rank of batch ``N·B`` (the losses are means over the minibatch). A rank
    without data passes ``weight=0`` and missing gradients count as zero. One ``all_reduce`` carries the gradients,
    the weights and the ``failed`` flags (a NaN loss on some rank): returns whether any rank failed, so that every
    rank raises together instead of leaving the others waiting. No-op (returns ``failed``) without a process group.
    """
    if not is_distributed():
        return failed
    device = parameters[0].device if parameters else _collective_device()
    pieces = [
        (p.grad.detach() if p.grad is not None else th.zeros_like(p)).reshape(-1).to(th.float32) * weight for p in parameters
    ]
    pieces.append(th.tensor([float(weight), float(failed)], dtype=th.float32, device=device))
    flat = th.cat(pieces)
    with _collective("gradient average"):
        dist.all_reduce(flat)
    total_weight, n_failed = float(flat[-2]), float(flat[-1])
    if total_weight > 0:
        flat[:-2] /= total_weight
    offset = 0
    for p in parameters:
        size = p.numel()
        averaged = flat[offset : offset + size].view_as(p).to(p.dtype)
        if p.grad is None:
            p.grad = averaged.clone()
        else:
            p.grad.copy_(averaged)
        offset += size
    return n_failed > 0


def replicas_identical(tensors: Iterable[th.Tensor], atol: float = 0.0) -> bool:
    """Whether ``tensors`` hold the same values on every rank (a check for tests and debugging: one all-gather)."""
    if not is_distributed():
        return True
    flat = th.cat([t.detach().reshape(-1).to(th.float64) for t in tensors])
    gathered = [th.empty_like(flat) for _ in range(get_world_size())]
    dist.all_gather(gathered, flat)
    return all(th.allclose(other, gathered[0], rtol=0.0, atol=atol) for other in gathered[1:])


def _collective_device() -> th.device:
    """Small control tensors live on the CUDA device under NCCL, on the CPU under gloo."""
    if dist.get_backend() == "nccl":
        return th.device("cuda", th.cuda.current_device())
    return th.device("cpu")
