from sb3_stepnft.flow_ppo.flow_ppo import FlowPPO
from sb3_stepnft.flow_ppo.gae import compute_gae

__all__ = ["FlowPPO", "compute_gae"]
