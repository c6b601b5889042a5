"""A scripted pick-and-place demonstrator for LIBERO, driven by privileged simulator state, and few-shot demonstrations.

    python -m sb3_stepnft.envs.libero_demos --suite libero_object --task 0 --init-states 0-19   # success rate

(with the offline asset bundle only, add ``--assets-path DEST/assets`` built by ``scripts/libero_placeholder_assets.py``)

No LIBERO demonstrations exist offline (the datasets are hub-only), so this module writes its own. The demonstrator
reads the poses and extents of the task's objects from MuJoCo (privileged state the policy does not need to share)
and follows waypoints with OSC_POSE delta actions clipped to [-1, 1]:

    above the object -> descend to the grasp point -> close the gripper -> lift -> above the target
    -> lower to the release height -> open the gripper

It handles the BDDL goals ``(In obj target_region)`` and ``(On obj target)`` with one object to move
(:func:`pick_place_goal`): all of libero_object ("pick up the X and place it in the basket") and the
pick-and-place tasks of libero_spatial and libero_goal. Grasps are top-down, centred on the object's collision
bounding box, with the gripper turned to the object's narrow side (:func:`object_extent`); objects grasped by a rim
(bowls) are not handled specially, so their rate is lower (see docs/libero_state.md for measured rates).

Imperfect demonstrations: ``imperfect_fraction`` of the episodes grasp off-centre (``grasp_offset`` metres in a random
horizontal direction) with more action noise; they often fail, and are kept as they are (few-shot SFT on imperfect
data, as in the paper's set-ups). ``noise`` adds Gaussian noise to every position action.
"""

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sb3_stepnft.envs.libero import LiberoEnv
from sb3_stepnft.sft import Demonstrations

#: OSC_POSE's largest position step per action unit (robosuite's ``output_max``), metres.
OSC_POS_SCALE = 0.05
#: OSC_POSE's largest rotation step per action unit, radians.
OSC_ROT_SCALE = 0.5
GRIPPER_OPEN, GRIPPER_CLOSE = -1.0, 1.0
YAW_SIGN = 1.0


@dataclass
class PickPlaceGoal:
    """What to move where: ``relation`` ``"in"`` or ``"on"``; ``target`` is the object or fixture to put it in/on."""

    obj: str
    target: str
    relation: str


def pick_place_goal(env: LiberoEnv) -> PickPlaceGoal:
    """The pick-and-place goal of the env's BDDL: a single ``(In obj region)`` or ``(On obj target)``; a
    ``ValueError`` naming the goal otherwise (drawer, stove, "open"/"turn on" goals are not pick-and-place)."""
    libero = env.libero_env
    goal = libero.parsed_problem["goal_state"]
    if len(goal) != 1 or len(goal[0]) != 3 or goal[0][0].lower() not in ("in", "on"):
        raise ValueError(
            f"{env.suite} task {env.task_id} ({env.instruction!r}) has the goal {goal}: the scripted demonstrator handles "
            "only one (In obj region) or (On obj target), e.g. every libero_object task"
        )
    relation, obj, where = goal[0][0].lower(), goal[0][1], goal[0][2]
    names = libero.obj_body_id
    owners = [name for name in names if where == name or where.startswith(name + "_")]
    if obj not in names or not owners:
        raise ValueError(f"Cannot resolve the goal {goal[0]} to objects of the scene ({sorted(names)})")
    return PickPlaceGoal(obj=obj, target=max(owners, key=len), relation=relation)


def _subtree(model, root: int) -> set[int]:
    bodies = {root}
    for body in range(root + 1, model.nbody):
        if int(model.body_parentid[body]) in bodies:
            bodies.add(body)
    return bodies


def object_extent(env: LiberoEnv, name: str) -> tuple[np.ndarray, np.ndarray, float | None]:
    """World-frame bounding box ``(low, high)`` of the collision geoms of ``name``'s body subtree (now), and the world
    yaw (radians) of the long horizontal side of its box in the object's own frame (None for a round footprint)."""
    sim = env.sim
    model, data = sim.model._model, sim.data._data
    root = env.libero_env.obj_body_id[name]
    bodies = _subtree(model, root)
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], np.float64)
    world, local = [], []
    body_rotation = data.xmat[root].reshape(3, 3)
    for geom in range(model.ngeom):
        if int(model.geom_bodyid[geom]) not in bodies or not (model.geom_contype[geom] or model.geom_conaffinity[geom]):
            continue
        centre, half = model.geom_aabb[geom][:3], model.geom_aabb[geom][3:]
        corners = data.geom_xmat[geom].reshape(3, 3) @ (signs * half + centre).T
        points = corners.T + data.geom_xpos[geom]
        world.append(points)
        local.append((points - data.xpos[root]) @ body_rotation)  # in the object's frame
    if not world:
        raise ValueError(f"{name} has no collision geometry")
    points, in_body = np.concatenate(world), np.concatenate(local)
    size = in_body.max(axis=0) - in_body.min(axis=0)
    if max(size[0], size[1]) < 1.2 * min(size[0], size[1]):
        return points.min(axis=0), points.max(axis=0), None  # round enough: any yaw
    axis = body_rotation[:, 0] if size[0] >= size[1] else body_rotation[:, 1]
    return points.min(axis=0), points.max(axis=0), float(np.arctan2(axis[1], axis[0]))


def _wrap(angle: float) -> float:
    return float((angle + np.pi) % (2 * np.pi) - np.pi)


class PickPlaceDemonstrator:
    """Waypoint controller for one episode of a pick-and-place LIBERO task (see the module docstring).

    Call :meth:`reset` after each env reset, then :meth:`act` once per env step; it reads the scene from ``env``.

    :param env: The :class:`LiberoEnv` (unwrapped).
    :param noise: Std of Gaussian noise on the position actions (action units).
    :param grasp_offset: Horizontal offset (metres) of the grasp point from the object's centre, in a random direction
        (0: centred; imperfect episodes use this).
    :param rng: Random generator (noise, offset direction).
    :param gain: Proportional gain from position error to action (action units per ``OSC_POS_SCALE`` of error).
    """

    PHASES = ("approach", "descend", "grasp", "lift", "carry", "lower", "release", "retreat")

    def __init__(
        self,
        env: LiberoEnv,
        noise: float = 0.0,
        grasp_offset: float = 0.0,
        rng: np.random.Generator | None = None,
        gain: float = 2.0,
    ):
        self.env, self.noise, self.grasp_offset, self.gain = env, float(noise), float(grasp_offset), float(gain)
        self.rng = rng if rng is not None else np.random.default_rng()
        self.goal = pick_place_goal(env)

    def reset(self) -> None:
        low, high, long_yaw = object_extent(self.env, self.goal.obj)
        t_low, t_high, _ = object_extent(self.env, self.goal.target)
        height = high[2] - low[2]
        direction = self.rng.uniform(0, 2 * np.pi)
        offset = self.grasp_offset * np.array([np.cos(direction), np.sin(direction)])
        grasp_z = max(high[2] - min(0.03, 0.5 * height), low[2] + 0.008)
        self.grasp = np.array([*((low[:2] + high[:2]) / 2 + offset), grasp_z])
        self.above = self.grasp + np.array([0, 0, 0.10])
        # fingers close across the object's short side: turn the gripper to the long side's yaw (mod 90 degrees)
        self.yaw_target = None if long_yaw is None else _wrap(long_yaw)
        self.carry_z = max(t_high[2] + (grasp_z - low[2]) + 0.08, grasp_z + 0.15)
        centre = (t_low[:2] + t_high[:2]) / 2
        release_clearance = 0.02 if self.goal.relation == "on" else 0.03
        self.release = np.array([*centre, t_high[2] + (grasp_z - low[2]) + release_clearance])
        if self.goal.relation == "in":  # into a container: release a little below its rim is fine, above is safe
            self.release[2] = max(self.release[2], t_low[2] + (grasp_z - low[2]) + 0.04)
        self.phase, self.count = 0, 0

    def _eef(self) -> tuple[np.ndarray, np.ndarray]:
        raw = self.env._last_raw
        return np.asarray(raw["robot0_eef_pos"]), np.asarray(raw["robot0_eef_quat"])

    def _yaw(self, quat: np.ndarray) -> float:
        x, y, z, w = quat
        rotation_x = np.array([1 - 2 * (y * y + z * z), 2 * (x * y + w * z)])  # the gripper frame's x axis in world xy
        return float(np.arctan2(rotation_x[1], rotation_x[0]))

    def act(self) -> np.ndarray:
        """The next 7-dim action (clipped to [-1, 1])."""
        pos, quat = self._eef()
        name = self.PHASES[min(self.phase, len(self.PHASES) - 1)]
        gripper = GRIPPER_CLOSE if name in ("grasp", "lift", "carry", "lower") else GRIPPER_OPEN
        target = pos
        if name == "approach":
            target = np.array([*self.grasp[:2], max(self.above[2], pos[2] if self.count < 3 else self.above[2])])
            done = np.linalg.norm(pos[:2] - self.grasp[:2]) < 0.01 and abs(pos[2] - target[2]) < 0.03
        elif name == "descend":
            target = self.grasp
            done = np.linalg.norm(pos - target) < 0.008 or self.count > 40
        elif name == "grasp":
            target = self.grasp
            done = self.count >= 8
        elif name == "lift":
            target = np.array([*self.grasp[:2], self.carry_z])
            done = pos[2] > self.carry_z - 0.02
        elif name == "carry":
            target = np.array([*self.release[:2], self.carry_z])
            done = np.linalg.norm(pos[:2] - target[:2]) < 0.015
        elif name == "lower":
            target = self.release
            done = pos[2] < self.release[2] + 0.01 or self.count > 40
        elif name == "release":
            target = self.release
            done = self.count >= 6
        else:  # retreat
            target = np.array([*self.release[:2], self.carry_z])
            done = False
        action = np.zeros(7)
        action[:3] = self.gain * (target - pos) / OSC_POS_SCALE
        if self.noise:
            action[:3] += self.rng.normal(0.0, self.noise, 3)
        # keep the gripper pointing down; turn about z to the grasp yaw (the nearest of the four equivalent ones)
        if self.yaw_target is not None and name in ("approach", "descend"):
            yaw_error = _wrap(2 * (self.yaw_target - self._yaw(quat))) / 2  # the gripper is symmetric under 180 deg
            action[5] = YAW_SIGN * yaw_error / OSC_ROT_SCALE * 1.5
        action[6] = gripper
        if done:
            self.phase, self.count = self.phase + 1, 0
        else:
            self.count += 1
        return np.clip(action, -1.0, 1.0)


def run_demonstrator(
    env: LiberoEnv,
    init_state_ids: Sequence[int],
    noise: float = 0.0,
    imperfect_fraction: float = 0.0,
    grasp_offset: float = 0.03,
    imperfect_noise: float = 0.3,
    execution_noise: float = 0.0,
    seed: int = 0,
    max_steps: int | None = None,
    record: bool = True,
) -> tuple[Demonstrations | None, dict[str, Any]]:
    """Run the demonstrator once from each initial state, recording the observations it saw and its actions.

    :param env: A :class:`LiberoEnv` (``object_state=True`` for state-based policies).
    :param init_state_ids: The fixed initial states, one episode each, in order.
    :param noise: Action noise of perfect episodes.
    :param imperfect_fraction: Fraction of episodes (chosen at random) that grasp off-centre by ``grasp_offset`` with
        ``imperfect_noise`` action noise.
    :param execution_noise: Std of Gaussian noise added to the executed position actions of perfect episodes while
        the demonstrator's own action is recorded (DART-style: the demonstrations visit states off the clean path,
        labelled with the corrections back to it).
    :param seed: Seeds the choice of imperfect episodes, their offsets and the noise.
    :param max_steps: Episode limit (default: the env's ``max_episode_steps``, the suite's protocol limit).
    :param record: Build :class:`~sb3_stepnft.sft.Demonstrations` (False: success statistics only).
    :return: ``(demos, stats)``; ``demos`` holds every episode (successful or not) up to its end; ``stats`` has
        per-episode ``successes``, ``lengths``, ``imperfect`` flags, ``success_rate`` and ``seconds``.
    """
    if not 0.0 <= imperfect_fraction <= 1.0:
        raise ValueError(f"imperfect_fraction must be in [0, 1], got {imperfect_fraction}")
    rng = np.random.default_rng(seed)
    limit = int(max_steps or env.max_episode_steps)
    observations: list[dict[str, np.ndarray]] = []
    actions, starts, successes, lengths, imperfect = [], [], [], [], []
    start_time = time.time()
    for state_id in init_state_ids:
        bad = bool(rng.random() < imperfect_fraction)
        demonstrator = PickPlaceDemonstrator(
            env, noise=imperfect_noise if bad else noise, grasp_offset=grasp_offset if bad else 0.0, rng=rng
        )
        obs, info = env.reset(options={"init_state_id": int(state_id)})
        demonstrator.reset()
        success = False
        for step in range(limit):
            action = demonstrator.act()
            if record:
                observations.append(obs)
                actions.append(action.astype(np.float32))
                starts.append(step == 0)
            if execution_noise and not bad:
                action = action.copy()
                action[:3] = np.clip(action[:3] + rng.normal(0.0, execution_noise, 3), -1.0, 1.0)
            obs, _, terminated, _, info = env.step(action)
            if terminated:
                success = bool(info["is_success"])
                break
        successes.append(success)
        lengths.append(step + 1)
        imperfect.append(bad)
    stats = dict(
        suite=env.suite,
        task_id=env.task_id,
        instruction=env.instruction,
        init_state_ids=[int(i) for i in init_state_ids],
        successes=successes,
        lengths=lengths,
        imperfect=imperfect,
        success_rate=float(np.mean(successes)),
        max_steps=limit,
        seconds=round(time.time() - start_time, 1),
    )
    if not record:
        return None, stats
    stacked = {key: np.stack([o[key] for o in observations]) for key in observations[0]}
    return Demonstrations(stacked, np.stack(actions), np.array(starts)), stats


def _parse_ids(text: str) -> list[int]:
    ids: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        ids += list(range(int(low), int(high) + 1)) if high else [int(low)]
    return ids


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the scripted LIBERO pick-and-place demonstrator; print its success")
    parser.add_argument("--suite", default="libero_object")
    parser.add_argument("--task", type=int, default=0)
    parser.add_argument("--init-states", default="0-19", help="e.g. 0-19 or 0,3,5")
    parser.add_argument("--noise", type=float, default=0.0)
    parser.add_argument("--imperfect-fraction", type=float, default=0.0)
    parser.add_argument("--execution-noise", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--assets-path", default=None)
    args = parser.parse_args(argv)
    env = LiberoEnv(args.suite, args.task, camera_size=None, object_state=True, assets_path=args.assets_path)
    _, stats = run_demonstrator(
        env,
        _parse_ids(args.init_states),
        args.noise,
        args.imperfect_fraction,
        execution_noise=args.execution_noise,
        seed=args.seed,
        record=False,
    )
    env.close()
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
