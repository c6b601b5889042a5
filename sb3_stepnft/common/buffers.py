"""Decision buffers: store one record per (env, decision) and keep it pending until its episode is labelled.

Unlike SB3's ``RolloutBuffer`` the contents outlive a rollout: a decision of an episode that is still running
when the rollout ends stays *pending* and is trained in the iteration in which its episode ends
(ALGORITHM.md §3.1, "SB3 mapping"). Pending decisions are never saved with the model.

Two ways to label: per episode (:meth:`DecisionBuffer.label`, StepNFT and FlowGRPO: a decision waits until its
episode, or its episode's group, has an outcome) or per decision for a whole rollout at once
(:meth:`DecisionBuffer.label_steps`, FlowPPO's GAE advantages: nothing stays pending).
"""

from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces

from sb3_stepnft.common.tensor_env import as_device_obs


def _is_tensor(value: Any) -> bool:
    return isinstance(value, th.Tensor) or (isinstance(value, dict) and any(isinstance(v, th.Tensor) for v in value.values()))


def _concat(parts: list[Any]) -> Any:
    if isinstance(parts[0], dict):
        return {key: _concat([p[key] for p in parts]) for key in parts[0]}
    if isinstance(parts[0], th.Tensor):
        return th.cat(parts)
    return np.concatenate(parts)


def _stack(parts: list[Any]) -> Any:
    return th.stack(parts) if isinstance(parts[0], th.Tensor) else np.stack(parts)


def _take(data: Any, index: Any) -> Any:
    if isinstance(data, dict):
        return {key: value[index] for key, value in data.items()}
    return data[index]


def _copy_obs(obs: Any, device: th.device) -> Any:
    if isinstance(obs, dict):
        return {key: _copy_obs(value, device) for key, value in obs.items()}
    if isinstance(obs, th.Tensor):  # device-resident rollouts: a copy on the buffer's device (the env may reuse it)
        return obs.to(device, copy=True)
    return np.array(obs, copy=True)


def _as_field(value: Any, device: th.device) -> Any:
    if isinstance(value, th.Tensor):
        value = value.to(device)
        if value.untyped_storage().nbytes() > value.nelement() * value.element_size():
            value = value.clone()  # a view (e.g. the last state of a sampled chain) would keep the whole chain alive
        return value
    return np.asarray(value)


def _label_lookup(labels: dict[int, float | None], episode_ids: Any) -> tuple[Any, Any]:
    """``(known, values)`` for every decision: whether its episode has a label, and the label (NaN for None, a dropped
    episode). One vectorised lookup instead of a Python loop over decisions; on tensors one small host-to-device copy
    of the labels per call."""
    keys = np.fromiter(labels.keys(), dtype=np.int64, count=len(labels))
    values = np.array([np.nan if v is None else v for v in labels.values()], dtype=np.float64)
    order = np.argsort(keys, kind="stable")
    keys, values = keys[order], values[order]
    if isinstance(episode_ids, th.Tensor):
        device = episode_ids.device
        keys_t, values_t = th.as_tensor(keys, device=device), th.as_tensor(values, device=device)
        position = th.searchsorted(keys_t, episode_ids).clamp_(max=len(keys) - 1)
        return keys_t[position] == episode_ids, values_t[position]
    position = np.minimum(np.searchsorted(keys, episode_ids), len(keys) - 1)
    return keys[position] == episode_ids, values[position]


def _host_ids(episode_ids: Any) -> list[int]:
    if isinstance(episode_ids, th.Tensor):
        return episode_ids.cpu().tolist()  # one device-to-host copy per call (per iteration)
    return episode_ids.tolist()


class DecisionBuffer:
    """Stores decisions of ``n_envs`` envs with the id of the episode each belongs to, and their labels.

    :param observation_space: The observation space (Box or Dict).
    :param n_envs: Number of parallel envs.
    :param device: Device of the tensors handed to ``train``.

    Fields and observations are NumPy arrays (an ordinary VecEnv) or, on device-resident rollouts (a tensor VecEnv,
    :mod:`sb3_stepnft.common.tensor_env`), tensors on ``device``: every operation keeps the type it is given, so the
    tensor path never leaves the device except for the episode ids of the labelling (once per iteration).
    """

    def __init__(self, observation_space: spaces.Space, n_envs: int, device: th.device | str = "cpu"):
        self.observation_space = observation_space
        self.n_envs = n_envs
        self.device = th.device(device)
        self._pending: dict[str, Any] | None = None  # flat arrays of decisions without label
        self._labelled: list[dict[str, Any]] = []
        self._steps: list[dict[str, Any]] = []
        self._labels: dict[int, float | None] = {}
        self.dropped_decisions = 0

    # ----------------------------------------------------------------------------------------- SB3 interface
    def reset(self) -> None:
        """Start a rollout. Nothing is dropped: pending decisions, and steps of a rollout that a callback
        stopped early, are merged at the next :meth:`finish_rollout`."""

    def add(self, obs: Any, episode_ids: np.ndarray | th.Tensor, **fields: np.ndarray | th.Tensor) -> None:
        """Add one env step: ``obs`` and every field have a leading ``n_envs`` axis (arrays, or tensors that stay on
        the buffer's device)."""
        record = {key: _as_field(value, self.device) for key, value in fields.items()}
        record["obs"] = _copy_obs(obs, self.device)
        if isinstance(episode_ids, th.Tensor):
            record["episode_id"] = episode_ids.to(self.device, th.int64, copy=True)
        else:
            record["episode_id"] = np.asarray(episode_ids, dtype=np.int64).copy()
        self._steps.append(record)

    def label(self, labels: dict[int, float | None]) -> None:
        """Give the decisions of finished episodes their label (``episode_id -> value``).

        A label of ``None`` drops the episode's decisions at the next :meth:`finish_rollout` (counted in
        ``dropped_decisions``): FlowGRPO's ``filter_groups``.
        """
        self._labels.update(labels)

    def rollout_steps(self) -> dict[str, Any]:
        """The fields of the steps added since the last labelling, stacked as ``(n_steps, n_envs, ...)`` arrays."""
        if not self._steps:
            raise RuntimeError("No decision was added since the last labelling")
        keys = [key for key in self._steps[0] if key != "obs"]
        return {key: _stack([step[key] for step in self._steps]) for key in keys}

    def label_steps(self, labels: np.ndarray, **fields: np.ndarray) -> None:
        """Label every decision added since the last labelling at once, independently of episodes.

        :param labels: ``(n_steps, n_envs)`` labels (FlowPPO: GAE advantages), in the order of :meth:`add`.
        :param fields: more ``(n_steps, n_envs, ...)`` arrays stored with the decisions (e.g. returns).
        """
        if len(labels) != len(self._steps):
            raise ValueError(f"label_steps got labels for {len(labels)} steps, the buffer holds {len(self._steps)}")
        for index, step in enumerate(self._steps):
            if isinstance(labels, th.Tensor):
                step["label"] = labels[index].to(self.device, th.float32)
            else:
                step["label"] = np.asarray(labels[index], dtype=np.float32)
            step.update({key: _as_field(value[index], self.device) for key, value in fields.items()})
        self._labelled.append({key: _concat([step[key] for step in self._steps]) for key in self._steps[0]})
        self._steps = []

    def finish_rollout(self) -> None:
        """Merge this rollout's decisions with the pending ones and split off those whose episode is labelled."""
        # each step already has a flat (n_envs,) leading axis
        parts = ([self._pending] if self._pending is not None else []) + self._steps
        self._steps = []
        if not parts:
            return
        merged = {key: _concat([p[key] for p in parts]) for key in parts[0]}
        ids = merged["episode_id"]
        tensors = isinstance(ids, th.Tensor)
        if not self._labels:  # nothing labelled: every decision stays pending
            self._pending = merged if len(ids) else None
            return
        known, values = _label_lookup(self._labels, ids)
        dropped = known & (values.isnan() if tensors else np.isnan(values))
        n_dropped = int(dropped.sum())
        if n_dropped:
            self.dropped_decisions += n_dropped
        labelled_rows = known & ~dropped
        n_labelled = int(labelled_rows.sum())
        if n_labelled:
            labelled = {key: _take(value, labelled_rows) for key, value in merged.items()}
            labels = values[labelled_rows]
            labelled["label"] = labels.to(th.float32) if tensors else labels.astype(np.float32)
            self._labelled.append(labelled)
        n_pending = len(ids) - int(known.sum())
        self._pending = {key: _take(value, ~known) for key, value in merged.items()} if n_pending else None
        pending_ids = set(_host_ids(self._pending["episode_id"])) if self._pending is not None else set()
        self._labels = {eid: value for eid, value in self._labels.items() if eid in pending_ids}

    # ------------------------------------------------------------------------------------------------ access
    @property
    def n_pending(self) -> int:
        return 0 if self._pending is None else len(self._pending["episode_id"])

    @property
    def n_unfinished_steps(self) -> int:
        """Decisions added in a rollout that has not been labelled yet (a callback stopped it early)."""
        return sum(len(step["episode_id"]) for step in self._steps)

    @property
    def n_labelled(self) -> int:
        return sum(len(part["episode_id"]) for part in self._labelled)

    def cap_pending(self, max_pending: int) -> int:
        """Keep only the ``max_pending`` most recent pending decisions; returns how many older ones were dropped."""
        excess = self.n_pending - max_pending
        if excess <= 0:
            return 0
        self._pending = {key: _take(value, slice(excess, None)) for key, value in self._pending.items()}
        kept = set(_host_ids(self._pending["episode_id"]))
        self._labels = {eid: value for eid, value in self._labels.items() if eid in kept}
        return excess

    def discard_pending(self) -> int:
        """Drop every pending decision (the env was reset from outside); returns how many were dropped."""
        dropped = self.n_pending + sum(len(step["episode_id"]) for step in self._steps)
        self._pending, self._steps, self._labels = None, [], {}
        return dropped

    def pop_labelled(self) -> dict[str, Any] | None:
        """Take the labelled decisions out of the buffer (flat numpy arrays), or None if there are none."""
        if not self._labelled:
            return None
        parts, self._labelled = self._labelled, []
        return {key: _concat([p[key] for p in parts]) for key in parts[0]}

    def to_torch(self, data: dict[str, Any], index: np.ndarray | th.Tensor | None = None) -> dict[str, Any]:
        """Tensors on the buffer's device for a minibatch (observations through SB3's ``obs_as_tensor``). Stored
        tensors (device-resident rollouts) are indexed where they are, with an index on their device."""
        out = {}
        for key, value in data.items():
            value = value if index is None else _take(value, index)
            if key == "obs":
                out[key] = as_device_obs(value, self.device)
            else:
                out[key] = value if isinstance(value, th.Tensor) else th.as_tensor(value, device=self.device)
        return out

    @staticmethod
    def holds_tensors(data: dict[str, Any] | None) -> bool:
        """Whether ``data`` (from :meth:`pop_labelled`) holds tensors (device-resident rollouts)."""
        return data is not None and _is_tensor(data["episode_id"])
