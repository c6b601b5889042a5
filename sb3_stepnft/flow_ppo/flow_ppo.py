"""Flow-SDE + PPO: the πRL actor-critic baseline for flow policies (ALGORITHM.md §4)."""

import math
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.type_aliases import GymEnv, Schedule
from stable_baselines3.common.utils import FloatSchedule, explained_variance

from sb3_stepnft.common.distributed import is_distributed, sum_over_ranks
from sb3_stepnft.common.on_policy import check_positive
from sb3_stepnft.common.policies import FlowPolicy
from sb3_stepnft.common.policy_gradient import FlowPolicyGradient, check_schedule_or_positive
from sb3_stepnft.common.records import PPODecisions
from sb3_stepnft.common.surrogate import DUAL_CLIP, clipped_value_loss
from sb3_stepnft.common.tensor_env import as_device_obs, take_obs, to_numpy
from sb3_stepnft.flow_ppo.gae import GAE

ADVANTAGE_EPS = 1e-5  # πRL's advantage normalisation, over the whole rollout (unbiased std, as torch.std)


class FlowPPO(FlowPolicyGradient):
    """PPO for flow-matching policies with Flow-SDE log-likelihoods (the πRL baseline "Flow-SDE + PPO").

    Papers: "πRL: Online RL Fine-tuning for Flow-based Vision-Language-Action Models" (Chen et al.), the baseline
    of "Wider Space Needs Finer Steps in Online RL for Flow-based VLAs" (Wang et al.); PPO: Schulman et al. (2017).
    Rollouts are Euler chains with one Flow-SDE step j (shared by the env batch); ``log π`` of a chunk is the
    Gaussian log-likelihood of that step. A critic on the detached observation features gives GAE advantages.

    :param policy: The flow policy (``"MlpPolicy"``, ``"CnnPolicy"``, ``"MultiInputPolicy"`` or a class); FlowPPO
        builds it with its value head (``value_head=True``).
    :param env: The environment (a Gymnasium env, a registered id or an SB3 VecEnv).
    :param learning_rate: Learning rate of the actor (AdamW), or a schedule of the remaining progress.
    :param n_steps: Env steps per env per rollout (one iteration).
    :param batch_size: Minibatch size of the update.
    :param n_epochs: Passes over the rollout per iteration.
    :param gamma: Discount factor of GAE, per decision.
    :param gae_lambda: λ of GAE.
    :param num_denoise_steps: K, solver steps per chunk (the policy's solver owns it: a value in ``policy_kwargs``
        is used when this is left at its default; two different values set in both places are an error).
    :param noise_level: ``a``, the noise level of the one Flow-SDE step of the rollouts (πRL: 0.5; the same rule).
    :param clip_range: ε of the clipped surrogate (or a schedule).
    :param dual_clip: πRL's dual clip ``clip_ratio_c``: for A < 0 the loss is capped at ``dual_clip·|A|`` (None: off).
    :param clip_range_vf: Clip of the value change around the rollout's estimate (or a schedule); None disables it.
    :param vf_coef: Weight of the critic loss.
    :param vf_huber_delta: δ of the Huber critic loss.
    :param critic_learning_rate: Learning rate of the critic (or a schedule); None: the same as ``learning_rate``.
    :param normalize_advantage: Normalise the advantages over the whole rollout (πRL, the default), as SB3's PPO
        argument of the same name; False trains on the raw GAE advantages.
    :param max_grad_norm: Gradient-norm clip (actor and critic together, as SB3's PPO).
    :param stats_window_size: Episodes averaged in the rollout logs.
    :param tensorboard_log: TensorBoard log directory (None: no logging).
    :param policy_kwargs: Keyword arguments of the policy (``net_arch=dict(pi=[...], vf=[...])``, ...).
    :param verbose: 0 none, 1 info, 2 debug.
    :param seed: Seed of the random generators.
    :param device: Torch device.
    :param _init_setup_model: Whether to build the networks at construction.
    :param gradient_accumulation_steps: Micro-batches per minibatch whose gradients are accumulated before the one
        optimiser step (less activation memory, the same step within float tolerance).
    """

    decision_type = PPODecisions

    def __init__(
        self,
        policy: str | type[FlowPolicy],
        env: GymEnv | str | None,
        learning_rate: float | Schedule = 1e-4,
        n_steps: int = 128,
        batch_size: int = 256,
        n_epochs: int = 8,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        num_denoise_steps: int = 4,
        noise_level: float = 0.5,
        clip_range: float | Schedule = 0.2,
        dual_clip: float | None = DUAL_CLIP,
        clip_range_vf: float | Schedule | None = 0.2,
        vf_coef: float = 1.0,
        vf_huber_delta: float = 10.0,
        critic_learning_rate: float | Schedule | None = None,
        normalize_advantage: bool = True,
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
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {gamma!r}")
        if not 0.0 <= gae_lambda <= 1.0:
            raise ValueError(f"gae_lambda must be in [0, 1], got {gae_lambda!r}")
        if clip_range_vf is not None:
            check_schedule_or_positive("clip_range_vf", clip_range_vf)
        if critic_learning_rate is not None:
            check_schedule_or_positive("critic_learning_rate", critic_learning_rate)
        check_positive("vf_coef", vf_coef, allow_zero=True)
        check_positive("vf_huber_delta", vf_huber_delta)
        if (policy_kwargs or {}).get("value_head", True) is False:
            raise ValueError("FlowPPO trains a critic on the policy's value head: remove value_head=False from policy_kwargs")
        self.clip_range_vf = clip_range_vf
        self.vf_huber_delta = float(vf_huber_delta)
        self.critic_learning_rate = critic_learning_rate
        if not isinstance(normalize_advantage, (bool, np.bool_)):
            raise TypeError(f"normalize_advantage must be True or False, got {normalize_advantage!r}")
        self.normalize_advantage = bool(normalize_advantage)
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
            _init_setup_model=_init_setup_model,
        )

    def _setup_model(self) -> None:
        super()._setup_model()
        if self.clip_range_vf is not None:
            self.clip_range_vf = FloatSchedule(self.clip_range_vf)
        # None: the critic follows learning_rate's schedule; otherwise its own (§4, two AdamW groups).
        self.critic_lr_schedule = (
            self.lr_schedule if self.critic_learning_rate is None else FloatSchedule(self.critic_learning_rate)
        )

    def _policy_kwargs(self) -> dict[str, Any]:
        return {**super()._policy_kwargs(), "value_head": True}

    def _update_learning_rate(self, optimizers) -> None:
        """Each optimiser group follows its own schedule: ``"actor"`` ``learning_rate``, ``"critic"``
        ``critic_learning_rate``; both are logged."""
        actor_lr = self.lr_schedule(self._current_progress_remaining)
        critic_lr = self.critic_lr_schedule(self._current_progress_remaining)
        self.logger.record("train/learning_rate", actor_lr)
        self.logger.record("train/critic_learning_rate", critic_lr)
        for group in self.policy.optimizer.param_groups:
            group["lr"] = critic_lr if group.get("name") == "critic" else actor_lr

    # ----------------------------------------------------------------------------------------------- rollout
    def _sample_decisions(self, features) -> tuple[th.Tensor, dict[str, th.Tensor]]:
        chunk, record = self._sample_hybrid(features)
        record["value"] = self.policy.value_from_features(features).flatten()
        return chunk, record

    def _step_outcome(self, rewards: np.ndarray, dones: np.ndarray, infos: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        """The decision's reward (a chunk's rewards are already summed by ``ActionChunk``), bootstrapped with
        ``γ·V(terminal observation)`` at a time-limit truncation as SB3's PPO does, and whether the episode ended.

        A tensor env (batched ``infos``): the same on the device, with one host sync of one bool per step (whether any
        env was truncated) so that the critic runs only on the truncated envs' terminal observations."""
        if isinstance(infos, dict):
            return self._step_outcome_on_device(rewards, dones, infos)
        rewards = np.array(rewards, dtype=np.float32, copy=True)  # callbacks still see the env's rewards
        for index, done in enumerate(dones):
            info = infos[index]
            if done and info.get("terminal_observation") is not None and info.get("TimeLimit.truncated", False):
                terminal_obs = self.policy.obs_to_tensor(info["terminal_observation"])[0]
                rewards[index] += self.gamma * float(self.policy.predict_values(terminal_obs)[0].item())
        return dict(reward=rewards, done=np.asarray(dones, dtype=bool))

    def _step_outcome_on_device(self, rewards: th.Tensor, dones: th.Tensor, infos: dict[str, Any]) -> dict[str, th.Tensor]:
        rewards = rewards.to(self.device, th.float32).reshape(self.n_envs).clone()  # callbacks still see the env's
        dones = dones.to(self.device).reshape(self.n_envs).bool()
        truncated, terminal = infos.get("TimeLimit.truncated"), infos.get("terminal_observation")
        if truncated is not None and terminal is not None:
            bootstrap = dones & truncated.to(self.device).reshape(self.n_envs).bool()
            if bootstrap.any():  # the one host sync per step of FlowPPO's tensor path
                index = bootstrap.nonzero().flatten()
                terminal_obs = as_device_obs(take_obs(terminal, index.to(_device_of(terminal))), self.device)
                rewards[index] += self.gamma * self.policy.predict_values(terminal_obs).flatten().float()
        return dict(reward=rewards, done=dones)

    def _make_labeller(self) -> GAE:
        return GAE(self.gamma, self.gae_lambda)

    def _label_steps(self, steps: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """GAE advantages for every decision of the rollout: FlowPPO never keeps decisions pending."""
        with th.no_grad():
            last_features = self._encode_observation(self._last_obs)  # reused by the next rollout's first step
            last_values = self.policy.value_from_features(last_features).flatten()
            if not isinstance(steps["reward"], th.Tensor):  # device-resident rollouts keep the values on the device
                last_values = last_values.cpu().numpy()
        advantages, returns = self.labeller.label(steps, last_values)
        return advantages, dict(returns=returns)

    # ------------------------------------------------------------------------------------------------- train
    def _training_data(self) -> dict[str, Any] | None:
        data = self.rollout_buffer.pop_labelled()
        if not self.normalize_advantage:
            return data
        if is_distributed():
            return self._normalise_over_ranks(data)
        if data is not None:
            # Normalised over the whole rollout, not per minibatch (πRL: unbiased torch.std + 1e-5); returns are not.
            # Device-resident rollouts (tensors) are normalised where they are.
            on_device = isinstance(data["label"], th.Tensor)
            advantages = data["label"].double() if on_device else data["label"].astype(np.float64)
            std = (advantages.std() if on_device else advantages.std(ddof=1)) if len(advantages) > 1 else 0.0
            normalised = (advantages - advantages.mean()) / (std + ADVANTAGE_EPS)
            data["label"] = normalised.float() if on_device else normalised.astype(np.float32)
        return data

    def _normalise_over_ranks(self, data: dict[str, Any] | None) -> dict[str, Any] | None:
        """Data-parallel: the advantages are normalised with the mean and unbiased std of the rollouts of *all* ranks
        (one all-reduce of count, sum and sum of squares), so N ranks normalise as one process with N times the envs
        would. Every rank takes part, also one without data."""
        device = data["label"].device if data is not None and isinstance(data["label"], th.Tensor) else None
        if device is not None:  # device-resident data: one copy each way per iteration
            data["label"] = data["label"].cpu().numpy()
        advantages = np.zeros(0) if data is None else data["label"].astype(np.float64)
        count, total, squares = sum_over_ranks([len(advantages), advantages.sum(), (advantages**2).sum()])
        if data is None or count == 0:
            return data
        mean = total / count
        std = math.sqrt(max(squares - count * mean**2, 0.0) / (count - 1)) if count > 1 else 0.0
        data["label"] = ((advantages - mean) / (std + ADVANTAGE_EPS)).astype(np.float32)
        if device is not None:
            data["label"] = th.as_tensor(data["label"], device=device)
        return data

    def _extra_loss(self, batch: PPODecisions, features, stats: dict[str, float]) -> th.Tensor:
        values = self.policy.value_from_features(features).flatten()  # features detached inside: no encoder gradient
        clip_range_vf = None if self.clip_range_vf is None else self.clip_range_vf(self._current_progress_remaining)
        value_loss = clipped_value_loss(values, batch.value, batch.returns, clip_range_vf, self.vf_huber_delta)
        stats["value_loss"] = float(value_loss.item())
        return self.vf_coef * value_loss

    def _log_training(self, data: dict[str, Any] | None) -> None:
        if data is not None:
            values, returns = to_numpy(data["value"]), to_numpy(data["returns"])  # one copy each on device-resident data
            self.logger.record("train/explained_variance", float(explained_variance(values, returns)))
        if self.clip_range_vf is not None:
            self.logger.record("train/clip_range_vf", self.clip_range_vf(self._current_progress_remaining))


def _device_of(obs: Any) -> th.device:
    return next(iter(obs.values())).device if isinstance(obs, dict) else obs.device
