"""Offline demonstrations for ManiSkill tasks: motion planning, control-mode conversion, :class:`Demonstrations`.

    python -m sb3_stepnft.envs.maniskill_demos --env PushCube-v1 -n 100 --control-mode pd_ee_delta_pos

Three stages, none of which downloads anything:

1. **Plan** with ManiSkill's motion-planning solutions (``pd_joint_pos`` actions) on consecutive seeds from ``seed``,
   keeping successful episodes. mplib 0.1.1 segfaults with numpy 2, so the planner runs in a subprocess of a small
   *overlay venv* (numpy<2 and opencv-python 4.11 only, created by ``scripts/install_sim.sh`` and found by
   :func:`planner_python`) that sees the main venv's packages behind its own: the main venv keeps numpy 2.
2. **Convert** the actions to the training control mode with ManiSkill's ``replay_trajectory`` (closed loop).
3. **Re-simulate** the converted actions in the training env itself (:func:`make_maniskill_gym_env`, same seed):
   observations come from exactly the wrappers the policy will see, episodes end at their first success (ManiSkill
   terminates there), and an episode that does not succeed there is dropped.

Motion-planned episodes are longer than ManiSkill's default time limits (PushCube: about 62 steps to success against
a limit of 50), so demo-seeded training and evaluation use ``max_episode_steps >= 1.5 x`` the mean demonstration
length: :func:`recommended_max_episode_steps`.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from sb3_stepnft.envs.sim_utils import INSTALL_HINT, import_simulator
from sb3_stepnft.sft import Demonstrations

#: Tasks whose planner, conversion and re-simulation were verified on CPU (docs/environments.md).
TESTED_TASKS = ("PushCube-v1", "PullCube-v1", "PickCube-v1", "StackCube-v1", "LiftPegUpright-v1")
_PLANNER_SCRIPT = Path(__file__).with_name("_maniskill_planner.py")


def recommended_max_episode_steps(lengths, factor: float = 1.5) -> int:
    """``ceil(factor x mean demonstration length)``: the time limit for demo-seeded training and evaluation.

    :param lengths: Episode lengths (underlying env steps), or :class:`Demonstrations`.
    :param factor: At least 1.5 (the documented protocol).
    """
    if isinstance(lengths, Demonstrations):
        lengths = episode_lengths(lengths)
    return int(math.ceil(factor * float(np.mean(lengths))))


def demo_action_bounds(demos: Demonstrations, margin: float = 1.25, floor: float = 0.05) -> np.ndarray:
    """Per-dimension action bounds that cover the demonstrations: ``margin x max |a|``, within ``[floor, 1]``.

    Pass them as ``make_maniskill_env(..., action_bounds=...)``: motion-planned ``pd_ee_delta_pos`` actions use about
    a quarter of ManiSkill's ±1 range, and flow policies normalise by the Box bounds (see
    :class:`~sb3_stepnft.envs.sim_utils.ActionBounds`).
    """
    return np.clip(margin * np.abs(demos.actions.reshape(len(demos), -1)).max(axis=0), floor, 1.0)


def normalize_like_demos(vec_env, demos: Demonstrations, epsilon: float = 1e-4):
    """Wrap ``vec_env`` in a frozen ``VecNormalize`` whose observation statistics are the demonstrations'.

    ManiSkill state vectors mix scales (gripper joints vary by millimetres, velocities by metres per second), which a
    flow MLP pretrained on few demonstrations resolves poorly. ``pretrain`` normalises the demonstrations with the
    model's ``VecNormalize``; with ``training=False`` the statistics stay fixed during RL and for evaluation envs
    wrapped the same way. Image keys of Dict observations are left unnormalised.

    :param vec_env: The SB3 VecEnv (training or evaluation).
    :param demos: The demonstrations.
    :param epsilon: Added to the variances.
    """
    from stable_baselines3.common.vec_env import VecNormalize

    observations = demos.observations
    keys = None
    if isinstance(observations, dict):
        keys = [key for key, value in observations.items() if value.dtype != np.uint8]
    wrapped = VecNormalize(vec_env, training=False, norm_obs=True, norm_reward=False, norm_obs_keys=keys)
    if keys is None:
        wrapped.obs_rms.mean = observations.mean(axis=0).astype(np.float64)
        wrapped.obs_rms.var = observations.var(axis=0).astype(np.float64) + epsilon
    else:
        for key in keys:
            wrapped.obs_rms[key].mean = observations[key].mean(axis=0).astype(np.float64)
            wrapped.obs_rms[key].var = observations[key].var(axis=0).astype(np.float64) + epsilon
    return wrapped


def episode_lengths(demos: Demonstrations) -> np.ndarray:
    """Length of each demonstrated episode (rows between episode starts)."""
    starts = np.flatnonzero(demos.episode_starts)
    return np.diff(np.append(starts, len(demos)))


# --------------------------------------------------------------------------------------------- planner overlay venv
def planner_venv_dir() -> Path:
    """Where the planner overlay venv lives: ``$SB3_STEPNFT_PLANNER_VENV``, else ``<sys.prefix>/sb3_stepnft_planner``
    (inside the active venv, so it goes away with it)."""
    return Path(os.environ.get("SB3_STEPNFT_PLANNER_VENV", Path(sys.prefix) / "sb3_stepnft_planner"))


def _planner_ok(python: Path) -> bool:
    if not python.exists():
        return False
    check = "import numpy, mplib; assert int(numpy.__version__.split('.')[0]) < 2, numpy.__version__"
    return subprocess.run([str(python), "-c", check], capture_output=True).returncode == 0


def planner_python() -> Path:
    """The Python of the motion-planner overlay venv (:func:`planner_venv_dir`).

    The overlay holds only ``numpy<2`` and ``opencv-python==4.11.0.86`` (opencv 5 requires numpy 2); a ``.pth`` file
    appends the main venv's site-packages behind them, so mani_skill, sapien, mplib and torch come from the main venv.
    Creating it needs the package index, so ``scripts/install_sim.sh`` does it at install time; this function only
    finds it and raises a ``FileNotFoundError`` naming that command when it is missing or broken.
    """
    import_simulator("mplib", "maniskill")
    venv = planner_venv_dir()
    python = venv / "bin" / "python"
    if not _planner_ok(python):
        state = "cannot import numpy<2 and mplib" if python.exists() else "does not exist"
        raise FileNotFoundError(
            f"The motion-planner overlay venv {venv} {state}. It is created at install time: run `{INSTALL_HINT}` "
            "(`make install-sim`) with this venv (it rebuilds a broken overlay); $SB3_STEPNFT_PLANNER_VENV selects "
            "another location."
        )
    return python


def _run(command: list[str], what: str, cwd: str, verbose: bool) -> str:
    env = {**os.environ, "PYTHONNOUSERSITE": "1"}
    # stdin closed: a ManiSkill download prompt fails at once instead of waiting (nothing is downloaded)
    result = subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        tail = (result.stdout[-1500:] + "\n" + result.stderr[-3000:]).strip()
        hint = ""
        if result.returncode in (-11, 139):
            hint = f" (a segfault: mplib with numpy 2? delete {planner_venv_dir()} and rerun `{INSTALL_HINT}`)"
        raise RuntimeError(f"{what} failed with exit code {result.returncode}{hint}: {' '.join(command)}\n{tail}")
    if verbose:
        print(result.stdout.strip().splitlines()[-1] if result.stdout.strip() else f"{what}: done")
    return result.stdout


# ------------------------------------------------------------------------------------------------ generation
def generate_demonstrations(
    env_id: str,
    n: int,
    control_mode: str = "pd_ee_delta_pos",
    obs_mode: str = "state",
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    camera_size: int | None = None,
    max_attempts: int | None = None,
    verbose: bool = False,
) -> tuple[Demonstrations, dict[str, Any]]:
    """Motion-planned demonstrations of ``env_id`` in ``control_mode`` and ``obs_mode`` (see the module docstring).

    :param env_id: A task with a ManiSkill motion-planning solution; tested: :data:`TESTED_TASKS`.
    :param n: Successful planned episodes wanted (a few may be lost in conversion; ``stats`` counts them).
    :param control_mode: Training control mode (``pd_joint_pos`` skips the conversion).
    :param obs_mode: Observation mode of the training env (``"state"``, ``"rgb"``, ...).
    :param seed: Seed of the first planned episode; episode seeds are consecutive (``stats["seeds"]``), so evaluate on
        other seeds (e.g. from 10_000).
    :param out_dir: Keeps ``<env_id>.<obs_mode>.<control_mode>.n<n>.seed<seed>.npz`` and its ``.json`` statistics there,
        and reuses them on the next call (None: a temporary folder, nothing kept).
    :param overwrite: Regenerate even when ``out_dir`` holds the files.
    :param camera_size: Camera size for visual ``obs_mode``.
    :param max_attempts: Planner attempts before giving up (default ``2n + 10``).
    :param verbose: Print progress.
    :return: ``(demos, stats)``; ``stats`` has the episode ``lengths`` and their ``mean/median/min/max``,
        ``recommended_max_episode_steps``, the kept ``seeds`` and counts per stage.
    """
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    name = f"{env_id}.{obs_mode}.{control_mode}.n{n}.seed{seed}"
    if out_dir is not None and not overwrite:
        npz, stats_file = Path(out_dir) / f"{name}.npz", Path(out_dir) / f"{name}.json"
        if npz.exists() and stats_file.exists():
            if verbose:
                print(f"reusing {npz}")
            return Demonstrations.load(npz), json.loads(stats_file.read_text())
    import_simulator("mani_skill", "maniskill")
    start = time.time()
    python = planner_python()
    with tempfile.TemporaryDirectory(prefix="sb3_stepnft_demos_") as work:
        # 1. plan (overlay venv, numpy<2)
        if verbose:
            print(f"planning {n} episodes of {env_id} (seeds from {seed})")
        command = [str(python), str(_PLANNER_SCRIPT), "--env-id", env_id, "-n", str(n), "--seed", str(seed)]
        command += ["--record-dir", work, "--traj-name", "mp"]
        if max_attempts is not None:
            command += ["--max-attempts", str(max_attempts)]
        summary = json.loads(_run(command, "motion planning", work, verbose).strip().splitlines()[-1])
        if not summary["kept_seeds"]:
            raise RuntimeError(f"The motion planner solved none of {len(summary['failed_seeds'])} episodes of {env_id}")
        trajectories = summary["h5"]
        # 2. convert to the training control mode (main venv)
        if control_mode != "pd_joint_pos":
            if verbose:
                print(f"converting pd_joint_pos -> {control_mode}")
            command = [sys.executable, "-m", "mani_skill.trajectory.replay_trajectory", "--traj-path", trajectories]
            command += ["-o", "none", "-c", control_mode, "--save-traj", "-b", "physx_cpu", "--use-first-env-state"]
            _run(command, "control-mode conversion", work, verbose)
            trajectories = os.path.join(work, f"mp.none.{control_mode}.physx_cpu.h5")
            converted = os.path.exists(trajectories) and json.loads(Path(trajectories).with_suffix(".json").read_text())
            if not converted or not converted["episodes"]:
                raise RuntimeError(
                    f"Converting the {len(summary['kept_seeds'])} planned {env_id} episodes to {control_mode} reproduced "
                    f"none of them. The task may need orientation control, which {control_mode} lacks if it is a "
                    "position-only mode (LiftPegUpright rotates the peg): use control_mode='pd_ee_delta_pose' or "
                    "'pd_joint_delta_pos'."
                )
        # 3. re-simulate in the training env
        demos, lengths, seeds, dropped = _resimulate(env_id, trajectories, control_mode, obs_mode, camera_size, verbose)
    stats = dict(
        env_id=env_id,
        control_mode=control_mode,
        obs_mode=obs_mode,
        requested=int(n),
        planned=len(summary["kept_seeds"]),
        planner_failures=len(summary["failed_seeds"]),
        kept=len(lengths),
        dropped_in_conversion_or_replay=len(summary["kept_seeds"]) - len(lengths),
        seeds=seeds,
        lengths=[int(x) for x in lengths],
        mean=float(np.mean(lengths)),
        median=float(np.median(lengths)),
        min=int(np.min(lengths)),
        max=int(np.max(lengths)),
        recommended_max_episode_steps=recommended_max_episode_steps(lengths),
        seconds=round(time.time() - start, 1),
    )
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        demos.save(Path(out_dir) / f"{name}.npz")
        (Path(out_dir) / f"{name}.json").write_text(json.dumps(stats, indent=1))
    return demos, stats


def _resimulate(env_id: str, h5_path: str, control_mode: str, obs_mode: str, camera_size: int | None, verbose: bool):
    """Replay the converted actions from each episode's reset seed in the training env, up to its first success."""
    import h5py

    from sb3_stepnft.envs.maniskill import ManiSkillSpec, make_maniskill_gym_env

    episodes = json.loads(Path(h5_path).with_suffix(".json").read_text())["episodes"]
    with h5py.File(h5_path, "r") as file:
        actions_of = {ep["episode_id"]: file[f"traj_{ep['episode_id']}"]["actions"][:] for ep in episodes}
    limit = max(len(a) for a in actions_of.values()) + 1
    spec = ManiSkillSpec(env_id, obs_mode, control_mode, max_episode_steps=limit, camera_size=camera_size)
    env = make_maniskill_gym_env(spec)
    observations: list[Any] = []
    actions, starts, lengths, seeds = [], [], [], []
    dropped = 0
    for episode in episodes:
        episode_seed = int(episode["reset_kwargs"]["seed"])
        obs, _ = env.reset(seed=episode_seed)
        episode_obs, episode_actions, success = [], [], False
        for action in actions_of[episode["episode_id"]]:
            episode_obs.append(obs)
            episode_actions.append(np.asarray(action, dtype=np.float32))
            obs, _, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                success = bool(info.get("is_success", False))
                break
        if not success:
            dropped += 1
            continue
        observations.extend(episode_obs)
        actions.extend(episode_actions)
        starts.extend([True] + [False] * (len(episode_actions) - 1))
        lengths.append(len(episode_actions))
        seeds.append(episode_seed)
    env.close()
    if not lengths:
        raise RuntimeError(f"No {env_id} demonstration succeeded when replayed in {control_mode}")
    if verbose and dropped:
        print(f"{dropped} converted episode(s) did not succeed when replayed in the training env and were dropped")
    if isinstance(observations[0], dict):
        stacked: Any = {key: np.stack([o[key] for o in observations]) for key in observations[0]}
    else:
        stacked = np.stack(observations)
    return Demonstrations(stacked, np.stack(actions), np.array(starts)), lengths, seeds, dropped


def format_stats(stats: dict[str, Any]) -> str:
    """Demo-length statistics as a short text block."""
    return (
        f"{stats['env_id']} ({stats['control_mode']}, obs {stats['obs_mode']}): {stats['kept']} demonstrations kept "
        f"of {stats['planned']} planned ({stats['planner_failures']} planner failures, "
        f"{stats['dropped_in_conversion_or_replay']} lost in conversion/replay), {stats['seconds']} s\n"
        f"episode length to success: mean {stats['mean']:.1f}, median {stats['median']:.0f}, "
        f"min {stats['min']}, max {stats['max']}\n"
        f"use max_episode_steps >= {stats['recommended_max_episode_steps']} (1.5 x mean) for demo-seeded training "
        f"and evaluation"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Generate motion-planned ManiSkill demonstrations as sb3_stepnft Demonstrations (.npz).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--env", default="PushCube-v1", help=f"task (tested: {', '.join(TESTED_TASKS)})")
    parser.add_argument("-n", type=int, default=100, help="successful planned episodes")
    parser.add_argument("--control-mode", default="pd_ee_delta_pos")
    parser.add_argument("--obs-mode", default="state")
    parser.add_argument("--camera-size", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0, help="seed of the first episode (episode seeds are consecutive)")
    parser.add_argument("--out", default="demos", help="output folder")
    parser.add_argument("--overwrite", action="store_true", help="regenerate even if the output exists")
    args = parser.parse_args(argv)
    _, stats = generate_demonstrations(
        args.env, args.n, args.control_mode, args.obs_mode, args.seed, args.out, args.overwrite, args.camera_size, verbose=True
    )
    print(format_stats(stats))
    name = f"{args.env}.{args.obs_mode}.{args.control_mode}.n{args.n}.seed{args.seed}"
    print(f"saved {os.path.join(args.out, name)}.npz (Demonstrations.load) and .json (statistics)")


if __name__ == "__main__":
    main()
