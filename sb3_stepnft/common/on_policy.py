"""The rollout loop shared by the flow algorithms (StepNFT and the πRL baselines).

What differs per algorithm: which solver steps are stochastic and what is stored (:meth:`_sample_decisions`,
:meth:`_step_outcome`), which weights act during rollouts (:meth:`_rollout_context`), and how decisions get their
labels (:meth:`_label_episodes` for episode outcomes, or all of :meth:`_label_rollout` for per-decision labels such
as FlowPPO's GAE advantages). Everything else -- SB3's callback order, episode bookkeeping, pending decisions
across rollouts, discards on outside resets -- lives here once.
"""

import contextlib
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv

from sb3_stepnft.common.buffers import DecisionBuffer
from sb3_stepnft.common.checks import check_finite_rewards, check_schedule, success_flag
from sb3_stepnft.common.persistence import load_checkpoint, save_checkpoint
from sb3_stepnft.common.policies import CnnFlowPolicy, FlowPolicy, MlpFlowPolicy, MultiInputFlowPolicy
from sb3_stepnft.vla.policy import FlowVLAPolicy

SelfFlowOnPolicyAlgorithm = TypeVar("SelfFlowOnPolicyAlgorithm", bound="FlowOnPolicyAlgorithm")


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


class NonFiniteLossError(FloatingPointError):
    """The loss of a flow algorithm became NaN or infinite."""


def check_positive(name: str, value, integer: bool = False, allow_zero: bool = False) -> None:
    """Raise a ValueError naming the hyper-parameter when ``value`` is not a positive (or non-negative) number."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0) and (not integer or int(value) == value)
    if not ok:
        kind = "integer" if integer else "number"
        raise ValueError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} {kind}, got {value!r}")


class FlowOnPolicyAlgorithm(OnPolicyAlgorithm):
    """Base of the on-policy flow algorithms: an SB3 ``OnPolicyAlgorithm`` with a :class:`DecisionBuffer`.

    :param num_denoise_steps: K, solver steps per action chunk.
    :param noise_level: noise level ``a`` of the Flow-SDE steps.
    :param batch_size: minibatch size of the update.
    :param n_epochs: passes over the labelled decisions per iteration.
    Other parameters: see SB3's ``OnPolicyAlgorithm``.
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": MlpFlowPolicy,
        "CnnPolicy": CnnFlowPolicy,
        "MultiInputPolicy": MultiInputFlowPolicy,
        "VLAPolicy": FlowVLAPolicy,
    }
    policy: FlowPolicy
    rollout_buffer: DecisionBuffer
    _exploration_hint: ClassVar[str] = "Set `noise_level` (the noise of the Flow-SDE steps) instead."

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
        if use_sde or sde_sample_freq != -1:
            raise ValueError(
                f"{type(self).__name__} does not use SB3's gSDE (use_sde/sde_sample_freq): exploration comes from the "
                f"stochastic flow sampler. {self._exploration_hint}"
            )
        check_positive("num_denoise_steps", num_denoise_steps, integer=True)
        check_positive("noise_level", noise_level, allow_zero=True)
        check_positive("n_steps", n_steps, integer=True)
        check_positive("batch_size", batch_size, integer=True)
        check_positive("n_epochs", n_epochs, integer=True)
        check_positive("max_grad_norm", max_grad_norm)
        if not callable(learning_rate):
            check_positive("learning_rate", learning_rate)
        check_schedule("learning_rate", learning_rate)  # a schedule is validated like a constant
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            gamma=gamma,
            gae_lambda=gae_lambda,
            ent_coef=0.0,
            vf_coef=vf_coef,
            max_grad_norm=max_grad_norm,
            use_sde=False,
            sde_sample_freq=-1,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            monitor_wrapper=monitor_wrapper,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=False,
            supported_action_spaces=(spaces.Box,),
        )
        self.batch_size = int(batch_size)
        self.n_epochs = int(n_epochs)
        self.num_denoise_steps = int(num_denoise_steps)
        self.noise_level = float(noise_level)
        self.discarded_decisions = 0
        self._episode_ids: np.ndarray | None = None
        if _init_setup_model:
            self._setup_model()

    # ------------------------------------------------------------------------------------------- model set-up
    def _setup_model(self) -> None:
        self._setup_lr_schedule()
        self.set_random_seed(self.seed)
        self.policy = self.policy_class(self.observation_space, self.action_space, self.lr_schedule, **self._policy_kwargs())
        self.policy = self.policy.to(self.device)
        if not isinstance(self.policy, FlowPolicy):
            raise TypeError(f"{type(self).__name__} needs a flow policy (sb3_stepnft.policies), got {self.policy_class}")
        self.rollout_buffer = DecisionBuffer(self.observation_space, self.n_envs, self.device)
        # A frozen encoder's features (the VLA prefix) may be stored with the decisions, so the update runs only
        # the trainable part; the policy decides from its size per rollout (ALGORITHM.md §3.6, prefix_cache).
        self.policy.resolve_feature_cache(self.n_steps * self.n_envs)
        self._feature_memo: tuple[Any, Any] | None = None
        self._reset_episode_tracking()

    def _policy_kwargs(self) -> dict[str, Any]:
        """The keyword arguments the policy is built with: the user's ``policy_kwargs`` plus the algorithm's defaults
        (``self.policy_kwargs`` itself is left as given, so that ``load(..., policy_kwargs=...)`` compares equal)."""
        policy_kwargs = dict(self.policy_kwargs)
        policy_kwargs.setdefault("num_denoise_steps", self.num_denoise_steps)
        return policy_kwargs

    def _reset_episode_tracking(self) -> None:
        self._episode_ids = np.arange(self.n_envs, dtype=np.int64)
        self._next_episode_id = self.n_envs
        self._episode_success = np.zeros(self.n_envs, dtype=bool)
        self._episode_return = np.zeros(self.n_envs, dtype=np.float64)
        self._env_episode_counts = np.zeros(self.n_envs, dtype=np.int64)
        self._finished_episodes: list[FinishedEpisode] = []

    def _excluded_save_params(self) -> list[str]:
        return [
            *super()._excluded_save_params(),
            "_episode_ids",
            "_episode_success",
            "_episode_return",
            "_env_episode_counts",
            "_finished_episodes",
            "_feature_memo",
        ]

    # ------------------------------------------------------------------------------------------------ learning
    def _setup_learn(
        self,
        total_timesteps: int,
        callback: MaybeCallback = None,
        reset_num_timesteps: bool = True,
        tb_log_name: str = "run",
        progress_bar: bool = False,
    ) -> tuple[int, BaseCallback]:
        if self._env_will_reset(reset_num_timesteps) or self._episode_ids is None or len(self._episode_ids) != self.n_envs:
            # The env is about to be reset from outside: running episodes will never end, so their
            # decisions can never be labelled (ALGORITHM.md §3.1 "SB3 mapping", item 4).
            self.discarded_decisions += self.rollout_buffer.discard_pending()
            self._reset_episode_tracking()
        return super()._setup_learn(total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar)

    def _env_will_reset(self, reset_num_timesteps: bool) -> bool:
        """Whether SB3's ``_setup_learn`` is about to reset the env from outside (every running episode is lost)."""
        return reset_num_timesteps or self._last_obs is None

    def learn(
        self: SelfFlowOnPolicyAlgorithm,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str | None = None,
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfFlowOnPolicyAlgorithm:
        """SB3's ``learn``; ``tb_log_name`` defaults to the class name."""
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name or type(self).__name__,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )

    # ----------------------------------------------------------------------------------------------- persistence
    def save(self, path, exclude=None, include=None) -> None:
        """SB3's ``save``, written to a temporary file first: a failed save never leaves a half-written file.

        The stored ``policy_kwargs`` are made portable by the policy (a VLA's backbone given by name or directory is
        stored as its config: ``load`` rebuilds it offline and fills in the saved weights)."""
        given = self.policy_kwargs
        portable = getattr(self.policy, "portable_policy_kwargs", None)
        if portable is not None:
            self.policy_kwargs = portable(given)
        try:
            save_checkpoint(self, super().save, path, exclude=exclude, include=include)
        finally:
            self.policy_kwargs = given

    @classmethod
    def load(cls, path, env=None, device="auto", custom_objects=None, print_system_info=False, force_reset=True,
             trust_checkpoint=False, **kwargs):  # fmt: skip
        """SB3's ``load``, without unpickling anything from the file (docs/safety.md), with a clear ``ValueError`` for
        corrupted, non-SB3 or foreign checkpoints and invalid saved hyper-parameters. ``trust_checkpoint=True`` lets
        SB3 unpickle the ``data`` member (needed for checkpoints saved before safe checkpoints): only for files you
        trust, since unpickling runs any code they contain."""
        return load_checkpoint(
            cls, super().load, path, env=env, device=device, custom_objects=custom_objects,
            print_system_info=print_system_info, force_reset=force_reset, trust_checkpoint=trust_checkpoint, **kwargs,
        )  # fmt: skip

    # ------------------------------------------------------------------------------------------------- hooks
    def _on_rollout_start(self) -> None:
        """Called once at the start of every rollout, before the first decision."""

    def _rollout_context(self):
        """Context in which the rollout policy samples (e.g. with the EMA weights swapped in). It wraps the sampling
        call only: env steps and callbacks (``EvalCallback``...) run outside it and see the student."""
        return contextlib.nullcontext()

    def _sample_decisions(self, features) -> tuple[th.Tensor, dict[str, th.Tensor]]:
        """Sample one chunk per env from the encoded observations: the normalised actions ``(n_envs, H, A)`` and the
        fields to store."""
        raise NotImplementedError

    def _encode_observation(self, obs: Any):
        """Encode a VecEnv observation once. A frozen encoder's features are remembered for that observation object,
        so e.g. FlowPPO's bootstrap value of the last observation and the next rollout's first decision share one
        backbone pass (a trainable encoder changes in ``train``, so its features are never reused)."""
        if self._feature_memo is not None and self._feature_memo[0] is obs:
            return self._feature_memo[1]
        features = self.policy.encode(obs_as_tensor(obs, self.device))
        self._feature_memo = (obs, features) if self.policy.encoder_is_frozen else None
        return features

    def _encode_batch(self, batch: dict[str, Any]):
        """Features of a training minibatch: the stored prefix features when the policy caches them, else the
        observations encoded once for the minibatch (with gradients for a trainable encoder, §3.6)."""
        if "features" in batch:
            return self.policy.features_from_flat(batch["features"])
        return self.policy.encode(batch["obs"])

    def _step_outcome(self, rewards: np.ndarray, dones: np.ndarray, infos: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        """Fields stored with this env step's decisions that depend on the env's response (``(n_envs, ...)`` arrays)."""
        return {}

    def _label_episodes(self, finished: list[FinishedEpisode]) -> dict[int, float | None]:
        """Labels (``episode_id -> value``) for episodes finished so far; unlabelled ones stay pending, a label of
        None drops the episode's decisions."""
        raise NotImplementedError

    def _label_rollout(self, rollout_buffer: DecisionBuffer) -> None:
        """Label decisions at the end of a complete rollout: by default with the outcomes of finished episodes
        (:meth:`_label_episodes`); decisions of episodes without a label stay pending."""
        labels = self._label_episodes(self._finished_episodes)
        self._finished_episodes = [ep for ep in self._finished_episodes if ep.episode_id not in labels]
        rollout_buffer.label(labels)
        rollout_buffer.finish_rollout()

    def _on_episode_end(self, episode: FinishedEpisode, info: dict[str, Any]) -> None:
        """Called once per finished episode, during the rollout (checks that must fail early go here)."""

    # ----------------------------------------------------------------------------------------------- rollout
    def collect_rollouts(
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: DecisionBuffer,
        n_rollout_steps: int,
    ) -> bool:
        """Collect exactly ``n_rollout_steps`` steps per env, keeping SB3's callback order and local names."""
        assert self._last_obs is not None, "No previous observation was provided"
        self.policy.set_training_mode(False)
        n_steps = 0
        rollout_buffer.reset()
        callback.on_rollout_start()
        self._on_rollout_start()

        while n_steps < n_rollout_steps:
            with th.no_grad(), self._rollout_context():
                # One encoder (VLM prefix) pass per observation, reused for all K solver steps (§3.6).
                features = self._encode_observation(self._last_obs)
                normalised, record = self._sample_decisions(features)
                if self.policy.cache_features:
                    record["features"] = self.policy.features_to_flat(features)
                actions = self.policy.to_env_units(normalised).cpu().numpy()
            clipped_actions = np.clip(actions, self.action_space.low, self.action_space.high)
            new_obs, rewards, dones, infos = env.step(clipped_actions)
            self.num_timesteps += env.num_envs

            fields = {key: value.cpu().numpy() for key, value in record.items()}
            with th.no_grad():
                fields.update(self._step_outcome(rewards, dones, infos))
            rollout_buffer.add(self._last_obs, self._episode_ids, row_mask=self._executed_rows(infos), **fields)
            self._track_episodes(rewards, dones, infos)
            self._last_obs = new_obs  # type: ignore[assignment]
            self._last_episode_starts = dones

            # Give access to local variables (SB3 names: new_obs, rewards, dones, infos, actions)
            callback.update_locals(locals())
            if not callback.on_step():
                return False
            self._update_info_buffer(infos, dones)
            n_steps += 1

        self._label_rollout(rollout_buffer)
        callback.update_locals(locals())
        callback.on_rollout_end()
        return True

    def _executed_rows(self, infos: list[dict[str, Any]]) -> np.ndarray:
        """``(n_envs, H)`` mask of the chunk rows that ran (``info["env_steps"]`` from ``ActionChunk``)."""
        rows = self.policy.executed_rows
        mask = np.ones((len(infos), rows), dtype=bool)
        for i, info in enumerate(infos):
            if "env_steps" in info:
                mask[i, int(info["env_steps"]) :] = False
        return mask

    def _original_rewards(self, rewards: np.ndarray) -> np.ndarray:
        if self._vec_normalize_env is not None:
            return self._vec_normalize_env.get_original_reward()
        return rewards

    def _track_episodes(self, rewards: np.ndarray, dones: np.ndarray, infos: list[dict[str, Any]]) -> None:
        check_finite_rewards(self._original_rewards(rewards))
        self._episode_return += self._original_rewards(rewards)
        for i, info in enumerate(infos):
            if success_flag(info):
                self._episode_success[i] = True
            if not dones[i]:
                continue
            has_flag = success_flag(info) is not None
            episode_return = float(info["episode"]["r"]) if "episode" in info else float(self._episode_return[i])
            episode = FinishedEpisode(
                int(self._episode_ids[i]),
                i,
                bool(self._episode_success[i]) if has_flag else None,
                episode_return,
                int(self._env_episode_counts[i]),
            )
            self._env_episode_counts[i] += 1
            self._finished_episodes.append(episode)
            self._on_episode_end(episode, info)
            self._episode_ids[i] = self._next_episode_id
            self._next_episode_id += 1
            self._episode_success[i] = False
            self._episode_return[i] = 0.0
