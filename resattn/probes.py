"""Probes of a trained network: per-stage mean absolute response (paper Fig. 4) and mask statistics.

Forward hooks accumulate on the model's device (no per-batch host sync); ``compute`` reduces once.
"""

from __future__ import annotations

import torch
from torch import nn

from resattn.attention import AttentionModule
from resattn.network import ResidualAttentionNetwork

# A mask value below LOW or above HIGH counts as (nearly) closed or open.
LOW, HIGH = 0.05, 0.95


def mask_names(net: ResidualAttentionNetwork) -> dict[str, nn.Module]:
    """Short names ``s<stage>m<module>`` (1-based) for every soft mask branch."""
    names = {}
    for s, stage in enumerate(net.stages, start=1):
        masks = [m.mask for m in stage.modules() if isinstance(m, AttentionModule) and m.mask is not None]
        names.update({f"s{s}m{k}": mask for k, mask in enumerate(masks, start=1)})
    return names


class ResponseProbe:
    """Accumulates, over the batches it sees, each stage output's mean |x| and each mask's statistics.

    Use ``attach(net)`` before the forward passes to probe and ``compute()`` after; ``compute``
    detaches the hooks and returns plain floats:

    - ``stage{i}_mean_abs``: mean absolute response of stage i's output (Fig. 4, absolute);
    - ``stage{i}_rel``: the same divided by stage 1's (Fig. 4 as plotted in the paper);
    - ``{mask}_mean``, ``{mask}_std``, ``{mask}_low``, ``{mask}_high``: mean and std of the mask
      values, and the fraction below ``LOW`` and above ``HIGH``, per attention module.
    """

    def __init__(self) -> None:
        self._handles: list = []
        self._sums: dict[str, torch.Tensor] = {}

    def _add(self, key: str, value: torch.Tensor) -> None:
        value = value.detach().double()
        self._sums[key] = self._sums[key] + value if key in self._sums else value

    def _stage_hook(self, i: int):
        def hook(module, inputs, output):
            self._add(f"stage{i}_abs", output.abs().mean((1, 2, 3)).sum())
            self._add(f"stage{i}_n", torch.tensor(output.shape[0], device=output.device))

        return hook

    def _mask_hook(self, name: str):
        def hook(module, inputs, output):
            out = output.detach().float()
            self._add(f"{name}_sum", out.sum())
            self._add(f"{name}_sq", out.square().sum())
            self._add(f"{name}_low", (out < LOW).sum())
            self._add(f"{name}_high", (out > HIGH).sum())
            self._add(f"{name}_n", torch.tensor(out.numel(), device=out.device))

        return hook

    def attach(self, net: ResidualAttentionNetwork) -> ResponseProbe:
        self.detach()
        self._sums = {}
        self._stages = len(net.stages)
        masks = mask_names(net)
        self._masks = list(masks)
        for i, stage in enumerate(net.stages, start=1):
            self._handles.append(stage.register_forward_hook(self._stage_hook(i)))
        for name, mask in masks.items():
            self._handles.append(mask.register_forward_hook(self._mask_hook(name)))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def compute(self) -> dict[str, float]:
        self.detach()
        if not self._sums:
            return {}
        sums = {k: v.item() for k, v in self._sums.items()}
        out = {}
        for i in range(1, self._stages + 1):
            out[f"stage{i}_mean_abs"] = sums[f"stage{i}_abs"] / sums[f"stage{i}_n"]
        for i in range(1, self._stages + 1):
            out[f"stage{i}_rel"] = out[f"stage{i}_mean_abs"] / out["stage1_mean_abs"]
        for name in self._masks:
            n = sums[f"{name}_n"]
            mean = sums[f"{name}_sum"] / n
            out[f"{name}_mean"] = mean
            out[f"{name}_std"] = max(sums[f"{name}_sq"] / n - mean * mean, 0.0) ** 0.5
            out[f"{name}_low"] = sums[f"{name}_low"] / n
            out[f"{name}_high"] = sums[f"{name}_high"] / n
        return out


@torch.no_grad()
def mask_maps(net: ResidualAttentionNetwork, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each soft mask's output for the batch ``x``, averaged over channels: name -> (N, H, W)."""
    maps, handles = {}, []
    for name, mask in mask_names(net).items():
        handles.append(mask.register_forward_hook(lambda m, i, o, name=name: maps.__setitem__(name, o.mean(1))))
    was_training = net.training
    net.eval()
    try:
        net(x)
    finally:
        net.train(was_training)
        for handle in handles:
            handle.remove()
    return {k: v.float().cpu() for k, v in maps.items()}
