"""Which LIBERO tasks use which of the files missing from the offline asset bundle (docs/environments.md).

    python scripts/libero_missing_assets.py [MISSING.txt]     # prints the markdown table of docs/environments.md

For every task of the five suites it builds the task's MuJoCo model in Python (LIBERO's own env classes, stopped
just before MuJoCo compiles it, so the missing files are never opened) and matches the ``file="..."`` paths of the
merged MJCF against the list of missing files (default: ../shared/data/libero-assets-8f1084e.MISSING.txt).
About 20 s on 2 cores; needs the [libero] extra and LIBERO's config (scripts/install_sim.sh).
"""

import collections
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SUITES = ["libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90"]


class _Captured(Exception):
    pass


def _ranges(ids: list[int]) -> str:
    parts, start = [], None
    for i, x in enumerate(ids):
        if start is None:
            start = x
        if i + 1 == len(ids) or ids[i + 1] != x + 1:
            parts.append(f"{start}" if start == x else f"{start}–{x}")
            start = None
    return ", ".join(parts)


def main() -> None:
    from sb3_stepnft.envs.libero import import_libero
    from sb3_stepnft.envs.sim_utils import REPO_ROOT

    default = REPO_ROOT.parent / "shared" / "data" / "libero-assets-8f1084e.MISSING.txt"
    missing = [line.strip() for line in open(sys.argv[1] if len(sys.argv) > 1 else default) if line.strip()]
    import_libero()
    import robosuite.environments.base as base
    from libero.libero import benchmark, get_libero_path
    from libero.libero.envs import OffScreenRenderEnv

    def capture(self, xml_string=None):
        raise _Captured(self.model.get_xml())

    base.MujocoEnv._initialize_sim = capture  # stop before MuJoCo compiles (and opens) the files
    root = Path(get_libero_path("assets")).parent
    used: dict[str, dict[int, set[str]]] = {}
    for suite in SUITES:
        bench = benchmark.get_benchmark_dict()[suite]()
        used[suite] = {}
        for task_id in range(bench.n_tasks):
            task = bench.get_task(task_id)
            bddl = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
            try:
                OffScreenRenderEnv(bddl_file_name=bddl, has_renderer=False, has_offscreen_renderer=False, use_camera_obs=False)
                raise RuntimeError(f"{suite} {task_id}: the model was compiled, nothing captured")
            except _Captured as captured:
                files = {os.path.normpath(f) for f in re.findall(r'file="([^"]+)"', captured.args[0])}
            used[suite][task_id] = {m for m in missing if os.path.normpath(root / m) in files}

    print("| suite | missing files every task uses | missing files some tasks use (task ids) |")
    print("|---|---|---|")
    for suite, tasks in used.items():
        common = set.intersection(*tasks.values())
        some = collections.defaultdict(list)
        for task_id, files in sorted(tasks.items()):
            for f in files - common:
                some[f].append(task_id)
        short = lambda m: m.removeprefix("assets/")  # noqa: E731
        every = "<br>".join(f"`{short(m)}`" for m in sorted(common)) or "–"
        partly = "<br>".join(f"`{short(m)}` ({_ranges(ids)})" for m, ids in sorted(some.items())) or "–"
        print(f"| {suite} ({len(tasks)} tasks) | {every} | {partly} |")
    unused = [m for m in missing if not any(m in files for tasks in used.values() for files in tasks.values())]
    print(
        f"\nUsed by no task ({len(unused)} of {len(missing)}): " + ", ".join(f"`{m.removeprefix('assets/')}`" for m in unused)
    )


if __name__ == "__main__":
    main()
