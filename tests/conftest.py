import os

import pytest
import torch as th

# Two cores: keep torch from oversubscribing them when pytest-xdist or SubprocVecEnv add processes.
th.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
