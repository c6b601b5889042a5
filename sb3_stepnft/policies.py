"""Public flow policies (re-exports). ``FlowVLAPolicy`` arrives with the VLA issue."""

from sb3_stepnft.common.policies import CnnFlowPolicy, FlowPolicy, MlpFlowPolicy, MultiInputFlowPolicy

MlpPolicy = MlpFlowPolicy
CnnPolicy = CnnFlowPolicy
MultiInputPolicy = MultiInputFlowPolicy

__all__ = [
    "FlowPolicy",
    "MlpFlowPolicy",
    "CnnFlowPolicy",
    "MultiInputFlowPolicy",
    "MlpPolicy",
    "CnnPolicy",
    "MultiInputPolicy",
]
