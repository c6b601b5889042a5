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
from stable_baselines3.common.utils import obs_as_tensor


def _concat(parts: list[Any]) -> Any:
    if isinstance(parts[0], dict):
        return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    return np.concatenate(parts)


def _take(data: Any, index: np.ndarray) -> Any:
    if isinstance(data, dict):
        return {key: value[index] for key, value in data.items()}
    return data[index]


def _copy_obs(obs: Any) -> Any:
    if isinstance(obs, dict):
        return {key: np.array(value, copy=True) for key, value in obs.items()}
    return np.array(obs, copy=True)


class DecisionBuffer:
    """Stores decisions of ``n_envs`` envs with the id of the episode each belongs to, and their labels.

    :param observation_space: The observation space (Box or Dict).
    :param n_envs: Number of parallel envs.
    :param device: Device of the tensors handed to ``train``.
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

    def add(self, obs: Any, episode_ids: np.ndarray, **fields: np.ndarray) -> None:
        """Add one env step: ``obs`` and every field have a leading ``n_envs`` axis."""
        record = {key: np.asarray(value) for key, value in fields.items()}
        record["obs"] = _copy_obs(obs)
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
        return {key: np.stack([step[key] for step in self._steps]) for key in keys}

    def label_steps(self, labels: np.ndarray, **fields: np.ndarray) -> None:
        """Label every decision added since the last labelling at once, independently of episodes.

        :param labels: ``(n_steps, n_envs)`` labels (FlowPPO: GAE advantages), in the order of :meth:`add`.
        :param fields: more ``(n_steps, n_envs, ...)`` arrays stored with the decisions (e.g. returns).
        """
        if len(labels) != len(self._steps):
            raise ValueError(f"label_steps got labels for {len(labels)} steps, the buffer holds {len(self._steps)}")
        for index, step in enumerate(self._steps):
            step["label"] = np.asarray(labels[index], dtype=np.float32)
            step.update({key: np.asarray(value[index]) for key, value in fields.items()})
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
        dropped = np.array([eid in self._labels and self._labels[eid] is None for eid in merged["episode_id"]], dtype=bool)
        if dropped.any():
            self.dropped_decisions += int(dropped.sum())
            merged = {key: _take(value, ~dropped) for key, value in merged.items()}
        known = np.array([eid in self._labels for eid in merged["episode_id"]], dtype=bool)
        if known.any():
            labelled = {key: _take(value, known) for key, value in merged.items()}
            labelled["label"] = np.array([self._labels[eid] for eid in labelled["episode_id"]], dtype=np.float32)
            self._labelled.append(labelled)
        self._pending = {key: _take(value, ~known) for key, value in merged.items()} if (~known).any() else None
        pending_ids = set(self._pending["episode_id"].tolist()) if self._pending is not None else set()
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
        self._pending = {key: _take(value, np.arange(excess, self.n_pending)) for key, value in self._pending.items()}
        kept = set(self._pending["episode_id"].tolist())
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

    def to_torch(self, data: dict[str, Any], index: np.ndarray | None = None) -> dict[str, Any]:
        """Tensors on the buffer's device for a minibatch (observations through SB3's ``obs_as_tensor``)."""
        out = {}
        for key, value in data.items():
            value = value if index is None else _take(value, index)
            out[key] = obs_as_tensor(value, self.device) if key == "obs" else th.as_tensor(value, device=self.device)
        return out
