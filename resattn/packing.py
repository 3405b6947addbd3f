"""Seed packing: K seeds of one variant trained in one process as one vectorised model.

At batch 64 these networks are far too small to fill a GPU: a step is thousands of small kernels,
bound by launches, not arithmetic. A pack stacks the K seeds' parameters and buffers along a new
leading dimension (``torch.func.stack_module_state``) and runs all of them at once with
``torch.vmap`` over ``torch.func.functional_call``: a convolution whose input and weight are both
batched becomes one grouped convolution of K groups, so a packed step launches about as many
kernels as one seed's. BatchNorm's running statistics are stacked buffers, updated in place per
seed. The loss is the sum of the K seeds' losses, so each seed's parameters get exactly its own
gradient, and the paper's SGD (every operation elementwise) is each seed's own optimiser.

Each seed keeps what its own run would have: its initialisation (each member is built by the
single-run CLI's parser after seeding with its seed, exactly as a run alone), its data order,
augmentation and label noise (each member's own data module, seeded by its seed), its metrics.
Everything outside the pack stays per seed: its test and probe run on its own weights, unstacked
into a plain network (:meth:`PackedNetwork.member_state`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state

from resattn.data import CIFARDataModule
from resattn.module import ResidualAttentionClassifier, compile_options, epoch_metrics, paper_optimizer
from resattn.network import ResidualAttentionNetwork

PREFIX = "m{}/"  # the metrics of member k are logged as m{k}/train/loss, ...


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
        object.__setattr__(self, "_template", copy.deepcopy(nets[0]).to("meta"))

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
        for split in ("train", "val"):
            setattr(self, f"{split}_metrics", nn.ModuleList(getattr(m, f"{split}_metrics") for m in members))
            setattr(self, f"{split}_losses", nn.ModuleList(getattr(m, f"{split}_loss") for m in members))
        if self.member_hparams.compile:
            self.net.compile(**compile_options(self.member_hparams.compile))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch: list, split: str) -> torch.Tensor:
        x = torch.stack([b[0] for b in batch])  # (K, B, C, H, W)
        y = torch.stack([b[1] for b in batch])  # (K, B)
        logits = self(x)  # (K, B, classes)
        losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(1)  # (K,)
        for k in range(self.size):
            getattr(self, f"{split}_metrics")[k].update(logits[k].detach(), y[k])
            getattr(self, f"{split}_losses")[k].update(losses[k].detach(), weight=y.shape[1])
        return losses

    def training_step(self, batch: list, batch_idx: int) -> dict:
        losses = self._step(batch, "train")
        return {"loss": losses.sum(), "losses": losses.detach()}  # the sum: each seed its own gradient

    def validation_step(self, batch: list, batch_idx: int) -> None:
        self._step(batch, "val")

    def _log_split(self, split: str) -> None:
        per_member = [
            epoch_metrics(loss, metrics)
            for loss, metrics in zip(getattr(self, f"{split}_losses"), getattr(self, f"{split}_metrics"))
        ]
        for k, values in enumerate(per_member):
            for name, value in values.items():
                self.log(f"{PREFIX.format(k)}{split}/{name}", value)
        live = torch.stack([torch.isfinite(values["loss"]) for values in per_member])  # on the device: no sync
        for name in per_member[0]:
            values = torch.stack([v[name] for v in per_member])
            self.log(f"{split}/{name}", torch.where(live, values, 0).sum() / live.sum().clamp(min=1))

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
