"""TokenizeInstruction: language instructions as int64 token ids + int8 mask, through SB3 VecEnvs."""

import pickle
import warnings

import cloudpickle
import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from stable_baselines3.common.env_checker import check_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

from sb3_stepnft.envs import PointReachEnv
from sb3_stepnft.wrappers import ActionChunk, TokenizeInstruction, tokenizer_vocab_bound

transformers = pytest.importorskip("transformers")

INSTRUCTIONS = ("pick up the red cube", "open the drawer", "put the bowl on the plate")
CHARSET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 "


class InstructedEnv(gym.Env):
    """Dict-observation env whose instruction cycles through ``INSTRUCTIONS`` (or is fixed by ``instructions``).

    ``mode``: ``"text"`` (a Text observation key), ``"info"`` (reset info), ``"attribute"`` (``self.instruction``),
    ``"none"`` (nowhere).
    """

    def __init__(self, mode="info", instructions=INSTRUCTIONS, change_at=None):
        self.mode, self.instructions, self.change_at = mode, tuple(instructions), change_at
        obs_spaces = {"state": spaces.Box(-1, 1, (3,), np.float32)}
        if mode == "text":
            obs_spaces["instruction"] = spaces.Text(64, charset=CHARSET)
        self.observation_space = spaces.Dict(obs_spaces)
        self.action_space = spaces.Box(-1, 1, (2,), np.float32)
        self.episode = -1
        self.t = 0
        self._text = None

    def _obs(self):
        obs = {"state": np.full(3, 0.1 * self.t, np.float32)}
        if self.mode == "text":
            obs["instruction"] = self._text
        return obs

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.episode += 1
        self.t = 0
        self._text = self.instructions[self.episode % len(self.instructions)]
        if self.mode == "attribute":
            self.instruction = self._text
        return self._obs(), ({"instruction": self._text} if self.mode == "info" else {})

    def step(self, action):
        self.t += 1
        if self.change_at is not None and self.t == self.change_at:
            self._text = "stop"
        return self._obs(), 0.0, False, self.t >= 5, {}


class AttributeWrapper(gym.Wrapper):
    """A wrapper, not the base env, that holds the instruction (like ManiSkill's vector adapter)."""

    def __init__(self, env, text):
        super().__init__(env)
        self.instruction = text


class ShiftedTokenizer:
    """A ByT5 tokenizer whose ids are shifted past what its ``len()`` claims (a tokenizer that under-reports)."""

    def __init__(self, shift=500):
        self.inner, self.shift = transformers.ByT5Tokenizer(), shift

    def __len__(self):
        return len(self.inner)

    def __call__(self, text, **kwargs):
        out = self.inner(text, **kwargs)
        return {"input_ids": [i + self.shift for i in out["input_ids"]], "attention_mask": out["attention_mask"]}


class NoMaskTokenizer:
    """Returns only ``input_ids`` and does not pad: the wrapper pads and builds the mask."""

    pad_token_id = 0
    vocab_size = 384

    def __init__(self):
        self.inner = transformers.ByT5Tokenizer()

    def __call__(self, text, **kwargs):
        return {"input_ids": self.inner(text)["input_ids"]}


@pytest.fixture(scope="module")
def tok():
    return transformers.ByT5Tokenizer()


def decode(tokenizer, ids, mask):
    ids, mask = np.asarray(ids), np.asarray(mask).astype(bool)
    n = int(mask.sum())
    assert mask[:n].all() and not mask[n:].any(), "mask must be right-padded"
    return tokenizer.decode(ids[:n].tolist(), skip_special_tokens=True)


def make_wrapped(tokenizer, mode="info", **kwargs):
    return TokenizeInstruction(InstructedEnv(mode), tokenizer, **kwargs)


# ---------------------------------------------------------------------------------------------------- spaces
def test_spaces_dtypes_and_round_trip(tok):
    env = make_wrapped(tok, max_length=24)
    ids_space, mask_space = env.observation_space["instruction_ids"], env.observation_space["instruction_mask"]
    assert isinstance(ids_space, spaces.Box) and ids_space.dtype == np.int64 and ids_space.shape == (24,)
    assert ids_space.low.min() == 0 and ids_space.high.max() == len(tok) - 1 == 383
    assert isinstance(mask_space, spaces.MultiBinary) and mask_space.n == 24 and mask_space.dtype == np.int8
    assert tokenizer_vocab_bound(tok) == 384  # len() (384), not vocab_size (256)
    obs, info = env.reset(seed=0)
    assert obs["instruction_ids"].dtype == np.int64 and obs["instruction_mask"].dtype == np.int8
    assert obs in env.observation_space
    assert decode(tok, obs["instruction_ids"], obs["instruction_mask"]) == info["instruction"] == env.instruction
    assert obs["instruction_ids"][obs["instruction_mask"] == 0].tolist() == [tok.pad_token_id] * int(
        (obs["instruction_mask"] == 0).sum()
    )
    obs, *_ = env.step(env.action_space.sample())
    assert decode(tok, obs["instruction_ids"], obs["instruction_mask"]) == INSTRUCTIONS[0]


def test_prompt_suffix_and_custom_keys(tok):
    env = make_wrapped(tok, prompt_suffix="\n", ids_key="lang", mask_key="lang_mask")
    assert set(env.observation_space.spaces) == {"state", "lang", "lang_mask"}
    obs, _ = env.reset()
    assert decode(tok, obs["lang"], obs["lang_mask"]) == INSTRUCTIONS[0] + "\n"
    assert env.instruction == INSTRUCTIONS[0]


def test_instruction_changes_between_episodes(tok):
    env = make_wrapped(tok)
    seen = []
    for _ in range(4):
        obs, info = env.reset()
        seen.append(decode(tok, obs["instruction_ids"], obs["instruction_mask"]))
        assert seen[-1] == info["instruction"]
        for _ in range(2):
            obs, *_ = env.step(env.action_space.sample())
            assert decode(tok, obs["instruction_ids"], obs["instruction_mask"]) == seen[-1]
    assert seen == [*INSTRUCTIONS, INSTRUCTIONS[0]]


def test_observations_do_not_alias(tok):
    env = make_wrapped(tok)
    first, _ = env.reset()
    first["instruction_ids"][:] = 7
    second, *_ = env.step(env.action_space.sample())
    assert decode(tok, second["instruction_ids"], second["instruction_mask"]) == INSTRUCTIONS[0]


# ---------------------------------------------------------------------------------------------------- sources
def test_source_text_observation_key_is_removed(tok):
    env = make_wrapped(tok, mode="text")
    assert "instruction" not in env.observation_space.spaces
    obs, _ = env.reset()
    assert set(obs) == {"state", "instruction_ids", "instruction_mask"}
    assert env.instruction_source == "observation"
    assert decode(tok, obs["instruction_ids"], obs["instruction_mask"]) == INSTRUCTIONS[0]


def test_source_text_accepts_numpy_strings(tok):
    class NumpyText(InstructedEnv):
        def _obs(self):
            obs = super()._obs()
            obs["instruction"] = np.array(obs["instruction"])  # what SubprocVecEnv makes of a string
            return obs

    env = TokenizeInstruction(NumpyText("text"), tok)
    obs, _ = env.reset()
    assert decode(tok, obs["instruction_ids"], obs["instruction_mask"]) == INSTRUCTIONS[0]


def test_source_text_follows_changes_within_an_episode(tok):
    env = TokenizeInstruction(InstructedEnv("text", change_at=2), tok)
    env.reset()
    obs, *_ = env.step(env.action_space.sample())
    assert decode(tok, obs["instruction_ids"], obs["instruction_mask"]) == INSTRUCTIONS[0]
    obs, *_ = env.step(env.action_space.sample())
    assert decode(tok, obs["instruction_ids"], obs["instruction_mask"]) == "stop" == env.instruction


def test_source_info(tok):
    env = make_wrapped(tok, mode="info", source="info")
    env.reset()
    assert env.instruction_source == "info" and env.instruction == INSTRUCTIONS[0]


def test_source_attribute_on_env_and_on_a_wrapper(tok):
    env = make_wrapped(tok, mode="attribute")
    obs, info = env.reset()
    assert "instruction" not in info and env.instruction_source == "attribute"
    assert decode(tok, obs["instruction_ids"], obs["instruction_mask"]) == INSTRUCTIONS[0]
    env = TokenizeInstruction(AttributeWrapper(InstructedEnv("none"), "wrapped text"), tok, source="attribute")
    obs, _ = env.reset()
    assert decode(tok, obs["instruction_ids"], obs["instruction_mask"]) == "wrapped text"


def test_auto_prefers_observation_then_info_then_attribute(tok):
    env = TokenizeInstruction(AttributeWrapper(InstructedEnv("text"), "attr"), tok)
    env.reset()
    assert env.instruction_source == "observation"
    env = TokenizeInstruction(AttributeWrapper(InstructedEnv("info"), "attr"), tok)
    env.reset()
    assert env.instruction_source == "info"
    env = TokenizeInstruction(AttributeWrapper(InstructedEnv("info"), "attr"), tok, source="attribute")
    env.reset()
    assert env.instruction == "attr"


# ---------------------------------------------------------------------------------------------------- errors
def test_no_instruction_names_the_three_sources(tok):
    env = make_wrapped(tok, mode="none")
    with pytest.raises(ValueError, match="no instruction") as error:
        env.reset()
    message = str(error.value)
    assert "Text" in message and "info['instruction']" in message and "`instruction` attribute" in message
    env = make_wrapped(tok, mode="attribute", source="info")  # the attribute is there, but not asked for
    with pytest.raises(ValueError, match="no instruction"):
        env.reset()


def test_constructor_errors(tok):
    with pytest.raises(TypeError, match="Dict observation space"):
        TokenizeInstruction(PointReachEnv(), tok)
    with pytest.raises(ValueError, match="exactly one gymnasium.spaces.Text"):
        make_wrapped(tok, mode="info", source="observation")
    with pytest.raises(ValueError, match="source must be"):
        make_wrapped(tok, source="text")
    with pytest.raises(ValueError, match="already has a key 'state'"):
        make_wrapped(tok, ids_key="state")
    with pytest.raises(ValueError, match="max_length"):
        make_wrapped(tok, max_length=0)
    with pytest.raises(TypeError, match="tokenizer object"):
        make_wrapped("google/byt5-small")
    with pytest.raises(TypeError, match="vocabulary size"):
        make_wrapped(lambda text, **kwargs: {"input_ids": [1]})


def test_step_before_reset(tok):
    with pytest.raises(RuntimeError, match="reset"):
        make_wrapped(tok).step(np.zeros(2, np.float32))


def test_ids_outside_the_space(tok):
    env = make_wrapped(ShiftedTokenizer())
    with pytest.raises(ValueError, match=r"outside the observation space \[0, 383\]"):
        env.reset()


def test_truncation_warns_once(tok):
    env = TokenizeInstruction(InstructedEnv("info", instructions=("a" * 40, "b" * 50)), tok, max_length=8)
    with pytest.warns(UserWarning, match="longer than max_length=8"):
        obs, _ = env.reset()
    assert obs["instruction_mask"].all()
    assert tok.decode(obs["instruction_ids"].tolist(), skip_special_tokens=True) == "a" * 7  # 7 bytes + EOS
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env.reset()
    # exactly max_length tokens is not a truncation
    env = TokenizeInstruction(InstructedEnv("info", instructions=("a" * 7,)), tok, max_length=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        obs, _ = env.reset()
    assert obs["instruction_mask"].all()


# ---------------------------------------------------------------------------------------------------- tokenizers
def test_left_padding_is_moved_right():
    tok = transformers.ByT5Tokenizer(padding_side="left")
    obs, _ = make_wrapped(tok, max_length=32).reset()
    assert obs["instruction_mask"][0] == 1 and obs["instruction_mask"][-1] == 0
    assert decode(tok, obs["instruction_ids"], obs["instruction_mask"]) == INSTRUCTIONS[0]


def test_tokenizer_without_mask_or_padding(tok):
    obs, _ = make_wrapped(NoMaskTokenizer(), max_length=32).reset()
    assert obs["instruction_ids"].shape == (32,) and obs["instruction_mask"].dtype == np.int8
    assert decode(tok, obs["instruction_ids"], obs["instruction_mask"]) == INSTRUCTIONS[0]


def test_word_level_fast_tokenizer():
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers.models import WordLevel
    from tokenizers.normalizers import Lowercase
    from tokenizers.pre_tokenizers import Whitespace

    words = ["[PAD]", "[UNK]", *sorted({w for text in INSTRUCTIONS for w in text.split()})]
    core = tokenizers.Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    core.pre_tokenizer, core.normalizer = Whitespace(), Lowercase()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]")
    env = make_wrapped(tok, max_length=6)
    assert env.observation_space["instruction_ids"].high.max() == len(words) - 1
    obs, _ = env.reset()
    assert decode(tok, obs["instruction_ids"], obs["instruction_mask"]) == INSTRUCTIONS[0]
    env = pickle.loads(pickle.dumps(env))
    obs, _ = env.reset()
    assert decode(tok, obs["instruction_ids"], obs["instruction_mask"]) == INSTRUCTIONS[1]


# ---------------------------------------------------------------------------------------------------- SB3
def test_check_env(tok):
    check_env(make_wrapped(tok, mode="text"))
    check_env(make_wrapped(tok, mode="info"))


def test_pickling(tok):
    env = make_wrapped(tok)
    env.reset()
    clone = pickle.loads(pickle.dumps(env))
    obs, info = clone.reset()
    assert decode(tok, obs["instruction_ids"], obs["instruction_mask"]) == info["instruction"] == INSTRUCTIONS[1]
    # what SubprocVecEnv sends to a spawned worker: a cloudpickled env factory holding the tokenizer
    factory = cloudpickle.loads(cloudpickle.dumps(lambda: make_wrapped(tok, mode="text")))
    obs, _ = factory().reset()
    assert decode(tok, obs["instruction_ids"], obs["instruction_mask"]) == INSTRUCTIONS[0]


def _check_vec_obs(obs, n_envs, tok, expected):
    assert obs["instruction_ids"].dtype == np.int64 and obs["instruction_ids"].shape == (n_envs, 32)
    assert obs["instruction_mask"].dtype == np.int8 and obs["instruction_mask"].shape == (n_envs, 32)
    assert [decode(tok, i, m) for i, m in zip(obs["instruction_ids"], obs["instruction_mask"])] == expected


def test_dummy_vec_env_keeps_dtypes(tok):
    venv = DummyVecEnv([lambda: ActionChunk(make_wrapped(tok, mode="text"), 2) for _ in range(2)])
    _check_vec_obs(venv.reset(), 2, tok, [INSTRUCTIONS[0]] * 2)
    for _ in range(3):  # 3 chunks of 2 rows: the 5-step episodes end and auto-reset
        obs, _, dones, infos = venv.step(np.zeros((2, 2, 2), np.float32))
    assert dones.all()
    _check_vec_obs(obs, 2, tok, [INSTRUCTIONS[1]] * 2)
    _check_vec_obs({k: np.stack([info["terminal_observation"][k] for info in infos]) for k in obs}, 2, tok,
                   [INSTRUCTIONS[0]] * 2)  # fmt: skip


def test_subproc_vec_env_keeps_dtypes(tok):
    # fork: fast; the spawn path (pickled factories) is test_subproc_vec_env_spawn
    venv = SubprocVecEnv([lambda: make_wrapped(tok, mode="info") for _ in range(2)], start_method="fork")
    try:
        _check_vec_obs(venv.reset(), 2, tok, [INSTRUCTIONS[0]] * 2)
        obs, *_ = venv.step(np.zeros((2, 2), np.float32))
        _check_vec_obs(obs, 2, tok, [INSTRUCTIONS[0]] * 2)
    finally:
        venv.close()


def test_subproc_vec_env_spawn(tok):
    """A fresh interpreter per worker, which unpickles the tokenizer (imports torch and transformers: ~4 s)."""
    venv = SubprocVecEnv([lambda: make_wrapped(tok, mode="text")], start_method="spawn")
    try:
        _check_vec_obs(venv.reset(), 1, tok, [INSTRUCTIONS[0]])
    finally:
        venv.close()
