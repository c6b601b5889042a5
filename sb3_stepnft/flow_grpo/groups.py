"""Groups of FlowGRPO (ALGORITHM.md §4): group-relative advantages, rounds of finished episodes, and checks that a
vector env gives the members of a group shared initial states."""

import warnings
from collections import defaultdict
from typing import Any

import numpy as np
from stable_baselines3.common.vec_env import VecEnv

from sb3_stepnft.common.checks import check_group_outcomes
from sb3_stepnft.common.labels import EpisodeLabeller, FinishedEpisode
from sb3_stepnft.wrappers import GroupSeed

GROUP_STD_EPS = 1e-6
FILTER_RANGE = (0.1, 0.9)  # filter_groups keeps groups whose mean score lies in this range


def group_advantages(scores, epsilon: float = GROUP_STD_EPS) -> np.ndarray:
    """``A = (S - mean) / (std + ε)`` over the scores of one group, with the unbiased std (ddof = 1, as ``torch.std``)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or len(scores) < 2:
        raise ValueError(f"group_advantages needs a 1-D array of at least 2 scores, got shape {scores.shape}")
    return (scores - scores.mean()) / (scores.std(ddof=1) + epsilon)


def episode_score(episode: FinishedEpisode) -> float:
    """Success (1.0 / 0.0) when the env reported ``is_success``, else the undiscounted episode return."""
    return float(episode.success) if episode.success is not None else float(episode.episode_return)


def complete_rounds(finished: list[FinishedEpisode], group_size: int) -> list[list[FinishedEpisode]]:
    """The rounds that every member of their group has finished: round j of group g is the j-th episode of each
    env ``i`` with ``i // group_size == g``. Episodes of incomplete rounds are left out (they stay pending)."""
    rounds: dict[tuple[int, int], list[FinishedEpisode]] = defaultdict(list)
    for episode in finished:
        rounds[(episode.env_index // group_size, episode.env_episode_index)].append(episode)
    return [sorted(members, key=lambda ep: ep.env_index) for members in rounds.values() if len(members) == group_size]


def check_group_sizes(n_envs: int | None, group_size: int) -> None:
    """ValueError unless ``group_size >= 2`` divides ``n_envs`` (None: no env yet, only ``group_size`` is checked)."""
    if group_size < 2 or (n_envs is not None and n_envs % group_size != 0):
        raise ValueError(
            f"FlowGRPO needs groups of at least 2 envs and n_envs a multiple of group_size, got n_envs={n_envs} and "
            f"group_size={group_size}. Pass a group_size >= 2 that divides n_envs, or build the env with "
            "sb3_stepnft.envs.make_grouped_vec_env(env_fn, n_groups, group_size, seed)."
        )


def shared_initial_state_problem(env: VecEnv, group_size: int) -> str | None:
    """Why the env's groups may not share initial states (no GroupSeed, or different base seeds), or None."""
    if not all(env.env_is_wrapped(GroupSeed)):
        return "its sub-envs are not wrapped in sb3_stepnft.wrappers.GroupSeed"
    base_seeds = env.get_attr("base_seed")
    for start in range(0, env.num_envs, group_size):
        if len(set(base_seeds[start : start + group_size])) > 1:
            return f"the GroupSeed base seeds of envs {start}..{start + group_size - 1} (one group) differ"
    return None


def warn_without_shared_initial_states(env: VecEnv, group_size: int) -> bool:
    """Warn (once per call) when the groups of ``env`` do not share initial states; returns whether it warned."""
    problem = shared_initial_state_problem(env, group_size)
    if problem is None:
        return False
    warnings.warn(
        f"FlowGRPO: {problem}, so the members of a group do not start each round from the same initial state and "
        "their scores are compared across different tasks. Build the env with "
        "sb3_stepnft.envs.make_grouped_vec_env(env_fn, n_groups, group_size, seed), or wrap every member of group g "
        "(envs g*group_size ... (g+1)*group_size-1) in sb3_stepnft.wrappers.GroupSeed(env, base_seed) with one base "
        "seed per group.",
        UserWarning,
        stacklevel=3,
    )
    return True


def align_group_seeds(env: VecEnv, group_size: int) -> None:
    """Before an outside reset: give every member of a group the episode counter of the group's furthest member, so
    that the group starts its next round from one seed again (members may have finished different numbers of
    episodes). Does nothing to an env without GroupSeed. (ours: ALGORITHM.md does not cover outside resets.)"""
    if not all(env.env_is_wrapped(GroupSeed)):
        return
    counters = env.get_attr("episode_counter")
    for start in range(0, env.num_envs, group_size):
        members = list(range(start, min(start + group_size, env.num_envs)))
        target = max(counters[i] for i in members)
        behind = [i for i in members if counters[i] != target]
        if behind:
            env.env_method("set_episode_counter", target, indices=behind)


class GroupRelative(EpisodeLabeller):
    """FlowGRPO's labels (ALGORITHM.md §4): once every member of a group finished round j, each episode's score
    (success, else the undiscounted return) becomes ``A = (S - mean)/(std + 1e-6)`` (unbiased std).

    :param group_size: G, envs per group (env i is in group i // G).
    :param filter_groups: drop the rounds whose mean score lies outside ``filter_range``.
    """

    def __init__(self, group_size: int, filter_groups: bool = False, filter_range: tuple[float, float] = FILTER_RANGE):
        self.group_size = int(group_size)
        self.filter_groups = bool(filter_groups)
        self.filter_range = filter_range
        self.filtered_groups = 0

    def label(self, finished: list[FinishedEpisode]) -> dict[int, float | None]:
        labels: dict[int, float | None] = {}
        for members in complete_rounds(finished, self.group_size):
            check_group_outcomes(members)  # never mix success scores and raw returns in one group
            scores = np.array([episode_score(ep) for ep in members])
            # The range is meant for success scores; with return scores it is applied as it is (ours).
            if self.filter_groups and not self.filter_range[0] <= scores.mean() <= self.filter_range[1]:
                labels.update({ep.episode_id: None for ep in members})  # dropped, counted by the buffer
                self.filtered_groups += 1
                continue
            advantages = group_advantages(scores)
            labels.update({ep.episode_id: float(a) for ep, a in zip(members, advantages)})
        return labels

    def state(self) -> dict[str, Any]:
        return dict(filtered_groups=self.filtered_groups)

    def load_state(self, state: dict[str, Any]) -> None:
        self.filtered_groups = int(state.get("filtered_groups", 0))
