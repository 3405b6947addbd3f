"""Probes of a trained network: per-stage and per-module mean absolute response (paper Fig. 4) and
mask statistics.

Forward hooks accumulate on the model's device (no per-batch host sync); ``compute`` syncs the sums
across processes (a torchmetrics ``Metric``) and reduces them once.
"""

from __future__ import annotations

import functools
import warnings
from typing import Literal

import torch
from torchmetrics import Metric

from resattn.attention import AttentionModule, SoftMaskBranch
from resattn.network import ResidualAttentionNetwork

# Mask values are summarised by quantiles read off a histogram over [0, 1] (f1 and f3 lie in (0, 1);
# f2 lies in [-1, 1] with |M| near 1/sqrt(C), so its histogram is of |M|): a histogram is a sum, so
# it merges across DDP ranks, and BINS bins give quantiles to 1/BINS.
BINS = 1000
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def module_names(net: ResidualAttentionNetwork) -> dict[str, AttentionModule]:
    """Short names ``s<stage>m<module>`` (1-based) for every attention module (with a mask or not)."""
    names = {}
    for s, stage in enumerate(net.stages, start=1):
        modules = [m for m in stage.modules() if isinstance(m, AttentionModule)]
        names.update({f"s{s}m{k}": module for k, module in enumerate(modules, start=1)})
    return names


def mask_names(net: ResidualAttentionNetwork) -> dict[str, SoftMaskBranch]:
    """The soft mask branch of every attention module that has one, by its module's name."""
    return {name: m.mask for name, m in module_names(net).items() if m.mask is not None}


def quantile_key(q: float) -> str:
    return f"q{round(100 * q):02d}"


def histogram_quantiles(counts: list[float], quantiles=QUANTILES) -> dict[str, float]:
    """Quantiles of values in [0, 1] from their histogram of ``len(counts)`` equal bins (linear within a bin)."""
    total, width = sum(counts), 1.0 / len(counts)
    out, cumulative, i = {}, 0.0, 0
    for q in quantiles:
        target = q * total
        while i < len(counts) - 1 and cumulative + counts[i] < target:
            cumulative += counts[i]
            i += 1
        inside = (target - cumulative) / counts[i] if counts[i] else 0.0
        out[quantile_key(q)] = (i + min(max(inside, 0.0), 1.0)) * width
    return out


class ResponseProbe(Metric):
    """Accumulates, over the batches it sees, each stage's and each attention module's mean |output|
    and each soft mask's value distribution.

    The per-stage mean absolute response is the measure of the paper's Fig. 4 (the mean absolute
    response of each stage's output, plotted relative to stage 1), over the probed data; the same
    after each attention module's fusion (H = (1 + M) T, M T, or T without a mask: the input of its
    post-processing units) shows where a response collapses, module by module.

    Use ``attach(net)`` before the forward passes to probe and ``compute()`` after; ``compute``
    detaches the hooks and returns plain floats:

    - ``stage{i}_mean_abs``: mean absolute response of stage i's output (Fig. 4, absolute);
    - ``stage{i}_rel``: the same divided by stage 1's (Fig. 4 as plotted in the paper);
    - ``{module}_fused_abs`` / ``{module}_fused_rel``: mean |H| after the module's fusion, absolute
      and relative to stage 1's output;
    - ``{mask}_mean``, ``{mask}_std``: mean and std of the mask values M;
    - ``{mask}_q05`` ... ``{mask}_q95``: quantiles of M, or of |M| for f2 (channel attention, whose
      values lie in [-1, 1] around ±1/sqrt(C)), and ``s{i}_mask_q05`` ...: the same over all the
      masks of stage i.

    It is a torchmetrics ``Metric`` so that its result covers every process's data: under DDP each
    rank probes its own shard of the data, and ``compute()`` first sums the states over all ranks
    (``dist_reduce_fx="sum"``), so every rank gets the statistics of the whole data set, not those
    of its shard. Its states are sums (float64), shaped by the network bound in ``attach``:
    ``stage_sums`` (stages, 2) and ``fused_sums`` (modules, 2): the sum over images of each image's
    mean |output|, and the images; ``mask_sums`` (masks, 3): the sum of the values, of their
    squares, and the values; ``mask_hist`` (masks, ``BINS``): the histogram over [0, 1]. They are
    not persistent (in no ``state_dict``, so in no checkpoint), and the hooks add to them on the
    network's device without any host sync; ``reset()`` zeroes them.
    """

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._handles: list = []
        self._fusions: list[str] = []
        self._mask_list: list[str] = []
        self._absolute: list[bool] = []  # per mask: histogram of |M| (f2) rather than M
        self._bind(0, [], {}, torch.device("cpu"))

    def _bind(self, stages: int, modules: list[str], masks: dict[str, SoftMaskBranch], device) -> None:
        """(Re)create the states for ``stages`` stages, the attention ``modules`` and their ``masks``, zeroed."""
        self._fusions, self._mask_list = list(modules), list(masks)
        self._absolute = [m.normalization == "channel" for m in masks.values()]
        zeros = functools.partial(torch.zeros, dtype=torch.float64, device=device)
        self.add_state("stage_sums", zeros(stages, 2), dist_reduce_fx="sum")
        self.add_state("fused_sums", zeros(len(modules), 2), dist_reduce_fx="sum")
        self.add_state("mask_sums", zeros(len(masks), 3), dist_reduce_fx="sum")
        self.add_state("mask_hist", zeros(len(masks), BINS), dist_reduce_fx="sum")
        self.reset()

    def update(self, kind: Literal["stage", "fused", "mask"], index: int, output: torch.Tensor) -> None:
        """Add the output of stage ``index``, the fusion of module ``index`` or the mask ``index``
        (0-based) for one batch."""
        output = output.detach()
        if kind in ("stage", "fused"):
            sums = self.stage_sums if kind == "stage" else self.fused_sums
            sums[index, 0] += output.abs().mean((1, 2, 3), dtype=torch.float32).sum()
            sums[index, 1] += output.shape[0]
        else:
            out = output.float()
            self.mask_sums[index, :2] += torch.stack(
                [out.sum(dtype=torch.float64), out.square().sum(dtype=torch.float64)]
            )
            self.mask_sums[index, 2] += out.numel()
            values = out.abs() if self._absolute[index] else out
            self.mask_hist[index] += torch.histc(values, BINS, 0.0, 1.0).double()

    def _hook(self, kind: Literal["stage", "mask"], index: int):
        def hook(module, inputs, output):
            self.update(kind, index, output)

        return hook

    def _pre_hook(self, index: int):
        def hook(module, inputs):
            self.update("fused", index, inputs[0])

        return hook

    def attach(self, net: ResidualAttentionNetwork) -> ResponseProbe:
        """Hook the stages, attention modules and soft masks of ``net`` and start from zero; the
        states move to its device."""
        self.detach()
        device = next(net.parameters()).device
        self.to(device)
        modules, masks = module_names(net), mask_names(net)
        self._bind(len(net.stages), list(modules), masks, device)
        for i, stage in enumerate(net.stages):
            self._handles.append(stage.register_forward_hook(self._hook("stage", i)))
        for k, module in enumerate(modules.values()):  # H is the input of the post-processing units
            self._handles.append(module.post.register_forward_pre_hook(self._pre_hook(k)))
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
        stages = self.stage_sums.tolist()
        if not stages or not stages[0][1]:
            return {}
        out = {}
        for i, (total, n) in enumerate(stages, start=1):
            out[f"stage{i}_mean_abs"] = total / n
        first = out["stage1_mean_abs"]
        for i in range(1, len(stages) + 1):
            out[f"stage{i}_rel"] = out[f"stage{i}_mean_abs"] / first
        for name, (total, n) in zip(self._fusions, self.fused_sums.tolist()):
            out[f"{name}_fused_abs"] = total / n
            out[f"{name}_fused_rel"] = total / n / first
        hist = self.mask_hist.tolist()
        for name, (total, sq, n), counts in zip(self._mask_list, self.mask_sums.tolist(), hist):
            mean = total / n
            out[f"{name}_mean"] = mean
            out[f"{name}_std"] = max(sq / n - mean * mean, 0.0) ** 0.5
            out.update({f"{name}_{k}": v for k, v in histogram_quantiles(counts).items()})
        for i in range(1, len(stages) + 1):
            pooled = [c for name, c in zip(self._mask_list, hist) if name.startswith(f"s{i}m")]
            if pooled:
                summed = [sum(col) for col in zip(*pooled)]
                out.update({f"s{i}_mask_{k}": v for k, v in histogram_quantiles(summed).items()})
        return out


@torch.no_grad()
def mask_outputs(net: ResidualAttentionNetwork, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each soft mask's output M for the batch ``x`` (eval mode): name -> (N, C, H, W), float, on the CPU.
    ``x`` is moved to the network's device and parameter dtype (a ``64-true`` run holds float64 weights)."""
    weight = next(net.parameters())
    x = x.to(weight.device, weight.dtype)
    maps, handles = {}, []
    for name, mask in mask_names(net).items():
        handles.append(mask.register_forward_hook(lambda m, i, o, name=name: maps.__setitem__(name, o)))
    was_training = net.training
    net.eval()
    try:
        net(x)
    finally:
        net.train(was_training)
        for handle in handles:
            handle.remove()
    return {k: v.float().cpu() for k, v in maps.items()}


def mask_maps(net: ResidualAttentionNetwork, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each soft mask's output for the batch ``x``, averaged over channels: name -> (N, H, W)."""
    return {k: v.mean(1) for k, v in mask_outputs(net, x).items()}
