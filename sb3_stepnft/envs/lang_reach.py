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
BACKGROUND_COLOR = (0, 0, 0)
DEFAULT_START_RANGE: tuple[float, float] = (0.0, 0.2)

#: Variations for out-of-distribution studies (benchmarks/ood_langreach.py, docs/stepnft.md "OOD generalisation"):
#: ``LangReachEnv`` keyword arguments of the in-distribution training variations (``"ind"``) and of three held-out
#: categories, the paper's (Table 2) vision, semantics and execution. Each held-out category changes only its own
#: factors and keeps the others at their ``"ind"`` values (:func:`ood_env_kwargs`). Every instruction fits in 23
#: bytes (ByT5 with ``max_length=24`` truncates nothing).
OOD_VARIATIONS: dict[str, dict[str, Any]] = {
    "ind": dict(
        background_colors=((0, 0, 0), (25, 25, 60), (55, 35, 20)),
        image_noise_std=0.0,
        target_shades={"red": ((230, 40, 40), (250, 80, 70)), "green": ((40, 200, 60), (20, 160, 40)),
                       "blue": ((50, 90, 250), (80, 130, 255)), "yellow": ((240, 220, 40), (250, 240, 100))},
        instruction_templates=("go to the {} target", "reach the {} target", "move to the {} goal"),
        start_range=(0.0, 0.2),
    ),
    "vision": dict(  # unseen backgrounds and pixel noise
        background_colors=((20, 70, 40), (70, 20, 70), (100, 100, 100)),
        image_noise_std=12.0,
    ),
    "semantics": dict(  # unseen phrasings (synonyms) and unseen target shades; the same colour names
        instruction_templates=("move to the {} one", "find the {} target", "get to the {} disc"),
        target_shades={"red": ((180, 0, 90),), "green": ((120, 220, 0),), "blue": ((0, 60, 150),),
                       "yellow": ((200, 170, 0),)},
    ),
    "execution": dict(start_range=(0.25, 0.4)),  # starts outside the training square [-0.2, 0.2]²
}  # fmt: skip


def ood_env_kwargs(category: str) -> dict[str, Any]:
    """``LangReachEnv`` keyword arguments of one :data:`OOD_VARIATIONS` category: the ``"ind"`` ones, with the
    category's own factors replaced."""
    if category not in OOD_VARIATIONS:
        raise ValueError(f"Unknown OOD category {category!r}: choose one of {list(OOD_VARIATIONS)}")
    return {**OOD_VARIATIONS["ind"], **OOD_VARIATIONS[category]}


def _rgb(value: Any, what: str) -> tuple[int, int, int]:
    color = tuple(value) if isinstance(value, (tuple, list, np.ndarray)) else ()
    if len(color) != 3 or not all(isinstance(c, (int, np.integer)) and 0 <= c <= 255 for c in color):
        raise ValueError(f"{what} must be an RGB triple of integers in 0..255, got {value!r}")
    return tuple(int(c) for c in color)  # type: ignore[return-value]


def _colors(values: Any, what: str) -> tuple[tuple[int, int, int], ...]:
    if isinstance(values, (str, Mapping)) or not isinstance(values, Sequence) or len(values) == 0:
        raise ValueError(f"{what} must be a non-empty sequence of RGB triples such as ((0, 0, 0),), got {values!r}")
    return tuple(_rgb(v, what) for v in values)


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
      template, then the start (uniform in [-0.2, 0.2]² by default, see ``start_range``), then (only where there is
      more than one to choose from) the background colour and each target's shade, from the env's seeded RNG;
      ``options={"target": name}`` forces the target.
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
    :param background_colors: RGB colours of the arena's background; one is drawn per episode (default: black).
    :param image_noise_std: Standard deviation (in 0..255 pixel units) of Gaussian noise added to every image
        (clipped to 0..255, fresh each frame; default 0: none).
    :param target_shades: ``{name: (RGB, ...)}``: the shades a target may have (one drawn per episode and target;
        names missing keep their :data:`TARGET_COLORS` colour); default None: :data:`TARGET_COLORS`. Instructions
        still name the colour (``"red"``).
    :param start_range: ``(inner, outer)``: the start is uniform in the square annulus ``[-outer, outer]² \
        (-inner, inner)²`` (default ``(0, 0.2)``: [-0.2, 0.2]²).
    :param seed: Seed of the first reset that is given none (later resets continue the RNG stream).

    :data:`OOD_VARIATIONS` holds the in-distribution and held-out settings of the OOD study.
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
        background_colors: Sequence[Sequence[int]] = (BACKGROUND_COLOR,),
        image_noise_std: float = 0.0,
        target_shades: Mapping[str, Sequence[Sequence[int]]] | None = None,
        start_range: Sequence[float] = DEFAULT_START_RANGE,
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
        background_colors = _colors(background_colors, "background_colors")
        if isinstance(image_noise_std, bool) or not np.isfinite(image_noise_std) or image_noise_std < 0:
            raise ValueError(f"image_noise_std must be a finite number >= 0 (pixel units, 0..255), got {image_noise_std!r}")
        if target_shades is not None and not isinstance(target_shades, Mapping):
            raise ValueError(f"target_shades must be None or a dict {{name: (RGB, ...)}}, got {target_shades!r}")
        unknown = sorted(set(target_shades or {}) - set(TARGET_NAMES))
        if unknown:
            raise ValueError(f"target_shades has unknown target names {unknown}: use some of {TARGET_NAMES}")
        shades = {name: (TARGET_COLORS[name],) for name in TARGET_NAMES}
        shades.update({name: _colors(values, f"target_shades[{name!r}]") for name, values in (target_shades or {}).items()})
        start = tuple(float(v) for v in start_range) if isinstance(start_range, Sequence) else ()
        if len(start) != 2 or not 0.0 <= start[0] < start[1] <= 1.0:
            raise ValueError(f"start_range must be (inner, outer) with 0 <= inner < outer <= 1, got {start_range!r}")
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
        self.background_colors = background_colors
        self.image_noise_std = float(image_noise_std)
        self.target_shades = shades
        self.start_range = start
        self.background_color = background_colors[0]
        self.target_colors: dict[str, tuple[int, int, int]] = {name: values[0] for name, values in shades.items()}
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
        image = np.empty((size, size, 3), dtype=np.uint8)
        image[:] = self.background_color
        image[(np.abs(xs) > 1.0) | (np.abs(ys) > 1.0)] = WALL_COLOR

        def disc(position: np.ndarray, radius: float, color: tuple[int, int, int]) -> None:
            inside = (xs - position[0]) ** 2 + (ys - position[1]) ** 2 <= radius**2
            col, row = (position[0] - xs[0, 0]) / pixel, (ys[0, 0] - position[1]) / pixel
            col, row = int(round(col)), int(round(row))
            if 0 <= row < size and 0 <= col < size:  # at least the nearest pixel
                inside[row, col] = True
            image[inside] = color

        for name, position in self.targets.items():
            disc(position, max(self.goal_radius, 0.75 * pixel), self.target_colors[name])
        disc(self._position, 0.75 * pixel, AGENT_COLOR)
        return np.ascontiguousarray(image.transpose(2, 0, 1))

    def _noisy(self, image: np.ndarray) -> np.ndarray:
        if self.image_noise_std == 0.0:
            return image
        noise = self.np_random.normal(0.0, self.image_noise_std, size=image.shape)
        return np.clip(np.rint(image + noise), 0, 255).astype(np.uint8)

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
        obs: dict[str, Any] = {camera: self._noisy(self._image(camera)) for camera in self.cameras}
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
        inner, outer = self.start_range
        self._position = self.np_random.uniform(-outer, outer, size=2)
        while np.abs(self._position).max() < inner:  # rejection: uniform on the square annulus
            self._position = self.np_random.uniform(-outer, outer, size=2)
        if len(self.background_colors) > 1:  # no draw by default: the default RNG stream is unchanged
            self.background_color = self.background_colors[int(self.np_random.integers(len(self.background_colors)))]
        for name, shades in self.target_shades.items():
            if len(shades) > 1:
                self.target_colors[name] = shades[int(self.np_random.integers(len(shades)))]
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
    from sb3_stepnft.sft import record_demonstrations

    rng = np.random.default_rng(seed)
    if env is None:
        env = make_lang_reach_env(tokenizer, max_length=max_length, **(env_kwargs or {}))
    inner: LangReachEnv = env.unwrapped

    def episode_actor(obs, info):
        goal = inner.targets[target_from_instruction(info["instruction"])]
        angle = rng.choice([-wander, wander]) if rng.random() < imperfect_fraction else 0.0
        return lambda obs: demonstrator_action(obs["state"], goal, angle, rng, inner.step_size)

    return record_demonstrations(env, n_episodes, seed, episode_actor)
