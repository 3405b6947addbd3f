"""The LightningModule: loss, metrics, the paper's optimiser and schedule, probes."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from resattn.config import (
    AttentionBlock,
    AttentionLearning,
    CompileMode,
    Family,
    MaskStructure,
    ModelConfig,
    Normalization,
    UnitGate,
    check_network,
)
from resattn.network import build_model
from resattn.probes import ResponseProbe


class ResidualAttentionClassifier(L.LightningModule):
    """Trains a Residual Attention Network with the paper's CIFAR protocol (PAPER.md section 5).

    Nesterov SGD (momentum 0.9, weight decay 1e-4); the learning rate is divided by 10 at 40% and
    60% of the total optimiser steps (the paper's 64k and 96k of 160k). Metrics are logged per
    epoch as ``{train,val,test}/{loss,acc1,acc5,err1,err5}``: accuracies as fractions (torchmetrics'),
    errors in percent (the paper's tables); probes (``probe/...``) run on the
    validation data after each epoch, and on the test data when the final weights are tested. The
    test error is that of the weights at the end of training: no checkpoint is selected on test or
    validation data.

    Each argument's allowed values are declared in :data:`resattn.config.MODEL_SETTINGS`. The
    network's settings are :class:`resattn.ModelConfig`'s fields, with its defaults, spelled out
    flat because LightningCLI reads this signature for the ``model.*`` flags (and the study runner
    its defaults, which a run's config and id leave out); they become one ``ModelConfig``
    (``self.config``, :meth:`~resattn.ModelConfig.from_hparams`), passed whole to the network.

    Args:
        depth, attention_learning, mask_structure, normalization, attention_block, unit_gate, family,
            num_classes, width, p, t, r: the network, see :class:`resattn.ModelConfig`.
        lr: initial learning rate.
        momentum: SGD momentum.
        weight_decay: L2 weight decay on every parameter.
        nesterov: Nesterov momentum.
        lr_milestones: fractions of the total steps at which the learning rate is multiplied by
            ``lr_gamma``.
        lr_gamma: the factor of each decay.
        probes: log the Fig. 4 response probe and mask statistics after each validation epoch, and
            keep those of the tested weights (``probe_results``, on the test split).
        channels_last: run the network in channels_last memory format (measured faster on this
            project's CPU machine: 81 vs 53 img/s for Attention-56, see docs/performance.md).
        compile: ``torch.compile`` the network when fitting starts (in place; checkpoints keep their
            keys): ``true`` (inductor's default mode) or a mode: ``reduce-overhead`` (CUDA graphs:
            the launch-bound step on a GPU replayed as one graph), ``max-autotune``. Its compilation
            happens in the first steps. A model that is only tested or used runs uncompiled: one
            pass over the test set does not repay a compilation (minutes on a CPU).
    """

    def __init__(
        self,
        depth: int = ModelConfig.depth,
        attention_learning: AttentionLearning = ModelConfig.attention_learning,
        mask_structure: MaskStructure = ModelConfig.mask_structure,
        normalization: Normalization = ModelConfig.normalization,
        attention_block: AttentionBlock = ModelConfig.attention_block,
        unit_gate: UnitGate = ModelConfig.unit_gate,
        family: Family = ModelConfig.family,
        num_classes: int = ModelConfig.num_classes,
        width: float = ModelConfig.width,
        p: int | None = ModelConfig.p,
        t: int | None = ModelConfig.t,
        r: int | None = ModelConfig.r,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        nesterov: bool = True,
        lr_milestones: tuple[float, ...] = (0.4, 0.6),
        lr_gamma: float = 0.1,
        probes: bool = True,
        channels_last: bool = True,
        compile: bool | CompileMode = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_network(dict(self.hparams))  # every argument within its declared range (MODEL_SETTINGS)
        self.config = ModelConfig.from_hparams(self.hparams)
        self.net = build_model(self.config)
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        (
            (self.train_metrics, self.train_loss),
            (self.val_metrics, self.val_loss),
            (self.test_metrics, self.test_loss),
        ) = (classification_metrics(num_classes) for _ in range(3))
        # a torchmetrics Metric: its sums are synced over the ranks in compute(), and are in no checkpoint
        self.probe = ResponseProbe()
        self.probe_results: dict[str, float] = {}  # of the last test: the final weights, on the test split
        # Of the last test, in the test split's order: whether each image's top-1 prediction was wrong
        # (the per-image outcomes behind the seeds-and-images intervals of resattn.report.stats).
        self.test_wrong: torch.Tensor | None = None
        self._test_wrong: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def _metrics(self, split: str) -> MetricCollection:
        return getattr(self, f"{split}_metrics")

    def _step(self, batch, split: str, keep_logits: bool = False) -> torch.Tensor:
        """The mean loss of a batch, its metrics updated; the logits instead with ``keep_logits``."""
        x, y = batch
        logits = self(x)
        losses = F.cross_entropy(logits, y, reduction="none")  # per image: the epoch mean weighs every image
        self._metrics(split).update(logits.detach(), y)
        getattr(self, f"{split}_loss").update(losses.detach())
        return logits.detach() if keep_logits else losses.mean()

    def _log_metrics(self, split: str) -> None:
        """Epoch metrics of a split (averaged over every device's batches), then a fresh start."""
        for name, value in epoch_metrics(getattr(self, f"{split}_loss"), self._metrics(split)).items():
            self.log(f"{split}/{name}", value)

    def on_fit_start(self) -> None:
        if self.hparams.compile:
            self.net.compile(**compile_options(self.hparams.compile))

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def on_train_epoch_end(self) -> None:
        self._log_metrics("train")
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])

    def on_validation_epoch_start(self) -> None:
        if self.hparams.probes:
            self.probe.attach(self.net)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")
        if self.hparams.probes:  # over every rank's batches: the same on each rank, so no sync_dist
            self.log_dict({f"probe/{k}": v for k, v in self.probe.compute().items()}, sync_dist=False)

    def on_test_epoch_start(self) -> None:
        self._test_wrong = []
        if self.hparams.probes:
            self.probe.attach(self.net)

    def test_step(self, batch, batch_idx: int) -> None:
        logits = self._step(batch, "test", keep_logits=True)
        self._test_wrong.append(logits.argmax(1) != batch[1])  # one host read per test, at its end

    def on_test_epoch_end(self) -> None:
        self.test_wrong = torch.cat(self._test_wrong).cpu() if self._test_wrong else None
        self._test_wrong = []
        self._log_metrics("test")
        if self.hparams.probes:  # the probe of the weights tested: Fig. 4 on the final weights
            self.probe_results = self.probe.compute()

    def configure_optimizers(self):
        return paper_optimizer(self.parameters(), self.hparams, self.trainer.estimated_stepping_batches)


def compile_options(compile: bool | str) -> dict:
    """``torch.compile`` keyword arguments of the ``compile`` setting."""
    return {} if compile is True else {"mode": compile}


def classification_metrics(num_classes: int) -> tuple[MetricCollection, MeanMetric]:
    """Top-1 / top-5 accuracy and the mean loss (updated with each image's loss) of one split, with
    their states checkpointed (a resumed epoch counts every batch). No input validation: its checks
    read the labels back to the host at every step."""
    metrics = MetricCollection(
        {
            "acc1": MulticlassAccuracy(num_classes, top_k=1, average="micro", validate_args=False),
            "acc5": MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro", validate_args=False),
        }
    )
    metrics.persistent(True)
    loss = MeanMetric(nan_strategy="disable")
    loss.persistent(True)
    return metrics, loss


def epoch_metrics(loss: MeanMetric, metrics: MetricCollection) -> dict[str, torch.Tensor]:
    """``loss``, ``acc1``, ``acc5``, ``err1``, ``err5`` of the epoch (synced over devices), then reset."""
    values = {"loss": loss.compute()}
    loss.reset()
    values.update(error_metrics(metrics.compute()))
    metrics.reset()
    return values


def error_metrics(accuracies: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``acc1``, ``acc5`` (fractions) and the errors ``err1``, ``err5`` = 100 (1 - accuracy), in
    percent as the paper gives them: one unit for error in W&B, the results and the reports."""
    return {**accuracies, **{f"err{name[3:]}": 100.0 * (1.0 - acc) for name, acc in accuracies.items()}}


def paper_optimizer(parameters, hp, total_steps: int) -> dict:
    """The paper's optimiser (PAPER.md section 5): Nesterov SGD with momentum and weight decay, the
    learning rate multiplied by ``lr_gamma`` at the ``lr_milestones`` fractions of ``total_steps``
    (stepped per optimiser step), as Lightning's ``configure_optimizers`` returns it. Every
    operation is elementwise, so on stacked parameters (a seed pack) it is each seed's own SGD.
    Fused (one kernel for all parameters) on a GPU; PyTorch's default implementation elsewhere."""
    parameters = list(parameters)
    fused = all(p.device.type == "cuda" for p in parameters)
    optimizer = torch.optim.SGD(
        parameters,
        lr=hp.lr,
        momentum=hp.momentum,
        weight_decay=hp.weight_decay,
        nesterov=hp.nesterov,
        fused=fused or None,
    )
    milestones = [int(f * total_steps) for f in hp.lr_milestones]
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=hp.lr_gamma)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
