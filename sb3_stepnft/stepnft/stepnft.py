"""π-StepNFT: Step-wise Negative-aware Fine-Tuning of flow policies (ALGORITHM.md §3)."""

import math
from typing import Any, TypeVar

import numpy as np
import torch as th
from stable_baselines3.common.type_aliases import GymEnv, Schedule

from sb3_stepnft.common.checks import check_noise_level
from sb3_stepnft.common.ema import EMA_HORIZON_RATIO, EMAWeights, check_ema_decay, ema_decay_at
from sb3_stepnft.common.labels import OUTCOMES, EpisodeOutcomes, MissingSuccessSignalError
from sb3_stepnft.common.on_policy import FlowOnPolicyAlgorithm, check_positive, resolve_solver_settings
from sb3_stepnft.common.optim import NonFiniteLossError
from sb3_stepnft.common.policies import FlowPolicy
from sb3_stepnft.common.records import StepNFTDecisions
from sb3_stepnft.stepnft.loss import OBJECTIVES, TARGETS, stepnft_loss

SelfStepNFT = TypeVar("SelfStepNFT", bound="StepNFT")

SAMPLERS = ("sde", "ode")
__all__ = ["StepNFT", "MissingSuccessSignalError", "NonFiniteLossError", "OUTCOMES", "SAMPLERS"]


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
    :param num_denoise_steps: K, solver steps per chunk. The policy's solver owns it: a value in ``policy_kwargs``
        is used when this is left at its default; two different values set in both places are an error.
    :param noise_level: ``a``, the Flow-SDE noise level of the rollouts (the same rule).
    :param trust_region: β, the branches are ``v_old ± β·Δv_c``.
    :param max_drift: Per-row bound on ``‖v_θ - v_old‖`` inside the branches (the drift clip).
    :param kl_coef: κ of the ``κ·mean((v_θ - v_old)²)`` regulariser.
    :param ranking_beta: β_dpo, multiplies the ranking logit.
    :param ema_decay: ``(d_start, d_end)`` of the cosine EMA schedule, or a float for a constant decay.
    :param ema_horizon: T of the schedule in iterations, fixed (then chunked ``learn`` calls follow exactly the
        schedule of one call); None: ``ema_horizon_ratio`` × the planned iterations of the run.
    :param ema_horizon_ratio: T as a multiple of the planned iterations ``ceil(total_timesteps / (n_steps·n_envs))``
        when ``ema_horizon`` is None. The default 5/3 is the authors' effective ManiSkill schedule (T = 400 epochs,
        runs stop at 240), whose rollout decay ends near 0.69 instead of 0.995 (docs/stepnft.md, "EMA schedule").
    :param step_selection: ``"random"`` (k ~ U{0..K-1} per decision) or a fixed int k.
    :param objective: ``"ranking"``, ``"wmse"``, ``"positive"`` or ``"negative"``.
    :param target: ``"step"`` (the SDE transition) or ``"terminal"`` (x̂0 against the final sample).
    :param sampler: ``"sde"`` (every step stochastic) or ``"ode"`` (Euler rollouts; needs ``target="terminal"``).
    :param outcome: ``"auto"`` (binary if the env reports ``is_success``, else graded returns), ``"success"``
        or ``"return"``.
    :param return_window: Episodes in the running mean/std of the graded return labels (``outcome="return"``).
    :param max_grad_norm: Gradient-norm clip.
    :param stats_window_size: Episodes averaged in the rollout logs.
    :param tensorboard_log: TensorBoard log directory (None: no logging).
    :param policy_kwargs: Keyword arguments of the policy (``net_arch``, ``activation_fn``, ...).
    :param verbose: 0 none, 1 info, 2 debug.
    :param seed: Seed of the random generators.
    :param device: Torch device.
    :param _init_setup_model: Whether to build the networks at construction.
    :param gradient_accumulation_steps: Micro-batches per minibatch whose gradients are accumulated before the one
        optimiser step (less activation memory, the same step within float tolerance).
    """

    _exploration_hint = "Set `sampler` and `noise_level` instead."

    def __init__(
        self,
        policy: str | type[FlowPolicy],
        env: GymEnv | str | None,
        learning_rate: float | Schedule = 1e-4,
        n_steps: int = 128,
        batch_size: int = 256,
        n_epochs: int = 8,
        gamma: float = 0.99,
        num_denoise_steps: int = 4,
        noise_level: float = 0.2,
        trust_region: float = 1.0,
        max_drift: float | None = 0.5,
        kl_coef: float = 1e-4,
        ranking_beta: float = 1.0,
        ema_decay: float | tuple[float, float] = (0.1, 0.995),
        ema_horizon: int | None = None,
        ema_horizon_ratio: float = EMA_HORIZON_RATIO,
        step_selection: str | int = "random",
        objective: str = "ranking",
        target: str = "step",
        sampler: str = "sde",
        outcome: str = "auto",
        return_window: int = 100,
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
        gradient_accumulation_steps: int = 1,
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
        solver = resolve_solver_settings(num_denoise_steps, noise_level, policy_kwargs, self.solver_defaults(), "StepNFT")
        k_max = solver["num_denoise_steps"] - 1
        if step_selection != "random" and not (
            isinstance(step_selection, (int, np.integer))
            and not isinstance(step_selection, bool)
            and 0 <= step_selection <= k_max
        ):
            raise ValueError(f"step_selection must be 'random' or an int in [0, {k_max}], got {step_selection!r}")
        check_noise_level(solver["noise_level"], stochastic=sampler == "sde", algorithm="StepNFT")
        check_positive("trust_region", trust_region)
        if max_drift is not None:
            check_positive("max_drift", max_drift)
        check_positive("kl_coef", kl_coef, allow_zero=True)
        check_positive("ranking_beta", ranking_beta)
        if ema_horizon is not None:
            check_positive("ema_horizon", ema_horizon, integer=True)
        check_positive("ema_horizon_ratio", ema_horizon_ratio)
        check_positive("return_window", return_window, integer=True)
        self.trust_region = float(trust_region)
        self.max_drift = max_drift
        self.kl_coef = float(kl_coef)
        self.ranking_beta = float(ranking_beta)
        self.ema_decay = check_ema_decay(ema_decay)
        self.ema_horizon = ema_horizon
        self.ema_horizon_ratio = float(ema_horizon_ratio)
        self.return_window = int(return_window)
        self.step_selection = step_selection if step_selection == "random" else int(step_selection)
        self.objective = objective
        self.target = target
        self.sampler = sampler
        self.outcome = outcome
        self.ema_iteration = 0  # iterations since the schedule started (0: θ_old ← θ before the next rollout)
        self.ema_progress = 0.0  # position g/T in the cosine schedule, accumulated so that it never jumps back
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
            gradient_accumulation_steps=gradient_accumulation_steps,
            _init_setup_model=_init_setup_model,
        )

    decision_type = StepNFTDecisions
    divergence_keys = ("loss", "x_final")  # the mean loss and the raw rollout samples (reliability checks)
    logged_stats = ("loss", "policy_loss", "kl", "logit_mean", "drift_clip_fraction", "positive_fraction")
    _non_finite_hint = (
        "The policy produced non-finite velocities. Lower learning_rate, check observations for NaN/inf (VecNormalize "
        "or VecCheckNan help), or keep max_drift set."
    )

    def _setup_model(self) -> None:
        super()._setup_model()
        self.ema = EMAWeights(self.policy)

    def _make_labeller(self) -> EpisodeOutcomes:
        labeller = EpisodeOutcomes(self.outcome, getattr(self, "return_window", 100), type(self).__name__)
        legacy = self.__dict__.pop("outcome_resolved", None)  # checkpoints of 0.1.0 stored it on the algorithm
        if legacy is not None:
            labeller.load_state(dict(resolved=legacy))
        return labeller

    @property
    def outcome_resolved(self) -> str | None:
        """``"success"`` or ``"return"`` once decided (``outcome="auto"``: by the first finished episode), else None."""
        return self.labeller.resolved

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        state_dicts, torch_variables = super()._get_torch_save_params()
        return [*state_dicts, "ema"], torch_variables

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "ema"]

    def _replicated_tensors(self) -> list[th.Tensor]:
        return list(self.ema.shadow.values())  # θ_old, broadcast from rank 0 with the policy (data-parallel)

    @property
    def weighting(self) -> str:
        return "adaptive" if self.sampler == "ode" else "variance"

    # ------------------------------------------------------------------------------------------ EMA schedule
    def _setup_learn(self, total_timesteps, callback=None, reset_num_timesteps=True, tb_log_name="run", progress_bar=False):
        total, callback = super()._setup_learn(total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar)
        if reset_num_timesteps:
            self.ema_iteration = 0  # a new schedule: θ_old ← θ before its first rollout (§3.5)
            self.ema_progress = 0.0
        self._ema_schedule_horizon = self.ema_schedule_horizon(self._total_timesteps)
        return total, callback

    def ema_schedule_horizon(self, total_timesteps: int) -> int:
        """T of the cosine schedule for a run planned to end at ``total_timesteps`` env steps: ``ema_horizon`` when
        set, else ``ceil(ema_horizon_ratio · ceil(total_timesteps / (n_steps·n_envs)))`` (ALGORITHM.md §3.5, the
        authors' effective schedule; data-parallel: the envs of all ranks, ``global_n_envs``)."""
        if self.ema_horizon is not None:
            return int(self.ema_horizon)
        iterations = max(1, math.ceil(total_timesteps / (self.n_steps * self.global_n_envs)))  # all ranks' steps
        return max(1, math.ceil(self.ema_horizon_ratio * iterations))

    def current_ema_decay(self) -> float:
        """d of the next EMA step: the cosine schedule at the accumulated position ``ema_progress`` (or a constant)."""
        if isinstance(self.ema_decay, float):
            return self.ema_decay
        return ema_decay_at(self.ema_progress, 1.0, self.ema_decay)

    def _advance_ema_schedule(self) -> None:
        # Each iteration moves the position by 1/T of the current plan. In one learn() call this is exactly g/T; a
        # learn(reset_num_timesteps=False) call extends T to the new total and the position goes on from where it was,
        # so the decay never jumps back (with a fixed ema_horizon chunked calls equal one call exactly).
        self.ema_iteration += 1
        self.ema_progress = min(1.0, self.ema_progress + 1.0 / self._ema_schedule_horizon)

    # ----------------------------------------------------------------------------------------------- rollout
    def _on_rollout_start(self) -> None:
        if self.ema_iteration == 0:
            self.ema.copy_from_student()  # picks up pretrain, set_parameters or a loaded student

    def _rollout_context(self):
        return self.ema.swapped_into(self.policy)

    def _sample_decisions(self, features) -> tuple[th.Tensor, dict[str, th.Tensor]]:
        chain = self.policy.sample(features, self.sampler)
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

    # ------------------------------------------------------------------------------------------------- train
    def _loss(self, batch: StepNFTDecisions, index: np.ndarray) -> tuple[th.Tensor, dict[str, float]]:
        """One forward pass of the student at the stored ``(x_k, t_k, obs)``, then the staged loss (§3.3-3.4)."""
        features = self._encode_batch(batch)  # student, train mode; stored prefix features if cached (§3.6)
        solver = self.policy.solver
        step_index = batch.step_index.long()
        rows = self.policy.executed_rows  # the errors run over the executed rows, all output dims (§3.3)
        v_theta = self.policy.velocity(batch.x_k, solver.times(step_index), features)[:, :rows]
        return stepnft_loss(
            v_theta,
            batch.v_old,
            batch.x_k[:, :rows],
            batch.x_final if self.target == "terminal" else batch.x_next,
            step_index,
            batch.outcome,
            trust_region=self.trust_region,
            max_drift=self.max_drift,
            kl_coef=self.kl_coef,
            ranking_beta=self.ranking_beta,
            objective=self.objective,
            mask=batch.row_mask,
            target=self.target,
            weighting=self.weighting,
            solver=solver,
        )

    def _after_update(self, data) -> None:
        # θ_old ← d·θ_old + (1 - d)·θ, once per iteration, also when nothing was trained (§3.1, §3.5).
        decay = self.current_ema_decay()
        self.ema.update(decay)
        self._advance_ema_schedule()
        self.logger.record("train/ema_decay", decay)
        self.logger.record("train/outcome", self.outcome_resolved or "undecided", exclude=("tensorboard",))
