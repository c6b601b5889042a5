"""Demonstrations and flow-matching pretraining (SFT) of flow policies (ALGORITHM.md §1)."""

import os
import warnings
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.utils import obs_as_tensor

from sb3_stepnft.common.checks import action_bounds_report, check_finite_observations, check_positive_number
from sb3_stepnft.common.flow import flow_matching_interpolate, sample_flow_times
from sb3_stepnft.common.optim import optimizer_step
from sb3_stepnft.common.policies import DEFAULT_OPTIMIZER_KWARGS, BaseFlowPolicy

_OBS_PREFIX = "observations/"


@dataclass
class Demonstrations:
    """Demonstrated episodes, one row per underlying env step.

    :param observations: ``(N, *obs_shape)`` array, or a dict of such arrays for Dict observation spaces.
    :param actions: ``(N, A)`` actions in env units (or ``(N, *action_space.shape)`` to use chunks as they are).
    :param episode_starts: ``(N,)`` bool-like, True at the first step of each episode (the first row always counts).
    """

    observations: np.ndarray | dict[str, np.ndarray]
    actions: np.ndarray
    episode_starts: np.ndarray

    def __post_init__(self):
        self.actions = np.asarray(self.actions, dtype=np.float32)
        self.episode_starts = np.asarray(self.episode_starts).astype(bool).reshape(-1)
        if isinstance(self.observations, dict):
            self.observations = {key: np.asarray(value) for key, value in self.observations.items()}
            lengths = {len(value) for value in self.observations.values()}
        else:
            self.observations = np.asarray(self.observations)
            lengths = {len(self.observations)}
        lengths |= {len(self.actions), len(self.episode_starts)}
        if len(lengths) != 1:
            raise ValueError(f"observations, actions and episode_starts must have the same length, got {sorted(lengths)}")
        if len(self.actions) == 0:
            raise ValueError("Demonstrations are empty")
        if not np.all(np.isfinite(self.actions)):
            bad = int(np.nonzero(~np.isfinite(self.actions.reshape(len(self.actions), -1)).all(axis=1))[0][0])
            raise ValueError(f"Demonstration actions contain NaN or inf (first at step {bad}): remove or fix those steps")
        check_finite_observations(self.observations)
        if len(self.episode_starts):
            self.episode_starts[0] = True

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def n_episodes(self) -> int:
        return int(self.episode_starts.sum())

    def save(self, path: str | os.PathLike) -> None:
        """Save as ``.npz`` (written to a temporary file first, so a failed save leaves no partial file)."""
        path = os.fspath(path)
        if not path.endswith(".npz"):
            path += ".npz"
        arrays: dict[str, np.ndarray] = {"actions": self.actions, "episode_starts": self.episode_starts}
        if isinstance(self.observations, dict):
            arrays.update({_OBS_PREFIX + key: value for key, value in self.observations.items()})
        else:
            arrays["observations"] = self.observations
        tmp = path + ".tmp.npz"
        try:
            with open(tmp, "wb") as file:
                np.savez_compressed(file, **arrays)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Demonstrations":
        """Load demonstrations saved by :meth:`save` (``.npz`` is added to a path without it, as :meth:`save` does)."""
        if not os.path.exists(path) and os.path.exists(os.fspath(path) + ".npz"):
            path = os.fspath(path) + ".npz"
        if not os.path.exists(path):
            raise FileNotFoundError(f"No demonstrations file at {path} (nor {os.fspath(path)}.npz): check the path")
        if not zipfile.is_zipfile(path):
            raise ValueError(f"Cannot read demonstrations from {path}: not an .npz archive (corrupted or foreign file)")
        try:
            with np.load(path, allow_pickle=False) as data:
                files = set(data.files)
                if not {"actions", "episode_starts"} <= files:
                    raise ValueError(f"{path} is not a Demonstrations file (arrays: {sorted(files)})")
                if "observations" in files:
                    observations: Any = data["observations"]
                else:
                    observations = {k[len(_OBS_PREFIX) :]: data[k] for k in files if k.startswith(_OBS_PREFIX)}
                return cls(observations, data["actions"], data["episode_starts"])
        except (OSError, EOFError, zipfile.BadZipFile) as error:
            raise ValueError(f"Cannot read demonstrations from {path}: {error}") from error


def record_demonstrations(env, n_episodes: int, seed: int, episode_actor) -> tuple[Demonstrations, float]:
    """Record ``n_episodes`` episodes of a scripted demonstrator in ``env``.

    Episode ``e`` starts with ``env.reset(seed=seed * 100_003 + e)``; ``episode_actor(obs, info)`` is called once after
    each reset and returns the episode's ``obs -> action`` function (which may hold per-episode choices such as a goal
    or a detour). Dict observation spaces give per-key arrays.

    :return: the :class:`Demonstrations` and the share of episodes with ``info["is_success"]`` at some step.
    """
    keys = list(env.observation_space.spaces) if isinstance(env.observation_space, spaces.Dict) else None
    observations: Any = {key: [] for key in keys} if keys is not None else []
    actions, starts, successes = [], [], []
    for episode in range(n_episodes):
        obs, info = env.reset(seed=seed * 100_003 + episode)
        act = episode_actor(obs, info)
        done, first, success = False, True, False
        while not done:
            action = act(obs)
            if keys is not None:
                for key in keys:
                    observations[key].append(obs[key])
            else:
                observations.append(obs)
            actions.append(action)
            starts.append(first)
            first = False
            obs, _, terminated, truncated, info = env.step(action)
            done = terminated or truncated
            success = success or bool(info["is_success"])
        successes.append(success)
    stacked = {key: np.stack(values) for key, values in observations.items()} if keys is not None else np.array(observations)
    demos = Demonstrations(observations=stacked, actions=np.array(actions), episode_starts=np.array(starts))
    return demos, float(np.mean(successes))


def build_chunks(demos: Demonstrations, rows: int, action_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Chunks of ``rows`` consecutive actions inside each episode, and the mask of rows before the episode's end.

    :return: ``(N, rows, A)`` actions (rows past the end repeat the last action) and an ``(N, rows)`` bool mask.
    """
    actions = demos.actions
    n = len(actions)
    if actions.shape[1:] == tuple(action_shape) and len(action_shape) == 2:
        return actions, np.ones((n, action_shape[0]), dtype=bool)  # chunks given as they are
    actions = actions.reshape(n, -1)
    episode = np.cumsum(demos.episode_starts) - 1
    index = np.arange(n)[:, None] + np.arange(rows)[None, :]
    clipped = np.minimum(index, n - 1)
    mask = (index < n) & (episode[clipped] == episode[:, None])
    # Rows past the end of the episode repeat its last action (masked out of the loss anyway).
    last_valid = np.where(mask, index, -1).max(axis=1, keepdims=True)
    chunks = actions[np.where(mask, index, last_valid)]
    return chunks, mask


def _policy_of(model_or_policy) -> BaseFlowPolicy:
    policy = model_or_policy.policy if isinstance(model_or_policy, BaseAlgorithm) else model_or_policy
    if not isinstance(policy, BaseFlowPolicy):
        raise TypeError(f"pretrain needs a flow policy or an algorithm with one, got {type(policy).__name__}")
    return policy


def pretrain(
    model_or_policy,
    demos: Demonstrations,
    *,
    epochs: int = 100,
    batch_size: int = 64,
    learning_rate: float = 3e-4,
    seed: int | None = None,
    progress_bar: bool = False,
    action_bounds: str = "warn",
) -> dict[str, float]:
    """Fit the policy's velocity field to demonstrations with the flow-matching loss (ALGORITHM.md §1).

    ``‖v_θ(x_t, t, obs) - (ε - a)‖²`` over executed rows and real action dims, with ``x_t = t·ε + (1-t)·a`` and
    ``t = 0.999·Beta(1.5, 1) + 0.001``. Trains the student with its own AdamW (the RL optimizer is left as it
    is), then sets θ_old ← θ on an algorithm with an EMA rollout policy. ``num_timesteps`` is unchanged.

    Observations are normalised with the model's ``VecNormalize`` statistics when it has one, and image observations
    are brought into the policy's layout: SB3 wraps channel-last image envs in ``VecTransposeImage``, so a model
    built on such an env expects ``C x H x W`` while demonstrations recorded from the env hold ``H x W x C``; those
    are transposed (:func:`to_policy_layout`).

    :param model_or_policy: A StepNFT/FlowPPO/FlowGRPO model or a bare flow policy.
    :param demos: The demonstrations (actions in env units; images channel-last or channel-first).
    :param epochs: Passes over the demonstration steps.
    :param batch_size: Minibatch size.
    :param learning_rate: Learning rate of the pretraining optimizer.
    :param seed: Seed of the minibatch order, flow times and noise (None: torch's global generator state).
    :param progress_bar: Show a progress bar over epochs.
    :param action_bounds: What to do with demonstrated actions outside the action space's bounds (the flow learns
        actions in [-1, 1], so they are clipped to the bounds): ``"warn"`` (clip, with a warning giving the fraction
        clipped), ``"error"`` (raise a ValueError) or ``"clip"`` (clip silently).
    :return: ``dict(loss=..., initial_loss=..., gradient_steps=..., samples=..., episodes=...)``.
    """
    policy = _policy_of(model_or_policy)
    check_positive_number("epochs", epochs, integer=True)
    check_positive_number("batch_size", batch_size, integer=True)
    check_positive_number("learning_rate", learning_rate)
    if action_bounds not in ("warn", "error", "clip"):
        raise ValueError(f"action_bounds must be 'warn', 'error' or 'clip', got {action_bounds!r}")
    _check_action_width(policy, demos)
    device = policy.device
    generator = th.Generator(device="cpu")
    generator.manual_seed(int(seed) if seed is not None else int(th.randint(0, 2**31 - 1, (1,)).item()))

    observations = demos.observations
    vec_normalize = getattr(model_or_policy, "_vec_normalize_env", None)
    if vec_normalize is not None:
        observations = vec_normalize.normalize_obs(observations)
    observations = to_policy_layout(observations, policy.observation_space)
    _check_observations(policy, observations)
    chunks, row_mask = build_chunks(demos, policy.executed_rows, policy.action_space.shape)
    targets = th.as_tensor(chunks, dtype=th.float32).reshape(len(demos), policy.executed_rows, policy.real_action_dim)
    _check_action_bounds(policy, targets.numpy(), row_mask, action_bounds)
    targets = policy.to_normalised(targets.to(device)).clamp(-1.0, 1.0)
    row_mask_t = th.as_tensor(row_mask, device=device)

    trainable = policy.trainable_parameters()  # a frozen VLA backbone is left out
    optimizer = th.optim.AdamW(trainable, lr=learning_rate, **DEFAULT_OPTIMIZER_KWARGS)  # ALGORITHM.md §3.7
    policy.set_training_mode(True)
    n = len(demos)
    losses: list[float] = []
    epoch_iter = range(epochs)
    if progress_bar:
        from tqdm.auto import tqdm

        epoch_iter = tqdm(epoch_iter, desc="pretrain", unit="epoch")
    for _ in epoch_iter:
        permutation = th.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            index = permutation[start : start + batch_size]
            obs = obs_as_tensor(_take(observations, index.numpy()), device)
            actions = targets[index.to(device)]
            mask = row_mask_t[index.to(device)]
            t = sample_flow_times(len(index), generator=generator).to(device)
            noise = th.randn((len(index), policy.chunk_size, policy.action_dim), generator=generator).to(device)
            padded = th.zeros_like(noise)
            padded[:, : policy.executed_rows, : policy.real_action_dim] = actions
            x_t, velocity_target = flow_matching_interpolate(padded, noise, t)
            prediction = policy.velocity(x_t, t, policy.encode(obs))
            error = (policy.executed(prediction) - policy.executed(velocity_target)) ** 2
            element_mask = mask[..., None].expand_as(error)
            loss = error[element_mask].mean()
            losses.append(optimizer_step(optimizer, loss, trainable, 1.0, _pretrain_non_finite))
    policy.set_training_mode(False)
    ema = getattr(model_or_policy, "ema", None)
    if ema is not None:
        ema.copy_from_student()  # θ_old ← θ
    tail = losses[-max(1, len(losses) // 20) :]
    return dict(
        loss=float(np.mean(tail)),
        initial_loss=float(losses[0]),
        gradient_steps=len(losses),
        samples=n,
        episodes=demos.n_episodes,
    )


def _pretrain_non_finite(loss: float) -> str:
    return (
        f"pretrain: the flow-matching loss is {loss}; lower learning_rate, and check the demonstrations' observations "
        "and actions for NaN/inf"
    )


def to_policy_layout(observations, observation_space: spaces.Space):
    """Demonstration observations with channel-last images (``N x H x W x C``) transposed to the channel-first layout
    (``N x C x H x W``) of ``observation_space``, per key for Dict spaces.

    An array is transposed only when the space is a 3-D Box of shape ``(C, H, W)`` and the array's per-step shape is
    ``(H, W, C)`` instead; everything else is returned as it is (``pretrain`` reports shapes that still do not fit).
    A transposed array is a contiguous copy (the same numbers in memory as channel-first demonstrations).

    :param observations: An ``(N, ...)`` array, or a dict of them.
    :param observation_space: The policy's (or model's) observation space.
    """
    if isinstance(observation_space, spaces.Dict):
        if not isinstance(observations, dict):
            return observations
        return {key: _channel_first(value, observation_space.spaces.get(key)) for key, value in observations.items()}
    if isinstance(observations, dict):
        return observations
    return _channel_first(observations, observation_space)


def _channel_first(array: np.ndarray, space: spaces.Space | None) -> np.ndarray:
    if not isinstance(space, spaces.Box) or len(space.shape) != 3 or np.ndim(array) != 4:
        return array
    channels, height, width = space.shape
    if tuple(array.shape[1:]) == tuple(space.shape) or tuple(array.shape[1:]) != (height, width, channels):
        return array
    return np.ascontiguousarray(np.moveaxis(array, -1, 1))


def _check_action_width(policy: BaseFlowPolicy, demos: Demonstrations) -> None:
    """ValueError unless the demonstrated actions are ``(N, A)`` steps or ``(N, *action_space.shape)`` chunks."""
    per_step = tuple(demos.actions.shape[1:])
    shape = tuple(policy.action_space.shape)
    if per_step == shape or int(np.prod(per_step, dtype=np.int64)) == policy.real_action_dim:
        return
    raise ValueError(
        f"Demonstration actions have shape {per_step} per step, but the policy's action space {policy.action_space} "
        f"needs {policy.real_action_dim} values per env step (shape ({policy.real_action_dim},)) or whole chunks of "
        f"shape {shape}. Record the actions of the env the model acts in (same action wrappers)."
    )


def _check_action_bounds(policy: BaseFlowPolicy, targets: np.ndarray, row_mask: np.ndarray, mode: str) -> None:
    """Report demonstrated actions outside the action space's bounds (they are clipped to the bounds)."""
    if mode == "clip":
        return
    low = policy._action_low.cpu().numpy()[None]
    high = policy._action_high.cpu().numpy()[None]
    valid = np.broadcast_to(row_mask[..., None], targets.shape)
    fraction, excess = action_bounds_report(targets[valid], np.broadcast_to(low, targets.shape)[valid],
                                            np.broadcast_to(high, targets.shape)[valid])  # fmt: skip
    if fraction == 0.0:
        return
    message = (
        f"pretrain: {fraction:.1%} of the demonstrated action values lie outside the action space's bounds (by up to "
        f"{excess:.3g} times the range); the flow learns actions inside the bounds, so they are clipped. Check that the "
        "demonstrations use the env's action units and wrappers (e.g. RescaleAction), clip them yourself, or pass "
        "action_bounds='clip' to accept the clipping silently."
    )
    if mode == "error":
        raise ValueError(message.replace("so they are clipped", "so they would be clipped"))
    warnings.warn(message, UserWarning, stacklevel=3)


def _take(observations, index: np.ndarray):
    if isinstance(observations, dict):
        return {key: value[index] for key, value in observations.items()}
    return observations[index]


def _check_observations(policy: BaseFlowPolicy, observations) -> None:
    space = policy.observation_space
    if hasattr(space, "spaces") and isinstance(space.spaces, dict):
        if not isinstance(observations, dict):
            raise ValueError(f"The policy expects dict observations with keys {sorted(space.spaces)}, got an array")
        missing = set(space.spaces) - set(observations)
        if missing:
            raise ValueError(
                f"Demonstration observations lack the keys {sorted(missing)} of the observation space "
                f"(given: {sorted(observations)})"
            )
        return
    if isinstance(observations, dict):
        raise ValueError("The policy expects array observations, but the demonstrations hold a dict")
    if tuple(observations.shape[1:]) != tuple(space.shape):
        raise ValueError(
            f"Demonstration observations have shape {tuple(observations.shape[1:])} per step, "
            f"the observation space expects {tuple(space.shape)}"
        )
