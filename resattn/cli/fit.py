"""Single-run command line on LightningCLI: ``python -m resattn fit --model.depth 92 ...``.

A study run is built by the same parser (:func:`build_run`) from the config file the runner
writes (``RunDir.config``), so ``python -m resattn fit --config runs/<study>/<run id>/config.yaml`` reproduces it.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentError
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningCLI

from resattn.data import CIFARDataModule
from resattn.module import ResidualAttentionClassifier
from resattn.study.spec import check_config

CLASSES = {"model": ResidualAttentionClassifier, "data": CIFARDataModule}


class ResAttnCLI(LightningCLI):
    """LightningCLI whose model takes the data's class count; every switch is a validated flag. The
    optimiser and schedule are the paper's (``configure_optimizers``), so there is no ``--optimizer``
    flag to silently replace them, and no ``predict`` subcommand (the data has no predict split)."""

    started = False  # set once a subcommand starts running: later errors are not bad input

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {k: v for k, v in LightningCLI.subcommands().items() if k != "predict"}

    def _start(self) -> None:
        ckpt_path = self.config[self.subcommand].get("ckpt_path")
        if ckpt_path and ckpt_path not in ("last", "best", "hpc", "registry") and not Path(ckpt_path).is_file():
            raise FileNotFoundError(f"--ckpt_path {ckpt_path}: no such checkpoint file.")
        self.datamodule.verify()  # missing or corrupt data (or a failed download): one line, before training
        type(self).started = True

    def before_instantiate_classes(self) -> None:
        """Every value within its declared range (``resattn.config`` / ``resattn.study.spec``), in
        one line naming the setting, before any class is built; ``test`` needs the weights to test."""
        check_config((self.config[self.subcommand] if self.subcommand else self.config).as_dict())
        if self.subcommand == "test" and not self.config.test.get("ckpt_path"):
            raise ValueError(
                "test needs --ckpt_path CHECKPOINT (e.g. runs/<study>/<run id>/checkpoints/last.ckpt): without it the "
                "weights tested would be freshly initialised."
            )

    def before_fit(self) -> None:
        self._start()

    def before_validate(self) -> None:
        self._start()

    def before_test(self) -> None:
        self._start()

    def parse_arguments(self, parser, args) -> None:
        """As LightningCLI's, without its warning that ``args`` and ``sys.argv`` are both given: both
        callers give ``args`` on purpose (``python -m resattn fit``, whose ``sys.argv`` also holds the
        command; a study worker, whose ``sys.argv`` holds its run folders)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
            super().parse_arguments(parser, args)

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")

    def after_fit(self) -> None:
        """Test the final weights (the paper's protocol: never a best-on-test checkpoint)."""
        self.trainer.test(self.model, datamodule=self.datamodule)


CONFIG_KEYS = {"seed_everything", "model", "data", "trainer", "ckpt_path", "config"}


def check_config_files(args: list[str]) -> None:
    """Each ``--config FILE`` of ``args`` that exists is a mapping of the CLI's sections (a study
    run's ``config.yaml``), not, say, its ``result.json`` (the parser's own error is a traceback)."""
    import yaml

    files = [b for a, b in zip(args, args[1:]) if a in ("--config", "-c")]
    files += [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
    for name in files:
        path = Path(name)
        try:
            content = yaml.safe_load(path.read_text()) if path.is_file() else {}
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise ValueError(f"--config {name}: not a YAML file ({type(err).__name__}).") from None
        extra = sorted(set(content) - CONFIG_KEYS) if isinstance(content, dict) else ["<not a mapping>"]
        if extra:
            raise ValueError(
                f"--config {name}: not a run config (it has {', '.join(map(str, extra[:3]))}; a config has "
                f"{', '.join(sorted(CONFIG_KEYS - {'config'}))}); a study run's is runs/<study>/<run id>/config.yaml."
            )


def cli_main(args: list[str] | None = None) -> ResAttnCLI:
    """Run ``fit`` (then test of the final weights), ``validate`` or ``test``; the resolved config is saved
    as ``config.yaml`` in the run's log dir. A setting a class rejects (``--model.depth 128`` with the
    ImageNet family), a missing file (``--ckpt_path``), ``test`` without ``--ckpt_path`` or a file that
    is no run config (``--config result.json``) ends with one line and exit code 2."""
    ResAttnCLI.started = False
    try:
        check_config_files(sys.argv[1:] if args is None else args)
        return ResAttnCLI(
            ResidualAttentionClassifier,
            CIFARDataModule,
            args=args,
            parser_kwargs={"prog": "python -m resattn", "exit_on_error": False},
            save_config_kwargs={"overwrite": True},
            trainer_defaults={"num_sanity_val_steps": 0},
            auto_configure_optimizers=False,
        )
    except (ValueError, OSError, MisconfigurationException, ArgumentError) as err:
        if ResAttnCLI.started:  # an error while training is no bad input: its traceback matters
            raise
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        raise SystemExit(2) from err


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
        auto_configure_optimizers=False,
    )
