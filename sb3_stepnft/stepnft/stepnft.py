"""π-StepNFT: Step-wise Negative-aware Fine-Tuning of flow policies (ALGORITHM.md §3)."""

import math
import warnings
from typing import Any, TypeVar

import numpy as np
import torch as th
from stable_baselines3.common.type_aliases import GymEnv, Schedule

from sb3_stepnft.common.checks import check_divergence, check_noise_level, check_success_consistency
from sb3_stepnft.common.ema import EMAWeights, check_ema_decay, ema_decay_at
from sb3_stepnft.common.flow import step_times
from sb3_stepnft.common.on_policy import FinishedEpisode, FlowOnPolicyAlgorithm, NonFiniteLossError, check_positive
from sb3_stepnft.common.policies import FlowPolicy
from sb3_stepnft.stepnft.loss import OBJECTIVES, TARGETS, stepnft_loss

SelfStepNFT = TypeVar("SelfStepNFT", bound="StepNFT")

OUTCOMES = ("auto", "success", "return")
SAMPLERS = ("sde", "ode")


class MissingSuccessSignalError(ValueError):
    """``outcome="success"`` was requested but the env's final info carries no ``is_success``."""


class StepNFT(FlowOnPolicyAlgorithm):
    """π-StepNFT: critic-free, likelihood-free online RL for flow-matching policies.

    Paper: "Wider Space Needs Finer Steps in Online RL for Flow-based VLAs" (Wang et al.), π-StepNFT.
    Rollouts use a stochastic (SDE) version of the flow sampler with the EMA policy θ_old; each decision
    stores one random solver transition ``(x_k, x_{k+1}, v_old, k)``; the loss ranks the mirrored velocity
    candidates ``v_old ± β·Δv`` by how well each explains that transition, labelled by the episode's outcome.

    :param policy: The flow policy (``"MlpPolicy"``, ``"CnnPolicy"``, ``"MultiInputPolicy"`` or a class).
    :param env: The environment (a Gymnasium env, a registered id or an SB3 VecEnv).
    :param learning_rate: Constant learning rate of AdamW (or a schedule of the remaining progress).
    :param n_steps: Env steps per env per rollout (one iteration).
    :param batch_size: Minibatch size of the update.
    :param n_epochs: Passes over the labelled decisions per iteration.
    :param gamma: Accepted for SB3 compatibility; unused (labels are episode outcomes, not discounted returns).
    :param num_denoise_steps: K, solver steps per chunk.
    :param noise_level: ``a``, the Flow-SDE noise level of the rollouts.
    :param trust_region: β, the branches are ``v_old ± β·Δv_c``.
    :param max_drift: Per-row bound on ``‖v_θ - v_old‖`` inside the branches (the drift clip).
    :param kl_coef: κ of the ``κ·mean((v_θ - v_old)²)`` regulariser.
    :param ranking_beta: β_dpo, multiplies the ranking logit.
    :param ema_decay: ``(d_start, d_end)`` of the cosine EMA schedule, or a float for a constant decay.
    :param ema_horizon: T of the schedule in iterations; None: the iterations ``learn()`` will run.
    :param step_selection: ``"random"`` (k ~ U{0..K-1} per decision) or a fixed int k.
    :param objective: ``"ranking"``, ``"wmse"``, ``"positive"`` or ``"negative"``.
    :param target: ``"step"`` (the SDE transition) or ``"terminal"`` (x̂0 against the final sample).
    :param sampler: ``"sde"`` (every step stochastic) or ``"ode"`` (Euler rollouts; needs ``target="terminal"``).
    :param outcome: ``"auto"`` (binary if the env reports ``is_success``, else graded returns), ``"success"``
        or ``"return"``.
    :param max_grad_norm: Gradient-norm clip.
    :param stats_window_size: Episodes averaged in the rollout logs.
    :param tensorboard_log: TensorBoard log directory (None: no logging).
    :param policy_kwargs: Keyword arguments of the policy (``net_arch``, ``activation_fn``, ...).
    :param verbose: 0 none, 1 info, 2 debug.
    :param seed: Seed of the random generators.
    :param device: Torch device.
    :param _init_setup_model: Whether to build the networks at construction.
    """

    _exploration_hint = "Set `sampler` and `noise_level` instead."

    def __init__(
        self,
        policy: str | type[FlowPolicy],
        env: GymEnv | str | None,
        learning_rate: float | Schedule = 1e-4,
        n_steps: int = 128,
        batch_size: int = 256,
        n_epochs: int = 4,
        gamma: float = 0.99,
        num_denoise_steps: int = 4,
        noise_level: float = 0.2,
        trust_region: float = 1.0,
        max_drift: float | None = 0.5,
        kl_coef: float = 1e-4,
        ranking_beta: float = 1.0,
        ema_decay: float | tuple[float, float] = (0.1, 0.995),
        ema_horizon: int | None = None,
        step_selection: str | int = "random",
        objective: str = "ranking",
        target: str = "step",
        sampler: str = "sde",
        outcome: str = "auto",
        max_grad_norm: float = 1.0,
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
        for name, value, allowed in (
            ("objective", objective, OBJECTIVES),
            ("target", target, TARGETS),
            ("sampler", sampler, SAMPLERS),
            ("outcome", outcome, OUTCOMES),
        ):
            if value not in allowed:
                raise ValueError(f"Unknown {name}={value!r}: use one of {allowed}")
        if sampler == "ode" and target != "terminal":
            raise ValueError(
                "sampler='ode' makes the stored step residual exactly zero, so the step target has no signal: "
                "use target='terminal' with sampler='ode' (or sampler='sde')."
            )
        if step_selection != "random" and not (
            isinstance(step_selection, (int, np.integer)) and 0 <= step_selection < num_denoise_steps
        ):
            raise ValueError(
                f"step_selection must be 'random' or an int in [0, {num_denoise_steps - 1}], got {step_selection!r}"
            )
        check_noise_level(noise_level, stochastic=sampler == "sde", algorithm="StepNFT")
        check_positive("trust_region", trust_region)
        if max_drift is not None:
            check_positive("max_drift", max_drift)
        check_positive("kl_coef", kl_coef, allow_zero=True)
        check_positive("ranking_beta", ranking_beta)
        if ema_horizon is not None:
            check_positive("ema_horizon", ema_horizon, integer=True)
        self.trust_region = float(trust_region)
        self.max_drift = max_drift
        self.kl_coef = float(kl_coef)
        self.ranking_beta = float(ranking_beta)
        self.ema_decay = check_ema_decay(ema_decay)
        self.ema_horizon = ema_horizon
        self.step_selection = step_selection if step_selection == "random" else int(step_selection)
        self.objective = objective
        self.target = target
        self.sampler = sampler
        self.outcome = outcome
        self.outcome_resolved: str | None = None if outcome == "auto" else outcome
        self.ema_iteration = 0
        self._ema_schedule_horizon = 1
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            batch_size=batch_size,
            n_epochs=n_epochs,
            gamma=gamma,
            gae_lambda=1.0,
            vf_coef=0.0,
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
        self.ema = EMAWeights(self.policy)

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        return ["policy", "policy.optimizer", "ema"], []

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "ema"]

    @property
    def weighting(self) -> str:
        return "adaptive" if self.sampler == "ode" else "variance"

    # ------------------------------------------------------------------------------------------ EMA schedule
    def _setup_learn(self, total_timesteps, callback=None, reset_num_timesteps=True, tb_log_name="run", progress_bar=False):
        total, callback = super()._setup_learn(total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar)
        if reset_num_timesteps:
            self.ema_iteration = 0  # a new schedule: θ_old ← θ before its first rollout (§3.5)
        # T = ceil(total steps / (n_steps·n_envs)); with reset_num_timesteps=False, extended to the new total.
        iterations = math.ceil(self._total_timesteps / (self.n_steps * self.n_envs))
        self._ema_schedule_horizon = self.ema_horizon or max(1, iterations)
        return total, callback

    def current_ema_decay(self) -> float:
        return ema_decay_at(self.ema_iteration, self._ema_schedule_horizon, self.ema_decay)

    # ----------------------------------------------------------------------------------------------- rollout
    def _on_rollout_start(self) -> None:
        if self.ema_iteration == 0:
            self.ema.copy_from_student()  # picks up pretrain, set_parameters or a loaded student

    def _rollout_context(self):
        return self.ema.swapped_into(self.policy)

    def _sample_decisions(self, features) -> tuple[th.Tensor, dict[str, th.Tensor]]:
        chain = self.policy.sample(features, sampler=self.sampler, noise_level=self.noise_level)
        batch = len(features)
        if self.step_selection == "random":
            step_index = th.randint(0, self.num_denoise_steps, (batch,), device=self.device)
        else:
            step_index = th.full((batch,), self.step_selection, dtype=th.long, device=self.device)
        x_k, x_next, v_old = chain.transition(step_index)
        rows = self.policy.executed_rows
        record = dict(
            x_k=x_k,  # the whole model chunk: the velocity network reads all its rows
            x_next=x_next[:, :rows],
            v_old=v_old[:, :rows],
            x_final=chain.sample[:, :rows],  # raw solver state, before any clipping (terminal target)
            step_index=step_index,
        )
        return chain.sample, record

    # ------------------------------------------------------------------------------------------------ labels
    def _on_episode_end(self, episode: FinishedEpisode, info: dict[str, Any]) -> None:
        check_success_consistency(self.outcome, self.outcome_resolved, episode.success, info)
        if self.outcome_resolved is None:  # outcome="auto", decided by the first finished episode (§3.2)
            if episode.success is not None:
                self.outcome_resolved = "success"
            else:
                self.outcome_resolved = "return"
                warnings.warn(
                    "StepNFT(outcome='auto'): the env reports no info['is_success'], so decisions are labelled with "
                    "graded episode returns. For binary success labels, report is_success (e.g. with "
                    "sb3_stepnft.wrappers.SuccessInfo(env, key=...)) and pass outcome='success'.",
                    stacklevel=2,
                )
        elif self.outcome_resolved == "success" and episode.success is None:
            raise MissingSuccessSignalError(
                "StepNFT(outcome='success') needs info['is_success'] in the final info of every episode, but the env "
                f"reported none (info keys: {sorted(info)}). Map the env's own success key with "
                "sb3_stepnft.wrappers.SuccessInfo(env, key='success'), or use outcome='auto' or outcome='return' "
                "to label decisions with episode returns."
            )

    def _label_episodes(self, finished: list[FinishedEpisode]) -> dict[int, float]:
        if not finished:
            return {}
        if self.outcome_resolved == "success":
            return {ep.episode_id: float(bool(ep.success)) for ep in finished}
        # Graded labels from raw returns normalised over this iteration's episodes, c = 1 (§3.2).
        if len(finished) < 2:
            return {ep.episode_id: 0.5 for ep in finished}
        returns = np.array([ep.episode_return for ep in finished], dtype=np.float64)
        advantage = (returns - returns.mean()) / (returns.std() + 1e-8)
        clip = 1.0
        labels = np.clip(np.clip(advantage, -clip, clip) / (2 * clip) + 0.5, 0.0, 1.0)
        return {ep.episode_id: float(r) for ep, r in zip(finished, labels)}

    # ------------------------------------------------------------------------------------------------- train
    def train(self) -> None:
        """One StepNFT update over the decisions labelled in this iteration, then the EMA step."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        data = self.rollout_buffer.pop_labelled()
        n_labelled = 0 if data is None else len(data["episode_id"])
        totals: dict[str, float] = {}
        n_batches = 0
        if data is not None:
            for _ in range(self.n_epochs):
                permutation = th.randperm(n_labelled).numpy()
                for start in range(0, n_labelled, self.batch_size):
                    batch = self.rollout_buffer.to_torch(data, permutation[start : start + self.batch_size])
                    _, stats = self._gradient_step(batch)
                    for key, value in stats.items():
                        totals[key] = totals.get(key, 0.0) + value
                    n_batches += 1
            self._n_updates += self.n_epochs
            check_divergence(self, loss=totals["loss"] / n_batches, samples=data["x_final"])

        # θ_old ← d·θ_old + (1 - d)·θ, once per iteration, also when nothing was trained (§3.1, §3.5).
        decay = self.current_ema_decay()
        self.ema.update(decay)
        self.ema_iteration += 1

        for key in ("loss", "policy_loss", "kl", "logit_mean", "drift_clip_fraction", "positive_fraction"):
            if n_batches:
                self.logger.record(f"train/{key}", totals[key] / n_batches)
        self.logger.record("train/n_labelled", n_labelled)
        self.logger.record("train/n_pending", self.rollout_buffer.n_pending)
        self.logger.record("train/discarded_decisions", self.discarded_decisions)
        self.logger.record("train/ema_decay", decay)
        self.logger.record("train/outcome", self.outcome_resolved or "undecided", exclude=("tensorboard",))
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")

    def _gradient_step(self, batch: dict[str, Any]) -> tuple[th.Tensor, dict[str, float]]:
        features = self._encode_batch(batch)  # student, train mode; stored prefix features if cached (§3.6)
        step_index = batch["step_index"].long()
        t_k = step_times(step_index, self.num_denoise_steps)
        rows = self.policy.executed_rows  # the errors run over the executed rows, all output dims (§3.3)
        v_theta = self.policy.velocity(batch["x_k"], t_k.to(self.device), features)[:, :rows]
        target = batch["x_final"] if self.target == "terminal" else batch["x_next"]
        loss, stats = stepnft_loss(
            v_theta,
            batch["v_old"],
            batch["x_k"][:, :rows],
            target,
            step_index,
            batch["label"],
            num_denoise_steps=self.num_denoise_steps,
            noise_level=self.noise_level,
            trust_region=self.trust_region,
            max_drift=self.max_drift,
            kl_coef=self.kl_coef,
            ranking_beta=self.ranking_beta,
            objective=self.objective,
            mask=batch["row_mask"],
            target=self.target,
            weighting=self.weighting,
        )
        if not th.isfinite(loss):
            raise NonFiniteLossError(
                f"StepNFT loss is {loss.item()} at update {self._n_updates}: the policy produced non-finite velocities. "
                "Lower learning_rate, check observations for NaN/inf (VecNormalize or VecCheckNan help), or keep "
                "max_drift set."
            )
        self.policy.optimizer.zero_grad()
        loss.backward()
        th.nn.utils.clip_grad_norm_(self.policy.trainable_parameters(), self.max_grad_norm)
        self.policy.optimizer.step()
        stats["loss"] = float(loss.item())
        return loss, stats
