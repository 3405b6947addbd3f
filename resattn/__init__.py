"""resattn: the Residual Attention Network (Wang et al., CVPR 2017) with every switch of the paper."""

from resattn.attention import AttentionModule, SoftMaskBranch, normalize_mask
from resattn.config import ModelConfig
from resattn.network import ResidualAttentionNetwork, build_model

__all__ = [
    "AttentionModule",
    "ModelConfig",
    "ResidualAttentionNetwork",
    "SoftMaskBranch",
    "build_model",
    "normalize_mask",
]
__version__ = "0.1.0"
