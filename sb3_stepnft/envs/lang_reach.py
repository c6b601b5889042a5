"""LangReach: a small language-conditioned reaching task (PointReach with four coloured targets and an instruction).

Four targets, red, green, blue and yellow, sit at fixed positions around the origin; each episode an instruction
such as ``"go to the blue target"`` names one of them, and only reaching that one counts. The scene (and so the
image) is the same whatever the instruction, so a policy must read the instruction: one that ignores it succeeds
at most about a quarter of the time. Like PointReach it runs fast, reports ``info["is_success"]`` and comes with an
imperfect scripted demonstrator (half of its episodes wander sideways and mostly fail).

The raw instruction is reported as ``info["instruction"]`` and as the ``instruction`` attribute, not in the
observation (unless ``instruction_in_observation=True``, which adds a ``gymnasium.spaces.Text`` key that SB3 cannot
store): :class:`sb3_stepnft.wrappers.TokenizeInstruction` turns it into ``instruction_ids`` / ``instruction_mask``
(:func:`make_lang_reach_env` applies it).
"""

import re
import string
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from sb3_stepnft.envs.point_reach import steer
from sb3_stepnft.wrappers import ActionChunk, TokenizeInstruction

#: Target names, their RGB colours and their directions (angle in radians) from the origin.
TARGET_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 250),
    "yellow": (240, 220, 40),
}
TARGET_ANGLES: dict[str, float] = {"red": 0.0, "green": 0.5 * np.pi, "blue": np.pi, "yellow": 1.5 * np.pi}
TARGET_NAMES: tuple[str, ...] = tuple(TARGET_COLORS)
DEFAULT_TEMPLATES: tuple[str, ...] = ("go to the {} target",)
#: Characters of the optional ``Text`` instruction key.
INSTRUCTION_CHARSET = string.ascii_letters + string.digits + " ,.'!?-"
AGENT_COLOR = (255, 255, 255)
WALL_COLOR = (70, 70, 70)


def target_from_instruction(instruction: str) -> str:
    """The target name an instruction mentions (the one colour word in it)."""
    words = set(re.findall(r"[a-z]+", instruction.lower()))
    found = [name for name in TARGET_NAMES if name in words]
    if len(found) != 1:
        raise ValueError(f"The instruction {instruction!r} must name exactly one of {TARGET_NAMES}, found {found}")
    return found[0]


class LangReachEnv(gym.Env):
    """Move a point in [-1, 1]² to the target the instruction names.

    - Targets: ``red``, ``green``, ``blue``, ``yellow`` at ``target_distance`` from the origin, at 0°, 90°, 180° and
      270° (fixed: the scene does not show which one is wanted). Each reset draws the target, then the instruction
      template, then the start (uniform in [-0.2, 0.2]²) from the env's seeded RNG; ``options={"target": name}``
      forces the target.
    - Observation (Dict): one uint8 channel-first image ``(3, image_size, image_size)`` per camera, and ``"state"``:
      ``(x, y, last_action_x, last_action_y)`` (float32, the previous action is zero after a reset). A camera whose
      name contains ``"wrist"`` renders a view centred on the point (half-width ``wrist_view``); any other camera
      renders the whole arena. Optionally ``"instruction"``: a ``Text`` key with the instruction.
    - Action: a velocity in [-1, 1]²; the point moves by ``step_size·action`` (clipped to the arena).
    - Reward 1 and termination when the point comes within ``goal_radius`` of the instructed target (other targets
      do nothing); truncation after ``max_episode_steps``. ``info``: ``is_success``, ``instruction`` and ``target``.
    - The instruction: ``info["instruction"]`` (reset and step) and the attribute ``instruction``.

    :param max_episode_steps: Episode length limit.
    :param step_size: Distance moved per unit action.
    :param goal_radius: Success radius.
    :param target_distance: Distance of the targets from the origin.
    :param image_size: Side of the square images, in pixels (SB3's ``MultiInputPolicy`` / NatureCNN needs 36 or
        more; the default 16 suits small VLA encoders and custom extractors).
    :param cameras: Image keys, e.g. ``("image",)`` (default) or ``("agentview", "wrist")``.
    :param wrist_view: Half-width (world units) of the wrist cameras' view.
    :param instruction_templates: Format strings with one ``{}`` for the colour; one is drawn per episode.
    :param instruction_in_observation: Also put the instruction in the observation as a ``Text`` key
        ``"instruction"`` (SB3 cannot vectorise it: use :class:`~sb3_stepnft.wrappers.TokenizeInstruction`).
    :param seed: Seed of the first reset that is given none (later resets continue the RNG stream).
    """

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(
        self,
        max_episode_steps: int = 12,
        step_size: float = 0.1,
        goal_radius: float = 0.1,
        target_distance: float = 0.7,
        image_size: int = 16,
        cameras: Sequence[str] = ("image",),
        wrist_view: float = 0.4,
        instruction_templates: Sequence[str] = DEFAULT_TEMPLATES,
        instruction_in_observation: bool = False,
        seed: int | None = None,
        render_mode: str | None = None,
    ):
        super().__init__()
        if isinstance(cameras, str) or isinstance(cameras, Mapping):
            raise TypeError(f"cameras must be a sequence of key names such as ('image',), got {cameras!r}")
        cameras = tuple(cameras)
        if not cameras or len(set(cameras)) != len(cameras):
            raise ValueError(f"cameras must be a non-empty sequence of distinct names, got {cameras!r}")
        if "state" in cameras or "instruction" in cameras:
            raise ValueError("'state' and 'instruction' are reserved keys, not camera names")
        if int(image_size) != image_size or image_size < 4:
            raise ValueError(f"image_size must be an integer >= 4, got {image_size!r}")
        templates = tuple(instruction_templates)
        if not templates or any(t.count("{}") != 1 for t in templates):
            raise ValueError(f"instruction_templates must be format strings with exactly one '{{}}', got {templates!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.max_episode_steps = int(max_episode_steps)
        self.step_size = float(step_size)
        self.goal_radius = float(goal_radius)
        self.target_distance = float(target_distance)
        self.image_size = int(image_size)
        self.cameras = cameras
        self.wrist_view = float(wrist_view)
        self.instruction_templates = templates
        self.instruction_in_observation = bool(instruction_in_observation)
        self.render_mode = render_mode
        self._initial_seed = seed
        self.targets: dict[str, np.ndarray] = {
            name: self.target_distance * np.array([np.cos(angle), np.sin(angle)]) for name, angle in TARGET_ANGLES.items()
        }

        image_space = spaces.Box(0, 255, shape=(3, self.image_size, self.image_size), dtype=np.uint8)
        obs_spaces: dict[str, spaces.Space] = {camera: image_space for camera in cameras}
        obs_spaces["state"] = spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
        if self.instruction_in_observation:
            longest = max(len(t) for t in templates) + max(len(n) for n in TARGET_NAMES)
            obs_spaces["instruction"] = spaces.Text(max_length=max(64, longest), charset=INSTRUCTION_CHARSET)
        self.observation_space = spaces.Dict(obs_spaces)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)

        self._position = np.zeros(2)
        self._last_action = np.zeros(2)
        self._steps = 0
        self.target: str | None = None
        self.instruction: str | None = None

    # ------------------------------------------------------------------------------------------------ rendering
    def _render_view(self, center: np.ndarray, half_width: float) -> np.ndarray:
        size = self.image_size
        offsets = ((np.arange(size) + 0.5) / size * 2.0 - 1.0) * half_width
        xs = (center[0] + offsets)[None, :]  # columns: x increases to the right
        ys = (center[1] - offsets)[:, None]  # rows: y increases upwards
        pixel = 2.0 * half_width / size
        image = np.zeros((size, size, 3), dtype=np.uint8)
        image[(np.abs(xs) > 1.0) | (np.abs(ys) > 1.0)] = WALL_COLOR

        def disc(position: np.ndarray, radius: float, color: tuple[int, int, int]) -> None:
            inside = (xs - position[0]) ** 2 + (ys - position[1]) ** 2 <= radius**2
            col, row = (position[0] - xs[0, 0]) / pixel, (ys[0, 0] - position[1]) / pixel
            col, row = int(round(col)), int(round(row))
            if 0 <= row < size and 0 <= col < size:  # at least the nearest pixel
                inside[row, col] = True
            image[inside] = color

        for name, position in self.targets.items():
            disc(position, max(self.goal_radius, 0.75 * pixel), TARGET_COLORS[name])
        disc(self._position, 0.75 * pixel, AGENT_COLOR)
        return np.ascontiguousarray(image.transpose(2, 0, 1))

    def _image(self, camera: str) -> np.ndarray:
        if "wrist" in camera.lower():
            return self._render_view(self._position, self.wrist_view)
        return self._render_view(np.zeros(2), 1.0)

    def render(self) -> np.ndarray | None:
        """The arena view as an ``(H, W, 3)`` uint8 array (``render_mode="rgb_array"``)."""
        if self.render_mode != "rgb_array":
            return None
        return self._render_view(np.zeros(2), 1.0).transpose(1, 2, 0)

    # ------------------------------------------------------------------------------------------------ gym API
    def _obs(self) -> dict[str, Any]:
        obs: dict[str, Any] = {camera: self._image(camera) for camera in self.cameras}
        obs["state"] = np.concatenate([self._position, self._last_action]).astype(np.float32)
        if self.instruction_in_observation:
            obs["instruction"] = self.instruction
        return obs

    def _info(self, success: bool | None = None) -> dict[str, Any]:
        info: dict[str, Any] = {"instruction": self.instruction, "target": self.target}
        if success is not None:
            info["is_success"] = success
        return info

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is None and self._initial_seed is not None:
            seed = self._initial_seed
        self._initial_seed = None
        super().reset(seed=seed)
        index = int(self.np_random.integers(len(TARGET_NAMES)))
        template = self.instruction_templates[int(self.np_random.integers(len(self.instruction_templates)))]
        self._position = self.np_random.uniform(-0.2, 0.2, size=2)
        target = TARGET_NAMES[index]
        if options and options.get("target") is not None:
            if options["target"] not in TARGET_NAMES:
                raise ValueError(f"options['target'] must be one of {TARGET_NAMES}, got {options['target']!r}")
            target = options["target"]
        self.target = target
        self.instruction = template.format(target)
        self._steps = 0
        self._last_action = np.zeros(2)
        return self._obs(), self._info()

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
        self._position = np.clip(self._position + self.step_size * action, -1.0, 1.0)
        self._steps += 1
        self._last_action = action
        success = bool(np.linalg.norm(self.targets[self.target] - self._position) < self.goal_radius)
        truncated = (not success) and self._steps >= self.max_episode_steps
        return self._obs(), float(success), success, truncated, self._info(success)


# ---------------------------------------------------------------------------------------------------- factories
def default_tokenizer(tokenizer: Any = None) -> Any:
    """``tokenizer`` as is; None: ``transformers.ByT5Tokenizer()`` (no files needed); a string:
    ``transformers.AutoTokenizer.from_pretrained(tokenizer)``."""
    if tokenizer is not None and not isinstance(tokenizer, str):
        return tokenizer
    try:
        import transformers
    except ImportError as error:  # pragma: no cover - depends on the install
        raise ImportError(
            "LangReach's default tokenizer needs transformers: pip install 'sb3-stepnft[vla]' (or pass a tokenizer)"
        ) from error
    if tokenizer is None:
        return transformers.ByT5Tokenizer()
    return transformers.AutoTokenizer.from_pretrained(tokenizer)


def make_lang_reach_env(
    tokenizer: Any = None,
    max_length: int = 32,
    chunk_size: int = 1,
    seed: int | None = None,
    prompt_suffix: str = "",
    **kwargs: Any,
) -> gym.Env:
    """:class:`LangReachEnv` in :class:`~sb3_stepnft.wrappers.TokenizeInstruction` (and in
    :class:`~sb3_stepnft.wrappers.ActionChunk` when ``chunk_size > 1``).

    Observations: the camera images, ``"state"``, ``"instruction_ids"`` (int64) and ``"instruction_mask"`` (int8).
    For SB3: ``make_vec_env(make_lang_reach_env, n_envs=8, seed=0, env_kwargs=dict(tokenizer=tok))``.

    :param tokenizer: A tokenizer object; None: ``transformers.ByT5Tokenizer()``; a string: loaded with
        ``AutoTokenizer.from_pretrained``.
    :param max_length: Token slots T.
    :param chunk_size: Rows per action chunk (1: no ``ActionChunk``).
    :param seed: Seed of the first reset given no seed.
    :param prompt_suffix: See :class:`~sb3_stepnft.wrappers.TokenizeInstruction`.
    :param kwargs: Passed to :class:`LangReachEnv`.
    """
    if isinstance(chunk_size, bool) or int(chunk_size) != chunk_size or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    env: gym.Env = LangReachEnv(seed=seed, **kwargs)
    env = TokenizeInstruction(env, default_tokenizer(tokenizer), max_length=max_length, prompt_suffix=prompt_suffix)
    if chunk_size > 1:
        env = ActionChunk(env, int(chunk_size))
    return env


# ---------------------------------------------------------------------------------------------------- demonstrator
def demonstrator_action(
    state: np.ndarray, goal: np.ndarray, wander: float, rng: np.random.Generator, step_size: float = 0.1
) -> np.ndarray:
    """Scripted action: head for ``goal`` from the position ``state[:2]``, turned by ``wander`` radians, with noise."""
    offset = np.asarray(goal, dtype=np.float64) - np.asarray(state[:2], dtype=np.float64)
    return steer(offset, wander, rng, step_size)


def collect_demonstrations(
    n_episodes: int = 40,
    seed: int = 0,
    imperfect_fraction: float = 0.5,
    wander: float = 1.3,
    tokenizer: Any = None,
    max_length: int = 32,
    env_kwargs: dict[str, Any] | None = None,
    env: gym.Env | None = None,
):
    """Roll out the scripted demonstrator on :class:`LangReachEnv` (tokenised, as :func:`make_lang_reach_env`).

    The demonstrator reads the instruction (``info["instruction"]``) and heads for the target it names; in a
    fraction ``imperfect_fraction`` of the episodes it heads ``±wander`` radians sideways and mostly fails.

    :return: :class:`sb3_stepnft.sft.Demonstrations` with Dict observations (the camera images, ``"state"``,
        ``"instruction_ids"``, ``"instruction_mask"``) and actions ``(N, 2)`` in env units, and the demonstrator's
        success rate (as :func:`sb3_stepnft.envs.point_reach.collect_demonstrations`).
    :param env: another LangReach env to record in (e.g. with π0.5's state prompt, ``vla.Pi05Prompt``); default: the
        one :func:`make_lang_reach_env` builds from ``tokenizer``, ``max_length`` and ``env_kwargs``.
    """
    from sb3_stepnft.sft import Demonstrations

    rng = np.random.default_rng(seed)
    if env is None:
        env = make_lang_reach_env(tokenizer, max_length=max_length, **(env_kwargs or {}))
    inner: LangReachEnv = env.unwrapped
    observations: dict[str, list[np.ndarray]] = {key: [] for key in env.observation_space.spaces}
    actions, starts, successes = [], [], []
    for episode in range(n_episodes):
        obs, info = env.reset(seed=seed * 100_003 + episode)
        goal = inner.targets[target_from_instruction(info["instruction"])]
        angle = rng.choice([-wander, wander]) if rng.random() < imperfect_fraction else 0.0
        done, first, success = False, True, False
        while not done:
            action = demonstrator_action(obs["state"], goal, angle, rng, inner.step_size)
            for key, value in obs.items():
                observations[key].append(value)
            actions.append(action)
            starts.append(first)
            first = False
            obs, _, terminated, truncated, info = env.step(action)
            done = terminated or truncated
            success = success or info["is_success"]
        successes.append(success)
    demos = Demonstrations(
        observations={key: np.stack(values) for key, values in observations.items()},
        actions=np.array(actions),
        episode_starts=np.array(starts),
    )
    return demos, float(np.mean(successes))
