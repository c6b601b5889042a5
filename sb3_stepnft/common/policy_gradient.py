"""What the πRL baselines share (ALGORITHM.md §4): hybrid ODE/SDE rollouts with one stochastic step, chunk
log-likelihoods of that step, and the clipped-surrogate update loop. FlowPPO adds a critic, FlowGRPO group labels.
"""

from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.type_aliases import Schedule
from stable_baselines3.common.utils import FloatSchedule

from sb3_stepnft.common.checks import check_noise_level, check_schedule
from sb3_stepnft.common.on_policy import FlowOnPolicyAlgorithm, check_positive, resolve_solver_settings
from sb3_stepnft.common.records import PolicyGradientDecisions
from sb3_stepnft.common.surrogate import DUAL_CLIP, chunk_log_prob, clipped_surrogate_loss


def check_schedule_or_positive(name: str, value) -> None:
    """A positive number or a schedule (a callable of the remaining progress)."""
    if not callable(value):
        check_positive(name, value)
    check_schedule(name, value)  # a schedule is validated like a constant


class FlowPolicyGradient(FlowOnPolicyAlgorithm):
    """Base of FlowPPO and FlowGRPO: Flow-SDE policy gradients with the clipped PPO surrogate.

    Rollouts run the Euler ODE except at one step j ~ U{0..K-1}, drawn once per env step and shared by the env
    batch, which is a Flow-SDE step of noise level ``noise_level``. A decision stores its observation, ``x_j``
    (the whole chunk, the velocity network's input), ``x_{j+1}`` (executed rows, real dims), j, and the row
    log-likelihoods ``Σ_d log N(x_{j+1}; μ_j, s_j²)`` of the rollout policy; ``log π`` of a chunk sums them over
    the rows that ran. The update recomputes ``log π_θ`` with one pass of the velocity network per minibatch.

    :param clip_range: ε of the clipped surrogate (or a schedule of the remaining progress).
    :param dual_clip: πRL's dual clip (``clip_ratio_c``): for A < 0 the loss is capped at ``dual_clip·|A|``;
        None disables it.
    Other parameters: see :class:`~sb3_stepnft.common.on_policy.FlowOnPolicyAlgorithm`.
    """

    decision_type = PolicyGradientDecisions
    divergence_keys = ("policy_loss", "x_next")  # what the divergence monitor watches (reliability checks)
    _non_finite_hint = (
        "The policy produced non-finite velocities or log-likelihoods. Lower learning_rate, check observations for "
        "NaN/inf (VecNormalize or VecCheckNan help), or raise noise_level."
    )

    def __init__(self, policy, env, *, clip_range: float | Schedule, dual_clip: float | None = DUAL_CLIP, **kwargs):
        # The log-likelihood of the stochastic step needs s_j > 0 (noise_level = 0 would be the pure ODE).
        solver = resolve_solver_settings(
            kwargs["num_denoise_steps"], kwargs["noise_level"], kwargs.get("policy_kwargs"),
            self.solver_defaults(), type(self).__name__,
        )  # fmt: skip
        check_positive("noise_level", solver["noise_level"])
        check_noise_level(solver["noise_level"], stochastic=True, algorithm=type(self).__name__)
        check_schedule_or_positive("clip_range", clip_range)
        if dual_clip is not None and not (isinstance(dual_clip, (int, float)) and dual_clip > 1.0):
            raise ValueError(f"dual_clip must be a number > 1 (πRL: 3.0) or None, got {dual_clip!r}")
        self.clip_range = clip_range
        self.dual_clip = None if dual_clip is None else float(dual_clip)
        self.first_minibatch_ratio_error: float | None = None
        super().__init__(policy, env, **kwargs)

    def _setup_model(self) -> None:
        super()._setup_model()
        self.clip_range = FloatSchedule(self.clip_range)

    # ----------------------------------------------------------------------------------------------- rollout
    def _sample_decisions(self, features) -> tuple[th.Tensor, dict[str, th.Tensor]]:
        return self._sample_hybrid(features)

    def _sample_hybrid(self, features) -> tuple[th.Tensor, dict[str, th.Tensor]]:
        """One hybrid chain per env: Euler steps except the Flow-SDE step j, shared by the env batch (§4)."""
        batch = len(features)
        stochastic_step = int(th.randint(0, self.num_denoise_steps, (1,)).item())
        chain = self.policy.sample(features, "one_step_sde", stochastic_step=stochastic_step)
        step_index = th.full((batch,), stochastic_step, dtype=th.long, device=self.device)
        x_j, x_next, velocity = chain.transition(step_index)
        record = dict(
            x_k=x_j,  # the state before the stored (stochastic) transition: one name in every algorithm
            x_next=self.policy.executed(x_next),
            step_index=step_index,
            old_row_log_prob=self._row_log_prob(x_j, velocity, x_next, step_index),
            # Weights that sampled the decision: _n_updates only moves when a gradient step was taken.
            policy_version=th.full((batch,), self._n_updates, dtype=th.long, device=self.device),
        )
        return chain.sample, record

    def _row_log_prob(self, x_j: th.Tensor, velocity: th.Tensor, x_next: th.Tensor, step_index: th.Tensor) -> th.Tensor:
        """``(B, H)`` log-likelihoods of the stochastic step over the executed rows and real action dims (§4)."""
        executed = self.policy.executed
        return self.policy.solver.row_log_prob(executed(x_next), executed(x_j), executed(velocity), step_index)

    # ------------------------------------------------------------------------------------------------- train
    def _extra_loss(self, batch: PolicyGradientDecisions, features, stats: dict[str, float]) -> th.Tensor | float:
        """Loss terms beyond the clipped surrogate (FlowPPO's critic); may add entries to ``stats``."""
        return 0.0

    def _before_update(self, data: dict[str, Any] | None) -> None:
        self._clip_range_now = self.clip_range(self._current_progress_remaining)
        self.first_minibatch_ratio_error = None
        self._first_minibatch = True
        # (ours) Decisions that stayed pending across iterations (FlowGRPO's unfinished rounds) keep the
        # log-likelihood of the weights that sampled them as log π_old, so their ρ starts away from 1 and the clip
        # acts relative to the behaviour policy. The on-policy check ρ = 1 is made on the fresh ones only.
        self._fresh = None if data is None else data["policy_version"] == self._n_updates

    def _loss(self, batch: PolicyGradientDecisions, index: np.ndarray) -> tuple[th.Tensor, dict[str, float]]:
        features = self._encode_batch(batch)  # re-encoded with gradients, or the cached frozen prefix (§3.6)
        step_index = batch.step_index.long()
        velocity = self.policy.velocity(batch.x_k, self.policy.solver.times(step_index), features)
        row_log_prob = self._row_log_prob(batch.x_k, velocity, batch.x_next, step_index)
        # (ours) "executed rows" are the rows that ran: rows past an episode's end inside a chunk that ActionChunk
        # stopped early are masked out of log π, as in StepNFT's loss. Without early stops this is Σ over all H rows.
        log_prob = chunk_log_prob(row_log_prob, batch.row_mask)
        old_log_prob = chunk_log_prob(batch.old_row_log_prob, batch.row_mask)
        policy_loss, stats = clipped_surrogate_loss(
            log_prob, old_log_prob, batch.advantage, self._clip_range_now, self.dual_clip
        )
        stats.pop("ratio_error")  # only the first minibatch's is meaningful (the on-policy check)
        fresh = self._fresh[index]
        if self._first_minibatch and fresh.any():  # the on-policy check: ρ = 1 for decisions of the current weights
            fresh_t = th.as_tensor(fresh, device=self.device)
            ratio = th.exp(log_prob - old_log_prob)[fresh_t]
            self.first_minibatch_ratio_error = float((ratio - 1.0).abs().max().item())
        self._first_minibatch = False
        return policy_loss + self._extra_loss(batch, features, stats), stats

    def _after_update(self, data: dict[str, Any] | None) -> None:
        if data is not None:
            fresh = self._fresh.float() if isinstance(self._fresh, th.Tensor) else self._fresh  # tensors: on-device data
            self.logger.record("train/stale_fraction", float(1.0 - fresh.mean()))
        if self.first_minibatch_ratio_error is not None:
            self.logger.record("train/first_minibatch_ratio_error", self.first_minibatch_ratio_error)
        self.logger.record("train/clip_range", self._clip_range_now)
