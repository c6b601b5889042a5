"""sb3-stepnft: online RL fine-tuning of flow-matching policies (π-StepNFT) for Stable-Baselines3."""

from sb3_stepnft.flow_grpo import FlowGRPO
from sb3_stepnft.flow_ppo import FlowPPO
from sb3_stepnft.stepnft import StepNFT

__version__ = "0.1.0"

__all__ = ["StepNFT", "FlowPPO", "FlowGRPO", "__version__"]
