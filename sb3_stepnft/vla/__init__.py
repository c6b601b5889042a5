"""Vision-language-action flow policies (π0-style). Importing this package does not import ``transformers``.

Modules: :mod:`~sb3_stepnft.vla.policy` (``FlowVLAPolicy``), :mod:`~sb3_stepnft.vla.config` (``VLAConfig``),
:mod:`~sb3_stepnft.vla.backbones` (VLM adapters), :mod:`~sb3_stepnft.vla.experts` (action experts),
:mod:`~sb3_stepnft.vla.pi0` (π0 / π0.5 checkpoints) and the test-only :mod:`~sb3_stepnft.vla.testing` (tiny configs).
"""

from sb3_stepnft.vla.config import VLAConfig
from sb3_stepnft.vla.pi0 import (
    load_norm_stats,
    map_pi0_state_dict,
    openpi_config,
    openpi_policy_kwargs,
    pi0_config,
    pi0_paligemma_config,
    pi0_policy_kwargs,
    pi05_config,
    pi05_policy_kwargs,
)
from sb3_stepnft.vla.policy import FlowVLAPolicy, VLAFeatures

__all__ = [
    "FlowVLAPolicy",
    "VLAConfig",
    "VLAFeatures",
    "load_norm_stats",
    "map_pi0_state_dict",
    "openpi_config",
    "openpi_policy_kwargs",
    "pi0_config",
    "pi0_paligemma_config",
    "pi0_policy_kwargs",
    "pi05_config",
    "pi05_policy_kwargs",
]
