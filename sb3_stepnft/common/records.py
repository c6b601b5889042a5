"""Typed decision records: what one algorithm stores per decision and hands to its loss, one name per concept.

The :class:`~sb3_stepnft.common.buffers.DecisionBuffer` stores flat arrays by field name and keeps a generic
``label`` until the update; :meth:`FlowDecisions.from_batch` turns a minibatch of tensors into the algorithm's record,
renaming ``label`` to what it means there (a success/return label ``outcome`` for StepNFT, an ``advantage`` for the
policy-gradient baselines). An unknown or missing field is an error, so a renamed field cannot silently go unused.

Shapes: ``B`` decisions, ``H`` executed chunk rows, ``C`` model chunk rows, ``D`` velocity-network action dims,
``A`` real action dims.
"""

from dataclasses import dataclass, fields
from typing import Any, ClassVar


@dataclass
class FlowDecisions:
    """What every flow decision stores.

    :param x_k: ``(B, C, D)`` solver state before the stored transition (the whole model chunk: the network's input).
    :param x_next: ``(B, H, ·)`` the realised next state ``x_{k+1}`` (executed rows).
    :param step_index: ``(B,)`` the transition k.
    :param row_mask: ``(B, H)`` the chunk rows that ran (rows after an episode's end inside a chunk are False).
    :param episode_id: ``(B,)`` the episode each decision belongs to.
    :param obs: the observations (when the encoder is re-run at update time), or None.
    :param features: cached frozen-encoder features (``policy.features_to_flat``), or None.
    """

    label_field: ClassVar[str] = "label"

    x_k: Any
    x_next: Any
    step_index: Any
    row_mask: Any
    episode_id: Any
    obs: Any = None
    features: Any = None

    @classmethod
    def from_batch(cls, batch: dict[str, Any]):
        """The record of a minibatch dict (the buffer's ``label`` becomes :attr:`label_field`)."""
        batch = dict(batch)
        if "label" in batch:
            batch[cls.label_field] = batch.pop("label")
        names = {f.name for f in fields(cls)}
        unknown = set(batch) - names
        if unknown:
            raise KeyError(f"{cls.__name__} has no field(s) {sorted(unknown)}; its fields: {sorted(names)}")
        return cls(**batch)

    def __len__(self) -> int:
        return len(self.step_index)


@dataclass
class StepNFTDecisions(FlowDecisions):
    """StepNFT (ALGORITHM.md §3.1): one random SDE transition of the EMA policy's chain.

    :param v_old: ``(B, H, D)`` the rollout policy's velocity at ``(x_k, t_k)`` (no extra pass at update time).
    :param x_final: ``(B, H, D)`` the raw final sample ``x_K`` (the ``target="terminal"`` ablation).
    :param outcome: ``(B,)`` the episode's label r in [0, 1] (success, or a graded return).
    """

    label_field: ClassVar[str] = "outcome"

    v_old: Any = None
    x_final: Any = None
    outcome: Any = None


@dataclass
class PolicyGradientDecisions(FlowDecisions):
    """FlowPPO / FlowGRPO (ALGORITHM.md §4): the one stochastic step j of a hybrid chain (``x_k`` is ``x_j``).

    :param old_row_log_prob: ``(B, H)`` ``Σ_d log N(x_{j+1}; μ_j, s_j²)`` of the weights that sampled it.
    :param policy_version: ``(B,)`` ``_n_updates`` when it was sampled (fresh decisions have ρ = 1).
    :param advantage: ``(B,)`` GAE (FlowPPO, normalised over the rollout) or group-relative (FlowGRPO).
    """

    label_field: ClassVar[str] = "advantage"

    old_row_log_prob: Any = None
    policy_version: Any = None
    advantage: Any = None


@dataclass
class PPODecisions(PolicyGradientDecisions):
    """FlowPPO adds the critic's fields.

    :param value: ``(B,)`` the rollout critic's ``V(s)``. :param returns: ``(B,)`` GAE returns (critic targets).
    :param reward: ``(B,)`` the chunk's reward (bootstrapped at truncation). :param done: ``(B,)`` episode ended.
    """

    value: Any = None
    returns: Any = None
    reward: Any = None
    done: Any = None
