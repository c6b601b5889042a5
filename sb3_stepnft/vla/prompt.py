"""π0.5's prompt: the task and the discretised proprio state as text (openpi's ``PaligemmaTokenizer``, LeRobot's
``Pi05PrepareStateTokenizerProcessorStep``).

π0.5 has no ``state_proj``: the state, normalised to [-1, 1] (quantiles), is cut into 256 bins and written into the
prompt ``"Task: {task}, State: {b_1 b_2 ...};\\nAction: "`` before tokenising. Checkpoints trained without it (openpi's
``pi05_libero``, ``discrete_state_input=False``; ``VLAConfig.state_in_prompt=False``) use ``"Task: {task};\\nAction: "``.
:class:`Pi05Prompt` does this inside the env, one tokenisation per step, so the policy receives token ids as always.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from sb3_stepnft.wrappers import TokenizeInstruction

PI0_TOKENIZER_MAX_LENGTH = 48
"""openpi / LeRobot π0 prompt length (tokens)."""
PI05_TOKENIZER_MAX_LENGTH = 200
"""openpi / LeRobot π0.5 prompt length (tokens): the state adds up to ~4 tokens per dimension."""
STATE_BINS = 256


def discretize_state(state: np.ndarray, bins: int = STATE_BINS) -> np.ndarray:
    """Bin indices of a normalised state, as openpi: ``digitize(state, linspace(-1, 1, bins + 1)[:-1]) - 1``
    (``[-1, 1]`` → ``0 .. bins - 1``; values below -1 give -1, as in openpi)."""
    return np.digitize(np.asarray(state, dtype=np.float64), bins=np.linspace(-1, 1, bins + 1)[:-1]) - 1


def pi05_prompt(task: str, state_bins: np.ndarray | None = None) -> str:
    """openpi's π0.5 prompt text; ``state_bins=None`` leaves the state out."""
    cleaned = task.strip().replace("_", " ").replace("\n", " ")
    if state_bins is None:
        return f"Task: {cleaned};\nAction: "
    state = " ".join(str(int(b)) for b in np.asarray(state_bins).reshape(-1))
    return f"Task: {cleaned}, State: {state};\nAction: "


def quantile_normalize(x, q01, q99):
    """π0.5's normalisation ``2 (x - q01) / (q99 - q01 + 1e-6) - 1`` (NumPy arrays or torch tensors): the prompt's
    state here and the policy's state input (:meth:`~sb3_stepnft.vla.policy.FlowVLAPolicy.normalize_state`)."""
    return 2.0 * (x - q01) / (q99 - q01 + 1e-6) - 1.0


def normalize_state_quantiles(state: np.ndarray, norm_stats: dict[str, Any] | None) -> np.ndarray:
    """``2 (s - q01) / (q99 - q01) - 1`` on the dims the statistics cover (π0.5's normalisation); identity without."""
    state = np.asarray(state, dtype=np.float64).reshape(-1)
    if norm_stats is None:
        return state
    if norm_stats.get("mode") != "quantiles":
        raise ValueError(f"π0.5 normalises the prompt state with quantiles, norm_stats has mode={norm_stats.get('mode')!r}")
    q01 = np.asarray(norm_stats["state"]["q01"], dtype=np.float64)
    q99 = np.asarray(norm_stats["state"]["q99"], dtype=np.float64)
    n = min(state.size, q01.size)
    out = state.copy()
    out[:n] = quantile_normalize(state[:n], q01[:n], q99[:n])
    return out


class Pi05Prompt(TokenizeInstruction):
    """:class:`~sb3_stepnft.wrappers.TokenizeInstruction` with π0.5's prompt: every step the state is normalised
    (``norm_stats``, quantiles), discretised into 256 bins and written into the prompt, which is then tokenised.

    :param env: An env with a Dict observation space holding ``state_key`` (when ``state_in_prompt``).
    :param tokenizer: The checkpoint's tokenizer (PaliGemma's for π0 / π0.5).
    :param max_length: Token slots (π0.5: 200).
    :param state_key: Observation key of the raw proprio state.
    :param norm_stats: The checkpoint's statistics (``policy.config.norm_stats``); None: the state is already in
        [-1, 1].
    :param state_in_prompt: False for checkpoints trained without the state in the prompt (``policy.state_in_prompt``).
    :param kwargs: Other :class:`~sb3_stepnft.wrappers.TokenizeInstruction` arguments (``source``, keys).
    """

    def __init__(
        self,
        env: gym.Env,
        tokenizer: Any,
        max_length: int = PI05_TOKENIZER_MAX_LENGTH,
        state_key: str = "state",
        norm_stats: dict[str, Any] | None = None,
        state_in_prompt: bool = True,
        **kwargs: Any,
    ):
        super().__init__(env, tokenizer, max_length=max_length, **kwargs)
        if state_in_prompt and state_key not in self.observation_space.spaces:
            raise KeyError(
                f"Pi05Prompt(state_in_prompt=True) needs the state under {state_key!r}, the observation has "
                f"{sorted(self.observation_space.spaces)}; pass state_key=... or state_in_prompt=False"
            )
        self.state_key, self.norm_stats, self.state_in_prompt = state_key, norm_stats, bool(state_in_prompt)
        normalize_state_quantiles(np.zeros(1), norm_stats)  # checks the mode early

    def prompt(self, obs: dict[str, Any]) -> str:
        """The π0.5 prompt of the current instruction and ``obs``'s state."""
        if not self.state_in_prompt:
            return pi05_prompt(self.instruction or "")
        state = normalize_state_quantiles(obs[self.state_key], self.norm_stats)
        return pi05_prompt(self.instruction or "", discretize_state(state))

    def _observation(self, obs: dict[str, Any]) -> dict[str, Any]:
        self._ids, self._mask = self.tokenize(self.prompt(obs))
        return super()._observation(obs)
