"""benchmarks/ood_langreach.py: one tiny seed end to end (SFT, StepNFT, FlowPPO, every category, the probe) and the
table's arithmetic."""

import types

import numpy as np
import pytest

from tests.helpers import load_script


@pytest.fixture(scope="module")
def ood():
    return load_script("ood_langreach", "benchmarks")


def test_one_tiny_seed_end_to_end(ood, monkeypatch, tmp_path):
    original = ood.sft_state
    monkeypatch.setattr(ood, "sft_state", lambda seed: original(seed, n_demos=2, epochs=1))
    categories = (*ood.CATEGORIES, "semantics/phrasing")
    rows, probes, curves = ood.run_seed(
        0, ood.N_ENVS * 2, n_eval=2, n_steps=2, probe=True, log=lambda *a: None, categories=categories, curve_every=8
    )
    assert [(r["algo"], r["category"]) for r in rows] == [(a, c) for a in ("SFT", *ood.ALGOS) for c in categories]
    # one rollout of 16 decisions: evaluated before it and at the end, on the four categories
    assert [(r["algo"], r["decisions"]) for r in curves] == [(a, d) for a in ood.ALGOS for d in (0, 16) for _ in range(4)]
    assert all(0.0 <= r["success_rate"] <= 1.0 for r in rows)
    assert {r["decisions"] for r in rows if r["algo"] != "SFT"} == {ood.N_ENVS * 2}
    (probe,) = probes
    assert probe["seed"] == 0 and probe["v_shift_abs"] > 0.0  # the vision pixels reach the value head
    assert all(np.isfinite(v) for v in probe.values()) and 0.0 <= probe["v_background_r2"] <= 1.0 + 1e-6
    args = types.SimpleNamespace(decisions=16, n_steps=2, n_eval=2, curve_every=8)
    text = ood.report(rows, probes, args, "python benchmarks/ood_langreach.py --test", curves)
    assert "Command: `python benchmarks/ood_langreach.py --test`" in text and "| FlowPPO | 1 |" in text
    assert "v_shift_rel" in text and "- `vision`: background_colors=" in text
    assert "| semantics/phrasing |" in text and "| StepNFT | 16 | 1 |" in text
    ood.plot(curves, str(tmp_path / "ood"))
    assert (tmp_path / "ood.png").stat().st_size > 1000


def test_table_means_over_seeds_and_csv_round_trip(ood, tmp_path):
    rows = []
    for seed, rates in enumerate([(0.8, 0.5, 0.4, 0.3), (0.5, 0.4, 0.3, 0.2)]):
        for category, rate in zip(ood.CATEGORIES, rates):
            rows.append(dict(algo="StepNFT", seed=seed, category=category, success_rate=rate, decisions=8))
    ood.write_csv(rows, str(tmp_path / "r.csv"))
    assert ood.read_csv(str(tmp_path / "r.csv")) == rows
    (line,) = ood.table(rows)[2:]
    # OOD mean per seed 0.4 and 0.3; OOD - IND -0.4 and -0.2; OOD / IND 0.5 and 0.6
    assert line == (
        "| StepNFT | 2 | 0.650 ± 0.150 | 0.450 ± 0.050 | 0.350 ± 0.050 | 0.250 ± 0.050 | 0.350 ± 0.050 | "
        "-0.300 ± 0.100 | 0.550 ± 0.050 |"
    )
    assert ood.factor_table(rows) == []


def test_single_factor_splits_change_one_factor(ood):
    from sb3_stepnft.envs.lang_reach import OOD_VARIATIONS

    ind = ood.env_kwargs("ind")
    for name, (category, key) in ood.FACTORS.items():
        kwargs = ood.env_kwargs(name)
        assert kwargs[key] == OOD_VARIATIONS[category][key] != ind[key]
        assert {k for k in kwargs if k != "tokenizer" and kwargs[k] != ind[k]} == {key}


def test_matched_ind_interpolates_the_other_curve(ood):
    curves = []

    def add(algo, seed, decisions, ind, ood_rate):
        for category in ood.CATEGORIES:
            rate = ind if category == "ind" else ood_rate
            curves.append(dict(algo=algo, seed=seed, category=category, success_rate=rate, decisions=decisions))

    for decisions, ind, rate in [(0, 0.4, 0.2), (8, 0.6, 0.3)]:
        add("StepNFT", 0, decisions, ind, rate)
        add("StepNFT", 1, decisions, ind + 0.35, rate)  # final IND 0.95: never reached by FlowPPO
    for seed in (0, 1):
        for decisions, ind, rate in [(0, 0.4, 0.2), (8, 0.5, 0.25), (16, 0.7, 0.45)]:
            add("FlowPPO", seed, decisions, ind, rate)
    first, second = ood.matched_ind(curves)
    assert first["ind"] == pytest.approx(0.6) and first["reference_ood"] == pytest.approx(0.3)
    assert first["other_ood"] == pytest.approx(0.35)  # halfway between 0.25 (IND 0.5) and 0.45 (IND 0.7)
    assert np.isnan(second["other_ood"])
    lines = ood.matched_table(curves)
    assert "| 1 | 0.950 | 0.300 | not crossed |" in lines and lines[-1].startswith("| mean (1 seeds crossed) | 0.600 |")
