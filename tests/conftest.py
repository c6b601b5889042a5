import pytest
import torch as th

# Two cores and `-n 2`: one torch thread per test process, so workers (and SubprocVecEnv) never oversubscribe.
th.set_num_threads(1)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
