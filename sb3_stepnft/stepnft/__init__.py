from sb3_stepnft.stepnft.loss import stepnft_loss
from sb3_stepnft.stepnft.stepnft import MissingSuccessSignalError, NonFiniteLossError, StepNFT

__all__ = ["StepNFT", "stepnft_loss", "MissingSuccessSignalError", "NonFiniteLossError"]
