"""The rollout loop shared by the flow algorithms (StepNFT and the πRL baselines).

What differs per algorithm: which solver steps are stochastic and what is stored (:meth:`_sample_decisions`,
:meth:`_step_outcome`, a typed record :attr:`decision_type`), which weights act during rollouts
(:meth:`_rollout_context`), the labelling rule (:meth:`_make_labeller`, :mod:`sb3_stepnft.common.labels`) and the
loss of a minibatch (:meth:`_loss`, with :meth:`_after_update` for StepNFT's EMA step). Everything else -- SB3's
callback order, episode bookkeeping, pending decisions across rollouts, discards on outside resets, the one update
loop (:meth:`train`) -- lives here once.

One rollout loop serves two kinds of env: an ordinary (NumPy) VecEnv, and a *tensor VecEnv*
(:mod:`sb3_stepnft.common.tensor_env`) whose observations, rewards, dones and infos are device tensors. For the latter
the data stay on the device (no per-step ``.cpu().numpy()``): the loop converts only at its edges (actions to the env,
observations to the policy), the decision buffer stores tensors, and episode bookkeeping runs on the device, copied to
the host once per rollout for labelling (:meth:`FlowOnPolicyAlgorithm._finish_episode_tracking`).
"""

import contextlib
import math
import warnings
from collections.abc import Iterator
from functools import partial
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from stable_baselines3.common.vec_env import VecEnv

from sb3_stepnft.common.buffers import DecisionBuffer
from sb3_stepnft.common.checks import (
    check_algorithm_action_space,
    check_divergence,
    check_finite_rewards,
    check_schedule,
    success_flag,
)
from sb3_stepnft.common.distributed import (
    average_gradients,
    broadcast_module,
    broadcast_tensors,
    get_world_size,
    is_distributed,
    is_main_process,
    max_over_ranks,
    rank_seed,
)
from sb3_stepnft.common.labels import EpisodeLabeller, FinishedEpisode
from sb3_stepnft.common.optim import NonFiniteLossError, RunningMeans, optimizer_step  # noqa: F401 (re-exported)
from sb3_stepnft.common.persistence import load_checkpoint, save_checkpoint
from sb3_stepnft.common.policies import BaseFlowPolicy, CnnFlowPolicy, MlpFlowPolicy, MultiInputFlowPolicy
from sb3_stepnft.common.records import FlowDecisions
from sb3_stepnft.common.tensor_env import action_bounds, as_device_obs, is_tensor_env

SelfFlowOnPolicyAlgorithm = TypeVar("SelfFlowOnPolicyAlgorithm", bound="FlowOnPolicyAlgorithm")


def check_positive(name: str, value, integer: bool = False, allow_zero: bool = False) -> None:
    """Raise a ValueError naming the hyper-parameter when ``value`` is not a positive (or non-negative) number."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0) and (not integer or int(value) == value)
    if not ok:
        kind = "integer" if integer else "number"
        raise ValueError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} {kind}, got {value!r}")


def resolve_solver_settings(
    num_denoise_steps: int,
    noise_level: float,
    policy_kwargs: dict[str, Any] | None,
    defaults: dict[str, Any],
    algorithm: str,
) -> dict[str, Any]:
    """K and the noise level ``a`` of the policy's :class:`~sb3_stepnft.common.flow.FlowSolver`, their one owner.

    Each may be given to the algorithm or in ``policy_kwargs`` (e.g. by ``pi0_policy_kwargs(num_denoise_steps=10)``).
    A value in ``policy_kwargs`` is used when the algorithm's argument is left at its default; two different values
    that were both set are an error, never a silent choice.
    """
    settings = {}
    for name, value in (("num_denoise_steps", num_denoise_steps), ("noise_level", noise_level)):
        in_policy = (policy_kwargs or {}).get(name)
        if in_policy is None or in_policy == value:
            settings[name] = value
        elif value == defaults[name]:
            settings[name] = in_policy
        else:
            raise ValueError(
                f"{algorithm}: {name} is set twice with different values ({name}={value!r} and "
                f"policy_kwargs[{name!r}]={in_policy!r}). The policy's solver is its one owner: set it in one place."
            )
    check_positive("num_denoise_steps", settings["num_denoise_steps"], integer=True)
    check_positive("noise_level", settings["noise_level"], allow_zero=True)
    settings["num_denoise_steps"] = int(settings["num_denoise_steps"])
    settings["noise_level"] = float(settings["noise_level"])
    return settings


UNLABELLED_WARNING_ITERATIONS = 10  # iterations without a labelled decision before the "episodes never end" warning
MAX_PENDING_ROLLOUTS = 20  # default cap of pending decisions: this many rollouts' worth (n_steps · n_envs each)


#: Options of SB3's ``ActorCriticPolicy`` (Gaussian actions, separate or orthogonally initialised heads) that the flow
#: policies do not take; :meth:`FlowOnPolicyAlgorithm._check_policy_kwargs` names them.
GAUSSIAN_POLICY_OPTIONS = frozenset(
    {"log_std_init", "squash_output", "use_expln", "full_std", "use_sde", "ortho_init", "share_features_extractor"}
)


class FlowOnPolicyAlgorithm(OnPolicyAlgorithm):
    """Base of the on-policy flow algorithms: an SB3 ``OnPolicyAlgorithm`` with a :class:`DecisionBuffer`.

    :param num_denoise_steps: K, solver steps per action chunk.
    :param noise_level: noise level ``a`` of the Flow-SDE steps. Both are handed to the policy, whose
        :class:`~sb3_stepnft.common.flow.FlowSolver` owns them; a value in ``policy_kwargs`` is used when the argument
        is left at the algorithm's default, and two different values set in both places are an error.
    :param batch_size: minibatch size of the update.
    :param n_epochs: passes over the labelled decisions per iteration.
    :param gradient_accumulation_steps: each minibatch is processed as this many micro-batches whose gradients are
        accumulated before the one optimiser step (the same step within float tolerance, with the activation memory
        of a micro-batch).
    Other parameters: see SB3's ``OnPolicyAlgorithm``.
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": MlpFlowPolicy,
        "CnnPolicy": CnnFlowPolicy,
        "MultiInputPolicy": MultiInputFlowPolicy,
        # "VLAPolicy" is registered by sb3_stepnft/__init__.py (common/ does not import vla/)
    }
    policy: BaseFlowPolicy
    rollout_buffer: DecisionBuffer
    labeller: EpisodeLabeller
    max_pending_decisions: int | None = None
    """Cap on decisions waiting for their episode's end (None: 20 rollouts' worth, ``20·n_steps·n_envs``). Older ones
    beyond it are discarded and counted in ``train/discarded_decisions``."""
    decision_type: ClassVar[type[FlowDecisions]] = FlowDecisions
    logged_stats: ClassVar[tuple[str, ...] | None] = None  # train/* keys of the loss stats (None: all)
    divergence_keys: ClassVar[tuple[str, str]] = ("loss", "x_next")  # (loss stat, stored samples) the monitor watches
    _non_finite_hint: ClassVar[str] = "Lower learning_rate, check observations for NaN/inf (VecNormalize or VecCheckNan help)."
    _exploration_hint: ClassVar[str] = "Set `noise_level` (the noise of the Flow-SDE steps) instead."

    def __init__(
        self,
        policy: str | type[BaseFlowPolicy],
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
        gradient_accumulation_steps: int = 1,
    ):
        if use_sde or sde_sample_freq != -1:
            raise ValueError(
                f"{type(self).__name__} does not use SB3's gSDE (use_sde/sde_sample_freq): exploration comes from the "
                f"stochastic flow sampler. {self._exploration_hint}"
            )
        self._solver_settings = resolve_solver_settings(
            num_denoise_steps, noise_level, policy_kwargs, self.solver_defaults(), type(self).__name__
        )
        check_positive("n_steps", n_steps, integer=True)
        check_positive("batch_size", batch_size, integer=True)
        check_positive("n_epochs", n_epochs, integer=True)
        check_positive("gradient_accumulation_steps", gradient_accumulation_steps, integer=True)
        if gradient_accumulation_steps > batch_size:
            raise ValueError(
                f"gradient_accumulation_steps={gradient_accumulation_steps} splits a minibatch of batch_size={batch_size} "
                "into more micro-batches than it has decisions: use at most batch_size accumulation steps."
            )
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
        self.gradient_accumulation_steps = int(gradient_accumulation_steps)
        self.discarded_decisions = 0
        self._episode_ids: np.ndarray | None = None
        if _init_setup_model:
            self._setup_model()

    @classmethod
    def _wrap_env(cls, env: GymEnv, verbose: int = 0, monitor_wrapper: bool = True) -> VecEnv:
        """SB3's wrapping, after checking the action space (at construction, ``set_env`` and ``load``) with an error
        that names the fix; SB3's own assertions on it come later and say only what is wrong."""
        check_algorithm_action_space(env.action_space, cls.__name__)
        return super()._wrap_env(env, verbose, monitor_wrapper)

    # ------------------------------------------------------------------------------------------- model set-up
    def _setup_model(self) -> None:
        # load(path, noise_level=...) (and checkpoints of 0.1.0) give the solver settings as attributes: they win.
        for name, kind in (("num_denoise_steps", int), ("noise_level", float)):
            if name in self.__dict__:
                self.solver_settings[name] = kind(self.__dict__.pop(name))
        if isinstance(self.policy_class, type) and not issubclass(self.policy_class, BaseFlowPolicy):
            raise TypeError(
                f"{type(self).__name__} needs a flow policy, got {self.policy_class.__name__}: pass an alias "
                f"({', '.join(repr(alias) for alias in self.policy_aliases)}) or a subclass of "
                "sb3_stepnft.policies.BaseFlowPolicy (e.g. MlpFlowPolicy): the flow algorithms train the velocity "
                "field of a flow policy."
            )
        self._check_policy_kwargs()
        self._setup_lr_schedule()
        self.set_random_seed(self.seed)
        self.policy = self.policy_class(self.observation_space, self.action_space, self.lr_schedule, **self._policy_kwargs())
        self.policy = self.policy.to(self.device)
        if not isinstance(self.policy, BaseFlowPolicy):
            raise TypeError(f"{type(self).__name__} needs a flow policy (sb3_stepnft.policies), got {self.policy_class}")
        solver = (self.policy.solver.num_denoise_steps, self.policy.solver.noise_level)
        if solver != (self.solver_settings["num_denoise_steps"], self.solver_settings["noise_level"]):
            raise ValueError(
                f"{self.policy_class.__name__} built a solver with (num_denoise_steps, noise_level) = {solver}, not the "
                f"{self.solver_settings} it was given: pass both arguments on to BaseFlowPolicy._setup_flow."
            )
        self.rollout_buffer = DecisionBuffer(self.observation_space, self.n_envs, self.device)
        # A frozen encoder's features (the VLA prefix) may be stored with the decisions, so the update runs only
        # the trainable part; the policy decides from its size per rollout (ALGORITHM.md §3.6, prefix_cache).
        self.policy.resolve_feature_cache(self.n_steps * self.n_envs)
        self._feature_memo: tuple[Any, Any] | None = None
        self._reset_episode_tracking()
        self._torch_rng_state = th.get_rng_state()  # filled from the checkpoint on load (exact resume)
        self.labeller = self._make_labeller()
        saved_state = self.__dict__.pop("_labeller_state", None)
        if saved_state:
            self.labeller.load_state(saved_state)

    def _check_policy_kwargs(self) -> None:
        """A TypeError naming the options of SB3's Gaussian ``ActorCriticPolicy`` (RL Zoo configs carry them) that the
        policy class does not take, instead of Python's bare "unexpected keyword argument"."""
        import inspect

        if not isinstance(self.policy_class, type):
            return
        parameters = inspect.signature(self.policy_class.__init__).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            return
        foreign = sorted(k for k in self.policy_kwargs if k in GAUSSIAN_POLICY_OPTIONS and k not in parameters)
        if foreign:
            raise TypeError(
                f"policy_kwargs {foreign} are options of SB3's Gaussian ActorCriticPolicy, which "
                f"{self.policy_class.__name__} does not have: a flow policy generates actions by integrating a velocity "
                f"field, and its exploration is the Flow-SDE noise (`noise_level`, an argument of {type(self).__name__}). "
                "Remove them from policy_kwargs."
            )

    def set_random_seed(self, seed: int | None = None) -> None:
        """SB3's seeding (torch, NumPy, action space, env); in a process group rank r uses ``seed + r·RANK_SEED_OFFSET``
        (:func:`~sb3_stepnft.common.distributed.rank_seed`): every rank steps its own, differently seeded envs and
        draws its own sampler noise, while the parameters are broadcast from rank 0 at the start of ``learn``."""
        super().set_random_seed(rank_seed(seed))

    def _make_labeller(self) -> EpisodeLabeller:
        """The algorithm's labelling rule (:mod:`sb3_stepnft.common.labels`)."""
        raise NotImplementedError

    def _policy_kwargs(self) -> dict[str, Any]:
        """The keyword arguments the policy is built with: the user's ``policy_kwargs`` plus the solver settings
        (``self.policy_kwargs`` itself is left as given, so that ``load(..., policy_kwargs=...)`` compares equal)."""
        return {**self.policy_kwargs, **self.solver_settings}

    @classmethod
    def solver_defaults(cls) -> dict[str, Any]:
        """The defaults of ``num_denoise_steps`` and ``noise_level`` in this algorithm's signature."""
        import inspect

        parameters = inspect.signature(cls.__init__).parameters
        return {name: parameters[name].default for name in ("num_denoise_steps", "noise_level")}

    @property
    def solver_settings(self) -> dict[str, Any]:
        """``num_denoise_steps`` and ``noise_level`` handed to the policy (checkpoints of 0.1.0 stored them as
        attributes of the algorithm)."""
        if "_solver_settings" not in self.__dict__:
            self._solver_settings = dict(
                num_denoise_steps=int(self.__dict__.get("num_denoise_steps", self.solver_defaults()["num_denoise_steps"])),
                noise_level=float(self.__dict__.get("noise_level", self.solver_defaults()["noise_level"])),
            )
        return self._solver_settings

    @property
    def solver(self):
        """The policy's :class:`~sb3_stepnft.common.flow.FlowSolver`: K, the noise level and every coefficient."""
        return self.policy.solver

    @property
    def num_denoise_steps(self) -> int:
        """K (read-only: the policy's solver owns it)."""
        return self.solver.num_denoise_steps if self._has_policy else self.solver_settings["num_denoise_steps"]

    @property
    def noise_level(self) -> float:
        """``a`` of the Flow-SDE steps (read-only: the policy's solver owns it)."""
        return self.solver.noise_level if self._has_policy else self.solver_settings["noise_level"]

    @property
    def _has_policy(self) -> bool:
        return getattr(self, "policy", None) is not None

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
            "_episode_length",
            "_next_episode_id_t",
            "_episode_steps",
            "_feature_memo",
            "labeller",
            "_labelled_in_learn",
            "_iterations_without_label",
            "_lost_at_load",
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
        if self.env is not None:
            is_tensor_env(self.env)  # a VecEnvWrapper around a tensor env: a TypeError naming the fix, before the reset
        lost = self.__dict__.pop("_lost_at_load", 0)
        if lost and not reset_num_timesteps:
            warnings.warn(
                f"{type(self).__name__}: {lost} decisions of episodes that were running when the model was saved are not "
                "part of a checkpoint; they are counted in train/discarded_decisions. Save at the end of a learn() call "
                "whose episodes have finished to lose none.",
                stacklevel=3,
            )
        if self._env_will_reset(reset_num_timesteps) or self._episode_ids is None or len(self._episode_ids) != self.n_envs:
            # The env is about to be reset from outside: running episodes will never end, so their
            # decisions can never be labelled (ALGORITHM.md §3.1 "SB3 mapping", item 4).
            self.discarded_decisions += self.rollout_buffer.discard_pending()
            self._reset_episode_tracking()
        if not is_main_process():  # logging happens on rank 0 only
            from stable_baselines3.common.logger import Logger

            self.set_logger(Logger(folder=None, output_formats=[]))
            progress_bar = False
        result = super()._setup_learn(total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar)
        self._synchronise_replicas()
        return result

    # ------------------------------------------------------------------------------------------- data parallel
    @property
    def global_n_envs(self) -> int:
        """Envs of all data-parallel ranks (``n_envs`` times the number of ranks; ``n_envs`` without a process group):
        one iteration makes ``n_steps·global_n_envs`` env steps, which ``num_timesteps`` and the schedules count."""
        return self.n_envs * get_world_size()

    def _replicated_tensors(self) -> list[th.Tensor]:
        """State that must be identical on every rank besides the policy (StepNFT adds its EMA weights)."""
        return []

    def _synchronise_replicas(self) -> None:
        """In a process group: the policy (every parameter and buffer) and :meth:`_replicated_tensors` from rank 0, so
        that all replicas start ``learn`` identical. The optimiser state is not sent: it is identical already (empty,
        or loaded from the same checkpoint) and stays so, since every rank applies the same averaged gradient."""
        if is_distributed():
            broadcast_module(self.policy)
            broadcast_tensors(self._replicated_tensors())

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
        """SB3's ``learn``; ``tb_log_name`` defaults to the class name. A call that ends before any decision was
        labelled (episodes longer than the call, FlowGRPO rounds not finished) says so once."""
        self._labelled_in_learn = 0
        model = super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name or type(self).__name__,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )
        if self._labelled_in_learn == 0 and self.num_timesteps > 0 and not getattr(self, "_warned_nothing_learned", False):
            self._warned_nothing_learned = True
            warnings.warn(
                f"{type(self).__name__}.learn ended before any decision was labelled, so no gradient step was made "
                f"({self.rollout_buffer.n_pending} decisions pending until their episodes end). Train for more steps "
                "than one episode (or one FlowGRPO round) lasts, or shorten the episodes with a time limit.",
                stacklevel=2,
            )
        return model

    # ----------------------------------------------------------------------------------------------- persistence
    def save(self, path, exclude=None, include=None) -> None:
        """SB3's ``save``, written to a temporary file first: a failed save never leaves a half-written file.

        In a data-parallel process group only rank 0 writes (the replicas are identical); other ranks return without
        writing, and no collective is made, so calling it on rank 0 alone is fine. Before another rank reads the file,
        call ``torch.distributed.barrier()`` on every rank.

        The stored ``policy_kwargs`` are made portable by the policy (a VLA's backbone given by name or directory is
        stored as its config: ``load`` rebuilds it offline and fills in the saved weights)."""
        if not is_main_process():
            return
        given = self.policy_kwargs
        portable = getattr(self.policy, "portable_policy_kwargs", None)
        if portable is not None:
            self.policy_kwargs = portable(given)
        self._labeller_state = self.labeller.state()  # JSON-able: outcome decision, running statistics, counters
        self._torch_rng_state = th.get_rng_state()  # resume continues the random stream instead of reseeding
        # Decisions of running episodes are not saved: a loaded model counts them as discarded (ALGORITHM.md §3.1).
        self.pending_decisions_at_save = self.rollout_buffer.n_pending + self.rollout_buffer.n_unfinished_steps
        try:
            save_checkpoint(self, super().save, path, exclude=exclude, include=include)
        finally:
            self.policy_kwargs = given
            del self._labeller_state, self.pending_decisions_at_save

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        state_dicts, torch_variables = super()._get_torch_save_params()
        return state_dicts, [*torch_variables, "_torch_rng_state"]

    @classmethod
    def load(cls, path, env=None, device="auto", custom_objects=None, print_system_info=False, force_reset=True,
             trust_checkpoint=False, **kwargs):  # fmt: skip
        """SB3's ``load``, without unpickling anything from the file (docs/safety.md), with a clear ``ValueError`` for
        corrupted, non-SB3 or foreign checkpoints and invalid saved hyper-parameters. ``trust_checkpoint=True`` lets
        SB3 unpickle the ``data`` member (needed for checkpoints saved before safe checkpoints): only for files you
        trust, since unpickling runs any code they contain. Resume is exact (:meth:`_after_load`)."""
        model = load_checkpoint(
            cls, super().load, path, env=env, device=device, custom_objects=custom_objects,
            print_system_info=print_system_info, force_reset=force_reset, trust_checkpoint=trust_checkpoint, **kwargs,
        )  # fmt: skip
        model._after_load()
        return model

    def _after_load(self) -> None:
        """Exact resume: the random stream of the saved run continues (SB3's load reseeds it to the initial seed), and
        decisions of episodes that were running at save time, which are not saved, are counted as discarded."""
        th.set_rng_state(self._torch_rng_state.cpu())
        lost = int(self.__dict__.pop("pending_decisions_at_save", 0) or 0)
        if lost:
            self.discarded_decisions += lost
            self._lost_at_load = lost  # said when training resumes (a model loaded to evaluate is not warned)

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
        features = self.policy.encode(as_device_obs(obs, self.device))
        self._feature_memo = (obs, features) if self.policy.encoder_is_frozen else None
        return features

    def _encode_batch(self, batch: FlowDecisions):
        """Features of a training minibatch: the stored prefix features when the policy caches them, else the
        observations encoded once for the minibatch (with gradients for a trainable encoder, §3.6)."""
        if batch.features is not None:
            return self.policy.features_from_flat(batch.features)
        return self.policy.encode(batch.obs)

    def _step_outcome(self, rewards: np.ndarray, dones: np.ndarray, infos: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        """Fields stored with this env step's decisions that depend on the env's response (``(n_envs, ...)`` arrays)."""
        return {}

    def _label_rollout(self, rollout_buffer: DecisionBuffer) -> None:
        """Label decisions at the end of a complete rollout. An episode labeller labels the episodes finished so far
        (decisions of episodes without a label stay pending); a per-decision labeller (FlowPPO's GAE) labels every
        decision of the rollout at once through :meth:`_label_steps`."""
        if getattr(self.labeller, "per_decision", False):
            labels, fields = self._label_steps(rollout_buffer.rollout_steps())
            rollout_buffer.label_steps(labels, **fields)
            self._finished_episodes = []  # episode outcomes are not labels here
            return
        labels = self.labeller.label(self._finished_episodes)
        self._finished_episodes = [ep for ep in self._finished_episodes if ep.episode_id not in labels]
        rollout_buffer.label(labels)
        rollout_buffer.finish_rollout()
        self._watch_pending(rollout_buffer)

    def _watch_pending(self, rollout_buffer: DecisionBuffer) -> None:
        """Episodes that never end: warn once after ``UNLABELLED_WARNING_ITERATIONS`` iterations without a labelled
        decision, and keep at most :attr:`max_pending_decisions` pending (older ones are discarded and counted), so
        memory and the cost of a rollout stay bounded."""
        if rollout_buffer.n_labelled:
            self._iterations_without_label = 0
        else:
            self._iterations_without_label = getattr(self, "_iterations_without_label", 0) + 1
        if self._iterations_without_label >= UNLABELLED_WARNING_ITERATIONS and not getattr(self, "_warned_unlabelled", False):
            self._warned_unlabelled = True
            warnings.warn(
                f"{type(self).__name__}: no decision has been labelled for {self._iterations_without_label} iterations "
                f"({rollout_buffer.n_pending} pending): decisions are labelled only when their episode (or, for FlowGRPO, "
                "every member's round) ends, and no episode has. Give the env a time limit, e.g. "
                "gymnasium.wrappers.TimeLimit(env, max_episode_steps=...) or gymnasium.make(id, max_episode_steps=...).",
                stacklevel=2,
            )
        limit = self.max_pending_decisions
        if limit is None:
            limit = MAX_PENDING_ROLLOUTS * self.n_steps * self.n_envs
        dropped = rollout_buffer.cap_pending(int(limit))
        if dropped:
            self.discarded_decisions += dropped
            if not getattr(self, "_warned_pending_cap", False):
                self._warned_pending_cap = True
                warnings.warn(
                    f"{type(self).__name__}: more than {limit} decisions were pending (their episodes have not ended); "
                    f"the {dropped} oldest were discarded and counted in train/discarded_decisions. Shorten the episodes "
                    "(a time limit) or raise model.max_pending_decisions.",
                    stacklevel=2,
                )

    def _label_steps(self, steps: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Per-decision labels of a rollout's ``(n_steps, n_envs)`` fields, and more fields to store with them."""
        raise NotImplementedError

    def _on_episode_end(self, episode: FinishedEpisode, info: dict[str, Any]) -> None:
        """Called once per finished episode, during the rollout (checks that must fail early go here)."""
        on_episode_end = getattr(self.labeller, "on_episode_end", None)
        if on_episode_end is not None:
            on_episode_end(episode, info)

    # ------------------------------------------------------------------------------------------- the update
    def _training_data(self) -> dict[str, Any] | None:
        """The labelled decisions of this iteration (flat arrays), or None."""
        return self.rollout_buffer.pop_labelled()

    def _before_update(self, data: dict[str, Any] | None) -> None:
        """Called once per iteration before the first minibatch (per-iteration settings such as a clip range)."""

    def _loss(self, batch: FlowDecisions, index: np.ndarray) -> tuple[th.Tensor, dict[str, float]]:
        """The algorithm's loss of one minibatch and its statistics (``index``: rows of this iteration's data)."""
        raise NotImplementedError

    def _after_update(self, data: dict[str, Any] | None) -> None:
        """Called once per iteration after the gradient steps, also when there were none (StepNFT's EMA step)."""

    def _log_training(self, data: dict[str, Any] | None) -> None:
        """Algorithm-specific logs after an update."""

    def train(self) -> None:
        """The one update loop: ``n_epochs`` passes of shuffled minibatches over this iteration's labelled decisions,
        one :func:`~sb3_stepnft.common.optim.optimizer_step` of the algorithm's :meth:`_loss` each, then
        :meth:`_after_update`. An iteration without labelled decisions makes no step but still logs (§3.1).

        Data-parallel (a process group): ``batch_size`` is per rank; the gradients of every minibatch are averaged over
        the ranks (weighted by their minibatch sizes) before the clip and the step. All ranks make the same number of
        steps, the most minibatches of any rank: a rank with fewer labelled decisions makes its extra steps with an
        empty minibatch (zero weight), so an uneven end never leaves ranks waiting for each other."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        data = self._training_data()
        n_decisions = 0 if data is None else len(data["episode_id"])
        self._labelled_in_learn = getattr(self, "_labelled_in_learn", 0) + n_decisions
        self._before_update(data)
        stats = RunningMeans()
        n_minibatches = max_over_ranks(math.ceil(n_decisions / self.batch_size))  # one collective per iteration
        if n_minibatches:
            parameters = list(self.policy.trainable_parameters())
            on_device = self.rollout_buffer.holds_tensors(data)
            for _ in range(self.n_epochs):
                # the same CPU random stream on both paths; device-resident data: one copy of the permutation per epoch
                permutation = th.randperm(n_decisions)
                permutation = permutation.to(data["episode_id"].device) if on_device else permutation.numpy()
                for start in range(0, n_minibatches * self.batch_size, self.batch_size):
                    index = permutation[start : start + self.batch_size]
                    step_stats: dict[str, float] = {}
                    loss = optimizer_step(
                        self.policy.optimizer,
                        self._minibatch_losses(data, index, step_stats),
                        parameters,
                        self.max_grad_norm,
                        self._describe_non_finite,
                        partial(average_gradients, weight=len(index)) if is_distributed() else None,
                    )
                    if len(index):
                        step_stats["loss"] = loss
                        stats.add(step_stats)
            self._n_updates += self.n_epochs
            if n_decisions:
                loss_key, sample_key = self.divergence_keys
                check_divergence(self, loss=stats.means().get(loss_key), samples=data[sample_key])
        self._after_update(data)

        for key, value in stats.means().items():
            if self.logged_stats is None or key in self.logged_stats:
                self.logger.record(f"train/{key}", value)
        self.logger.record("train/n_labelled", n_decisions)
        self.logger.record("train/n_pending", self.rollout_buffer.n_pending)
        self.logger.record("train/discarded_decisions", self.discarded_decisions)
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self._log_training(data)

    def _minibatch_losses(
        self, data: dict[str, Any] | None, index: np.ndarray, step_stats: dict[str, float]
    ) -> Iterator[tuple[th.Tensor, float]]:
        """The losses of one minibatch as ``gradient_accumulation_steps`` micro-batches, each with its share of the
        minibatch as weight, computed one at a time (:func:`~sb3_stepnft.common.optim.optimizer_step` backpropagates
        each before asking for the next). Their statistics are averaged into ``step_stats`` with the same weights.
        An empty ``index`` (a data-parallel rank without data for this step) yields nothing."""
        if not len(index):
            return
        n_parts = min(getattr(self, "gradient_accumulation_steps", 1), len(index))
        parts = th.tensor_split(index, n_parts) if isinstance(index, th.Tensor) else np.array_split(index, n_parts)
        for part in parts:
            weight = 1.0 if n_parts == 1 else len(part) / len(index)
            batch = self.decision_type.from_batch(self.rollout_buffer.to_torch(data, part))
            loss, part_stats = self._loss(batch, part)
            for key, value in part_stats.items():
                step_stats[key] = step_stats.get(key, 0.0) + weight * float(value)
            yield loss, weight

    def _describe_non_finite(self, loss: float) -> str:
        return f"{type(self).__name__} loss is {loss} at update {self._n_updates}. {self._non_finite_hint}"

    # ----------------------------------------------------------------------------------------------- rollout
    def collect_rollouts(
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: DecisionBuffer,
        n_rollout_steps: int,
    ) -> bool:
        """Collect exactly ``n_rollout_steps`` steps per env, keeping SB3's callback order and local names.

        With a tensor VecEnv (:func:`~sb3_stepnft.common.tensor_env.is_tensor_env`) every local stays a device tensor
        (``actions``, ``rewards``, ``dones``; ``infos`` is the env's dict of batched tensors) and nothing is copied to
        the host per step; episodes are turned into labels from one host copy at the end of the rollout."""
        assert self._last_obs is not None, "No previous observation was provided"
        self.policy.set_training_mode(False)
        n_steps = 0
        rollout_buffer.reset()
        on_device = is_tensor_env(env)
        self._place_episode_tracking(self.device if on_device else None)
        if on_device:
            action_low, action_high = action_bounds(self.action_space, self.device)
        callback.on_rollout_start()
        self._on_rollout_start()

        while n_steps < n_rollout_steps:
            with th.no_grad(), self._rollout_context():
                # One encoder (VLM prefix) pass per observation, reused for all K solver steps (§3.6).
                features = self._encode_observation(self._last_obs)
                normalised, record = self._sample_decisions(features)
                if self.policy.cache_features:
                    record["features"] = self.policy.features_to_flat(features)
                actions = self.policy.to_env_units(normalised)
                if not on_device:
                    actions = actions.cpu().numpy()
            if on_device:  # the edge of the tensor path: actions go to the env's device (no copy on the same device)
                clipped_actions = th.clamp(actions, action_low, action_high).to(env.device)
            else:
                clipped_actions = np.clip(actions, self.action_space.low, self.action_space.high)
            new_obs, rewards, dones, infos = env.step(clipped_actions)
            self.num_timesteps += env.num_envs * get_world_size()  # global env steps (all data-parallel ranks)

            fields = record if on_device else {key: value.cpu().numpy() for key, value in record.items()}
            with th.no_grad():
                fields.update(self._step_outcome(rewards, dones, infos))
            rollout_buffer.add(self._last_obs, self._episode_ids, row_mask=self._executed_rows(infos), **fields)
            self._track_episodes(rewards, dones, infos)
            self._last_obs = new_obs  # type: ignore[assignment]
            self._last_episode_starts = dones

            # Give access to local variables (SB3 names: new_obs, rewards, dones, infos, actions)
            callback.update_locals(locals())
            if not callback.on_step():
                if on_device:
                    self._finish_episode_tracking()
                return self._all_ranks_continue(False)
            if not on_device:  # tensor path: the episode statistics are filled at the end of the rollout
                self._update_info_buffer(infos, dones)
            n_steps += 1

        if on_device:
            self._finish_episode_tracking()
        self._label_rollout(rollout_buffer)
        callback.update_locals(locals())
        callback.on_rollout_end()
        return self._all_ranks_continue(True)

    def _all_ranks_continue(self, continue_training: bool) -> bool:
        """Data-parallel: training goes on only if no rank's callback stopped it (one small all-reduce per rollout), so
        a callback that stops one rank (e.g. ``StopTrainingOnRewardThreshold`` on rank 0) stops them all instead of
        leaving the others waiting in the next update."""
        if not is_distributed():
            return continue_training
        return max_over_ranks(int(not continue_training)) == 0

    def _executed_rows(self, infos: list[dict[str, Any]] | dict[str, Any]) -> np.ndarray | th.Tensor:
        """``(n_envs, H)`` mask of the chunk rows that ran (``info["env_steps"]`` from ``ActionChunk``; a tensor env's
        batched ``infos["env_steps"]``)."""
        rows = self.policy.executed_rows
        if isinstance(infos, dict):  # a tensor env: one dict of batched tensors
            env_steps = infos.get("env_steps")
            if env_steps is None:
                return th.ones((self.n_envs, rows), dtype=th.bool, device=self.device)
            return th.arange(rows, device=self.device) < env_steps.to(self.device).reshape(-1, 1)
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
        if isinstance(self._episode_ids, th.Tensor):
            self._track_episodes_on_device(rewards, dones, infos)
            return
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

    # ------------------------------------------------------------------------------ device-resident bookkeeping
    def _place_episode_tracking(self, device: th.device | None) -> None:
        """Move the per-env episode bookkeeping to ``device`` (tensor VecEnvs) or back to NumPy (None); nothing moves
        when it is where it should be (a copy only when the kind of env changes, e.g. ``set_env``)."""
        names = ("_episode_ids", "_episode_success", "_episode_return", "_env_episode_counts")
        on_device = isinstance(self._episode_ids, th.Tensor)
        if device is None and on_device:
            for name in names:
                setattr(self, name, getattr(self, name).cpu().numpy())
            self._episode_length = self._next_episode_id_t = None
        elif device is not None and (not on_device or self._episode_ids.device != th.device(device)):
            for name in names:
                setattr(self, name, th.as_tensor(np.asarray(getattr(self, name)), device=device))
            self._episode_length = th.zeros(self.n_envs, dtype=th.long, device=device)
            self._next_episode_id_t = th.tensor(self._next_episode_id, dtype=th.long, device=device)
        if device is not None:
            self._episode_steps: list[dict[str, th.Tensor]] = []

    def _track_episodes_on_device(self, rewards: th.Tensor, dones: th.Tensor, infos: dict[str, Any]) -> None:
        """The bookkeeping of :meth:`_track_episodes` as tensor operations, without a host sync: the end-of-step state
        of every env is remembered and turned into :class:`FinishedEpisode`\\ s by :meth:`_finish_episode_tracking`.
        New episode ids are given to finished envs in env order, as the NumPy path does."""
        device = self._episode_ids.device
        rewards = rewards.to(device).reshape(self.n_envs)
        dones = dones.to(device).reshape(self.n_envs).bool()
        success = infos.get("is_success")
        self._episode_return += rewards
        self._episode_length += 1
        if success is not None:
            self._episode_success |= success.to(device).reshape(self.n_envs).bool()
        self._episode_steps.append(
            dict(
                done=dones,
                reward=rewards,
                episode_id=self._episode_ids.clone(),
                success=self._episode_success.clone(),
                has_flag=th.full((self.n_envs,), success is not None, dtype=th.bool, device=device),
                episode_return=self._episode_return.clone(),
                length=self._episode_length.clone(),
                env_episode_index=self._env_episode_counts.clone(),
            )
        )
        new_ids = self._next_episode_id_t + th.cumsum(dones, 0) - 1
        self._episode_ids = th.where(dones, new_ids, self._episode_ids)
        self._next_episode_id_t = self._next_episode_id_t + dones.sum()
        self._env_episode_counts += dones
        self._episode_success &= ~dones
        self._episode_return = th.where(dones, th.zeros_like(self._episode_return), self._episode_return)
        self._episode_length = th.where(dones, th.zeros_like(self._episode_length), self._episode_length)

    def _finish_episode_tracking(self) -> None:
        """End of a device-resident rollout: one host copy of the remembered end-of-step states, then, in the order
        of the NumPy path (step by step, env by env), the reward check, the :class:`FinishedEpisode`\\ s for the
        labeller, :meth:`_on_episode_end` and the ``rollout/*`` episode statistics."""
        steps, self._episode_steps = self._episode_steps, []
        if not steps:
            return
        host = {key: th.stack([step[key] for step in steps]).cpu().numpy() for key in steps[0]}
        for rewards in host["reward"]:
            check_finite_rewards(rewards)
        self._next_episode_id = int(self._next_episode_id_t.item())
        for t, i in zip(*np.nonzero(host["done"])):
            has_flag = bool(host["has_flag"][t, i])
            success = bool(host["success"][t, i])
            episode = FinishedEpisode(
                int(host["episode_id"][t, i]),
                int(i),
                success if has_flag else None,
                float(host["episode_return"][t, i]),
                int(host["env_episode_index"][t, i]),
            )
            self._finished_episodes.append(episode)
            info = {"is_success": success} if has_flag else {}
            self._on_episode_end(episode, info)
            self.ep_info_buffer.extend([{"r": episode.episode_return, "l": int(host["length"][t, i])}])
            if has_flag:
                self.ep_success_buffer.append(success)
