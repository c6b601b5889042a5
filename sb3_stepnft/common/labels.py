"""Labelling rules: small objects that turn episode outcomes (or a rollout's rewards) into training labels.

The rollout loop of :class:`~sb3_stepnft.common.on_policy.FlowOnPolicyAlgorithm` records a
:class:`FinishedEpisode` for every episode that ends and asks the algorithm's labeller for labels:

- :class:`EpisodeOutcomes` (StepNFT, ALGORITHM.md §3.2): success, or graded returns;
- :class:`~sb3_stepnft.flow_grpo.groups.GroupRelative` (FlowGRPO, §4): ``(S - mean_G)/(std_G + 1e-6)`` over the
  rounds every group member finished;
- :class:`~sb3_stepnft.flow_ppo.gae.GAE` (FlowPPO, §4): per-decision advantages of a whole rollout, nothing pending.

A labeller keeps only JSON-able state (:meth:`EpisodeLabeller.state`), saved with the model.
"""

import warnings
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from sb3_stepnft.common.checks import check_success_consistency

OUTCOMES = ("auto", "success", "return")
RETURN_CLIP = 1.0  # c of the graded labels (§3.2)


@dataclass
class FinishedEpisode:
    """Outcome of one finished episode: ``success`` is None when the env reported no ``is_success``.

    ``env_episode_index`` counts the episodes of env ``env_index`` since the env was last reset from outside
    (0 for its first): FlowGRPO's round of a group.
    """

    episode_id: int
    env_index: int
    success: bool | None
    episode_return: float
    env_episode_index: int = 0


class MissingSuccessSignalError(ValueError):
    """``outcome="success"`` was requested but the env's final info carries no ``is_success``."""


class EpisodeLabeller:
    """Labels episodes once they end: ``label(finished) -> {episode_id: value}``; episodes left out stay pending,
    a value of None drops the episode's decisions."""

    def on_episode_end(self, episode: FinishedEpisode, info: dict[str, Any]) -> None:
        """Called once per finished episode during the rollout (checks that must fail early)."""

    def label(self, finished: list[FinishedEpisode]) -> dict[int, float | None]:
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state`."""


class EpisodeOutcomes(EpisodeLabeller):
    """StepNFT's labels (ALGORITHM.md §3.2): ``r = 1`` if the episode succeeded, else 0; or, without a success flag,
    graded returns ``r = clip(clip(A, -1, 1)/2 + ½, 0, 1)`` with ``A = (R - mean)/(std + 1e-8)``.

    *(ours, a deviation from §3.2 for long-episode tasks)* The mean and std of the graded labels run over the
    ``return_window`` most recent episode returns (the episodes being labelled included), not over one iteration's
    episodes only: an iteration that finishes fewer than two episodes (Pendulum's 200-step episodes) still gets graded
    labels. With fewer than two returns seen so far, r = ½.

    :param outcome: ``"auto"`` (decided by the first finished episode), ``"success"`` or ``"return"``.
    :param return_window: episodes in the running return statistics.
    """

    def __init__(self, outcome: str = "auto", return_window: int = 100, algorithm: str = "StepNFT"):
        if outcome not in OUTCOMES:
            raise ValueError(f"Unknown outcome={outcome!r}: use one of {OUTCOMES}")
        self.outcome = outcome
        self.resolved: str | None = None if outcome == "auto" else outcome
        self.return_window = int(return_window)
        self.recent_returns: deque[float] = deque(maxlen=self.return_window)
        self.algorithm = algorithm

    def on_episode_end(self, episode: FinishedEpisode, info: dict[str, Any]) -> None:
        # outcome="auto" decided "return", then a success flag appears: raise rather than ignore it.
        check_success_consistency(self.outcome, self.resolved, episode.success, info)
        if self.resolved is None:  # outcome="auto", decided by the first finished episode (§3.2)
            if episode.success is not None:
                self.resolved = "success"
            else:
                self.resolved = "return"
                warnings.warn(
                    f"{self.algorithm}(outcome='auto'): the env reports no info['is_success'], so decisions are labelled "
                    "with graded episode returns. For binary success labels, report is_success (e.g. with "
                    "sb3_stepnft.wrappers.SuccessInfo(env, key=...)) and pass outcome='success'.",
                    stacklevel=4,
                )
        elif self.resolved == "success" and episode.success is None:
            raise MissingSuccessSignalError(
                f"{self.algorithm}(outcome='success') needs info['is_success'] in the final info of every episode, but "
                f"the env reported none (info keys: {sorted(info)}). Map the env's own success key with "
                "sb3_stepnft.wrappers.SuccessInfo(env, key='success'), or use outcome='auto' or outcome='return' "
                "to label decisions with episode returns."
            )

    def label(self, finished: list[FinishedEpisode]) -> dict[int, float]:
        if not finished:
            return {}
        if self.resolved == "success":
            return {ep.episode_id: float(bool(ep.success)) for ep in finished}
        self.recent_returns.extend(float(ep.episode_return) for ep in finished)
        if len(self.recent_returns) < 2:
            return {ep.episode_id: 0.5 for ep in finished}
        window = np.asarray(self.recent_returns, dtype=np.float64)
        returns = np.array([ep.episode_return for ep in finished], dtype=np.float64)
        advantage = (returns - window.mean()) / (window.std() + 1e-8)
        labels = np.clip(np.clip(advantage, -RETURN_CLIP, RETURN_CLIP) / (2 * RETURN_CLIP) + 0.5, 0.0, 1.0)
        return {ep.episode_id: float(r) for ep, r in zip(finished, labels)}

    def state(self) -> dict[str, Any]:
        return dict(resolved=self.resolved, recent_returns=list(self.recent_returns))

    def load_state(self, state: dict[str, Any]) -> None:
        if self.outcome == "auto" and state.get("resolved") in OUTCOMES[1:]:
            self.resolved = state["resolved"]
        self.recent_returns.extend(float(r) for r in state.get("recent_returns", []))
