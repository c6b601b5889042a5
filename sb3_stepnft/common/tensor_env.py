"""Device-resident rollouts: the *tensor VecEnv* contract, and the helpers the rollout loop uses at its edges.

A **tensor VecEnv** is an SB3 ``VecEnv`` whose ``returns_tensors`` attribute is True (:class:`TensorVecEnv` is a base
class that sets it). Such an env keeps its data on the torch device ``env.device`` and the rollout loop of
:class:`~sb3_stepnft.common.on_policy.FlowOnPolicyAlgorithm` keeps them there: observations, sampled chains, rewards,
dones, episode bookkeeping and the decision buffer stay device tensors, and no per-step ``.cpu().numpy()`` is made
(docs/scaling.md, "Device-resident rollouts"). Every other VecEnv takes the NumPy path, unchanged.

The contract (``returns_tensors`` True):

- ``env.device``: the ``torch.device`` all outputs live on. Keep it equal to the model's device: a different device
  costs one copy each way per step (observations in, actions out).
- ``reset()`` returns the observations: a tensor ``(num_envs, *obs_shape)`` or a dict of such tensors.
- ``step_async(actions)`` takes a float tensor ``(num_envs, *action_shape)`` on ``env.device``, already clipped to the
  action space (NumPy arrays must be accepted too, for SB3's tools: one copy).
- ``step_wait()`` returns ``(obs, rewards, dones, infos)``: ``rewards`` float ``(num_envs,)``, ``dones`` bool
  ``(num_envs,)``, ``obs`` after the automatic (partial) reset of the finished sub-envs, as SB3's VecEnvs do, and
  ``infos`` **one dict of batched tensors** (not SB3's list of per-env dicts: building ``num_envs`` dicts per step
  would need a host copy of every flag), with SB3's key names:

  ========================= =========================================================================================
  ``"is_success"``          optional bool ``(num_envs,)``: success at this step; an episode succeeded if any of its
                            steps reported True (as the NumPy path reads ``info["is_success"]``). Absent: StepNFT
                            labels with graded returns (``outcome="auto"``).
  ``"TimeLimit.truncated"`` optional bool ``(num_envs,)``: the episode ended by a time limit, not a termination
                            (meaningful where ``dones``; FlowPPO bootstraps ``γ·V(terminal observation)`` there).
  ``"terminal_observation"`` optional, shaped like ``obs``: the last observation of the finished episodes (rows valid
                            where ``dones``); needed with ``"TimeLimit.truncated"`` for FlowPPO's bootstrap.
  ``"env_steps"``           optional int ``(num_envs,)``: how many rows of an action chunk ran (as ``ActionChunk``).
  ========================= =========================================================================================

  Other keys pass through untouched (callbacks see them in ``self.locals["infos"]``).

What is deferred to the end of a rollout on this path (one batch of copies per iteration instead of per step):
the bookkeeping of finished episodes (their ids, success flags, returns and lengths are tracked on the device and
copied to the host once, before labelling), the non-finite reward check, and the episode statistics of the
``rollout/*`` logs. ``MissingSuccessSignalError`` and similar checks therefore fire at the end of the rollout, not
at the step that caused them.

Not supported on this path (a clear error or the NumPy path): SB3 ``VecEnvWrapper``\\ s around a tensor env (they
work on NumPy arrays: :func:`is_tensor_env` raises), ``predict``/``evaluate_policy`` with tensor observations (use the
env's NumPy mode, e.g. ``as_tensors=False``; :func:`~sb3_stepnft.common.evaluation.evaluate_success` switches a
:class:`TensorVecEnv` to it for the evaluation, :func:`numpy_mode`).
"""

import contextlib
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper

INFO_KEYS = ("is_success", "TimeLimit.truncated", "terminal_observation", "env_steps")
DONE_ONLY_KEYS = ("terminal_observation", "TimeLimit.truncated", "episode")  # in the NumPy mode's infos where done


def is_tensor_env(env: Any) -> bool:
    """Whether ``env`` follows the tensor VecEnv contract (``env.returns_tensors`` is True).

    A ``VecEnvWrapper`` around a tensor env is a ``TypeError`` naming the fix: SB3's wrappers (VecNormalize,
    VecMonitor, VecFrameStack...) work on NumPy arrays."""
    if isinstance(env, VecEnvWrapper):
        inner = env.unwrapped  # the innermost VecEnv
        if getattr(inner, "returns_tensors", False) is True:
            raise TypeError(
                f"{type(env).__name__} wraps the tensor VecEnv {type(inner).__name__}, but SB3's VecEnvWrappers work on "
                "NumPy arrays. Pass the tensor env unwrapped (it tracks episodes itself), or build it with "
                "as_tensors=False to use it as an ordinary NumPy VecEnv."
            )
        return False
    return getattr(env, "returns_tensors", False) is True


def as_device_obs(obs: Any, device: th.device) -> Any:
    """Observations as tensors on ``device``: device tensors are moved only if they live elsewhere (no copy on the
    same device), NumPy observations go through SB3's ``obs_as_tensor`` (one host-to-device copy)."""
    if isinstance(obs, th.Tensor):
        return obs.to(device)
    if isinstance(obs, dict) and all(isinstance(value, th.Tensor) for value in obs.values()):
        return {key: value.to(device) for key, value in obs.items()}
    return obs_as_tensor(obs, device)


def take_obs(obs: Any, index: Any) -> Any:
    """Rows ``index`` of a (dict of) batched observation(s)."""
    if isinstance(obs, dict):
        return {key: value[index] for key, value in obs.items()}
    return obs[index]


def to_numpy(value: Any) -> Any:
    """A tensor, or a dict of them, as NumPy (one device-to-host copy each)."""
    if isinstance(value, dict):
        return {key: to_numpy(item) for key, item in value.items()}
    if isinstance(value, th.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def action_bounds(action_space: spaces.Box, device: th.device) -> tuple[th.Tensor, th.Tensor]:
    """The Box bounds as float32 tensors on ``device`` (clipping device actions like ``np.clip`` does)."""
    low = th.as_tensor(np.broadcast_to(action_space.low, action_space.shape).copy(), dtype=th.float32, device=device)
    high = th.as_tensor(np.broadcast_to(action_space.high, action_space.shape).copy(), dtype=th.float32, device=device)
    return low, high


def tensor_infos_to_list(infos: dict[str, Any], dones: np.ndarray) -> list[dict[str, Any]]:
    """SB3's list of per-env info dicts from a tensor env's batched infos (its NumPy mode): ``is_success`` in every
    info; ``TimeLimit.truncated``, ``terminal_observation`` and ``episode`` (a dict of batched ``r``, ``l``: Monitor's
    statistics) where the episode ended; other batched entries per env, strings in every info."""
    n_envs = len(dones)
    host = {key: to_numpy(value) for key, value in infos.items() if not isinstance(value, str)}
    out: list[dict[str, Any]] = [{} for _ in range(n_envs)]
    for key, value in infos.items():
        if isinstance(value, str):
            for info in out:
                info[key] = value
    for i in range(n_envs):
        for key, value in host.items():
            if key in DONE_ONLY_KEYS and not dones[i]:
                continue
            if key == "terminal_observation":
                out[i][key] = take_obs(value, i)  # rows of this step's fresh host copy: nothing aliases them
            elif isinstance(value, dict):
                out[i][key] = {k: v[i].item() if np.ndim(v[i]) == 0 else v[i] for k, v in value.items()}
            else:
                item = value[i]
                out[i][key] = item.item() if np.ndim(item) == 0 else item
    return out


@contextlib.contextmanager
def numpy_mode(env: Any):
    """Within the block, a :class:`TensorVecEnv` answers with SB3's NumPy types (``as_tensors=False``), for SB3's tools
    (``evaluate_policy``); any other VecEnv is left as it is. A tensor env of another kind is a ``TypeError``."""
    if not is_tensor_env(env):
        yield env
        return
    if not isinstance(env, TensorVecEnv):
        raise TypeError(
            f"{type(env).__name__} returns tensors, and SB3's evaluation works on NumPy arrays: evaluate on a NumPy "
            "VecEnv of the same task (or subclass sb3_stepnft.common.tensor_env.TensorVecEnv, which can switch)."
        )
    env.returns_tensors = False
    try:
        yield env
    finally:
        env.returns_tensors = True


class TensorVecEnv(VecEnv):
    """Base class of the tensor VecEnvs (the contract is in this module's docstring).

    A subclass implements ``reset`` and ``step_wait`` returning device tensors when ``self.returns_tensors`` is True,
    and SB3's NumPy types otherwise (:meth:`_output` converts); ``step_async`` stores the actions as a float32 tensor
    on ``self.device`` (``self._actions``). Attribute access (``get_attr`` and friends) answers for the one batched env.

    :param num_envs: Number of sub-envs (batched).
    :param observation_space: One sub-env's observation space.
    :param action_space: One sub-env's action space.
    :param device: The torch device of the outputs.
    :param as_tensors: True: device tensors (the contract); False: an ordinary NumPy VecEnv with list infos.
    """

    returns_tensors: bool = True

    def __init__(
        self,
        num_envs: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: th.device | str = "cpu",
        as_tensors: bool = True,
    ):
        self.device = th.device(device)
        self.returns_tensors = bool(as_tensors)
        self._actions: th.Tensor | None = None
        super().__init__(num_envs, observation_space, action_space)

    def step_async(self, actions: Any) -> None:
        if isinstance(actions, th.Tensor):
            self._actions = actions.to(self.device, th.float32)
        else:  # NumPy actions (SB3's tools, the NumPy mode): one host-to-device copy
            self._actions = th.as_tensor(np.asarray(actions), dtype=th.float32, device=self.device)

    def _output(self, obs: Any, rewards: th.Tensor, dones: th.Tensor, infos: dict[str, Any]):
        """The step's result in the env's mode: as it is (tensors), or SB3's NumPy types and list infos."""
        if self.returns_tensors:
            return obs, rewards, dones, infos
        dones_np = to_numpy(dones).astype(bool)
        return to_numpy(obs), to_numpy(rewards).astype(np.float32), dones_np, tensor_infos_to_list(infos, dones_np)

    def close(self) -> None:
        pass

    def _count(self, indices) -> int:
        return len(self._get_indices(indices))

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        value = getattr(self, attr_name, None) if attr_name == "render_mode" else getattr(self, attr_name)
        return [value] * self._count(indices)

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        setattr(self, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list[Any]:
        return [getattr(self, method_name)(*method_args, **method_kwargs)] * self._count(indices)

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False] * self._count(indices)


__all__ = ["TensorVecEnv", "is_tensor_env", "numpy_mode", "as_device_obs", "to_numpy", "tensor_infos_to_list", "INFO_KEYS"]
