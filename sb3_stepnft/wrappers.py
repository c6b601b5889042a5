"""Gymnasium wrappers: action chunks, success adapters, group seeding and instruction tokenisation."""

import warnings
from collections.abc import Callable
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from sb3_stepnft.common.checks import success_flag


class ActionChunk(gym.Wrapper):
    """Execute a chunk of ``size`` actions per step: Box(A) becomes Box(size, A).

    Rewards are summed (not discounted). The chunk stops early at termination or truncation; the last inner
    ``info`` is passed through (with the terminal observation), ``info["is_success"]`` is True if any inner step
    succeeded (present only when the inner env reports it) and ``info["env_steps"]`` counts the inner steps executed.

    :param env: An env with a 1-D Box action space.
    :param size: H, the number of rows of a chunk.
    """

    def __init__(self, env: gym.Env, size: int):
        super().__init__(env)
        if not isinstance(env.action_space, spaces.Box) or len(env.action_space.shape) != 1:
            raise ValueError(f"ActionChunk needs a 1-D Box action space, got {env.action_space}")
        if int(size) != size or size < 1:
            raise ValueError(f"ActionChunk size must be a positive integer, got {size!r}")
        self.size = int(size)
        inner = env.action_space
        self.action_space = spaces.Box(
            low=np.tile(inner.low, (self.size, 1)), high=np.tile(inner.high, (self.size, 1)), dtype=inner.dtype
        )

    def step(self, action: np.ndarray) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        action = np.asarray(action).reshape(self.action_space.shape)
        total_reward = 0.0
        success_seen, any_success = False, False
        terminated = truncated = False
        obs, info = None, {}
        steps = 0
        for row in action:
            obs, reward, terminated, truncated, info = self.env.step(row)
            total_reward += float(reward)
            steps += 1
            flag = success_flag(info)  # a string or a non-bool value is an error naming the key
            if flag is not None:
                success_seen = True
                any_success = any_success or flag
            if terminated or truncated:
                break
        info = dict(info)
        if success_seen:
            info["is_success"] = any_success
        info["env_steps"] = steps
        return obs, total_reward, terminated, truncated, info


class SuccessInfo(gym.Wrapper):
    """Report an env's success signal as ``info["is_success"]``, the key SB3 and sb3_stepnft read.

    :param env: The env.
    :param key: The info key under which the env reports success (e.g. ManiSkill's ``"success"``).
    :param success_fn: Alternatively, ``success_fn(obs, reward, terminated, truncated, info) -> bool``.
    """

    def __init__(
        self,
        env: gym.Env,
        key: str | None = "success",
        success_fn: Callable[[Any, float, bool, bool, dict[str, Any]], bool] | None = None,
    ):
        super().__init__(env)
        if (key is None) == (success_fn is None):
            raise ValueError("SuccessInfo needs exactly one of `key` or `success_fn`")
        self.key = key
        self.success_fn = success_fn

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self.success_fn is not None:
            success = self.success_fn(obs, reward, terminated, truncated, info)
        else:
            if self.key not in info:
                raise KeyError(
                    f"SuccessInfo(key={self.key!r}): the env's info has no {self.key!r} (keys: {sorted(info)}). "
                    "Pass the key the env uses, or success_fn=..."
                )
            success = info[self.key]
        name = self.key if self.success_fn is None else "success_fn(...)"
        flag = success_flag({name: success}, key=name)  # strings and non-bool values are errors naming the key
        if flag is None:
            raise ValueError(f"SuccessInfo: {name} is None; it must be a bool (True/False)")
        info = dict(info)
        info["is_success"] = flag
        return obs, reward, terminated, truncated, info


class GroupSeed(gym.Wrapper):
    """Reseed every reset with ``base_seed + episode_counter``: envs built with the same ``base_seed`` start their
    j-th episodes from the same initial state (FlowGRPO's groups, ALGORITHM.md §4). No extra ``reset()`` is ever
    made, so Monitor statistics and episode counts are those of an unwrapped env.

    A seed passed to ``reset()`` is ignored: SB3's VecEnvs pass ``seed + env index`` to every member, which would
    give each member its own initial states. Choose the seeds with ``base_seed`` (or use
    :func:`sb3_stepnft.envs.make_grouped_vec_env`).

    :param env: The env to reseed; its initial state must be a function of the reset seed.
    :param base_seed: Seed of the first episode; episode j uses ``base_seed + j``.
    """

    def __init__(self, env: gym.Env, base_seed: int):
        super().__init__(env)
        if isinstance(base_seed, bool) or int(base_seed) != base_seed or base_seed < 0:
            raise ValueError(f"GroupSeed base_seed must be a non-negative integer, got {base_seed!r}")
        self.base_seed = int(base_seed)
        self.episode_counter = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        episode_seed = self.base_seed + self.episode_counter
        self.episode_counter += 1
        return self.env.reset(seed=episode_seed, options=options)

    def set_episode_counter(self, episode_counter: int) -> None:
        """Make the next reset use ``base_seed + episode_counter`` (FlowGRPO realigns a group before it resets the
        env from outside, when members had finished different numbers of episodes)."""
        if int(episode_counter) != episode_counter or episode_counter < 0:
            raise ValueError(f"episode_counter must be a non-negative integer, got {episode_counter!r}")
        self.episode_counter = int(episode_counter)


#: Where :class:`TokenizeInstruction` looks for the episode's instruction (``"auto"``: in this order).
INSTRUCTION_SOURCES = ("observation", "info", "attribute")


def tokenizer_vocab_bound(tokenizer: Any) -> int:
    """The number of token ids a tokenizer can produce: ``max(len(tokenizer), tokenizer.vocab_size)`` over those it has.

    ``len()`` counts added and special tokens (``ByT5Tokenizer``: 384), ``vocab_size`` often only the base vocabulary
    (``ByT5Tokenizer``: 256), so the larger of the two bounds the ids.
    """
    sizes = []
    try:
        sizes.append(int(len(tokenizer)))
    except TypeError:
        pass
    vocab_size = getattr(tokenizer, "vocab_size", None)
    if isinstance(vocab_size, (int, np.integer)) and not isinstance(vocab_size, bool):
        sizes.append(int(vocab_size))
    if not sizes or max(sizes) < 1:
        raise TypeError(
            f"Cannot tell the vocabulary size of {type(tokenizer).__name__}: it has neither a positive len() nor an "
            "integer `vocab_size` attribute (a Hugging Face tokenizer has both)"
        )
    return max(sizes)


def _as_text(value: Any) -> str | None:
    """A string from a str, bytes, or 0-d / one-element NumPy string array (what SubprocVecEnv makes of a Text key)."""
    if value is None:
        return None
    if isinstance(value, np.ndarray) and value.size == 1 and value.dtype.kind in "USO":
        value = value.reshape(()).item()
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if not isinstance(value, str):
        raise TypeError(f"An instruction must be a string, got {type(value).__name__}: {value!r}")
    return str(value)


class TokenizeInstruction(gym.Wrapper):
    """Tokenise the episode's language instruction into two fixed-size integer observation keys.

    SB3's VecEnvs and buffers cannot carry strings (``gymnasium.spaces.Text`` breaks ``DummyVecEnv`` and the
    rollout buffers), so a VLA policy reads the instruction as token ids. This wrapper, applied to a single env
    *before* vectorisation, adds to a Dict observation

    - ``ids_key`` (default ``"instruction_ids"``): ``Box(0, V - 1, (max_length,), int64)``, right-padded with the
      tokenizer's pad id;
    - ``mask_key`` (default ``"instruction_mask"``): ``MultiBinary(max_length)`` (int8), 1 on real tokens.

    V is :func:`tokenizer_vocab_bound` (``max(len(tokenizer), tokenizer.vocab_size)``).

    **Where the instruction comes from** (``source``):

    - ``"observation"``: a ``gymnasium.spaces.Text`` key of the Dict observation (its value a ``str``). Every
      ``Text`` key is removed from the wrapped observation space and observations whatever the source, since SB3
      cannot store them. If the text changes during an episode, the ids follow it.
    - ``"info"``: ``info["instruction"]`` returned by ``reset()``.
    - ``"attribute"``: an ``instruction`` attribute of the env or of one of its wrappers
      (``env.get_wrapper_attr("instruction")``, then ``env.unwrapped.instruction``), read after ``reset()``.
    - ``"auto"`` (default): the first of these three that has a (non-None) instruction, in that order.

    The instruction is tokenised once per ``reset()`` (results are cached per string) as
    ``tokenizer(instruction + prompt_suffix, padding="max_length", truncation=True, max_length=max_length)``;
    e.g. ``prompt_suffix="\\n"`` for PaliGemma / π0 prompts. An instruction longer than ``max_length`` tokens is
    truncated, with a warning the first time. Left-padded tokenizer output is moved to the right.

    **Observation spaces.** The env must have a ``gymnasium.spaces.Dict`` observation space; any other space raises
    a ``TypeError``. Wrap a Box env into a Dict first, e.g.
    ``TransformObservation(env, lambda obs: {"state": obs}, spaces.Dict({"state": env.observation_space}))``.

    **Pickling.** The wrapper holds the tokenizer, which must be picklable for ``SubprocVecEnv`` with the
    ``spawn`` / ``forkserver`` start methods (``transformers.ByT5Tokenizer`` and fast tokenizers are).

    :param env: An env with a Dict observation space.
    :param tokenizer: Callable like a Hugging Face tokenizer: ``tokenizer(text, padding="max_length",
        truncation=True, max_length=T)`` returns a mapping with ``"input_ids"`` (and ideally ``"attention_mask"``;
        without it the mask is ``ids != tokenizer.pad_token_id``). Needs ``len()`` or ``vocab_size``.
        ``transformers.ByT5Tokenizer()`` needs no files (ids < 384).
    :param max_length: T, the number of token slots.
    :param source: ``"auto"``, ``"observation"``, ``"info"`` or ``"attribute"`` (see above).
    :param prompt_suffix: Appended to the instruction before tokenising.
    :param ids_key: Observation key of the token ids.
    :param mask_key: Observation key of the attention mask.
    """

    def __init__(
        self,
        env: gym.Env,
        tokenizer: Any,
        max_length: int = 32,
        source: str = "auto",
        prompt_suffix: str = "",
        ids_key: str = "instruction_ids",
        mask_key: str = "instruction_mask",
    ):
        super().__init__(env)
        if isinstance(tokenizer, (str, bytes)) or not callable(tokenizer):
            raise TypeError(
                f"TokenizeInstruction needs a tokenizer object, got {tokenizer!r}; load one first, e.g. "
                "transformers.AutoTokenizer.from_pretrained(name), or transformers.ByT5Tokenizer() (no files needed)"
            )
        if isinstance(max_length, bool) or int(max_length) != max_length or max_length < 1:
            raise ValueError(f"max_length must be a positive integer, got {max_length!r}")
        if source != "auto" and source not in INSTRUCTION_SOURCES:
            raise ValueError(f"source must be 'auto' or one of {INSTRUCTION_SOURCES}, got {source!r}")
        if not isinstance(prompt_suffix, str):
            raise TypeError(f"prompt_suffix must be a string, got {type(prompt_suffix).__name__}")
        if ids_key == mask_key:
            raise ValueError(f"ids_key and mask_key must differ, both are {ids_key!r}")
        inner_space = env.observation_space
        if not isinstance(inner_space, spaces.Dict):
            raise TypeError(
                f"TokenizeInstruction needs a Dict observation space, got {inner_space}. Wrap the env into a Dict "
                "first, e.g. gymnasium.wrappers.TransformObservation(env, lambda obs: {'state': obs}, "
                "gymnasium.spaces.Dict({'state': env.observation_space}))"
            )
        self.text_keys = tuple(key for key, space in inner_space.spaces.items() if isinstance(space, spaces.Text))
        if source == "observation" and len(self.text_keys) != 1:
            raise ValueError(
                "TokenizeInstruction(source='observation') needs exactly one gymnasium.spaces.Text key in the Dict "
                f"observation space, found {list(self.text_keys) or 'none'} in {sorted(inner_space.spaces)}"
            )
        kept = {key: space for key, space in inner_space.spaces.items() if key not in self.text_keys}
        for key in (ids_key, mask_key):
            if key in kept:
                raise ValueError(f"The observation space already has a key {key!r}; choose another ids_key / mask_key")

        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.source = source
        self.prompt_suffix = prompt_suffix
        self.ids_key, self.mask_key = ids_key, mask_key
        self.vocab_size = tokenizer_vocab_bound(tokenizer)
        pad_id = getattr(tokenizer, "pad_token_id", None)
        self.pad_token_id = int(pad_id) if isinstance(pad_id, (int, np.integer)) and 0 <= pad_id < self.vocab_size else 0
        kept[ids_key] = spaces.Box(0, self.vocab_size - 1, shape=(self.max_length,), dtype=np.int64)
        kept[mask_key] = spaces.MultiBinary(self.max_length)
        self.observation_space = spaces.Dict(kept)

        self._instruction: str | None = None
        self._instruction_source: str | None = None
        self._ids: np.ndarray | None = None
        self._mask: np.ndarray | None = None
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._warned_truncation = False

    # ------------------------------------------------------------------------------------------------ public state
    @property
    def instruction(self) -> str | None:
        """The current episode's instruction (without ``prompt_suffix``); None before the first reset."""
        return self._instruction

    @property
    def instruction_source(self) -> str | None:
        """Where the current instruction was found: ``"observation"``, ``"info"`` or ``"attribute"``."""
        return self._instruction_source

    def tokenize(self, instruction: str) -> tuple[np.ndarray, np.ndarray]:
        """Token ids ``(T,)`` int64 and mask ``(T,)`` int8 of ``instruction + prompt_suffix`` (right-padded)."""
        cached = self._cache.get(instruction)
        if cached is not None:
            return cached
        prompt = instruction + self.prompt_suffix
        T = self.max_length
        encoding = self.tokenizer(prompt, padding="max_length", truncation=True, max_length=T)
        try:
            ids = np.asarray(encoding["input_ids"]).reshape(-1)
        except (KeyError, TypeError, IndexError) as error:
            raise TypeError(
                f"{type(self.tokenizer).__name__}(text, ...) must return a mapping with 'input_ids' (like a Hugging "
                f"Face tokenizer), got {type(encoding).__name__}"
            ) from error
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"{type(self.tokenizer).__name__} returned non-integer token ids of dtype {ids.dtype}")
        ids = ids.astype(np.int64)
        mask = encoding.get("attention_mask") if hasattr(encoding, "get") else None
        if mask is None:
            mask = ids != self.pad_token_id
        mask = np.asarray(mask).reshape(-1).astype(bool)
        if mask.shape != ids.shape:
            raise ValueError(f"{type(self.tokenizer).__name__} returned {ids.size} ids but {mask.size} mask entries")
        truncated = False
        if ids.size > T:  # a tokenizer that ignored truncation
            truncated = bool(mask[T:].any())
            ids, mask = ids[:T], mask[:T]
        elif mask.all() and ids.size == T:  # full: find out whether truncation dropped tokens
            full = self.tokenizer(prompt)
            truncated = len(np.asarray(full["input_ids"]).reshape(-1)) > T
        # right-pad to T (moves left-padded output to the front)
        valid = ids[mask]
        n = valid.size
        ids = np.full(T, self.pad_token_id, dtype=np.int64)
        ids[:n] = valid
        mask = np.zeros(T, dtype=np.int8)
        mask[:n] = 1
        if truncated and not self._warned_truncation:
            self._warned_truncation = True
            warnings.warn(
                f"TokenizeInstruction: the instruction {instruction!r} (with prompt_suffix) is longer than "
                f"max_length={T} tokens and was truncated; raise max_length to keep it whole (warned once)",
                UserWarning,
                stacklevel=4,  # the caller of reset()
            )
        if n and (valid.min() < 0 or valid.max() >= self.vocab_size):
            raise ValueError(
                f"{type(self.tokenizer).__name__} produced token ids in [{valid.min()}, {valid.max()}] for "
                f"{prompt!r}, outside the observation space [0, {self.vocab_size - 1}] (bound from len(tokenizer) / "
                "tokenizer.vocab_size); the tokenizer's len() or vocab_size under-reports its vocabulary"
            )
        if len(self._cache) >= 4096:
            self._cache.clear()
        self._cache[instruction] = (ids, mask)
        return ids, mask

    # ------------------------------------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        instruction, where = self._find_instruction(obs, info)
        self._set_instruction(instruction, where)
        return self._observation(obs), info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        if self._ids is None:
            raise RuntimeError("TokenizeInstruction: call reset() before step()")
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self._instruction_source == "observation":
            text = _as_text(obs[self.text_keys[0]])
            if text is not None and text != self._instruction:
                self._set_instruction(text, "observation")
        return self._observation(obs), reward, terminated, truncated, info

    # ------------------------------------------------------------------------------------------------ internals
    def _set_instruction(self, instruction: str, where: str) -> None:
        self._ids, self._mask = self.tokenize(instruction)
        self._instruction, self._instruction_source = instruction, where

    def _read_attribute(self) -> Any:
        try:
            value = self.env.get_wrapper_attr("instruction")
        except AttributeError:
            value = None
        if value is None:
            value = getattr(self.env.unwrapped, "instruction", None)
        return value

    def _find_instruction(self, obs: Any, info: dict[str, Any]) -> tuple[str, str]:
        if not isinstance(obs, dict):
            raise TypeError(f"TokenizeInstruction: the env returned a {type(obs).__name__} observation, not a dict")
        sources = INSTRUCTION_SOURCES if self.source == "auto" else (self.source,)
        for where in sources:
            if where == "observation":
                value = obs.get(self.text_keys[0]) if len(self.text_keys) == 1 else None
            elif where == "info":
                value = info.get("instruction") if isinstance(info, dict) else None
            else:
                value = self._read_attribute()
            text = _as_text(value)
            if text is not None:
                return text, where
        raise ValueError(
            f"TokenizeInstruction(source={self.source!r}) found no instruction after reset(). Provide it in one of: "
            "(a) 'observation': a gymnasium.spaces.Text key of the Dict observation space holding the string; "
            "(b) 'info': info['instruction'] returned by reset(); "
            "(c) 'attribute': an `instruction` attribute of the env (or of one of its wrappers) set by reset()"
        )

    def _observation(self, obs: dict[str, Any]) -> dict[str, Any]:
        out = {key: value for key, value in obs.items() if key not in self.text_keys}
        out[self.ids_key] = self._ids.copy()
        out[self.mask_key] = self._mask.copy()
        return out
