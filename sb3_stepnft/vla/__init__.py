"""Vision-language-action flow policies (π0-style). Importing this package does not import ``transformers``."""

from sb3_stepnft.vla.backbones import tiny_paligemma_config, tiny_smolvlm_config
from sb3_stepnft.vla.pi0 import map_pi0_state_dict, pi0_paligemma_config, pi0_policy_kwargs
from sb3_stepnft.vla.policy import FlowVLAPolicy, VLAFeatures

__all__ = [
    "FlowVLAPolicy",
    "VLAFeatures",
    "map_pi0_state_dict",
    "pi0_paligemma_config",
    "pi0_policy_kwargs",
    "tiny_paligemma_config",
    "tiny_smolvlm_config",
]
