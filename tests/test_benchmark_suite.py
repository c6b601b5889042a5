"""benchmarks/suite.py: one tiny run per algorithm family on PointReach, its table and its curves."""

import os
import types

import pytest

from tests.helpers import load_script


@pytest.fixture(scope="module")
def suite():
    return load_script("suite", "benchmarks")


def test_suite_runs_flow_and_gaussian_algorithms_on_one_budget_and_reports(suite, tmp_path):
    task = suite.TASKS["point_reach"]
    state = suite.pretrained_state((task, 0, {}))
    rows = []
    for algo in ("StepNFT", "PPO"):
        decisions = 2 * suite.N_ENVS * 64  # two iterations of n_steps=64
        values = (task, algo, 0, decisions, 512, 5, 64, {}, state if algo in suite.FLOW else None)
        rows += suite.run_one(dict(zip(suite.JOB_FIELDS, values)))
    for algo in ("StepNFT", "PPO"):
        curve = [r for r in rows if r["algo"] == algo]
        assert curve[0]["env_steps"] == 0 and curve[-1]["decisions"] == 2 * suite.N_ENVS * 64
        assert curve[-1]["env_steps"] == curve[-1]["decisions"]  # chunk 1: one env step per decision
        assert all(0.0 <= r["success_rate"] <= 1.0 for r in curve)
    # the flow algorithm starts from the pretrained policy, PPO from scratch: PointReach's pretrained policy succeeds
    assert rows[0]["success_rate"] > 0.0
    args = types.SimpleNamespace(n_steps=64, seeds=[0], n_eval=5, threshold=0.8)
    out = str(tmp_path / "suite")
    text = suite.report(rows, args, "python benchmarks/suite.py --test", out)
    suite.plot(rows, out)
    assert "Command: `python benchmarks/suite.py --test`" in text
    assert "| StepNFT | pretrained |" in text and "| PPO | scratch |" in text
    assert os.path.getsize(out + ".png") > 1000


def test_steps_to_threshold(suite):
    import numpy as np

    assert suite.steps_to(np.array([0, 10, 20]), np.array([0.1, 0.85, 0.9]), 0.8) == "10"
    assert suite.steps_to(np.array([0, 10]), np.array([0.1, 0.2]), 0.8) == "not reached"


def test_overrides_reach_the_algorithm_and_eval_seeds_move(suite, monkeypatch):
    """The defaults sweep tunes through ``overrides`` and evaluates on its own seeds (never the suite's)."""
    task = suite.TASKS["point_reach"]
    values = (task, "StepNFT", 0, suite.N_ENVS * 32, 10**9, 3, 32, {}, None)
    job = dict(zip(suite.JOB_FIELDS, values), overrides={"learning_rate": 3e-4}, eval_seed=50_000)
    import torch as th

    seen = {}
    original = suite.algorithm

    def spy(name):
        def make(*args, **kwargs):
            seen.update(kwargs)
            return original(name)(*args, **kwargs)

        return make

    import sb3_stepnft.common.evaluation as evaluation

    evaluate, seeds = evaluation.evaluate_success, []
    spy_evaluate = lambda *a, seed, **k: seeds.append(seed) or evaluate(*a, seed=seed, **k)  # noqa: E731
    monkeypatch.setattr(evaluation, "evaluate_success", spy_evaluate)
    suite.algorithm = spy
    try:
        rows = suite.run_one(job)
    finally:
        suite.algorithm = original
    assert seen["learning_rate"] == 3e-4 and seen["n_steps"] == 32
    assert seeds == [50_000, 50_000]  # seed 0's evaluations: the sweep's base, not the suite's 10_000
    assert len(rows) == 2 and th.isfinite(th.tensor(rows[-1]["success_rate"]))


def test_update_reruns_one_algorithm_and_keeps_the_others_rows(suite, tmp_path):
    """``--update`` replaces the rerun algorithm's rows, keeps the others' and says so in the command line."""
    import subprocess
    import sys

    out = tmp_path / "suite_point_reach"
    old = [dict(task="point_reach", algo=a, seed=0, decisions=d, env_steps=d, success_rate=0.5, train_time=1.0)
           for a in ("StepNFT", "PPO") for d in (0, 256)]  # fmt: skip
    suite.write_csv(old, str(out) + ".csv")
    assert suite.read_csv(str(out) + ".csv") == old
    out.with_suffix(".md").write_text("Command: `python benchmarks/suite.py --tasks point_reach`\n")
    command = [sys.executable, suite.__file__, "--tasks", "point_reach", "--algos", "StepNFT", "--seeds", "0", "--env-steps",
               "256", "--n-steps", "16", "--n-eval", "2", "--workers", "1", "--update", "--out", str(tmp_path)]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    rows = suite.read_csv(str(out) + ".csv")
    assert [r for r in rows if r["algo"] == "PPO"] == old[2:]
    stepnft = [r for r in rows if r["algo"] == "StepNFT"]
    assert stepnft and stepnft != old[:2] and stepnft[-1]["decisions"] == 256
    text = out.with_suffix(".md").read_text()
    assert text.startswith(
        "Command: `python benchmarks/suite.py --tasks point_reach` (the other rows); the rows of StepNFT by"
    )
    assert "| PPO | scratch |" in text
    # the same --update continued with --resume: the rows' origins stay as they were said once
    subprocess.run(command + ["--resume"], check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.with_suffix(".md").read_text().splitlines()[0] == text.splitlines()[0]
    assert [r for r in suite.read_csv(str(out) + ".csv") if r["algo"] == "StepNFT"] == stepnft


def test_resume_keeps_finished_runs_and_runs_the_rest(suite, tmp_path):
    """Each finished run is logged as it ends; ``--resume`` reuses the logged runs (even after a writer killed
    mid-line) and runs only the missing ones; the table says *Partial* while runs are missing."""
    import json
    import subprocess
    import sys

    out = tmp_path / "suite_point_reach"
    log = tmp_path / "suite_point_reach.runs.jsonl"
    command = [sys.executable, suite.__file__, "--tasks", "point_reach", "--algos", "StepNFT", "PPO", "--seeds", "0",
               "--env-steps", "256", "--n-steps", "16", "--n-eval", "2", "--workers", "1", "--out", str(tmp_path)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(command, check=True, capture_output=True, env=env)
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(json.loads(e["key"])["algo"] for e in entries) == ["PPO", "StepNFT"]
    stepnft = next(e for e in entries if json.loads(e["key"])["algo"] == "StepNFT")
    log.write_text(json.dumps(stepnft) + "\n" + '{"key": "a killed wri')  # PPO's run lost, a partial last line

    rows = [dict(r, task="point_reach") for r in stepnft["rows"]]
    args = types.SimpleNamespace(n_steps=16, seeds=[0], n_eval=2, threshold=0.8)
    text = suite.report(rows, args, "python benchmarks/suite.py", str(out), missing=["point_reach PPO seed 0"])
    assert "**Partial**: 1 run(s) not finished yet (point_reach PPO seed 0)" in text and "--resume" in text

    result = subprocess.run(command + ["--resume"], check=True, capture_output=True, env=env, text=True)
    assert "[1/1] point_reach PPO seed 0" in result.stdout  # StepNFT was not run again
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(entries) == 2 and entries[0] == stepnft
    csv_rows = suite.read_csv(str(out) + ".csv")
    assert [r for r in csv_rows if r["algo"] == "StepNFT"] == stepnft["rows"]  # the logged run, not a rerun
    assert any(r["algo"] == "PPO" for r in csv_rows)
    text = out.with_suffix(".md").read_text()
    assert "Partial" not in text and "--resume" not in text.splitlines()[0]
