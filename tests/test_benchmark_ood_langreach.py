"""benchmarks/ood_langreach.py: one tiny seed end to end (SFT, StepNFT, FlowPPO, every category, the probe) and the
table's arithmetic."""

import types

import numpy as np
import pytest

from tests.helpers import load_script


@pytest.fixture(scope="module")
def ood():
    return load_script("ood_langreach", "benchmarks")


def test_one_tiny_seed_end_to_end(ood, monkeypatch):
    original = ood.sft_state
    monkeypatch.setattr(ood, "sft_state", lambda seed: original(seed, n_demos=2, epochs=1))
    rows, probes = ood.run_seed(0, decisions=ood.N_ENVS * 2, n_eval=2, n_steps=2, probe=True, log=lambda *a: None)
    assert [(r["algo"], r["category"]) for r in rows] == [(a, c) for a in ("SFT", *ood.ALGOS) for c in ood.CATEGORIES]
    assert all(0.0 <= r["success_rate"] <= 1.0 for r in rows)
    assert {r["decisions"] for r in rows if r["algo"] != "SFT"} == {ood.N_ENVS * 2}
    (probe,) = probes
    assert probe["seed"] == 0 and probe["v_shift_abs"] > 0.0  # the vision pixels reach the value head
    assert all(np.isfinite(v) for v in probe.values()) and 0.0 <= probe["v_background_r2"] <= 1.0 + 1e-6
    args = types.SimpleNamespace(decisions=16, n_steps=2, n_eval=2)
    text = ood.report(rows, probes, args, "python benchmarks/ood_langreach.py --test")
    assert "Command: `python benchmarks/ood_langreach.py --test`" in text and "| FlowPPO | 1 |" in text
    assert "v_shift_rel" in text and "- `vision`: background_colors=" in text


def test_table_means_over_seeds(ood):
    rows = []
    for seed, (ind, vision, semantics, execution) in enumerate([(0.8, 0.6, 0.5, 0.4), (0.6, 0.4, 0.3, 0.2)]):
        for category, rate in zip(ood.CATEGORIES, (ind, vision, semantics, execution)):
            rows.append(dict(algo="StepNFT", seed=seed, category=category, success_rate=rate))
    (line,) = ood.table(rows)[2:]
    # IND 0.7 ± 0.1; OOD mean per seed 0.5 and 0.3 -> 0.4 ± 0.1; OOD - IND -0.3 and -0.3
    assert line == (
        "| StepNFT | 2 | 0.700 ± 0.100 | 0.500 ± 0.100 | 0.400 ± 0.100 | 0.300 ± 0.100 | 0.400 ± 0.100 | "
        "-0.300 ± 0.000 |"
    )
