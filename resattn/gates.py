"""Gate blocks that came after the paper, from timm with its defaults, and their real sizes.

Each block returns its input times a sigmoid gate g computed from that input, ``x * g(x)``:
squeeze-and-excitation (Hu et al. 2018), CBAM (Woo et al. 2018), ECA (Wang et al. 2020). The
network places them in two ways: as the mask of each attention module (``attention_block``,
:class:`resattn.attention.AttentionModule`: H = T + g(T) * T, not their papers' placement), or on
the branch of every trunk residual unit before the identity add, as their papers place them
(``unit_gate``, :class:`resattn.layers.ResidualUnit`).

timm's defaults are not "reduction 16" at this project's widths: SE's hidden units are C/16
rounded to a multiple of 8, at least 8 (8 / 8 / 16 in stages 1 / 2 / 3 at width 1.0; 8 / 8 / 8 at
width 0.25, a reduction of 2 / 4 / 8); CBAM's channel MLP has round(C/16) units, at least 1
(4 / 8 / 16 at width 1.0; 1 / 2 / 4 at width 0.25); ECA's kernel is int((log2 C + 1) / 2) made odd,
at least 3 (3 / 5 / 5 at width 1.0; 3 / 3 / 3 at width 0.25). :func:`gate_sizes` reads them off a
built block; ``python -m resattn summary`` prints them per stage.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def _se(channels: int) -> nn.Module:
    from timm.layers.squeeze_excite import SEModule

    return SEModule(channels)  # pool -> 1x1 conv C -> hidden (ReLU) -> 1x1 conv hidden -> C -> sigmoid


def _cbam(channels: int) -> nn.Module:
    from timm.layers.cbam import CbamModule

    return CbamModule(channels)  # channel gate (MLP on avg and max pools), then a 7x7 spatial gate


def _eca(channels: int) -> nn.Module:
    from timm.layers.eca import EcaModule

    return EcaModule(channels=channels)  # pool -> 1-D conv across channels, kernel from log2 C -> sigmoid


# Keyed by the values of resattn.config.Gate, where the names are declared (a test holds them equal).
GATES: dict[str, Callable[[int], nn.Module]] = {"se": _se, "cbam": _cbam, "eca": _eca}
UNIT_GATES: dict[str, Callable[[int], nn.Module] | None] = {"none": None, **GATES}  # unit_gate


def gate_sizes(block: nn.Module) -> dict[str, int]:
    """What sizes a built gate block: SE's hidden units, CBAM's channel-MLP bottleneck and spatial
    kernel, or ECA's kernel size.

    Raises:
        TypeError: ``block`` is none of :data:`GATES`' blocks.
    """
    from timm.layers.cbam import CbamModule
    from timm.layers.eca import EcaModule
    from timm.layers.squeeze_excite import SEModule

    if isinstance(block, SEModule):
        return {"se_hidden": block.fc1.out_channels}
    if isinstance(block, CbamModule):
        return {
            "cbam_mlp_hidden": block.channel.fc1.out_channels,
            "cbam_spatial_kernel": block.spatial.conv.conv.kernel_size[0],
        }
    if isinstance(block, EcaModule):
        return {"eca_kernel": block.conv.kernel_size[0]}
    raise TypeError(f"{type(block).__name__} is not a gate block; gate blocks: {', '.join(GATES)}.")
