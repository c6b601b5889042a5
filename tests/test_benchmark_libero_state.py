"""benchmarks/libero_state.py --summarize: one table over the seeds of result files that separate commands wrote."""

import csv
import os

import pytest

from tests.helpers import load_script

FIELDS = ["suite", "task", "algo", "seed", "demos", "env_steps", "success_pretrained", "success_after"]


@pytest.fixture(scope="module")
def libero_state():
    return load_script("libero_state", "benchmarks")


def write(path, runs, command):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(dict(zip(FIELDS, ("libero_object", 0, *run, 20, 16384, *rates))) for *run, rates in runs)
    with open(os.path.splitext(path)[0] + ".md", "w") as f:
        f.write(f"# title\n\n`{command}`\n")


def test_summary_pairs_each_seed_and_names_the_commands(libero_state, tmp_path):
    a, b = str(tmp_path / "a.csv"), str(tmp_path / "b.csv")
    write(a, [("StepNFT", 0, (0.2, 0.4)), ("FlowGRPO", 0, (0.2, 0.0))], "python benchmarks/libero_state.py --seeds 0")
    write(b, [("StepNFT", 1, (0.1, 0.1)), ("FlowGRPO", 1, (0.1, 0.5))], "python benchmarks/libero_state.py --seeds 1")
    libero_state.main(["--summarize", a, b, "--out", str(tmp_path), "--name", "all"])
    text = (tmp_path / "all.md").read_text()
    assert f"`python benchmarks/libero_state.py --summarize {a} {b}`" in text
    assert "--seeds 0`" in text and "--seeds 1`" in text  # each source with its own command
    assert "| StepNFT | 0 1 | 0.150 ± 0.050 | 0.250 ± 0.150 | +0.100 ± 0.100 | 1 of 2 | 0.20→0.40 0.10→0.10 |" in text
    assert "| FlowGRPO | 0 1 | 0.150 ± 0.050 | 0.250 ± 0.250 | +0.100 ± 0.300 | 1 of 2 |" in text
    with open(tmp_path / "all.csv") as f:
        assert [r["algo"] for r in csv.DictReader(f)] == ["StepNFT", "FlowGRPO"]


def test_summary_refuses_mixed_set_ups_and_repeated_runs(libero_state, tmp_path):
    a, b = str(tmp_path / "a.csv"), str(tmp_path / "b.csv")
    write(a, [("StepNFT", 0, (0.2, 0.4))], "python x")
    write(b, [("StepNFT", 0, (0.2, 0.4))], "python x")
    with pytest.raises(ValueError, match="a run appears twice"):
        libero_state.summarize([a, b])
    with open(b) as f:
        text = f.read().replace("16384", "8192")
    with open(b, "w") as f:
        f.write(text)
    with pytest.raises(ValueError, match="mix set-ups"):
        libero_state.summarize([a, b])
