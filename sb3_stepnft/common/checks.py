"""Validation helpers: each turns a bad input into an error (or warning) that names the problem and the fix.

Pure functions and small stateful monitors, called from the algorithms, policies, wrappers and ``pretrain`` with one
line at each call site (see docs/safety.md, "What is checked").
"""

import math
import numbers
import warnings
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium import spaces

#: Smallest ``noise_level`` of a stochastic (SDE) flow step. The step's standard deviation is
#: ``s_k = sqrt(Δ)·σ_k`` with ``σ_k ∝ noise_level``; StepNFT's errors divide by ``s_k² + 1e-4``, so below ~1e-2 the
#: ranking logit shrinks in proportion to ``noise_level`` and is identically 0 at 0 (loss exactly log 2, no
#: learning); near 1e-6, ``x_{k+1} - μ_k`` is float32 rounding. The policy-gradient baselines' log-likelihood ratios
#: become hypersensitive the same way (log π ∝ 1/s_k²).
NOISE_LEVEL_MIN = 1e-3
#: Largest ``noise_level``: the first Flow-SDE step keeps ``A_0 = 1 - noise_level²/2`` of the state; above 2 it is
#: below -1, so every stochastic step amplifies the state (``noise_level=1000`` gives samples of ~1e22).
NOISE_LEVEL_MAX = 2.0


# ------------------------------------------------------------------------------------------------- numbers
def is_real_number(value: Any) -> bool:
    """A real number that is not a bool (NumPy scalars included)."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def check_positive_number(name: str, value: Any, integer: bool = False, allow_zero: bool = False) -> None:
    """ValueError naming ``name`` unless ``value`` is a finite positive (or non-negative) number (an integer if asked)."""
    ok = is_real_number(value) and math.isfinite(float(value))
    ok = ok and (value >= 0 if allow_zero else value > 0) and (not integer or int(value) == value)
    if not ok:
        kind = "integer" if integer else "number"
        raise ValueError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} {kind}, got {value!r}")


def check_noise_level(noise_level: Any, stochastic: bool = True, algorithm: str = "") -> float:
    """Validate the Flow-SDE ``noise_level`` a: within ``[NOISE_LEVEL_MIN, NOISE_LEVEL_MAX]`` when rollouts take
    stochastic steps (``stochastic=False``, e.g. StepNFT's ``sampler="ode"``: only ``0 <= a <= NOISE_LEVEL_MAX``)."""
    prefix = f"{algorithm}: " if algorithm else ""
    if not is_real_number(noise_level) or not math.isfinite(float(noise_level)):
        raise ValueError(f"{prefix}noise_level must be a finite number, got {noise_level!r}")
    value = float(noise_level)
    if value > NOISE_LEVEL_MAX:
        raise ValueError(
            f"{prefix}noise_level={value:g} is above the maximum {NOISE_LEVEL_MAX:g}: the first Flow-SDE step then "
            f"multiplies the state by 1 - a²/2 = {1 - value**2 / 2:.3g} (|.| > 1), so samples explode. "
            "Use a noise level in [0.1, 1] (the papers use 0.2 to 0.5)."
        )
    if stochastic and value < NOISE_LEVEL_MIN:
        raise ValueError(
            f"{prefix}noise_level={value:g} is below the minimum {NOISE_LEVEL_MIN:g}: the stochastic steps then carry "
            "(almost) no noise, so the learning signal vanishes (StepNFT's ranking logit is 0 and its loss exactly "
            "log 2 at noise_level=0; the baselines' likelihood ratios blow up). Use a noise level in [0.1, 1] "
            "(the papers use 0.2 to 0.5)."
        )
    if value < 0:
        raise ValueError(f"{prefix}noise_level must be >= 0, got {value!r}")
    return value


def check_schedule(name: str, schedule: Any, allow_zero_at_end: bool = True) -> None:
    """Validate a schedule (a callable of the remaining progress) like a constant: it is evaluated at progress 1,
    0.5 and 0, and each value must be a finite number, positive at the start and never negative (0 is accepted at
    the end of training unless ``allow_zero_at_end=False``: a linear decay to 0 is common)."""
    if not callable(schedule):
        check_positive_number(name, schedule)
        return
    for progress in (1.0, 0.5, 0.0):
        try:
            value = schedule(progress)
        except Exception as error:  # noqa: BLE001 - any failure of the user's function is reported with its name
            raise ValueError(
                f"{name} is a schedule, but calling it with the remaining progress {progress} raised "
                f"{type(error).__name__}: {error}. A schedule must be a function of one float in [0, 1] (1 at the start "
                "of training) that returns a number."
            ) from error
        if isinstance(value, np.ndarray) and value.size == 1:
            value = value.reshape(()).item()
        if not is_real_number(value) or not math.isfinite(float(value)):
            raise ValueError(f"{name}({progress}) returned {value!r}: a schedule must return a finite number")
        minimum_ok = value > 0 if (progress > 0 or not allow_zero_at_end) else value >= 0
        if not minimum_ok:
            raise ValueError(
                f"{name}({progress}) returned {value!r}: the schedule must stay positive"
                f"{' (0 is accepted only at the end, progress 0)' if allow_zero_at_end else ''}, as a constant {name} must"
            )


# ------------------------------------------------------------------------------------------------- spaces
def check_observation_space(observation_space: spaces.Space) -> None:
    """Reject observation spaces the flow policies cannot encode, as SB3's PPO does (Tuple, Sequence, Graph...)."""
    if isinstance(observation_space, spaces.Tuple):
        raise NotImplementedError(
            "Tuple observation spaces are not supported (as in SB3's PPO). Use a Dict observation space instead, e.g. "
            "gymnasium.wrappers.TransformObservation(env, lambda obs: dict(enumerate(obs)) ...) with string keys, or "
            "flatten the observation with gymnasium.wrappers.FlattenObservation."
        )
    if isinstance(observation_space, spaces.Dict):
        for key, space in observation_space.spaces.items():
            if isinstance(space, (spaces.Dict, spaces.Tuple)):
                raise NotImplementedError(
                    f"Nested observation spaces are not supported (key {key!r} holds a {type(space).__name__}, as in "
                    "SB3's PPO): flatten the inner space into the outer Dict."
                )
            check_observation_space(space)
        return
    supported = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)
    if not isinstance(observation_space, supported):
        raise NotImplementedError(
            f"{type(observation_space).__name__} observation spaces are not supported: use Box, Discrete, "
            "MultiDiscrete, MultiBinary or a Dict of them (as SB3's PPO)."
        )


class UnsupportedActionSpaceError(AssertionError):
    """An action space the flow algorithms cannot use. A subclass of the AssertionError SB3 raises for it
    (``supported_action_spaces``), with a message that says what to do instead."""


def check_algorithm_action_space(action_space: spaces.Space, algorithm: str) -> None:
    """:class:`UnsupportedActionSpaceError` unless ``action_space`` is a Box with finite bounds: the checks SB3's
    ``BaseAlgorithm`` makes with bare assertions, made before them with the fix in the message."""
    if not isinstance(action_space, spaces.Box):
        alternatives = "SB3's PPO, A2C or DQN" if isinstance(action_space, spaces.Discrete) else "SB3's PPO or A2C"
        raise UnsupportedActionSpaceError(
            f"{algorithm} only supports Box (continuous) action spaces, got {action_space}: its flow-matching policy "
            f"generates real-valued action vectors. For this action space use {alternatives}; for a task with "
            "continuous controls, give the env a gymnasium.spaces.Box action space."
        )
    if not _finite_bounds(action_space):
        raise UnsupportedActionSpaceError(f"{algorithm}: {_infinite_bounds_message(action_space)}")


def _finite_bounds(action_space: spaces.Box) -> bool:
    return bool(np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high)))


def _infinite_bounds_message(action_space: spaces.Box) -> str:
    return (
        f"continuous action space must have a finite lower and upper bound, got {action_space}: the flow policy acts "
        "in [-1, 1] per dimension and rescales to [low, high]. Give the action space the finite bounds the actuators "
        "really have (in the env, or with a gymnasium.ActionWrapper that declares a finite Box and passes the actions "
        "on)."
    )


def check_action_bounds(action_space: spaces.Box) -> None:
    """ValueError when a Box action dimension has ``low == high`` (the flow normalises by ``high - low``)."""
    if not isinstance(action_space, spaces.Box):
        return
    low = np.broadcast_to(action_space.low, action_space.shape)
    high = np.broadcast_to(action_space.high, action_space.shape)
    if not _finite_bounds(action_space):
        raise ValueError(_infinite_bounds_message(action_space))
    flat_low, flat_high = low.reshape(-1, low.shape[-1]), high.reshape(-1, high.shape[-1])
    constant = sorted({int(d) for d in np.nonzero(np.any(flat_high <= flat_low, axis=0))[0]})
    if constant:
        d = constant[0]
        raise ValueError(
            f"Action dimension(s) {constant} of {action_space} have low >= high (e.g. dim {d}: low = "
            f"{flat_low[:, d].min()!r}, high = {flat_high[:, d].max()!r}): flow policies map each dimension to "
            "[-1, 1] by dividing by high - low. Remove the constant dimension with an action wrapper (and set it inside "
            "the env), or give it a non-empty range."
        )


def normalize_net_arch(net_arch: Any) -> Any:
    """Accept SB3's old ``net_arch=[dict(pi=..., vf=...)]`` with SB3's warning (it becomes the dict), and check that
    the layer sizes are positive integers."""
    if isinstance(net_arch, list) and len(net_arch) > 0 and isinstance(net_arch[0], dict):
        warnings.warn(
            "As shared layers in the mlp_extractor are removed since SB3 v1.8.0, you should now pass directly a "
            "dictionary and not a list (net_arch=dict(pi=..., vf=...) instead of net_arch=[dict(pi=..., vf=...)])",
            stacklevel=3,
        )
        if len(net_arch) > 1:
            raise ValueError(
                f"net_arch={net_arch!r}: the old format is a list of exactly one dict; shared layers are not supported. "
                "Pass net_arch=dict(pi=[...], vf=[...])."
            )
        net_arch = net_arch[0]
    if net_arch is None:
        return None
    layers: list[Any] = []
    if isinstance(net_arch, dict):
        unknown = set(net_arch) - {"pi", "vf", "qf"}
        if unknown:
            raise ValueError(f"net_arch has unknown keys {sorted(unknown)}: use dict(pi=[...], vf=[...])")
        for value in net_arch.values():
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"net_arch={net_arch!r}: each entry must be a list of layer sizes")
            layers.extend(value)
    elif isinstance(net_arch, (list, tuple)):
        layers = list(net_arch)
    else:
        raise ValueError(f"net_arch must be a list of layer sizes or dict(pi=[...], vf=[...]), got {net_arch!r}")
    bad = [size for size in layers if not (isinstance(size, (int, np.integer)) and not isinstance(size, bool) and size > 0)]
    if bad:
        raise ValueError(f"net_arch={net_arch!r}: layer sizes must be positive integers, got {bad}")
    return net_arch


# ------------------------------------------------------------------------------------------------- success flags
def success_flag(info: dict[str, Any], key: str = "is_success") -> bool | None:
    """The success flag ``info[key]`` as a bool; None when the key is absent (or None).

    Accepted: bool, NumPy bool, the integers 0 and 1, the floats 0.0 and 1.0, and one-element arrays of those.
    A string (``"False"`` would count as success by truthiness) is a TypeError, any other value a ValueError, both
    naming the key.
    """
    if key not in info or info[key] is None:
        return None
    value = info[key]
    if isinstance(value, np.ndarray):
        if value.size != 1:
            raise ValueError(f"info[{key!r}] must be one bool, got an array of shape {value.shape}: {value!r}")
        value = value.reshape(()).item()
    else:
        try:  # torch tensors and other one-element containers with .item()
            if not isinstance(value, (bool, np.bool_, numbers.Number, str, bytes)) and hasattr(value, "item"):
                value = value.item()
        except (ValueError, RuntimeError) as error:
            raise ValueError(f"info[{key!r}] must be one bool, got {value!r}") from error
    if isinstance(value, (str, bytes)):
        raise TypeError(
            f"info[{key!r}] is the string {value!r}: a success flag must be a bool (a non-empty string such as "
            "'False' would count as success). Report a bool, e.g. info['is_success'] = bool(...), or map the env's "
            "own key with sb3_stepnft.wrappers.SuccessInfo(env, key=..., success_fn=...)."
        )
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if is_real_number(value) and float(value) in (0.0, 1.0):
        return bool(value)
    raise ValueError(
        f"info[{key!r}] = {value!r} ({type(value).__name__}) is not a success flag: use True/False (or 0/1). For a "
        "graded outcome, report it as the reward and use outcome='return' instead."
    )


def check_success_consistency(outcome: str, resolved: str | None, success: bool | None, info: dict[str, Any]) -> None:
    """StepNFT with ``outcome="auto"``: the outcome was decided as ``"return"`` because an earlier episode reported no
    ``is_success``, but this one does. Labelling on would silently ignore the success flags: raise instead."""
    if outcome == "auto" and resolved == "return" and success is not None:
        raise ValueError(
            "StepNFT(outcome='auto') decided on graded episode returns because the first finished episode had no "
            "info['is_success'], but a later episode reports it: the env reports success only in some final infos. "
            "Make every final info carry is_success (e.g. sb3_stepnft.wrappers.SuccessInfo(env, key=...)) and pass "
            "outcome='success', or pass outcome='return' to label with returns and ignore the flag."
        )


def check_group_outcomes(members: Sequence[Any]) -> None:
    """FlowGRPO: the episodes of one group round must all report success or none (never mix success scores and raw
    returns in one group). ``members`` are :class:`~sb3_stepnft.common.on_policy.FinishedEpisode`s."""
    flags = [episode.success is not None for episode in members]
    if any(flags) and not all(flags):
        without = [episode.env_index for episode in members if episode.success is None]
        raise ValueError(
            f"FlowGRPO: in one group round, envs {without} finished without info['is_success'] while the others "
            "reported it, so their scores would mix success (0/1) and raw returns. Make every final info carry "
            "is_success (e.g. sb3_stepnft.wrappers.SuccessInfo(env, key=...)), or remove it everywhere to score "
            "episodes by return."
        )


# ------------------------------------------------------------------------------------------------- rewards
def check_finite_rewards(rewards: np.ndarray, infos: Sequence[dict[str, Any]] | None = None) -> None:
    """FloatingPointError naming the env index when the env returned a NaN or infinite reward."""
    rewards = np.asarray(rewards)
    if rewards.dtype.kind not in "biuf":
        raise TypeError(f"The env returned rewards of dtype {rewards.dtype} ({rewards!r}): rewards must be numbers")
    if rewards.dtype.kind == "f" and not np.all(np.isfinite(rewards)):
        bad = np.nonzero(~np.isfinite(rewards))[0]
        raise FloatingPointError(
            f"The env returned a non-finite reward ({rewards[bad[0]]!r}) in env {int(bad[0])} (envs with non-finite "
            f"rewards: {bad.tolist()}). The reward, not the observations or the learning rate, is the problem: fix the "
            "env's reward computation (e.g. a division by zero), or wrap the env in "
            "stable_baselines3.common.vec_env.VecCheckNan(env, raise_exception=True) to find the step."
        )


# ------------------------------------------------------------------------------------------------- divergence
class DivergenceWarning(UserWarning):
    """Training is diverging: the loss or the flow samples grew by orders of magnitude."""


class DivergenceError(FloatingPointError):
    """Raised instead of :class:`DivergenceWarning` by a monitor built with ``on_divergence="raise"``."""


class DivergenceMonitor:
    """Flag a loss or sample magnitude that grows by orders of magnitude (not only NaN/inf), with the fix.

    The loss baseline is the median ``|loss|`` of the first ``warmup`` updates (at least ``loss_floor``); an update
    whose ``|loss|`` exceeds ``factor`` times the baseline is reported. Samples of the flow sampler live in [-1, 1]
    (normalised actions, with O(1) noise), so ``max |x|`` above ``sample_limit`` is reported. Each kind is reported
    once per monitor.

    :param algorithm: Name used in the messages.
    :param factor: Growth factor of ``|loss|`` over its baseline that counts as divergence.
    :param sample_limit: ``max |x|`` of the normalised samples that counts as divergence.
    :param warmup: Updates used for the loss baseline.
    :param on_divergence: ``"warn"`` (:class:`DivergenceWarning`) or ``"raise"`` (:class:`DivergenceError`).
    """

    def __init__(
        self,
        algorithm: str = "",
        factor: float = 1e3,
        sample_limit: float = 1e3,
        warmup: int = 3,
        loss_floor: float = 1e-2,
        on_divergence: str = "warn",
    ):
        if on_divergence not in ("warn", "raise"):
            raise ValueError(f"on_divergence must be 'warn' or 'raise', got {on_divergence!r}")
        check_positive_number("factor", factor)
        check_positive_number("sample_limit", sample_limit)
        check_positive_number("warmup", warmup, integer=True)
        self.algorithm = algorithm
        self.factor = float(factor)
        self.sample_limit = float(sample_limit)
        self.warmup = int(warmup)
        self.loss_floor = float(loss_floor)
        self.on_divergence = on_divergence
        self._warmup_losses: list[float] = []
        self.loss_baseline: float | None = None
        self.reported: set[str] = set()
        self.diverged = False

    def _report(self, kind: str, message: str) -> None:
        self.diverged = True
        if self.on_divergence == "raise":
            raise DivergenceError(message)
        if kind not in self.reported:
            self.reported.add(kind)
            warnings.warn(message, DivergenceWarning, stacklevel=4)

    def observe_loss(self, loss: float, update: int | None = None) -> None:
        """Record the mean loss of one update."""
        loss = float(loss)
        if not math.isfinite(loss):
            return  # NaN/inf losses have their own error (NonFiniteLossError)
        if self.loss_baseline is None:
            self._warmup_losses.append(abs(loss))
            if len(self._warmup_losses) >= self.warmup:
                self.loss_baseline = max(float(np.median(self._warmup_losses)), self.loss_floor)
            return
        if abs(loss) > self.factor * self.loss_baseline:
            where = f" at update {update}" if update is not None else ""
            self._report(
                "loss",
                f"{self.algorithm or 'Training'} is diverging: |loss| = {abs(loss):.3g}{where} is more than "
                f"{self.factor:g} times its initial level ({self.loss_baseline:.3g}). Lower learning_rate (e.g. by 10x), "
                "keep max_grad_norm small (e.g. 1.0), and for StepNFT keep max_drift set; check that rewards are "
                "bounded.",
            )

    def observe_samples(self, samples: Any) -> None:
        """Record the (normalised) samples or solver states of the rollout policy (arrays or tensors)."""
        if samples is None:
            return
        if hasattr(samples, "detach"):
            samples = samples.detach().float().abs().max().cpu().item() if samples.numel() else 0.0
        else:
            samples = np.asarray(samples)
            samples = float(np.abs(samples).max()) if samples.size else 0.0
        magnitude = float(samples)
        if not math.isfinite(magnitude) or magnitude > self.sample_limit:
            self._report(
                "samples",
                f"{self.algorithm or 'Training'} is diverging: the flow sampler produced |x| = {magnitude:.3g} in "
                f"normalised action units (expected O(1), limit {self.sample_limit:g}). The velocity field exploded: "
                "lower learning_rate, lower noise_level (at most ~1), keep max_drift / max_grad_norm set, or restart "
                "from the last good checkpoint.",
            )


_MONITORS: "weakref.WeakKeyDictionary[Any, DivergenceMonitor]" = weakref.WeakKeyDictionary()


def divergence_monitor(model: Any) -> DivergenceMonitor:
    """The :class:`DivergenceMonitor` of a model (created on first use; kept outside the model, so it is not saved).
    Set ``model.divergence_check = "raise"`` (or ``"off"``) before learning to change what happens on divergence."""
    mode = getattr(model, "divergence_check", "warn")
    mode = "warn" if mode == "off" else mode
    monitor = _MONITORS.get(model)
    if monitor is None or monitor.on_divergence != mode:
        monitor = DivergenceMonitor(type(model).__name__, on_divergence=mode)
        _MONITORS[model] = monitor
    return monitor


def check_divergence(model: Any, loss: float | None = None, samples: Any = None) -> None:
    """One line for the algorithms: feed this update's mean loss and/or the rollout samples to the model's monitor."""
    if getattr(model, "divergence_check", "warn") == "off":
        return
    monitor = divergence_monitor(model)
    if loss is not None:
        monitor.observe_loss(loss, getattr(model, "_n_updates", None))
    if samples is not None:
        monitor.observe_samples(samples)


# ------------------------------------------------------------------------------------------------- demonstrations
def check_finite_observations(observations: Any, source: str = "Demonstration observations") -> None:
    """ValueError naming the key and the first bad step when float observations hold NaN or inf."""
    items = observations.items() if isinstance(observations, dict) else [(None, observations)]
    for key, value in items:
        array = np.asarray(value)
        if array.dtype.kind != "f":
            continue
        finite = np.isfinite(array.reshape(len(array), -1)).all(axis=1) if array.ndim else np.isfinite(array)
        if not np.all(finite):
            first = int(np.nonzero(~np.atleast_1d(finite))[0][0])
            where = f"[{key!r}]" if key is not None else ""
            raise ValueError(
                f"{source}{where} contain NaN or inf (first at step {first}, {int((~np.atleast_1d(finite)).sum())} steps "
                "in all). Remove those steps (e.g. drop the episodes that contain them) or fix the recording."
            )


def action_bounds_report(actions: np.ndarray, low: np.ndarray, high: np.ndarray) -> tuple[float, float]:
    """Fraction of action values outside ``[low, high]`` (beyond a 1e-6 relative tolerance), and the largest excess
    relative to the range."""
    span = np.maximum(high - low, 1e-12)
    excess = np.maximum(low - actions, 0.0) + np.maximum(actions - high, 0.0)
    relative = excess / span
    outside = relative > 1e-6
    return float(outside.mean()) if outside.size else 0.0, float(relative.max()) if relative.size else 0.0
