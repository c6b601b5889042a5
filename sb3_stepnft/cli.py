"""The `sb3-stepnft` command line (also `python -m sb3_stepnft`): train, eval, demos, compare.

    sb3-stepnft train --algo stepnft --env point_reach --demos demos/point_reach.npz -n 100000 --out runs/pr
    sb3-stepnft eval runs/pr                      # the paper's protocol: success over 100 seeded episodes
    sb3-stepnft demos point_reach -n 40 --out demos/point_reach.npz
    sb3-stepnft demos maniskill:PushCube-v1 -n 10 --out demos
    sb3-stepnft compare --quick                   # benchmarks/suite.py (needs a source checkout)
    torchrun --nproc_per_node=2 -m sb3_stepnft train --algo stepnft --env point_reach   # data-parallel (docs/scaling.md)

Env ids: a gymnasium id (``Pendulum-v1``), ``point_reach``, ``maniskill:<task>`` (``maniskill:PushCube-v1``) or
``libero:<suite>/<task id>`` (``libero:libero_object/0``). Hyper-parameters come from a YAML file in the style of the
RL Baselines3 Zoo (``--hyperparams``: a section per env id, or a flat mapping) and ``--set key=value`` overrides;
see :data:`HELP_HYPERPARAMS` (``sb3-stepnft train --help``).
"""

import argparse
import ast
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sb3_stepnft.common.threads import ENV_VAR as THREADS_ENV_VAR
from sb3_stepnft.common.threads import configure_torch_threads

ALGORITHMS = {
    "stepnft": ("sb3_stepnft", "StepNFT"),
    "flowppo": ("sb3_stepnft", "FlowPPO"),
    "flowgrpo": ("sb3_stepnft", "FlowGRPO"),
    "ppo": ("stable_baselines3", "PPO"),
}
FLOW_ALGORITHMS = ("stepnft", "flowppo", "flowgrpo")
DEFAULT_TIMESTEPS = 100_000
DEFAULT_N_ENVS = 8
EVAL_SEED = 10_000  # demonstrations start at seed 0: evaluation never sees a demonstrated initial state
CONFIG_FILE = "config.yml"
MODEL_FILE = "model.zip"
VECNORMALIZE_FILE = "vecnormalize.pkl"
# Keys of a hyper-parameter section that configure the run or the env rather than the algorithm's constructor.
RUN_KEYS = ("n_timesteps", "policy", "n_envs", "env_kwargs", "normalize", "chunk_size", "max_episode_steps",
            "action_bounds", "pretrain")  # fmt: skip
# RL Zoo keys this command line does not implement (an error names them rather than passing them on).
UNSUPPORTED_ZOO_KEYS = ("frame_stack", "env_wrapper", "callback", "vec_env_wrapper", "normalize_kwargs")

HELP_HYPERPARAMS = """\
hyper-parameters (--hyperparams FILE.yml, RL Zoo style, and --set KEY=VALUE):
  The YAML file holds either one section per env id (as written after --env, e.g. `Pendulum-v1:` or
  `maniskill:PushCube-v1:`; a `default:` section is used when the env has none) or a flat mapping. --set overrides
  single keys (VALUE is parsed as YAML; dotted keys reach into dicts: --set policy_kwargs.net_arch=[64,64]).
  Run keys:
    n_timesteps        total env steps (decisions with chunks); -n/--total-timesteps overrides it (default 100000)
    policy             policy name or class path (default MlpPolicy; MultiInputPolicy for Dict observations)
    n_envs             parallel envs (default 8; FlowGRPO: a multiple of group_size)
    env_kwargs         keyword arguments of the env (gymnasium.make, make_maniskill_env or make_libero_env)
    max_episode_steps  time limit in underlying env steps
    chunk_size         action chunks: ActionChunk(env, H), the policy predicts H actions per decision
    normalize          true | "dict(norm_obs=True, norm_reward=False)" | demos (frozen statistics of --demos)
    action_bounds      ManiSkill only: demos (fitted to --demos) or a list, narrows the policy's action Box
    pretrain           keyword arguments of sb3_stepnft.sft.pretrain, e.g. "dict(epochs=50, learning_rate=3e-4)"
  Every other key goes to the algorithm's constructor (learning_rate, n_steps, batch_size, policy_kwargs, ...).
  Strings "dict(...)" are read as Python literals (as in the Zoo, without arbitrary code); "lin_3e-4" is a
  linear schedule from 3e-4 to 0.
"""


class CLIError(Exception):
    """A user error: printed as one line without a traceback."""


# ------------------------------------------------------------------------------------------------ values
def _literal(node: ast.AST) -> Any:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
        return {kw.arg: _literal(kw.value) for kw in node.keywords if kw.arg is not None}
    if isinstance(node, ast.Dict):
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, (ast.List, ast.Tuple)):
        values = [_literal(v) for v in node.elts]
        return values if isinstance(node, ast.List) else tuple(values)
    return ast.literal_eval(node)


def parse_python_value(text: str) -> Any:
    """``"dict(net_arch=[64, 64])"`` -> ``{"net_arch": [64, 64]}``: Python literals and ``dict(...)`` calls only."""
    try:
        return _literal(ast.parse(text.strip(), mode="eval").body)
    except (ValueError, SyntaxError, TypeError) as error:
        raise CLIError(
            f"cannot read {text!r}: only Python literals and dict(...) calls are allowed (no names or other calls)"
        ) from error


def _resolve_value(key: str, value: Any) -> Any:
    if isinstance(value, str) and value.strip().startswith(("dict(", "{", "[", "(")):
        return parse_python_value(value)
    if isinstance(value, str) and value.startswith("lin_"):
        try:
            start = float(value[4:])
        except ValueError:
            raise CLIError(f"{key}: {value!r} is not a linear schedule lin_<float> (e.g. lin_3e-4)") from None
        from stable_baselines3.common.utils import LinearSchedule

        return LinearSchedule(start, 0.0, 1.0)
    return value


def load_hyperparams(path: str | os.PathLike | None, env_id: str) -> dict[str, Any]:
    """The hyper-parameters of ``env_id`` in an RL Zoo style YAML file (its section, ``default:``, or a flat file)."""
    if path is None:
        return {}
    import yaml

    path = Path(path)
    if not path.is_file():
        raise CLIError(f"hyper-parameter file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise CLIError(f"{path} is not valid YAML: {error}") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CLIError(f"{path} must hold a mapping (a section per env id, or key: value pairs), not {type(data).__name__}")
    if all(isinstance(value, dict) for value in data.values()):
        if env_id in data:
            return dict(data[env_id])
        if "default" in data:
            return dict(data["default"])
        raise CLIError(
            f"{path} has no section for env {env_id!r} (sections: {', '.join(map(str, data))}); add one, or a "
            "`default:` section"
        )
    return dict(data)


def apply_overrides(hyperparams: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key=value`` overrides (``value`` parsed as YAML; dotted keys set entries of dict values)."""
    import yaml

    result = dict(hyperparams)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CLIError(f"--set expects KEY=VALUE (e.g. --set learning_rate=1e-4), got {item!r}")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as error:
            raise CLIError(f"--set {item}: the value is not valid YAML ({error})") from error
        *parents, last = key.split(".")
        target = result
        for parent in parents:
            current = target.get(parent)
            if isinstance(current, str):
                current = parse_python_value(current)
            if current is None:
                current = {}
            if not isinstance(current, dict):
                raise CLIError(f"--set {item}: {parent} is {current!r}, not a dict")
            target[parent] = dict(current)
            target = target[parent]
        target[last] = value
    return result


def _fix_floats(value: Any) -> Any:
    """YAML 1.1 (PyYAML) reads ``1e-4`` as a string; the Zoo writes ``!!float 1e-4``. Accept both."""
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in "eE.") and not value.startswith(("lin_", "dict")) else value
        except ValueError:
            return value
    return value


# ------------------------------------------------------------------------------------------------ envs
def parse_env_id(env_id: str) -> tuple[str, str]:
    """``(kind, name)``: kind is ``gym``, ``point_reach``, ``maniskill`` or ``libero``."""
    kind, sep, name = env_id.partition(":")
    if sep and kind in ("maniskill", "libero"):
        if not name:
            raise CLIError(f"env id {env_id!r} names no task: e.g. maniskill:PushCube-v1 or libero:libero_object/0")
        return kind, name
    if env_id.lower() in ("point_reach", "pointreach"):
        return "point_reach", env_id
    return "gym", env_id  # gymnasium ids, including gymnasium's own "module:Env-v0" form


def _libero_task(name: str) -> tuple[str, int]:
    suite, sep, task = name.partition("/")
    if not sep or not task.strip().isdigit():
        raise CLIError(f"LIBERO env ids are libero:<suite>/<task id>, e.g. libero:libero_object/0; got libero:{name}")
    return suite, int(task)


def build_env(env_id: str, n_envs: int, seed: int | None, config: dict[str, Any], algo: str = "stepnft", demos=None):
    """The VecEnv of ``env_id`` for ``algo`` (FlowGRPO: grouped envs), with chunks and normalisation from ``config``."""
    from stable_baselines3.common.env_util import make_vec_env

    from sb3_stepnft.wrappers import ActionChunk

    kind, name = parse_env_id(env_id)
    env_kwargs = dict(config.get("env_kwargs") or {})
    chunk = int(config.get("chunk_size") or 1)
    limit = config.get("max_episode_steps")
    grouped = algo == "flowgrpo"
    group_size = int(config.get("group_size", 8))
    if grouped and n_envs % group_size:
        raise CLIError(f"FlowGRPO needs n_envs to be a multiple of group_size: n_envs={n_envs}, group_size={group_size}")
    bounds = config.get("action_bounds")
    if bounds is not None and kind != "maniskill":
        raise CLIError("action_bounds is implemented for ManiSkill envs only (make_maniskill_env(action_bounds=...))")

    if kind == "maniskill":
        from sb3_stepnft.envs import make_maniskill_env

        env = make_maniskill_env(
            name, num_envs=n_envs, seed=seed, chunk_size=chunk, max_episode_steps=limit,
            group_size=group_size if grouped else None, action_bounds=bounds, **env_kwargs,
        )  # fmt: skip
    else:
        if kind == "libero":
            from sb3_stepnft.envs import make_libero_env

            suite, task_id = _libero_task(name)
            env_fn, env_kwargs = make_libero_env, dict(suite=suite, task_id=task_id, chunk_size=chunk, **env_kwargs)
            if limit is not None:
                env_kwargs["max_episode_steps"] = limit
            chunk = 1  # make_libero_env chunks itself
        else:
            import gymnasium as gym

            from sb3_stepnft.envs import POINT_REACH_ID

            gym_id = POINT_REACH_ID if kind == "point_reach" else name
            try:
                gym.spec(gym_id)
            except gym.error.Error as error:
                raise CLIError(
                    f"unknown env {env_id!r} ({error}); use a gymnasium id, point_reach, maniskill:<task> or "
                    "libero:<suite>/<task id>"
                ) from error

            def env_fn(**kwargs):
                return gym.make(gym_id, **kwargs)

            if limit is not None:
                env_kwargs["max_episode_steps"] = limit
        if chunk > 1:
            inner = env_fn

            def env_fn(**kwargs):  # noqa: F811 (the chunked version of the factory above)
                return ActionChunk(inner(**kwargs), chunk)

        if grouped:
            from sb3_stepnft.envs import make_grouped_vec_env

            env = make_grouped_vec_env(env_fn, n_envs // group_size, group_size, seed=seed, env_kwargs=env_kwargs)
        else:
            env = make_vec_env(env_fn, n_envs=n_envs, seed=seed, env_kwargs=env_kwargs)
    return _normalize(env, config.get("normalize"), demos)


def _normalize(env, normalize: Any, demos):
    from stable_baselines3.common.vec_env import VecNormalize

    if normalize in (None, False):
        return env
    if normalize == "demos":
        if demos is None:
            raise CLIError("normalize: demos needs demonstrations (--demos FILE.npz)")
        from sb3_stepnft.envs.maniskill_demos import normalize_like_demos

        return normalize_like_demos(env, demos)
    if normalize is True:
        return VecNormalize(env)
    if isinstance(normalize, dict):
        return VecNormalize(env, **normalize)
    raise CLIError(f"normalize must be true, false, demos or dict(...) of VecNormalize arguments, got {normalize!r}")


# ------------------------------------------------------------------------------------------------ train
def algorithm_class(name: str):
    key = name.lower().replace("-", "").replace("_", "")
    if key not in ALGORITHMS:
        raise CLIError(f"unknown algorithm {name!r}; choose one of {', '.join(ALGORITHMS)}")
    module, cls = ALGORITHMS[key]
    return key, getattr(importlib.import_module(module), cls)


def _load_demos(path: str | None):
    if path is None:
        return None
    from sb3_stepnft.sft import Demonstrations

    if not Path(path).is_file():
        raise CLIError(f"demonstrations file {path} does not exist (create one with `sb3-stepnft demos ...`)")
    return Demonstrations.load(path)


def _default_out(algo: str, env_id: str, seed: int) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in env_id)
    return os.path.join("runs", f"{algo}_{safe}_seed{seed}")


def _tensorboard_available() -> bool:
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        return False
    return True


def train(args: argparse.Namespace) -> int:
    """``sb3-stepnft train``; under ``torchrun`` every rank runs it data-parallel (docs/scaling.md)."""
    from sb3_stepnft.common import distributed

    started_group = distributed.launched_by_torchrun() and not distributed.is_distributed()
    args.device = distributed.init_from_env(args.device)
    try:
        return _train(args)
    finally:
        if started_group and distributed.is_distributed():
            import torch.distributed as dist

            dist.destroy_process_group()


def _train(args: argparse.Namespace) -> int:
    import numpy as np
    from stable_baselines3.common.callbacks import CheckpointCallback, EvalCallback

    from sb3_stepnft.common.distributed import get_world_size, is_main_process, rank_seed

    main_process = is_main_process()  # rank 0 writes the run folder, logs, checkpoints and evaluations
    algo, cls = algorithm_class(args.algo)
    raw = apply_overrides(load_hyperparams(args.hyperparams, args.env), args.set or [])
    for key in UNSUPPORTED_ZOO_KEYS:
        if key in raw:
            raise CLIError(f"hyper-parameter {key!r} (an RL Zoo option) is not supported by sb3-stepnft train")
    hp = {key: _resolve_value(key, _fix_floats(value)) for key, value in raw.items()}
    demos = _load_demos(args.demos)
    if demos is not None and algo not in FLOW_ALGORITHMS:
        raise CLIError(f"--demos pretrains a flow policy; {algo} has none (use stepnft, flowppo or flowgrpo)")
    total = int(args.total_timesteps or hp.pop("n_timesteps", DEFAULT_TIMESTEPS))
    hp.pop("n_timesteps", None)
    n_envs = int(hp.pop("n_envs", DEFAULT_N_ENVS))
    policy = hp.pop("policy", None)
    pretrain_kwargs = hp.pop("pretrain", None) or {}
    env_config = {key: hp.pop(key) for key in ("env_kwargs", "normalize", "chunk_size", "max_episode_steps",
                                               "action_bounds") if key in hp}  # fmt: skip
    if algo == "flowgrpo":
        env_config["group_size"] = hp.get("group_size", 8)
    if env_config.get("action_bounds") == "demos":
        if demos is None:
            raise CLIError("action_bounds: demos needs demonstrations (--demos FILE.npz)")
        from sb3_stepnft.envs.maniskill_demos import demo_action_bounds

        env_config["action_bounds"] = [float(x) for x in np.asarray(demo_action_bounds(demos)).ravel()]

    out = Path(args.out or _default_out(algo, args.env, args.seed))
    threads = configure_torch_threads(args.torch_threads)
    # Data-parallel: n_envs per rank, each rank's envs seeded with seed + rank·RANK_SEED_OFFSET.
    if get_world_size() > 1 and env_config.get("normalize") not in (None, False, "demos") and main_process:
        print(
            "warning: normalize with running statistics under torchrun: each rank normalises with its own statistics "
            "(rank 0's are saved); use `normalize: demos` (frozen statistics) for identical inputs on every rank"
        )
    env = build_env(args.env, n_envs, rank_seed(args.seed), env_config, algo, demos)
    if policy is None:
        from gymnasium import spaces

        policy = "MultiInputPolicy" if isinstance(env.observation_space, spaces.Dict) else "MlpPolicy"
    tensorboard = not args.no_tensorboard and _tensorboard_available() and main_process
    if not args.no_tensorboard and not tensorboard and main_process:
        print("TensorBoard is not installed (pip install tensorboard): training without TensorBoard logs")
    try:
        model = cls(
            policy, env, seed=args.seed, verbose=args.verbose if main_process else 0, device=args.device,
            tensorboard_log=str(out / "tb") if tensorboard else None, **hp,
        )  # fmt: skip
    except TypeError as error:
        if "unexpected keyword argument" in str(error):
            raise CLIError(f"{error}: a hyper-parameter that {cls.__name__} does not take (--hyperparams / --set)") from error
        raise
    config = dict(
        algo=algo, env=args.env, seed=args.seed, n_timesteps=total, n_envs=n_envs, world_size=get_world_size(), policy=policy,
        hyperparams={k: v for k, v in raw.items() if k not in ("n_timesteps", "n_envs", "policy")},
        env_config=env_config, demos=os.path.abspath(args.demos) if args.demos else None, torch_threads=threads,
        command=" ".join(["sb3-stepnft", *sys.argv[1:]]) if args.argv is None else " ".join(["sb3-stepnft", *args.argv]),
    )  # fmt: skip
    if main_process:
        out.mkdir(parents=True, exist_ok=True)
        _write_config(out / CONFIG_FILE, config)

    if demos is not None:
        from sb3_stepnft.sft import pretrain

        start = time.time()
        stats = pretrain(model, demos, seed=args.seed, progress_bar=args.progress_bar, **pretrain_kwargs)
        if main_process:
            print(f"pretrained on {len(demos)} demonstration steps in {time.time() - start:.1f} s: {_short(stats)}")
    callbacks = []
    if args.checkpoint_freq > 0 and main_process:
        callbacks.append(
            CheckpointCallback(
                max(args.checkpoint_freq // (n_envs * get_world_size()), 1), str(out / "checkpoints"), name_prefix="model",
                save_vecnormalize=True,
            )  # fmt: skip
        )
    if args.eval_freq > 0 and main_process:
        eval_env = build_env(args.env, 1, EVAL_SEED + args.seed, env_config, "eval", demos)
        callbacks.append(
            EvalCallback(
                eval_env, n_eval_episodes=args.eval_episodes, eval_freq=max(args.eval_freq // (n_envs * get_world_size()), 1),
                log_path=str(out / "eval"), best_model_save_path=str(out / "best"), deterministic=False,
                verbose=args.verbose,
            )  # fmt: skip
        )
    start = time.time()
    model.learn(total_timesteps=total, callback=callbacks, progress_bar=args.progress_bar)
    if not main_process:
        env.close()
        return 0
    model.save(out / MODEL_FILE)
    vec_normalize = model.get_vec_normalize_env()
    if vec_normalize is not None:  # rank 0's statistics (VecNormalize's running statistics are per rank)
        vec_normalize.save(str(out / VECNORMALIZE_FILE))
    env.close()
    print(f"trained {cls.__name__} on {args.env} for {model.num_timesteps} steps in {time.time() - start:.0f} s")
    print(f"saved {out / MODEL_FILE}; evaluate with: sb3-stepnft eval {out}")
    return 0


def _short(stats: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in stats.items())


def _write_config(path: Path, config: dict[str, Any]) -> None:
    import yaml

    def plain(value):
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)

    path.write_text(yaml.safe_dump(plain(config), sort_keys=False))


# ------------------------------------------------------------------------------------------------ eval
def _find_run(path: Path) -> tuple[Path, Path | None, dict[str, Any]]:
    """``(model zip, vecnormalize file or None, run config)`` for a run folder, its model or one of its checkpoints."""
    import yaml

    if path.is_dir():
        model = path / MODEL_FILE
        if not model.is_file():
            raise CLIError(f"{path} holds no {MODEL_FILE} (pass the model file, e.g. {path}/checkpoints/model_1000_steps.zip)")
    elif path.is_file() or path.with_suffix(".zip").is_file():
        model = path if path.is_file() else path.with_suffix(".zip")
    else:
        raise CLIError(f"{path} is neither a run folder nor a saved model (.zip)")
    run_dir = model.parent.parent if model.parent.name in ("checkpoints", "best") else model.parent
    config_file = run_dir / CONFIG_FILE
    config = yaml.safe_load(config_file.read_text()) if config_file.is_file() else {}
    if model.parent.name == "checkpoints" and model.stem.endswith("_steps"):
        prefix, steps = model.stem.rsplit("_", 2)[0], model.stem.rsplit("_", 2)[1]
        normalize = model.parent / f"{prefix}_vecnormalize_{steps}_steps.pkl"
    else:
        normalize = run_dir / VECNORMALIZE_FILE
    return model, (normalize if normalize.is_file() else None), config


def evaluate(args: argparse.Namespace) -> int:
    from stable_baselines3.common.vec_env import VecNormalize

    model_path, normalize_path, config = _find_run(Path(args.path))
    algo_name = args.algo or config.get("algo")
    env_id = args.env or config.get("env")
    if algo_name is None or env_id is None:
        raise CLIError(f"no {CONFIG_FILE} next to {model_path}: pass --algo and --env")
    _, cls = algorithm_class(algo_name)
    configure_torch_threads(args.torch_threads)
    env_config = dict(config.get("env_config") or {})
    env_config.pop("normalize", None)  # the saved statistics replace it
    kind, name = parse_env_id(env_id)
    protocol = args.protocol or ("libero" if kind == "libero" else "paper")
    model = cls.load(model_path, device=args.device)
    if protocol == "libero":
        if kind != "libero":
            raise CLIError(f"--protocol libero needs a libero:<suite>/<task> env, got {env_id!r}")
        if normalize_path is not None:
            raise CLIError("evaluate_libero feeds raw observations; this model was trained with VecNormalize")
        from sb3_stepnft.envs import evaluate_libero

        suite, task_id = _libero_task(name)
        env_kwargs = dict(env_config.get("env_kwargs") or {})
        kwargs = {k: env_kwargs[k] for k in ("camera_size", "assets_path") if k in env_kwargs}
        result = evaluate_libero(
            model, suite, tasks=args.tasks if args.tasks is not None else [task_id],
            init_states=range(args.episodes if args.episodes is not None else 50), seed=args.seed,
            deterministic=args.deterministic, verbose=1, **kwargs,
        )  # fmt: skip
        summary = dict(protocol="libero", suite=suite, success_rate=result["success_rate"], episodes=result["episodes"],
                       tasks={r["task_id"]: r["success_rate"] for r in result["tasks"]})  # fmt: skip
    else:
        from sb3_stepnft.common.evaluation import evaluate_success

        seed = EVAL_SEED if args.seed is None else args.seed
        env = build_env(env_id, 1, seed, env_config, "eval")
        if normalize_path is not None:
            env = VecNormalize.load(str(normalize_path), env)
            env.training, env.norm_reward = False, False
        result = evaluate_success(
            model, env, n_eval_episodes=args.episodes or 100, deterministic=args.deterministic, seed=seed,
        )  # fmt: skip
        env.close()
        summary = dict(protocol="paper", env=env_id, seed=seed, deterministic=bool(args.deterministic), **result)
    summary["model"] = str(model_path)
    print(json.dumps(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return 0


# ------------------------------------------------------------------------------------------------ demos
def demos(args: argparse.Namespace) -> int:
    kind, name = parse_env_id(args.env)
    configure_torch_threads(args.torch_threads)
    if kind == "point_reach":
        from sb3_stepnft.envs import collect_demonstrations

        data, success = collect_demonstrations(args.n, seed=args.seed)
        out = Path(args.out or "demos")
        path = out if out.suffix == ".npz" else out / f"point_reach.n{args.n}.seed{args.seed}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        data.save(path)
        print(f"{args.n} PointReach episodes ({len(data)} steps), demonstrator success {success:.2f}: saved {path}")
        return 0
    if kind == "maniskill":
        from sb3_stepnft.envs.maniskill_demos import format_stats, generate_demonstrations

        out = args.out or "demos"
        _, stats = generate_demonstrations(
            name, args.n, args.control_mode, args.obs_mode, args.seed, out, args.overwrite, args.camera_size, verbose=True
        )
        print(format_stats(stats))
        print(f"saved {out}/{name}.{args.obs_mode}.{args.control_mode}.n{args.n}.seed{args.seed}.npz")
        return 0
    if kind == "libero":
        return _libero_demos(name, args)
    raise CLIError(f"demonstrations exist for point_reach, maniskill:<task> and libero:<suite>/<id> only, not {args.env!r}")


def _libero_demos(name: str, args: argparse.Namespace) -> int:
    """LIBERO's datasets are hub-only downloads: the package's scripted pick-and-place demonstrator
    (sb3_stepnft.envs.libero_demos, privileged object poses) records its own, one episode per initial state."""
    suite, task_id = _libero_task(name)
    first = args.first_init_state
    if args.n < 1 or first < 0:
        raise CLIError(f"-n must be >= 1 and --first-init-state >= 0, got -n {args.n}, --first-init-state {first}")
    from sb3_stepnft.envs.libero import LiberoEnv
    from sb3_stepnft.envs.libero_demos import pick_place_goal, run_demonstrator

    env = LiberoEnv(suite, task_id, camera_size=args.camera_size, object_state=True, assets_path=args.assets_path)
    try:
        try:
            pick_place_goal(env)
        except ValueError as error:
            raise CLIError(f"libero:{name}: {error}") from None
        if first + args.n > len(env.init_states):
            raise CLIError(
                f"libero:{name} has {len(env.init_states)} initial states: -n {args.n} from --first-init-state {first} "
                "runs past them"
            )
        data, stats = run_demonstrator(
            env, range(first, first + args.n), noise=args.noise, imperfect_fraction=args.imperfect_fraction, seed=args.seed
        )
    finally:
        env.close()
    out = Path(args.out or "demos")
    views = "state" if args.camera_size is None else f"rgb{args.camera_size}"
    path = out if out.suffix == ".npz" else out / f"libero_{suite}_{task_id}.{views}.n{args.n}.seed{args.seed}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    data.save(path)
    print(
        f"{args.n} episodes of libero:{name} ({stats['instruction']!r}; initial states {first}-{first + args.n - 1}, "
        f"{sum(stats['imperfect'])} imperfect), demonstrator success {stats['success_rate']:.2f}, {len(data)} steps: "
        f"saved {path}\ntrain on them with the same observations: --env libero:{name} --set "
        f"env_kwargs.object_state=true --set env_kwargs.camera_size={'null' if args.camera_size is None else args.camera_size}"
    )
    return 0


# ------------------------------------------------------------------------------------------------ compare
def compare_script() -> Path | None:
    """``benchmarks/suite.py`` (the benchmark suite) of the source checkout this package runs from, if any."""
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "suite.py"
    return script if script.is_file() else None


def compare(args: argparse.Namespace) -> int:
    script = compare_script()
    if script is None:
        raise CLIError(
            "compare runs benchmarks/suite.py, which only a source checkout has: clone the repository and "
            "install it with `pip install -e .` (this installation has no benchmarks folder)"
        )
    forwarded = [a for a in args.compare_args if a != "--"]
    return subprocess.call([sys.executable, str(script), *forwarded])


# ------------------------------------------------------------------------------------------------ parser
class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    from sb3_stepnft import __version__

    threads = argparse.ArgumentParser(add_help=False)
    threads.add_argument(
        "--torch-threads", type=int, default=None,
        help=f"torch CPU threads (0: torch's default of one per core). Default: ${THREADS_ENV_VAR} if set, else torch's "
        "choice if $OMP_NUM_THREADS is set, else 1 (fastest for small policies, much faster on a shared machine)",
    )  # fmt: skip
    parser = argparse.ArgumentParser(
        prog="sb3-stepnft", description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1],
        formatter_class=_Formatter,
    )  # fmt: skip
    parser.add_argument("--version", action="version", version=f"sb3-stepnft {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{train,eval,demos,compare}")
    sub.required = True

    p = sub.add_parser(
        "train", parents=[threads], formatter_class=_Formatter, epilog=HELP_HYPERPARAMS,
        help="train (and optionally pretrain on demonstrations) and save a model",
        description="Train a model, optionally pretrained on demonstrations, and save it with its config to --out.",
    )  # fmt: skip
    p.add_argument("--algo", default="stepnft", help=f"one of {', '.join(ALGORITHMS)}")
    p.add_argument("--env", required=True, help="gymnasium id, point_reach, maniskill:<task> or libero:<suite>/<task>")
    p.add_argument("--demos", default=None, help="Demonstrations (.npz) to pretrain the flow policy on first")
    p.add_argument("--hyperparams", default=None, help="YAML file of hyper-parameters (RL Zoo style; see below)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one hyper-parameter (repeatable)")
    p.add_argument("-n", "--total-timesteps", type=int, default=None, help=f"default: n_timesteps or {DEFAULT_TIMESTEPS}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output folder (default runs/<algo>_<env>_seed<seed>)")
    p.add_argument(
        "--checkpoint-freq", type=int, default=50_000, help="env steps (of all ranks) between checkpoints (0: none)"
    )
    p.add_argument(
        "--eval-freq",
        type=int,
        default=0,
        help="env steps (of all ranks) between EvalCallback evaluations, on rank 0 (0: none)",
    )
    p.add_argument("--eval-episodes", type=int, default=20, help="episodes per EvalCallback evaluation")
    p.add_argument("--progress-bar", action="store_true", help="show a progress bar (tqdm + rich)")
    p.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard logs (default: <out>/tb if installed)")
    p.add_argument("--device", default="auto")
    p.add_argument("--verbose", type=int, default=1)
    p.set_defaults(func=train)

    p = sub.add_parser(
        "eval", parents=[threads], formatter_class=_Formatter, help="evaluate a saved model",
        description="Evaluate a saved model: the paper's protocol (sb3_stepnft.common.evaluation.evaluate_success: "
        "seeded episodes, deterministic=False) or, for libero: envs, LIBERO's (sb3_stepnft.envs.evaluate_libero: "
        "fixed initial states, deterministic=False unless --deterministic). Prints one JSON line.",
    )  # fmt: skip
    p.add_argument("path", help="a run folder of `sb3-stepnft train` (model.zip + config.yml) or a model .zip")
    p.add_argument("--env", default=None, help="env id (default: the run's)")
    p.add_argument("--algo", default=None, help="algorithm (default: the run's)")
    p.add_argument("--protocol", choices=("paper", "libero"), default=None, help="default: libero for libero: envs")
    p.add_argument("--episodes", type=int, default=None, help="episodes (paper: 100) or initial states per task (libero: 50)")
    p.add_argument("--tasks", type=int, nargs="+", default=None, help="libero: task ids (default: the run's task)")
    p.add_argument("--seed", type=int, default=None, help=f"evaluation seed (paper default {EVAL_SEED}; libero 0)")
    p.add_argument(
        "--deterministic", action="store_true",
        help="deterministic=True (the ODE from x_0 = 0) instead of the paper's sampler (x_0 ~ N(0, I)), either protocol",
    )  # fmt: skip
    p.add_argument("--json", default=None, help="also write the result to this file")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=evaluate)

    p = sub.add_parser(
        "demos", parents=[threads], formatter_class=_Formatter,
        help="generate demonstrations (PointReach, ManiSkill, LIBERO pick-and-place)",
        description="Demonstrations for pretraining: PointReach's scripted demonstrator (imperfect by design), "
        "ManiSkill motion planning (sb3_stepnft.envs.maniskill_demos; needs the [maniskill] extra and the planner "
        "venv of scripts/install_sim.sh) or, for LIBERO pick-and-place tasks (all of libero_object, the "
        "pick-and-place tasks of libero_spatial/libero_goal), the scripted demonstrator driven by privileged object "
        "poses (sb3_stepnft.envs.libero_demos; observations with the object_state key), one episode per initial state.",
    )  # fmt: skip
    p.add_argument("env", help="point_reach, maniskill:<task> (e.g. maniskill:PushCube-v1) or libero:<suite>/<task id>")
    p.add_argument(
        "-n", type=int, default=40, help="episodes (ManiSkill: successful planned episodes; LIBERO: initial states)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the first episode (LIBERO: of the imperfect choices and noise)"
    )
    p.add_argument("--out", default=None, help="output folder, or a .npz file for point_reach/libero (default demos/)")
    p.add_argument("--control-mode", default="pd_ee_delta_pos", help="ManiSkill control mode")
    p.add_argument("--obs-mode", default="state", help="ManiSkill observation mode")
    p.add_argument(
        "--camera-size", type=int, default=None,
        help="ManiSkill: camera size for visual obs modes; LIBERO: record images of this size (default: physics only)",
    )  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="ManiSkill: regenerate even if the output exists")
    p.add_argument("--first-init-state", type=int, default=0, help="LIBERO: initial state of the first episode")
    p.add_argument("--imperfect-fraction", type=float, default=0.0, help="LIBERO: episodes that grasp off-centre")
    p.add_argument("--noise", type=float, default=0.0, help="LIBERO: action noise of the clean episodes")
    p.add_argument("--assets-path", default=None, help="LIBERO: assets folder (default: LIBERO's config)")
    p.set_defaults(func=demos)

    p = sub.add_parser(
        "compare", formatter_class=_Formatter, help="run the benchmark suite (benchmarks/suite.py; source checkout)",
        description="Run the benchmark suite, benchmarks/suite.py of the source checkout with the remaining arguments, e.g. "
        "`sb3-stepnft compare --quick`; `sb3-stepnft compare -- --help` shows its options.",
    )  # fmt: skip
    p.add_argument("compare_args", nargs=argparse.REMAINDER, help="arguments of benchmarks/suite.py")
    p.set_defaults(func=compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)  # compare forwards options argparse's REMAINDER would refuse
    if unknown and args.command != "compare":
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "compare":
        args.compare_args = [*unknown, *args.compare_args]
    args.argv = argv
    try:
        return int(args.func(args) or 0)
    except (CLIError, FileNotFoundError, ImportError, ValueError) as error:
        if os.environ.get("SB3_STEPNFT_TRACEBACK"):
            raise
        print(f"sb3-stepnft {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
