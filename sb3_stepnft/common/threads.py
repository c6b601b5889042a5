"""Torch's CPU thread count for training and evaluation runs.

Small flow and MLP policies do not gain from torch's default of one thread per core: the matrices are too small to
split, and on a shared or busy machine the threads wait for each other. One thread per process is usually fastest
(on a shared 2-core machine, 8.5x faster than torch's default), and a few processes (``SubprocVecEnv``, parallel
seeds) use the cores better than threads. Large models (``FlowVLAPolicy`` with a real VLM on the CPU) do gain from
more threads: pass ``n`` or set ``SB3_STEPNFT_TORCH_THREADS``.
"""

import os

import torch as th

ENV_VAR = "SB3_STEPNFT_TORCH_THREADS"
DEFAULT_THREADS = 1


def _parse(value, source: str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{source} must be an integer number of torch threads (0: torch's default), got {value!r}") from None
    if n < 0:
        raise ValueError(f"{source} must be >= 0 (0: torch's default of one thread per core), got {n}")
    return n


def configure_torch_threads(n: int | None = None) -> int:
    """Set torch's intra-op CPU threads and return the number in use.

    Precedence: ``n`` if given; else the environment variable ``SB3_STEPNFT_TORCH_THREADS``; else, when
    ``OMP_NUM_THREADS`` is set, torch's own choice (which follows it); else :data:`DEFAULT_THREADS` (1).
    ``0`` (from ``n`` or the variable) keeps torch's default (one thread per core).

    :param n: Threads to use (0: torch's default; None: see above).
    :return: ``torch.get_num_threads()`` afterwards.
    """
    if n is None and os.environ.get(ENV_VAR, "").strip():
        n = _parse(os.environ[ENV_VAR], f"the environment variable {ENV_VAR}")
    elif n is not None:
        n = _parse(n, "n")
    if n is None:
        n = 0 if os.environ.get("OMP_NUM_THREADS", "").strip() else DEFAULT_THREADS
    if n > 0 and th.get_num_threads() != n:
        th.set_num_threads(n)
    return th.get_num_threads()
