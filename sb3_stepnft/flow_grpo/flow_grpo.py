"""Flow-SDE + GRPO: the πRL critic-free baseline for flow policies (ALGORITHM.md §4)."""

from typing import Any

import torch as th
from stable_baselines3.common.type_aliases import GymEnv, Schedule

from sb3_stepnft.common.policies import FlowPolicy
from sb3_stepnft.common.policy_gradient import FlowPolicyGradient
from sb3_stepnft.common.surrogate import DUAL_CLIP
from sb3_stepnft.flow_grpo.groups import (
    FILTER_RANGE,
    GroupRelative,
    align_group_seeds,
    check_group_sizes,
    warn_without_shared_initial_states,
)

__all__ = ["FlowGRPO", "FILTER_RANGE"]


class FlowGRPO(FlowPolicyGradient):
    """GRPO for flow-matching policies with Flow-SDE log-likelihoods (the πRL baseline "Flow-SDE + GRPO").

    Papers: "πRL: Online RL Fine-tuning for Flow-based Vision-Language-Action Models" (Chen et al.), the baseline
    of "Wider Space Needs Finer Steps in Online RL for Flow-based VLAs" (Wang et al.); GRPO: Shao et al. (2024).
    Rollouts are as FlowPPO's (Euler chains with one Flow-SDE step j). The envs form groups of ``group_size``
    (env i is in group ``i // group_size``) whose members start their j-th episodes ("round j") from the same
    initial state; once every member finished a round, each episode's score (success, or the return without a
    success flag) is compared within the round: ``A = (S - mean) / (std + 1e-6)``, broadcast to all the
    episode's decisions. Until then its decisions stay pending. No critic, no KL, no entropy.

    Shared initial states come from seeding: build the env with
    :func:`sb3_stepnft.envs.make_grouped_vec_env` (or wrap the members in :class:`sb3_stepnft.wrappers.GroupSeed`).

    :param policy: The flow policy (``"MlpPolicy"``, ``"CnnPolicy"``, ``"MultiInputPolicy"`` or a class).
    :param env: The environment; its number of envs must be a multiple of ``group_size``.
    :param learning_rate: Learning rate of AdamW (or a schedule of the remaining progress).
    :param n_steps: Env steps per env per rollout (one iteration).
    :param batch_size: Minibatch size of the update.
    :param n_epochs: Passes over the labelled decisions per iteration.
    :param gamma: Accepted for SB3 compatibility; unused (scores are undiscounted episode outcomes).
    :param num_denoise_steps: K, solver steps per chunk (the policy's solver owns it: a value in ``policy_kwargs``
        is used when this is left at its default; two different values set in both places are an error).
    :param noise_level: ``a``, the noise level of the one Flow-SDE step of the rollouts (πRL: 0.5; the same rule).
    :param clip_range: ε of the clipped surrogate (or a schedule).
    :param dual_clip: πRL's dual clip ``clip_ratio_c``: for A < 0 the loss is capped at ``dual_clip·|A|`` (None: off).
    :param group_size: G, envs per group (at least 2).
    :param filter_groups: Drop the decisions of rounds whose mean score lies outside [0.1, 0.9].
    :param max_grad_norm: Gradient-norm clip.
    :param stats_window_size: Episodes averaged in the rollout logs.
    :param tensorboard_log: TensorBoard log directory (None: no logging).
    :param policy_kwargs: Keyword arguments of the policy (``net_arch``, ``activation_fn``, ...).
    :param verbose: 0 none, 1 info, 2 debug.
    :param seed: Seed of the random generators (the initial states of the groups come from the env's GroupSeed).
    :param device: Torch device.
    :param _init_setup_model: Whether to build the networks at construction.
    :param gradient_accumulation_steps: Micro-batches per minibatch whose gradients are accumulated before the one
        optimiser step (less activation memory, the same step within float tolerance).
    """

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
        noise_level: float = 0.5,
        clip_range: float | Schedule = 0.2,
        dual_clip: float | None = DUAL_CLIP,
        group_size: int = 8,
        filter_groups: bool = False,
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
        if isinstance(group_size, bool) or int(group_size) != group_size:
            raise ValueError(f"group_size must be an integer >= 2, got {group_size!r}")
        self.group_size = int(group_size)
        self.filter_groups = bool(filter_groups)
        self._warned_without_shared_states = False
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
            clip_range=clip_range,
            dual_clip=dual_clip,
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
            _init_setup_model=False,
        )
        # Group constraints only where training needs them: load(path, env=one_env) builds the model with
        # _init_setup_model=False and must work for predict/evaluate.
        if self.env is not None and _init_setup_model:
            self._check_groups()
        elif self.group_size < 2:
            check_group_sizes(getattr(self, "n_envs", None), self.group_size)
        if _init_setup_model:
            self._setup_model()

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_warned_without_shared_states"]

    # ------------------------------------------------------------------------------------------------ groups
    def _check_groups(self) -> None:
        """ValueError on a wrong number of envs; one warning per model when the groups do not share initial states."""
        check_group_sizes(self.n_envs, self.group_size)
        if not self._warned_without_shared_states:
            self._warned_without_shared_states = warn_without_shared_initial_states(self.env, self.group_size)

    def set_env(self, env: GymEnv, force_reset: bool = True) -> None:
        super().set_env(env, force_reset)
        self._check_groups()

    def _setup_learn(self, total_timesteps, callback=None, reset_num_timesteps=True, tb_log_name="run", progress_bar=False):
        assert self.env is not None, "FlowGRPO.learn needs an env: pass one to the constructor, load() or set_env()"
        self._check_groups()
        if self._env_will_reset(reset_num_timesteps):
            align_group_seeds(self.env, self.group_size)  # rounds restart together after the outside reset
        return super()._setup_learn(total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar)

    # ------------------------------------------------------------------------------------------------ labels
    def _make_labeller(self) -> GroupRelative:
        labeller = GroupRelative(self.group_size, self.filter_groups, FILTER_RANGE)
        legacy = self.__dict__.pop("filtered_groups", None)  # checkpoints of 0.1.0 stored it on the algorithm
        if legacy is not None:
            labeller.filtered_groups = int(legacy)
        return labeller

    @property
    def filtered_groups(self) -> int:
        """Rounds dropped by ``filter_groups`` so far."""
        return self.labeller.filtered_groups

    def _log_training(self, data: dict[str, Any] | None) -> None:
        if self.filter_groups:
            self.logger.record("train/filtered_groups", self.filtered_groups)
            self.logger.record("train/filtered_decisions", self.rollout_buffer.dropped_decisions)
