from sb3_stepnft.flow_grpo.flow_grpo import FlowGRPO
from sb3_stepnft.flow_grpo.groups import group_advantages

__all__ = ["FlowGRPO", "group_advantages"]
