"""benchmarks/defaults_sweep.py: runs through the suite's worker, resumes from its log and reports every variation."""

import json
import sys

from tests.helpers import load_script


def test_sweep_runs_resumes_and_reports(tmp_path, monkeypatch):
    sweep = load_script("defaults_sweep", "benchmarks")
    argv = ["defaults_sweep.py", "--task", "point_reach", "--grid", "none", "--variations", "{}", '{"n_steps": 16}',
            "--seeds", "100", "--env-steps", "256", "--n-eval", "2", "--workers", "1", "--out", str(tmp_path)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    sweep.main()
    log = tmp_path / "defaults_sweep_point_reach_StepNFT_none.jsonl"
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(e["key"], e["seed"]) for e in entries] == [("{}", 100), ('{"n_steps": 16}', 100)]
    # a finished run is not run again: a rerun only reports (a changed log entry shows up in the table)
    entries[0]["after"] = 0.123
    log.write_text("".join(json.dumps(e) + "\n" for e in entries))
    monkeypatch.setattr(sys, "argv", [*argv, "--report-only"])
    sweep.main()
    text = (tmp_path / "defaults_sweep_point_reach_StepNFT_none.md").read_text()
    assert text.startswith("Command: `python benchmarks/defaults_sweep.py --task point_reach --grid none --variations '{}'")
    assert "--report-only" not in text
    assert "| (defaults) | " in text and "0.123 ± 0.000" in text and '| {"n_steps": 16} |' in text
    assert "tuning evaluation seeds from 50000" in text
