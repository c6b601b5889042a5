"""benchmarks/sb3_suite.py: SB3-style tests run with PPO replaced by a flow algorithm, failures sorted by cause."""

import textwrap

import pytest

from tests.helpers import load_script

FAKE_SB3_TESTS = """
import pytest
from stable_baselines3 import PPO, SAC


@pytest.mark.parametrize("model_class", [PPO, SAC])
def test_box_env(model_class):
    kwargs = dict(n_steps=16, batch_size=16, n_epochs=1) if model_class is PPO else dict(learning_starts=0)
    model_class("MlpPolicy", "Pendulum-v1", **kwargs).learn(32)


def test_discrete_env():
    PPO("MlpPolicy", "CartPole-v1")


def test_ppo_warnings():
    raise AssertionError(f"{PPO.__name__}: stands for a known difference")


def test_not_using_ppo():
    assert SAC.__name__ == "SAC"


def test_name():
    assert PPO.__name__ == "PPO"  # fails with the replacement: an unexplained failure
"""


@pytest.fixture(scope="module")
def sb3_suite():
    return load_script("sb3_suite", "benchmarks")


def test_classify_sorts_refusals_by_cause(sb3_suite):
    classify = sb3_suite.classify
    assert classify("E   AssertionError: StepNFT only supports Box (continuous) action spaces, got Discrete(2)") == (
        "non-Box action space"
    )
    assert classify("E   TypeError: StepNFT.__init__() got an unexpected keyword argument 'gae_lambda'") == (
        "PPO/A2C-only argument"
    )
    assert classify("E   TypeError: FlowPolicy.__init__() got an unexpected keyword argument 'log_std_init'") == (
        "Gaussian policy option"
    )
    assert classify("E   ValueError: FlowPPO does not use SB3's gSDE (use_sde/sde_sample_freq)") == "gSDE (use_sde)"
    assert classify("E   assert 42.0 < 1.0") == "other"


def test_summary_merges_phases_and_counts_applicable_tests(sb3_suite):
    records = [
        dict(nodeid="t.py::test_a", when="call", outcome="passed", text=""),
        dict(nodeid="t.py::test_a", when="call", outcome="passed", text=""),  # the xdist controller's copy
        dict(nodeid="t.py::test_b", when="call", outcome="passed", text=""),
        dict(nodeid="t.py::test_b", when="teardown", outcome="failed", text="E   RuntimeError: teardown broke"),
        dict(nodeid="t.py::test_c[x]", when="call", outcome="failed", text="E   AssertionError: ... only supports Box"),
        dict(nodeid="t.py::test_ppo_warnings", when="call", outcome="failed", text="E   Failed: DID NOT RAISE"),
        dict(nodeid="t.py::test_d", when="setup", outcome="skipped", text="skip"),
    ]
    summary = sb3_suite.summarize(sb3_suite.merge_outcomes(records))
    assert (summary["total"], summary["passed"], summary["skipped"], summary["by_design"]) == (5, 1, 1, 1)
    assert summary["applicable"] == 3  # test_a, test_b (failed in teardown), test_ppo_warnings
    assert [nodeid for nodeid, _ in summary["known"]] == ["t.py::test_ppo_warnings"]
    assert summary["other"] == [("t.py::test_b", "RuntimeError: teardown broke")]


def test_run_suite_replaces_ppo_and_sorts_the_outcomes(sb3_suite, tmp_path):
    tests_dir = tmp_path / "sb3_tests"
    tests_dir.mkdir()
    (tests_dir / "__init__.py").write_text("")
    (tests_dir / "test_fake.py").write_text(textwrap.dedent(FAKE_SB3_TESTS))
    (tests_dir / "test_needs_missing_module.py").write_text("import no_such_module_here\n")
    summary, skipped = sb3_suite.run_suite("StepNFT", str(tests_dir), str(tmp_path / "work"), workers=1)
    assert skipped == {"test_needs_missing_module.py": ["no_such_module_here"]}
    # test_box_env[PPO] (StepNFT on Pendulum) passes; [SAC] and test_not_using_ppo are deselected
    assert (summary["total"], summary["passed"], summary["by_design"]) == (4, 1, 1)
    assert summary["categories"] == {"non-Box action space": 1, "other": 1}
    assert [nodeid for nodeid, _ in summary["known"]] == ["tests/test_fake.py::test_ppo_warnings"]
    [(nodeid, message)] = summary["other"]
    assert nodeid == "tests/test_fake.py::test_name" and "StepNFT" in message

    extra = tmp_path / "test_deps"
    extra.mkdir()
    (extra / "no_such_module_here.py").write_text("")  # as install_test_deps puts pandas there
    assert sb3_suite.missing_imports(str(tests_dir / "test_needs_missing_module.py"), (str(extra),)) == []

    report = sb3_suite.report({"StepNFT": summary}, skipped, "x.y", "python benchmarks/sb3_suite.py --algos StepNFT")
    assert "| StepNFT | 4 | 1 | 1 | 3 | 1/3 | 1 | 1 |" in report
    assert "test_needs_missing_module.py (no_such_module_here)" in report
