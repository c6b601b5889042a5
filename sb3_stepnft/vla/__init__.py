"""Vision-language-action flow policies (π0-style). Importing this package does not import ``transformers``.

Modules: :mod:`~sb3_stepnft.vla.policy` (``FlowVLAPolicy``), :mod:`~sb3_stepnft.vla.config` (``VLAConfig``),
:mod:`~sb3_stepnft.vla.backbones` (VLM adapters), :mod:`~sb3_stepnft.vla.experts` (action experts),
:mod:`~sb3_stepnft.vla.pi0` (π0 checkpoints) and the test-only :mod:`~sb3_stepnft.vla.testing` (tiny configs).
"""

from sb3_stepnft.vla.config import VLAConfig
from sb3_stepnft.vla.pi0 import map_pi0_state_dict, pi0_config, pi0_paligemma_config, pi0_policy_kwargs
from sb3_stepnft.vla.policy import FlowVLAPolicy, VLAFeatures

__all__ = [
    "FlowVLAPolicy",
    "VLAConfig",
    "VLAFeatures",
    "map_pi0_state_dict",
    "pi0_config",
    "pi0_paligemma_config",
    "pi0_policy_kwargs",
]
