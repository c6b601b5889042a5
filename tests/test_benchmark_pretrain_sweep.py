"""benchmarks/pretrain_sweep.py: the ManiSkill rows use the first n demonstrations, whole episodes only."""

import numpy as np

from benchmarks.pretrain_sweep import first_episodes
from sb3_stepnft.sft import Demonstrations


def test_first_episodes_keeps_whole_episodes_in_order():
    lengths = [3, 2, 4]
    starts = np.concatenate([[True] + [False] * (n - 1) for n in lengths])
    obs = {"state": np.arange(9, dtype=np.float32)[:, None]}
    demos = Demonstrations(obs, np.arange(9, dtype=np.float32)[:, None], starts)
    two = first_episodes(demos, 2)
    assert two.n_episodes == 2 and len(two) == 5
    np.testing.assert_array_equal(two.observations["state"][:, 0], np.arange(5))
    np.testing.assert_array_equal(two.actions[:, 0], np.arange(5))
    assert len(first_episodes(demos, 3)) == len(first_episodes(demos, 10)) == 9
