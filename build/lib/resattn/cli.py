"""Single-run command line on LightningCLI: ``python -m resattn fit --model.depth 92 ...``.

A study run is built by the same parser (:func:`build_run`) from the config file the runner
writes (``RunDir.config``), so ``python -m resattn fit --config runs/<study>/<run id>/config.yaml`` reproduces it.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.cli import LightningCLI

from resattn.data import CIFARDataModule
from resattn.module import ResidualAttentionClassifier

CLASSES = {"model": ResidualAttentionClassifier, "data": CIFARDataModule}


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


def build_run(config: dict[str, Any] | list[str], **trainer_defaults: Any) -> ResAttnCLI:
    """Parse and instantiate a run (model, data module, Trainer; seeded with ``seed_everything``)
    exactly as ``python -m resattn fit`` does, without running it. ``config`` is a config dict or
    command-line arguments (``["--config", path]``); ``trainer_defaults`` adds callbacks.

    Raises:
        jsonargparse.ArgumentError: a setting the parser rejects (unknown, wrong type or choice).
    """
    return ResAttnCLI(
        ResidualAttentionClassifier,
        CIFARDataModule,
        args=config,
        run=False,
        save_config_callback=None,
        trainer_defaults=trainer_defaults,
        parser_kwargs={"exit_on_error": False},
    )
