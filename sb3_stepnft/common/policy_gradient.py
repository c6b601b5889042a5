"""What the πRL baselines share (ALGORITHM.md §4): hybrid ODE/SDE rollouts with one stochastic step, chunk
log-likelihoods of that step, and the clipped-surrogate update loop. FlowPPO adds a critic, FlowGRPO group labels.
"""

from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.type_aliases import GymEnv, Schedule
from stable_baselines3.common.utils import FloatSchedule

from sb3_stepnft.common.checks import check_divergence, check_noise_level, check_schedule
from sb3_stepnft.common.flow import step_times
from sb3_stepnft.common.on_policy import FlowOnPolicyAlgorithm, NonFiniteLossError, check_positive
from sb3_stepnft.common.policies import FlowPolicy
from sb3_stepnft.common.surrogate import chunk_log_prob, clipped_surrogate_loss, sde_step_row_log_prob


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
    Other parameters: see :class:`~sb3_stepnft.common.on_policy.FlowOnPolicyAlgorithm`.
    """

    def __init__(
        self,
        policy: str | type[FlowPolicy],
        env: GymEnv | str | None,
        learning_rate: float | Schedule,
        n_steps: int,
        batch_size: int,
        n_epochs: int,
        gamma: float,
        gae_lambda: float,
        vf_coef: float,
        max_grad_norm: float,
        num_denoise_steps: int,
        noise_level: float,
        clip_range: float | Schedule,
        use_sde: bool = False,
        sde_sample_freq: int = -1,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        monitor_wrapper: bool = True,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
    ):
        # The log-likelihood of the stochastic step needs s_j > 0 (noise_level = 0 would be the pure ODE).
        check_positive("noise_level", noise_level)
        check_noise_level(noise_level, stochastic=True, algorithm=type(self).__name__)
        check_schedule_or_positive("clip_range", clip_range)
        self.clip_range = clip_range
        self.first_minibatch_ratio_error: float | None = None
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            batch_size=batch_size,
            n_epochs=n_epochs,
            gamma=gamma,
            gae_lambda=gae_lambda,
            vf_coef=vf_coef,
            max_grad_norm=max_grad_norm,
            num_denoise_steps=num_denoise_steps,
            noise_level=noise_level,
            use_sde=use_sde,
            sde_sample_freq=sde_sample_freq,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            monitor_wrapper=monitor_wrapper,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=_init_setup_model,
        )

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
        chain = self.policy.sample(
            features, sampler="one_step_sde", noise_level=self.noise_level, stochastic_step=stochastic_step
        )
        step_index = th.full((batch,), stochastic_step, dtype=th.long, device=self.device)
        x_j, x_next, velocity = chain.transition(step_index)
        record = dict(
            x_j=x_j,
            x_next=self.policy.executed(x_next),
            step_index=step_index,
            old_row_log_prob=self._row_log_prob(x_j, velocity, x_next, step_index),
            # Weights that sampled the decision: _n_updates only moves when a gradient step was taken.
            policy_version=th.full((batch,), self._n_updates, dtype=th.long),
        )
        return chain.sample, record

    def _row_log_prob(self, x_j: th.Tensor, velocity: th.Tensor, x_next: th.Tensor, step_index: th.Tensor) -> th.Tensor:
        """``(B, H)`` log-likelihoods of the stochastic step over the executed rows and real action dims (§4)."""
        executed = self.policy.executed
        return sde_step_row_log_prob(
            executed(x_j), executed(velocity), executed(x_next), step_index, self.num_denoise_steps, self.noise_level
        )

    # ------------------------------------------------------------------------------------------------- train
    def _training_data(self) -> dict[str, Any] | None:
        """The labelled decisions of this iteration (flat arrays, ``label`` is the advantage), or None."""
        return self.rollout_buffer.pop_labelled()

    def _extra_loss(self, batch: dict[str, Any], features: th.Tensor, stats: dict[str, float]) -> th.Tensor | float:
        """Loss terms beyond the clipped surrogate (FlowPPO's critic); may add entries to ``stats``."""
        return 0.0

    def _log_training(self, data: dict[str, Any] | None) -> None:
        """Algorithm-specific logs after an update."""

    def train(self) -> None:
        """``n_epochs`` passes of shuffled minibatches of the clipped surrogate over this iteration's decisions."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        clip_range = self.clip_range(self._current_progress_remaining)
        data = self._training_data()
        n_decisions = 0 if data is None else len(data["episode_id"])
        totals: dict[str, float] = {}
        n_batches = 0
        self.first_minibatch_ratio_error = None
        if data is not None:
            # (ours) Decisions that stayed pending across iterations (FlowGRPO's unfinished rounds) keep the
            # log-likelihood of the weights that sampled them as log π_old, so their ρ starts away from 1 and the clip
            # acts relative to the behaviour policy. The on-policy check ρ = 1 is made on the fresh ones only.
            fresh = data["policy_version"] == self._n_updates
            for _ in range(self.n_epochs):
                permutation = th.randperm(n_decisions).numpy()
                for start in range(0, n_decisions, self.batch_size):
                    index = permutation[start : start + self.batch_size]
                    stats = self._gradient_step(self.rollout_buffer.to_torch(data, index), clip_range, fresh[index])
                    fresh_ratio_error = stats.pop("fresh_ratio_error", None)
                    stats.pop("ratio_error")  # only the first minibatch's is meaningful (the on-policy check)
                    if n_batches == 0:
                        self.first_minibatch_ratio_error = fresh_ratio_error
                    for key, value in stats.items():
                        totals[key] = totals.get(key, 0.0) + value
                    n_batches += 1
            self._n_updates += self.n_epochs
            check_divergence(self, loss=totals.get("policy_loss", 0.0) / max(n_batches, 1), samples=data["x_next"])
            self.logger.record("train/stale_fraction", float(1.0 - fresh.mean()))

        for key, value in totals.items():
            self.logger.record(f"train/{key}", value / n_batches)
        if self.first_minibatch_ratio_error is not None:
            self.logger.record("train/first_minibatch_ratio_error", self.first_minibatch_ratio_error)
        self.logger.record("train/n_labelled", n_decisions)
        self.logger.record("train/clip_range", clip_range)
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self._log_training(data)

    def _gradient_step(self, batch: dict[str, Any], clip_range: float, fresh: np.ndarray) -> dict[str, float]:
        features = self._encode_batch(batch)  # re-encoded with gradients, or the cached frozen prefix (§3.6)
        step_index = batch["step_index"].long()
        t_j = step_times(step_index, self.num_denoise_steps).to(self.device)
        velocity = self.policy.velocity(batch["x_j"], t_j, features)
        row_log_prob = self._row_log_prob(batch["x_j"], velocity, batch["x_next"], step_index)
        # (ours) "executed rows" are the rows that ran: rows past an episode's end inside a chunk that ActionChunk
        # stopped early are masked out of log π, as in StepNFT's loss. Without early stops this is Σ over all H rows.
        log_prob = chunk_log_prob(row_log_prob, batch["row_mask"])
        old_log_prob = chunk_log_prob(batch["old_row_log_prob"], batch["row_mask"])
        policy_loss, stats = clipped_surrogate_loss(log_prob, old_log_prob, batch["label"], clip_range)
        if fresh.any():  # the on-policy check: ρ = 1 for decisions sampled with the current weights (§4)
            fresh_t = th.as_tensor(fresh, device=self.device)
            stats["fresh_ratio_error"] = float((th.exp(log_prob - old_log_prob)[fresh_t] - 1.0).abs().max().item())
        loss = policy_loss + self._extra_loss(batch, features, stats)
        if not th.isfinite(loss):
            raise NonFiniteLossError(
                f"{type(self).__name__} loss is {loss.item()} at update {self._n_updates}: the policy produced non-finite "
                "velocities or log-likelihoods. Lower learning_rate, check observations for NaN/inf (VecNormalize or "
                "VecCheckNan help), or raise noise_level."
            )
        self.policy.optimizer.zero_grad()
        loss.backward()
        th.nn.utils.clip_grad_norm_(self.policy.trainable_parameters(), self.max_grad_norm)
        self.policy.optimizer.step()
        stats["loss"] = float(loss.item())
        return stats
