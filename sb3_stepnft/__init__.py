"""sb3-stepnft: online RL fine-tuning of flow-matching policies (π-StepNFT) for Stable-Baselines3."""

from sb3_stepnft.common.on_policy import FlowOnPolicyAlgorithm
from sb3_stepnft.flow_grpo import FlowGRPO
from sb3_stepnft.flow_ppo import FlowPPO
from sb3_stepnft.stepnft import StepNFT
from sb3_stepnft.vla.policy import FlowVLAPolicy  # no transformers import until a VLA policy is built

# The "VLAPolicy" alias of every flow algorithm, registered here where both layers are known (common/ does not
# import vla/). Any import of a submodule runs this file first, so the alias is always present.
FlowOnPolicyAlgorithm.policy_aliases["VLAPolicy"] = FlowVLAPolicy

__version__ = "0.1.0"

__all__ = ["StepNFT", "FlowPPO", "FlowGRPO", "__version__"]
