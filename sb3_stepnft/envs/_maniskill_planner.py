"""Motion-planning worker, run as a script by the planner interpreter of :mod:`sb3_stepnft.envs.maniskill_demos`.

mplib 0.1.1 (pinned by mani-skill) segfaults with numpy 2, so this runs in a small overlay venv that holds numpy<2 and
sees the main venv's packages behind it. It imports nothing from sb3_stepnft. It plans episodes on consecutive seeds
from ``--seed`` with ManiSkill's own solutions (``pd_joint_pos`` actions), keeps the successful ones in
``<record-dir>/<traj-name>.h5/.json`` (ManiSkill's trajectory format), and prints a JSON summary as its last line.
"""

import argparse
import json
import os
import sys
import time


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--env-id", required=True)
    parser.add_argument("-n", "--num-traj", type=int, required=True, help="successful episodes wanted")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first attempt; later attempts use seed+1, ...")
    parser.add_argument("--max-attempts", type=int, default=None, help="default: 2n + 10")
    parser.add_argument("--record-dir", required=True)
    parser.add_argument("--traj-name", default="motionplanning")
    args = parser.parse_args(argv)

    import gymnasium as gym
    import mani_skill.envs  # noqa: F401  (registers the ids)
    from mani_skill.examples.motionplanning.panda.run import MP_SOLUTIONS
    from mani_skill.utils.wrappers.record import RecordEpisode

    if args.env_id not in MP_SOLUTIONS:
        sys.exit(f"No motion-planning solution for {args.env_id}; available: {sorted(MP_SOLUTIONS)}")
    env = gym.make(args.env_id, obs_mode="none", control_mode="pd_joint_pos", render_mode="rgb_array", sim_backend="physx_cpu")
    env = RecordEpisode(
        env,
        output_dir=args.record_dir,
        trajectory_name=args.traj_name,
        save_video=False,
        source_type="motionplanning",
        source_desc="ManiSkill's motion planning solution (sb3_stepnft.envs.maniskill_demos)",
        record_reward=False,
        save_on_reset=False,
    )
    solve = MP_SOLUTIONS[args.env_id]
    max_attempts = args.max_attempts if args.max_attempts is not None else 2 * args.num_traj + 10
    start = time.time()
    kept, failed = [], []
    seed = args.seed
    while len(kept) < args.num_traj and len(kept) + len(failed) < max_attempts:
        try:
            result = solve(env, seed=seed, debug=False, vis=False)
        except Exception as error:  # the planner raises on unreachable goals; count it as a failed attempt
            print(f"seed {seed}: planning failed ({error})", file=sys.stderr)
            result = -1
        success = not isinstance(result, int) and bool(result[-1]["success"].item())
        env.flush_trajectory(save=success)
        (kept if success else failed).append(seed)
        seed += 1
    env.close()
    summary = dict(
        h5=os.path.join(args.record_dir, args.traj_name + ".h5"),
        kept_seeds=kept,
        failed_seeds=failed,
        seconds=round(time.time() - start, 2),
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
