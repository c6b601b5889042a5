"""Public flow policies (re-exports).

``FlowVLAPolicy`` is importable without ``transformers``; building one needs the ``[vla]`` extra.
"""

from sb3_stepnft.common.policies import CnnFlowPolicy, FlowPolicy, MlpFlowPolicy, MultiInputFlowPolicy
from sb3_stepnft.vla.policy import FlowVLAPolicy

MlpPolicy = MlpFlowPolicy
CnnPolicy = CnnFlowPolicy
MultiInputPolicy = MultiInputFlowPolicy
VLAPolicy = FlowVLAPolicy

__all__ = [
    "FlowPolicy",
    "MlpFlowPolicy",
    "CnnFlowPolicy",
    "MultiInputFlowPolicy",
    "FlowVLAPolicy",
    "MlpPolicy",
    "CnnPolicy",
    "MultiInputPolicy",
    "VLAPolicy",
]
