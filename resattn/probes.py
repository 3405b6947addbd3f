"""Probes of a trained network: per-stage mean absolute response (paper Fig. 4) and mask statistics.

Forward hooks accumulate on the model's device (no per-batch host sync); ``compute`` syncs the sums
across processes (a torchmetrics ``Metric``) and reduces them once.
"""

from __future__ import annotations

import functools
import warnings
from typing import Literal

import torch
from torch import nn
from torchmetrics import Metric

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


class ResponseProbe(Metric):
    """Accumulates, over the batches it sees, each stage output's mean |x| and each mask's statistics.

    The per-stage mean absolute response is the measure of the paper's Fig. 4 (the mean absolute
    response of each stage's output, plotted relative to stage 1), over the probed data.

    Use ``attach(net)`` before the forward passes to probe and ``compute()`` after; ``compute``
    detaches the hooks and returns plain floats:

    - ``stage{i}_mean_abs``: mean absolute response of stage i's output (Fig. 4, absolute);
    - ``stage{i}_rel``: the same divided by stage 1's (Fig. 4 as plotted in the paper);
    - ``{mask}_mean``, ``{mask}_std``, ``{mask}_low``, ``{mask}_high``: mean and std of the mask
      values, and the fraction below ``LOW`` and above ``HIGH``, per attention module.

    It is a torchmetrics ``Metric`` so that its result covers every process's data: under DDP each
    rank probes its own shard of the validation data, and ``compute()`` first sums the states over
    all ranks (``dist_reduce_fx="sum"``), so every rank gets the statistics of the whole data set,
    not those of its shard. Its states are sums (float64), shaped by the network bound in
    ``attach``: ``stage_sums`` (stages, 2: sum over images of the image's mean |output|, images)
    and ``mask_sums`` (masks, 5: sum of the values, of their squares, values below ``LOW``, above
    ``HIGH``, values). They are not persistent (in no ``state_dict``, so in no checkpoint), and the
    hooks add to them on the network's device without any host sync; ``reset()`` zeroes them.
    """

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._handles: list = []
        self._masks: list[str] = []
        self._bind(0, [], torch.device("cpu"))

    def _bind(self, stages: int, masks: list[str], device: torch.device) -> None:
        """(Re)create the states for ``stages`` stages and the masks ``masks``, zeroed."""
        self._masks = list(masks)
        zeros = functools.partial(torch.zeros, dtype=torch.float64, device=device)
        self.add_state("stage_sums", zeros(stages, 2), dist_reduce_fx="sum")
        self.add_state("mask_sums", zeros(len(masks), 5), dist_reduce_fx="sum")
        self.reset()

    def update(self, kind: Literal["stage", "mask"], index: int, output: torch.Tensor) -> None:
        """Add the output of stage ``index`` or of the mask ``index`` (0-based) for one batch."""
        output = output.detach()
        if kind == "stage":
            self.stage_sums[index, 0] += output.abs().mean((1, 2, 3), dtype=torch.float32).sum()
            self.stage_sums[index, 1] += output.shape[0]
        else:
            out = output.float()
            parts = (out.sum(), out.square().sum(), (out < LOW).sum(), (out > HIGH).sum())
            self.mask_sums[index, :4] += torch.stack([p.double() for p in parts])
            self.mask_sums[index, 4] += out.numel()

    def _hook(self, kind: Literal["stage", "mask"], index: int):
        def hook(module, inputs, output):
            self.update(kind, index, output)

        return hook

    def attach(self, net: ResidualAttentionNetwork) -> ResponseProbe:
        """Hook the stages and soft masks of ``net`` and start from zero; the states move to its device."""
        self.detach()
        device = next(net.parameters()).device
        self.to(device)
        masks = mask_names(net)
        self._bind(len(net.stages), list(masks), device)
        for i, stage in enumerate(net.stages):
            self._handles.append(stage.register_forward_hook(self._hook("stage", i)))
        for k, mask in enumerate(masks.values()):
            self._handles.append(mask.register_forward_hook(self._hook("mask", k)))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _wrap_compute(self, compute):
        """torchmetrics' compute (sync, reduce, cache), after removing the hooks; no warning when this
        process saw no batch (an unbound probe gives ``{}``, a rank with an empty shard the others' data)."""
        synced = super()._wrap_compute(compute)

        @functools.wraps(compute)
        def wrapped(*args, **kwargs):
            self.detach()
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="The ``compute`` method of metric", category=UserWarning)
                return synced(*args, **kwargs)

        return wrapped

    def compute(self) -> dict[str, float]:
        """The statistics over every batch seen by every process (the states are synced before)."""
        stages, masks = self.stage_sums.tolist(), self.mask_sums.tolist()
        if not stages or not stages[0][1]:
            return {}
        out = {}
        for i, (total, n) in enumerate(stages, start=1):
            out[f"stage{i}_mean_abs"] = total / n
        for i in range(1, len(stages) + 1):
            out[f"stage{i}_rel"] = out[f"stage{i}_mean_abs"] / out["stage1_mean_abs"]
        for name, (total, sq, low, high, n) in zip(self._masks, masks):
            mean = total / n
            out[f"{name}_mean"] = mean
            out[f"{name}_std"] = max(sq / n - mean * mean, 0.0) ** 0.5
            out[f"{name}_low"] = low / n
            out[f"{name}_high"] = high / n
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
