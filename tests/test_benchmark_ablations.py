"""benchmarks/ablations.py: its quick path end to end on one group, one seed, a tiny budget; its groups and verdicts."""

import csv
import os
import subprocess
import sys

import pytest

from tests.helpers import load_script

ROOT = os.path.join(os.path.dirname(__file__), "..")
ABLATIONS = os.path.join(ROOT, "benchmarks", "ablations.py")


@pytest.fixture(scope="module")
def ablations():
    return load_script("ablations", "benchmarks")


def test_quick_path_writes_the_command_table_orderings_curves_and_one_figure_per_group(tmp_path):
    args = ["--quick", "--tasks", "point_reach", "--groups", "target", "--seeds", "0", "--env-steps", "1024"]
    args += ["--eval-every", "512", "--n-eval", "5", "--n-steps", "64", "--workers", "1", "--out", str(tmp_path)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, ABLATIONS, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "ablations_quick_point_reach_only_target"
    text = (tmp_path / f"{out.name}.md").read_text()
    assert text.startswith(f"Command: `python benchmarks/ablations.py {' '.join(args)}`")
    assert "| target (Fig. 2b) | step | defaults |" in text
    assert "| target (Fig. 2b) | terminal | target='terminal' |" in text
    assert "| target (Fig. 2b) | step > terminal | step > terminal |" in text and "n/a (1 seed)" in text
    with open(f"{out}.csv") as f:
        rows = list(csv.DictReader(f))
    for variation, config in (("step", "defaults"), ("terminal", "target='terminal'")):
        curve = [r for r in rows if r["variation"] == variation]
        assert {r["group"] for r in curve} == {"target"} and {r["config"] for r in curve} == {config}
        assert [int(r["env_steps"]) for r in curve] == [0, 512, 1024]
        assert all(0.0 <= float(r["success_rate"]) <= 1.0 for r in curve)
    # both variations start from the same pretrained policy: the same success at step 0
    assert len({r["success_rate"] for r in rows if r["env_steps"] == "0"}) == 1
    assert os.path.getsize(f"{out}_target.png") > 1000
    assert not (tmp_path / f"{out.name}_rollout.png").exists()  # only the selected groups

    # every finished run was logged; --resume after a stop runs only what the log lacks, and reports the same
    log = tmp_path / f"{out.name}.runs.jsonl"
    lines = log.read_text().splitlines()
    assert len(lines) == 2
    log.write_text(lines[0] + "\n")
    done = subprocess.run([sys.executable, ABLATIONS, *args, "--resume"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[1/1]" in done.stdout and "[1/2]" not in done.stdout
    assert (tmp_path / f"{out.name}.md").read_text().startswith(f"Command: `python benchmarks/ablations.py {' '.join(args)}`")
    assert log.read_text().splitlines()[0] == lines[0] and len(log.read_text().splitlines()) == 2

    # another group's command takes the runs it shares with the target group's log (defaults; target='terminal')
    # and runs only its own (ODE): one set of defaults runs behind every group
    rollout = [*args[: args.index("--groups")], "--groups", "rollout", *args[args.index("--groups") + 2 :]]
    missing = subprocess.run([sys.executable, ABLATIONS, *rollout, "--reuse", str(tmp_path / "nope.runs.jsonl")],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert missing.returncode != 0 and "nope.runs.jsonl: no such run log" in missing.stderr
    done = subprocess.run([sys.executable, ABLATIONS, *rollout, "--reuse", str(log)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[1/1]" in done.stdout and "sampler='ode'" in done.stdout and "[1/3]" not in done.stdout
    reused = (tmp_path / "ablations_quick_point_reach_only_rollout.runs.jsonl").read_text().splitlines()
    assert len(reused) == 3 and set(log.read_text().splitlines()) <= set(reused)


def test_every_variation_is_the_defaults_plus_valid_overrides(ablations):
    from sb3_stepnft import StepNFT
    from sb3_stepnft.envs import PointReachEnv

    assert list(ablations.GROUPS) == ["rollout", "target", "objective", "noise", "trust_region", "ema", "step_selection"]
    env = PointReachEnv()
    for name, group in ablations.GROUPS.items():
        configs = [ablations.config_of(overrides) for overrides in group.variations.values()]
        assert configs.count("defaults") == 1, name  # every group compares against StepNFT at its defaults
        assert len(set(configs)) == len(configs), name
        for overrides in group.variations.values():
            StepNFT("MlpPolicy", env, **overrides)  # a bad override fails here, not hours into a run
        for left, relation, right in group.claims:
            assert relation in (">", "≈") and set(left + right) <= set(group.variations), name
    assert ablations.config_of(dict(noise_level=0.2)) == "defaults"  # an override equal to the default is not a run
    assert ablations.changed(dict(noise_level=0.2, trust_region=2.0)) == dict(trust_region=2.0)  # nor in a run's key
    assert ablations.config_of(dict(sampler="ode", target="terminal")) == "sampler='ode', target='terminal'"


def test_verdict_is_decided_only_beyond_the_seeds_std(ablations):
    verdict = ablations.verdict
    assert verdict(0.2, 0.1, ">", 3) == "yes"
    assert verdict(-0.2, 0.1, ">", 3) == "no"
    assert verdict(0.05, 0.1, ">", 3) == "not separated"
    assert verdict(-0.1, 0.1, ">", 3) == "not separated"
    assert verdict(0.05, 0.1, "≈", 3) == "not separated (as the paper's ≈)"
    assert verdict(-0.2, 0.1, "≈", 3) == "no"
    assert verdict(0.5, 0.0, ">", 1) == "n/a (1 seed)"


def test_the_suite_worker_passes_the_overrides_to_the_algorithm(ablations):
    suite = ablations.suite
    job = (suite.TASKS["point_reach"], "StepNFT", 0, 64, 64, 1, 8, {}, None)
    with pytest.raises(ValueError, match="objective='nope'"):
        suite.run_one(dict(zip(suite.JOB_FIELDS, job), overrides=dict(objective="nope")))
