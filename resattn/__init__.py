"""resattn: the Residual Attention Network (Wang et al., CVPR 2017) with every switch of the paper.

The package root imports no torch: the model names below load on first use (PEP 562), so that the
study command answers bad input at once.
"""

from importlib import import_module

_EXPORTS = {
    "AttentionModule": "resattn.attention",
    "SoftMaskBranch": "resattn.attention",
    "normalize_mask": "resattn.attention",
    "ModelConfig": "resattn.config",
    "ResidualAttentionNetwork": "resattn.network",
    "build_model": "resattn.network",
    "load_run": "resattn.trained",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'resattn' has no attribute {name!r}")
