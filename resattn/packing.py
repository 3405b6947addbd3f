"""Seed packing: K seeds of one variant trained in one process as one vectorised model.

At batch 64 these networks are far too small to fill a GPU: a step is thousands of small kernels,
bound by launches, not arithmetic. A pack stacks the K seeds' parameters and buffers along a new
leading dimension (``torch.func.stack_module_state``) and runs all of them at once with
``torch.vmap`` over ``torch.func.functional_call``: a convolution whose input and weight are both
batched becomes one grouped convolution of K groups, so a packed step launches about as many
kernels as one seed's. BatchNorm's running statistics are stacked buffers, updated in place per
seed. The pack runs a copy of the network made for vmap (:func:`pack_template`): convolutions and
linear layers that follow autocast, BatchNorm that takes bf16 input, ReLU out of place, the global
average pool as a mean. The loss is the sum of the K seeds' losses, so each seed's parameters get exactly its own
gradient, and the paper's SGD (every operation elementwise) is each seed's own optimiser.

Each seed keeps what its own run would have: its initialisation (each member is built by the
single-run CLI's parser after seeding with its seed, exactly as a run alone), its data order,
augmentation and label noise (each member's own data module, seeded by its seed), its metrics.
Everything outside the pack stays per seed: its test and probe run on its own weights, unstacked
into a plain network (:meth:`PackedNetwork.member_state`).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state
from torchmetrics import Metric

from resattn.data import CIFARDataModule
from resattn.module import ResidualAttentionClassifier, compile_options, error_metrics, paper_optimizer
from resattn.network import ResidualAttentionNetwork

PREFIX = "m{}/"  # the metrics of member k are logged as m{k}/train/loss, ...


def autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype autocast runs matmuls and convolutions in on ``x``'s device, None when it is off."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None


class PackConv2d(nn.Conv2d):
    """A convolution that follows autocast inside vmap. Autocast casts ``conv2d``, but under vmap the
    convolution reaches the kernel through its batch rule, past autocast, and runs in fp32 (measured:
    every activation of a bf16-mixed pack was fp32). So the input, weight and bias are cast to the
    autocast dtype here, as autocast does for a network alone."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = autocast_dtype(x)
        if dtype is None:
            return self._conv_forward(x, self.weight, self.bias)
        bias = None if self.bias is None else self.bias.to(dtype)
        return self._conv_forward(x.to(dtype), self.weight.to(dtype), bias)


class PackConv1d(nn.Conv1d):
    """:class:`PackConv2d` for 1-d convolutions (ECA's)."""

    forward = PackConv2d.forward


class PackLinear(nn.Linear):
    """A linear layer that follows autocast inside vmap (see :class:`PackConv2d`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = autocast_dtype(x)
        if dtype is None:
            return F.linear(x, self.weight, self.bias)
        return F.linear(x.to(dtype), self.weight.to(dtype), None if self.bias is None else self.bias.to(dtype))


PACK_LAYERS = {nn.Conv1d: PackConv1d, nn.Conv2d: PackConv2d, nn.Linear: PackLinear}


def in_statistics_dtype(bn: nn.BatchNorm2d, forward, x: torch.Tensor) -> torch.Tensor:
    """``forward(x)`` of BatchNorm ``bn`` with ``x`` cast to the dtype of its running statistics, the
    output cast back to ``x``'s dtype."""
    stats = bn.weight.dtype if bn.running_mean is None else bn.running_mean.dtype
    return forward(x) if x.dtype == stats else forward(x.to(stats)).to(x.dtype)


class PackBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm (Ioffe & Szegedy 2015, Algorithm 1) as a pack runs it: normalised in the dtype of its
    running statistics (fp32), the output in the input's dtype. A single network's BatchNorm kernel
    takes bf16 input with fp32 statistics (bf16 autocast); vmap's batch rule for it does not
    ("expected scalar type BFloat16 but found Float"), so the input is cast up first: exact for bf16,
    and the statistics stay in fp32 as a single network's do. Its state is BatchNorm2d's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return in_statistics_dtype(self, super().forward, x)


@functools.cache
def pack_batchnorm(cls: type[nn.BatchNorm2d]) -> type[nn.BatchNorm2d]:
    """:class:`PackBatchNorm2d` for BatchNorm2d; for a subclass (timm's BatchNormAct2d, in CBAM's
    spatial gate, refused bf16 input in a pack too), a subclass of it made here with the same cast."""
    if cls is nn.BatchNorm2d:
        return PackBatchNorm2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return in_statistics_dtype(self, functools.partial(cls.forward, self), x)

    return type(f"Pack{cls.__name__}", (cls,), {"forward": forward})


class GlobalAvgPool(nn.Module):
    """``AdaptiveAvgPool2d(1)`` as a mean over the spatial axes: the same values, without the
    ``as_strided_`` that vmap runs as a per-member loop on channels_last input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((-2, -1), keepdim=True)


def pack_template(net: nn.Module) -> nn.Module:
    """A stateless copy of ``net`` (on the meta device) for :class:`PackedNetwork` to run under vmap:
    convolutions and linear layers that follow autocast (:class:`PackConv2d`), BatchNorm2d and its
    subclasses cast to their statistics' dtype (:func:`pack_batchnorm`), out-of-place ReLU (in-place
    ReLU makes vmap copy), :class:`GlobalAvgPool` for a 1x1 adaptive average pool. Parameter and
    buffer names are ``net``'s."""
    template = copy.deepcopy(net).to("meta")
    for parent in template.modules():
        for name, child in parent.named_children():
            if type(child) in PACK_LAYERS:
                child.__class__ = PACK_LAYERS[type(child)]  # the same state, another forward
            elif isinstance(child, nn.BatchNorm2d):
                child.__class__ = pack_batchnorm(type(child))
            elif isinstance(child, nn.ReLU):
                child.inplace = False
            elif isinstance(child, nn.AdaptiveAvgPool2d) and child.output_size in (1, (1, 1)):
                setattr(parent, name, GlobalAvgPool())
    return template


class PackMetrics(Metric):
    """The epoch metrics of the K members of a pack, updated once per step for all of them: the
    summed loss and top-1 / top-5 hits per member (states of shape (K,), summed over devices,
    checkpointed). Hand-written on torchmetrics' Metric because its classification metrics take one
    member per update: K updates per step, Python work that grows with K. No host read."""

    full_state_update = False

    def __init__(self, members: int, num_classes: int) -> None:
        super().__init__()
        self.top = min(5, num_classes)
        for name in ("loss", "hits1", "hits5", "count"):
            self.add_state(name, torch.zeros(members), dist_reduce_fx="sum", persistent=True)

    def update(self, logits: torch.Tensor, target: torch.Tensor, losses: torch.Tensor) -> None:
        """``logits`` (K, B, classes), ``target`` (K, B), per-image ``losses`` (K, B)."""
        hits = logits.topk(self.top, dim=-1).indices == target.unsqueeze(-1)  # (K, B, top)
        self.loss += losses.sum(1)
        self.hits1 += hits[..., 0].sum(1)
        self.hits5 += hits.any(-1).sum(1)
        self.count += target.shape[1]

    def compute(self) -> dict[str, torch.Tensor]:
        """``loss``, ``acc1``, ``acc5``, ``err1``, ``err5`` of each member, each of shape (K,)."""
        count = self.count.clamp(min=1)
        return {"loss": self.loss / count, **error_metrics({"acc1": self.hits1 / count, "acc5": self.hits5 / count})}


class PackedNetwork(nn.Module):
    """K networks of one architecture as one module: ``forward`` takes (K, B, C, H, W), one batch
    per member, and returns (K, B, classes)."""

    def __init__(self, nets: list[ResidualAttentionNetwork]) -> None:
        super().__init__()
        params, buffers = stack_module_state(nets)
        self.size, self.config = len(nets), nets[0].config
        self._param_names, self._buffer_names = list(params), list(buffers)
        self.stacked = nn.ParameterList(nn.Parameter(params[n].detach().clone()) for n in self._param_names)
        for i, name in enumerate(self._buffer_names):
            self.register_buffer(f"buffer{i}", buffers[name].clone())
        # the stateless template: no memory of its own, kept out of state_dict, .to() and parameters()
        object.__setattr__(self, "_template", pack_template(nets[0]))

    def stacked_buffers(self) -> list[torch.Tensor]:
        return [getattr(self, f"buffer{i}") for i in range(len(self._buffer_names))]

    def _one(self, params: tuple, buffers: tuple, x: torch.Tensor) -> torch.Tensor:
        state = {**dict(zip(self._param_names, params)), **dict(zip(self._buffer_names, buffers))}
        return functional_call(self._template, state, (x,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # BatchNorm: batch statistics (and running updates) or the running ones. Read here, not set in
        # train(): Lightning restores a module's mode by setting ``training``, without calling train().
        if self._template.training != self.training:
            self._template.train(self.training)
        return torch.vmap(self._one, randomness="error")(tuple(self.stacked), tuple(self.stacked_buffers()), x)

    def member_state(self, k: int) -> dict[str, torch.Tensor]:
        """The ``state_dict`` of member ``k`` as a plain network's."""
        state = {n: p[k].detach().clone() for n, p in zip(self._param_names, self.stacked)}
        state.update({n: b[k].clone() for n, b in zip(self._buffer_names, self.stacked_buffers())})
        return state


class PackedClassifier(L.LightningModule):
    """The LightningModule of a pack: the members' paper protocol (loss, metrics, optimiser and
    schedule from their hyperparameters, which are the same but for the seeds) on a
    :class:`PackedNetwork`. Each member's epoch metrics are logged as ``m{k}/train/loss`` ..., and
    their mean over the members still training as ``train/loss`` ... (for progress displays)."""

    def __init__(self, members: list[ResidualAttentionClassifier]) -> None:
        super().__init__()
        self.member_hparams = members[0].hparams
        self.net = PackedNetwork([m.net for m in members])
        self.size = len(members)
        self.train_metrics, self.val_metrics = (PackMetrics(self.size, self.member_hparams.num_classes) for _ in "tv")

    def on_fit_start(self) -> None:
        """The pack compiles as a run alone does (``model.compile``); its members, tested one by one
        after training, run uncompiled."""
        if self.member_hparams.compile:
            self.net.compile(**compile_options(self.member_hparams.compile))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch: list, split: str) -> torch.Tensor:
        x = torch.stack([b[0] for b in batch])  # (K, B, C, H, W)
        y = torch.stack([b[1] for b in batch])  # (K, B)
        logits = self(x)  # (K, B, classes)
        losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape)  # (K, B)
        getattr(self, f"{split}_metrics").update(logits.detach(), y, losses.detach())
        return losses.mean(1)  # (K,)

    def training_step(self, batch: list, batch_idx: int) -> dict:
        losses = self._step(batch, "train")
        return {"loss": losses.sum(), "losses": losses.detach()}  # the sum: each seed its own gradient

    def validation_step(self, batch: list, batch_idx: int) -> None:
        self._step(batch, "val")

    def _log_split(self, split: str) -> None:
        metrics = getattr(self, f"{split}_metrics")
        values = metrics.compute()  # each (K,)
        metrics.reset()
        live = torch.isfinite(values["loss"])  # on the device: no sync
        for name, value in values.items():
            for k in range(self.size):
                self.log(f"{PREFIX.format(k)}{split}/{name}", value[k])
            self.log(f"{split}/{name}", torch.where(live, value, 0).sum() / live.sum().clamp(min=1))

    def on_train_epoch_end(self) -> None:
        self._log_split("train")
        lr = self.optimizers().param_groups[0]["lr"]
        for k in range(self.size):
            self.log(f"{PREFIX.format(k)}train/lr", lr)
        self.log("train/lr", lr)

    def on_validation_epoch_end(self) -> None:
        self._log_split("val")

    def configure_optimizers(self):
        return paper_optimizer(self.parameters(), self.member_hparams, self.trainer.estimated_stepping_batches)


class ZippedBatches:
    """The batches of K members' loaders, one list of K batches per step (the members' loaders are
    equally long: the same data sizes)."""

    def __init__(self, loaders: list) -> None:
        self.loaders = loaders

    def __len__(self) -> int:
        return min(len(loader) for loader in self.loaders)

    def __iter__(self) -> Iterator[list]:
        return (list(batches) for batches in zip(*self.loaders))


class PackedData(L.LightningDataModule):
    """The members' data modules as one: each keeps its own seed (order, augmentation, subsets and
    label noise), and reads its position in the epoch from the pack's trainer, so a pack resumes
    mid-epoch exactly as a run alone does."""

    def __init__(self, members: list[CIFARDataModule]) -> None:
        super().__init__()
        self.members = members
        self.save_hyperparameters({"batch_size": members[0].hparams.batch_size, "members": len(members)})

    def prepare_data(self) -> None:
        for data in self.members:
            data.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        for data in self.members:
            data.trainer = self.trainer
            data.setup(stage)

    def train_dataloader(self) -> ZippedBatches:
        return ZippedBatches([data.train_dataloader() for data in self.members])

    def val_dataloader(self) -> ZippedBatches:
        return ZippedBatches([data.val_dataloader() for data in self.members])
