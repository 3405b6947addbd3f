"""Single-run command line on LightningCLI: ``python -m resattn fit --model.depth 92 ...``."""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI

from resattn.data import CIFARDataModule
from resattn.module import ResidualAttentionClassifier


class ResAttnCLI(LightningCLI):
    """LightningCLI whose model takes the data's class count; every switch is a validated flag."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")

    def after_fit(self) -> None:
        """Test the final weights (the paper's protocol: never a best-on-test checkpoint)."""
        self.trainer.test(self.model, datamodule=self.datamodule)


def cli_main(args: list[str] | None = None) -> ResAttnCLI:
    """Run ``fit`` (then test of the final weights), ``validate`` or ``test``; the resolved config is saved
    as ``config.yaml`` in the run's log dir."""
    return ResAttnCLI(
        ResidualAttentionClassifier,
        CIFARDataModule,
        args=args,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"num_sanity_val_steps": 0},
    )
