"""The `sb3-stepnft` command line: --help everywhere, a tiny train -> checkpoint -> eval round trip, clear errors."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch as th
import yaml

from sb3_stepnft import StepNFT
from sb3_stepnft.cli import apply_overrides, load_hyperparams, main, parse_env_id, parse_python_value
from sb3_stepnft.common.threads import ENV_VAR, configure_torch_threads
from sb3_stepnft.sft import Demonstrations

ROOT = Path(__file__).resolve().parent.parent
SUBCOMMANDS = ["train", "eval", "demos", "compare"]


def run_module(*args: str, env=None) -> subprocess.CompletedProcess:
    environ = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "sb3_stepnft", *args], capture_output=True, text=True, env=environ, timeout=120
    )


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = th.get_num_threads()
    yield
    th.set_num_threads(threads)


def test_python_m_help_lists_every_subcommand():
    result = run_module("--help")
    assert result.returncode == 0, result.stderr
    for command in SUBCOMMANDS:
        assert command in result.stdout


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help_of_every_subcommand_in_process(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: sb3-stepnft {command}" in out


def test_train_help_documents_the_hyperparameter_keys(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for text in ("--hyperparams", "--set", "--demos", "--progress-bar", "--torch-threads", "maniskill:", "libero:"):
        assert text in out
    for key in ("n_timesteps", "chunk_size", "normalize", "policy_kwargs"):
        assert key in out


def test_console_script_is_declared():
    assert "sb3-stepnft = sb3_stepnft.cli:main" in (ROOT / "setup.py").read_text()


def test_train_checkpoint_eval_round_trip_on_point_reach(tmp_path, capsys):
    demos = tmp_path / "demos.npz"
    assert main(["demos", "point_reach", "-n", "6", "--out", str(demos)]) == 0
    assert len(Demonstrations.load(demos)) > 0
    hyperparams = tmp_path / "hp.yml"
    hyperparams.write_text(
        "point_reach:\n  n_envs: 4\n  n_steps: 16\n  batch_size: 32\n  policy_kwargs: \"dict(net_arch=[16, 16])\"\n"
        "  pretrain: \"dict(epochs=2)\"\nPendulum-v1:\n  n_envs: 2\n"
    )  # fmt: skip
    out = tmp_path / "run"
    argv = ["train", "--env", "point_reach", "--demos", str(demos), "--hyperparams", str(hyperparams),
            "--set", "learning_rate=1e-4", "-n", "128", "--checkpoint-freq", "64", "--out", str(out), "--verbose", "0",
            "--seed", "3"]  # fmt: skip
    assert main(argv) == 0
    assert "pretrained on" in capsys.readouterr().out
    assert (out / "model.zip").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["model_128_steps.zip", "model_64_steps.zip"]
    config = yaml.safe_load((out / "config.yml").read_text())
    assert config["algo"] == "stepnft" and config["env"] == "point_reach" and config["seed"] == 3
    assert config["n_envs"] == 4 and config["n_timesteps"] == 128

    model = StepNFT.load(out / "model.zip")
    assert model.learning_rate == pytest.approx(1e-4) and model.n_steps == 16 and model.n_envs == 4
    assert model.policy_kwargs["net_arch"] == [16, 16]
    assert model.num_timesteps == 128

    assert main(["eval", str(out), "--episodes", "4", "--json", str(tmp_path / "r.json")]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["episodes"] == 4 and line["protocol"] == "paper" and line["seed"] == 10_000
    assert 0.0 <= line["success_rate"] <= 1.0
    assert json.loads((tmp_path / "r.json").read_text())["episodes"] == 4
    assert main(["eval", str(out / "checkpoints" / "model_64_steps.zip"), "--episodes", "2"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["model"].endswith("model_64_steps.zip")


def test_train_gym_env_with_normalize_and_chunks_then_eval_uses_saved_statistics(tmp_path, capsys):
    out = tmp_path / "pendulum"
    argv = ["train", "--algo", "flowppo", "--env", "Pendulum-v1", "-n", "64", "--set", "n_envs=2", "--set", "n_steps=16",
            "--set", "batch_size=16", "--set", "normalize=true", "--set", "chunk_size=2", "--checkpoint-freq", "0",
            "--no-tensorboard", "--out", str(out), "--verbose", "0"]  # fmt: skip
    assert main(argv) == 0
    assert (out / "vecnormalize.pkl").is_file() and not (out / "checkpoints").exists() and not (out / "tb").exists()
    capsys.readouterr()
    assert main(["eval", str(out), "--episodes", "1"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["episodes"] == 1 and line["mean_return"] < 0  # Pendulum: 100 chunks of 2 steps


def test_train_ppo_and_flowgrpo_groups(tmp_path):
    assert main(["train", "--algo", "ppo", "--env", "CartPole-v1", "-n", "64", "--set", "n_envs=2", "--set", "n_steps=32",
                 "--checkpoint-freq", "0", "--out", str(tmp_path / "ppo"), "--verbose", "0"]) == 0  # fmt: skip
    assert (tmp_path / "ppo" / "model.zip").is_file()
    code = main(["train", "--algo", "flowgrpo", "--env", "point_reach", "-n", "64", "--set", "n_envs=6",
                 "--set", "group_size=4", "--out", str(tmp_path / "g"), "--verbose", "0"])  # fmt: skip
    assert code == 2  # 6 envs are not groups of 4
    argv = ["train", "--algo", "flowgrpo", "--env", "point_reach", "-n", "64", "--set", "n_envs=4", "--set", "n_steps=16",
            "--set", "group_size=4", "--checkpoint-freq", "0", "--out", str(tmp_path / "g"), "--verbose", "0"]  # fmt: skip
    assert main(argv) == 0
    assert (tmp_path / "g" / "model.zip").is_file()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--env", "NoSuchEnv-v0"], "unknown env"),
        (["train", "--env", "point_reach", "--set", "not_a_parameter=1"], "not_a_parameter"),
        (["train", "--env", "point_reach", "--set", "oops"], "KEY=VALUE"),
        (["train", "--env", "libero:libero_goal"], "libero:<suite>/<task id>"),
        (["train", "--algo", "sac", "--env", "point_reach"], "unknown algorithm"),
        (["train", "--algo", "ppo", "--env", "point_reach", "--demos", "x.npz"], "does not exist"),
        (["train", "--env", "point_reach", "--hyperparams", "missing.yml"], "does not exist"),
        (["eval", "nowhere"], "neither a run folder nor a saved model"),
        (["demos", "CartPole-v1"], "point_reach, maniskill:<task> and libero:<suite>/<id>"),
        (["demos", "libero:libero_goal"], "libero:<suite>/<task id>"),
        (["demos", "libero:libero_goal/0", "-n", "0"], "-n must be >= 1"),
    ],
)
def test_bad_input_gives_a_clear_one_line_error(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # nothing written for a run that never started


def test_ppo_refuses_demonstrations(tmp_path, capsys):
    demos = tmp_path / "d.npz"
    assert main(["demos", "point_reach", "-n", "2", "--out", str(demos)]) == 0
    assert main(["train", "--algo", "ppo", "--env", "point_reach", "--demos", str(demos)]) == 2
    assert "flow policy" in capsys.readouterr().err


def test_hyperparams_sections_default_and_flat_files(tmp_path):
    zoo = tmp_path / "zoo.yml"
    zoo.write_text("Pendulum-v1:\n  n_envs: 4\n  learning_rate: !!float 1e-3\ndefault:\n  n_envs: 2\n")
    assert load_hyperparams(zoo, "Pendulum-v1") == {"n_envs": 4, "learning_rate": 1e-3}
    assert load_hyperparams(zoo, "CartPole-v1") == {"n_envs": 2}
    flat = tmp_path / "flat.yml"
    flat.write_text("n_envs: 3\npolicy_kwargs: dict(net_arch=[8])\n")
    assert load_hyperparams(flat, "anything") == {"n_envs": 3, "policy_kwargs": "dict(net_arch=[8])"}
    only_sections = tmp_path / "sections.yml"
    only_sections.write_text("Pendulum-v1:\n  n_envs: 4\n")
    with pytest.raises(Exception, match="no section for env 'CartPole-v1'"):
        load_hyperparams(only_sections, "CartPole-v1")


def test_overrides_and_python_values():
    result = apply_overrides({"policy_kwargs": "dict(net_arch=[64, 64])"}, ["n_steps=32", "policy_kwargs.net_arch=[8]"])
    assert result == {"n_steps": 32, "policy_kwargs": {"net_arch": [8]}}
    assert parse_python_value("dict(a=1, b=dict(c=[1, 2]), d=(3, 4))") == {"a": 1, "b": {"c": [1, 2]}, "d": (3, 4)}
    with pytest.raises(Exception, match="only Python literals"):
        parse_python_value("dict(activation_fn=__import__('os').system('true'))")


def test_env_ids():
    assert parse_env_id("maniskill:PushCube-v1") == ("maniskill", "PushCube-v1")
    assert parse_env_id("libero:libero_object/0") == ("libero", "libero_object/0")
    assert parse_env_id("point_reach") == ("point_reach", "point_reach")
    assert parse_env_id("Pendulum-v1") == ("gym", "Pendulum-v1")
    assert parse_env_id("my_module:MyEnv-v0") == ("gym", "my_module:MyEnv-v0")  # gymnasium's module:id form


def test_compare_without_a_source_checkout_says_so(monkeypatch, capsys):
    import sb3_stepnft.cli as cli

    monkeypatch.setattr(cli, "compare_script", lambda: None)
    assert main(["compare", "--quick"]) == 2
    assert "source checkout" in capsys.readouterr().err


def test_compare_forwards_to_the_benchmark_script():
    result = run_module("compare", "--", "--help")
    assert result.returncode == 0, result.stderr
    assert "--quick" in result.stdout and "suite.py" in result.stdout


def test_configure_torch_threads(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    th.set_num_threads(2)
    assert configure_torch_threads() == 1  # the default for CPU runs
    assert configure_torch_threads(2) == 2
    monkeypatch.setenv(ENV_VAR, "3")
    assert configure_torch_threads() == 3
    assert configure_torch_threads(1) == 1  # the argument wins over the variable
    monkeypatch.setenv(ENV_VAR, "0")
    assert configure_torch_threads() == 1  # 0: leave torch's setting as it is
    monkeypatch.setenv(ENV_VAR, "many")
    with pytest.raises(ValueError, match=ENV_VAR):
        configure_torch_threads()
    monkeypatch.delenv(ENV_VAR)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    th.set_num_threads(2)
    assert configure_torch_threads() == 2  # OMP_NUM_THREADS set: torch's choice is kept
    with pytest.raises(ValueError, match=">= 0"):
        configure_torch_threads(-1)


def test_cli_sets_torch_threads(tmp_path, capsys, monkeypatch):
    from sb3_stepnft.common.threads import ENV_VAR

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # a set OMP_NUM_THREADS keeps torch's choice (tested above)
    monkeypatch.delenv(ENV_VAR, raising=False)
    th.set_num_threads(2)
    assert main(["demos", "point_reach", "-n", "1", "--out", str(tmp_path / "d.npz")]) == 0
    assert th.get_num_threads() == 1
    assert main(["demos", "point_reach", "-n", "1", "--out", str(tmp_path / "d.npz"), "--torch-threads", "2"]) == 0
    assert th.get_num_threads() == 2


@pytest.mark.skipif(importlib.util.find_spec("mani_skill") is None, reason="needs the [maniskill] extra")
def test_train_and_eval_a_maniskill_task(tmp_path, capsys):
    """A few decisions on PushCube (state): the maniskill: id reaches make_maniskill_env; ~20 s."""
    out = tmp_path / "ms"
    argv = ["train", "--env", "maniskill:PushCube-v1", "-n", "32", "--set", "n_envs=2", "--set", "n_steps=16",
            "--set", "chunk_size=4", "--set", "max_episode_steps=40", "--checkpoint-freq", "0", "--no-tensorboard",
            "--out", str(out), "--verbose", "0"]  # fmt: skip
    try:
        assert main(argv) == 0
    except RuntimeError as error:  # no Vulkan device on this machine
        pytest.skip(str(error)[:200])
    capsys.readouterr()
    assert main(["eval", str(out), "--episodes", "1"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["env"] == "maniskill:PushCube-v1" and line["episodes"] == 1
