"""The run record: what a run is (:class:`RunSpec`, ``run.json``) and what it gave (:class:`RunResult`,
``result.json``), as pydantic models validated when read, and the run's identity: the settings that
change its result (:data:`NOT_IDENTITY` lists those that do not), hashed into its run id.

The files that hold these records, and how they are written and locked, are :mod:`resattn.study.store`'s.
No torch here: the runner and the report read the records without importing it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

SECTIONS = ("model", "data", "trainer")
SEEDS = ("seed_everything", "data.seed", "data.noise_seed")  # set per run from its seed
# Settings that do not change a run's result, so they are not part of its identity (the run id):
# where the data lies and how it is fetched, evaluation batching, workers, logging and display, the
# device kind and the memory layout or compilation of the same maths. Precision is part of it.
NOT_IDENTITY = {
    "data": {"data_dir", "download", "eval_batch_size", "num_workers"},
    "model": {"channels_last", "compile"},
    "trainer": {
        "accelerator",
        "strategy",
        "enable_progress_bar",
        "enable_model_summary",
        "enable_checkpointing",
        "log_every_n_steps",
        "num_sanity_val_steps",
        "default_root_dir",
        "logger",
        "callbacks",
        "profiler",
    },
}


def digest(obj: Any, n: int = 8) -> str:
    """A short stable hash of a JSON-able object."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def is_identity(key: str) -> bool:
    """Whether the setting ``section.name`` changes a run's result."""
    section, _, name = key.partition(".")
    return name not in NOT_IDENTITY.get(section, set())


class RunSpec(BaseModel):
    """What to train: one variant x seed of a study, with its settings.

    ``config`` is the single-run CLI's config (``seed_everything``, ``model``, ``data``,
    ``trainer``). Once the runner has resolved it with the CLI's parser it holds every setting whose
    value differs from the class default, with the precision and the data folder always spelled
    out; that is what ``config.yaml`` holds. ``overrides`` are the command-line settings (``--set``)
    that changed what the profile and study set; ``factor_settings`` the settings the factor
    levels set; ``reductions`` how the profile departs from the paper's protocol.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    study: str
    variant: str
    levels: dict[str, str]
    seed: int
    profile: str
    config: dict[str, Any]
    overrides: dict[str, Any] = {}
    factor_settings: list[str] = []
    reductions: dict[str, str] = {}
    # A hash of the data files' content (resattn.cifar.data_fingerprint), set when the run is planned;
    # None for generated data and image folders (their settings and path say what they are) and in
    # the specs of earlier versions. ``data_official``: the files are the official CIFAR ones.
    data_fingerprint: str | None = None
    data_official: bool = True

    @property
    def precision(self) -> str:
        return str(self.config["trainer"]["precision"])

    @property
    def synthetic(self) -> bool:
        """Trained on the generated stand-in data (the smoke profile), not on a real data set."""
        return self.config["data"].get("dataset") == "synthetic"  # never the default: absent is real data

    @property
    def identity(self) -> dict[str, Any]:
        """The settings that change the result: model, data content, training, precision, seeds. The
        data's content is its fingerprint (the same files in another folder: the same id; other
        files: another); an image folder's path and workers are its content and augmentation
        streams: they count there."""
        folder = self.config["data"].get("dataset") == "imagefolder"  # absent: the default data set
        keep = {"data.data_dir", "data.num_workers"} if folder else set()
        files = {"data_fingerprint": self.data_fingerprint} if self.data_fingerprint else {}
        return {
            "seed_everything": self.config["seed_everything"],
            **{
                s: {k: v for k, v in self.config[s].items() if is_identity(f"{s}.{k}") or f"{s}.{k}" in keep}
                for s in SECTIONS
            },
            **files,
        }

    @property
    def run_id(self) -> str:
        """``<variant>-s<seed>-<hash of the identity>``: stable, and the same wherever the data lies."""
        return f"{self.variant}-s{self.seed}-{digest(self.identity)}"

    @property
    def settings_digest(self) -> str:
        """A hash of what the runs of one study configuration share: the identity without the seeds
        and the settings of the factor levels. Runs of one configuration label with another digest
        were trained before the profile or study YAML changed."""
        identity = self.identity
        shared = {
            s: {
                k: v
                for k, v in identity[s].items()
                if f"{s}.{k}" not in self.factor_settings and f"{s}.{k}" not in SEEDS
            }
            for s in SECTIONS
        }
        if self.data_fingerprint:
            shared["data_fingerprint"] = self.data_fingerprint
        return digest(shared)

    @property
    def configuration(self) -> str:
        """The study configuration this run belongs to (its report folder): the profile, then the
        precision unless fp32, then ``data`` and the start of the data's fingerprint unless it is
        the official CIFAR files, then a hash of the command-line settings that change results."""
        label = self.profile if self.precision == "32-true" else f"{self.profile}-{self.precision}"
        if self.data_fingerprint and not self.data_official:
            label += f"-data{self.data_fingerprint[:6]}"
        changed = {k: v for k, v in self.overrides.items() if is_identity(k) and k != "trainer.precision"}
        return f"{label}-{digest(changed, 6)}" if changed else label

    def dump(self) -> dict[str, Any]:
        """The record as stored: with its id and precision spelled out (derived, dropped when read)."""
        return {"run_id": self.run_id, "precision": self.precision, **self.model_dump(mode="json")}


class Divergence(BaseModel):
    """Where a run's training loss became non-finite."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    step: int
    epoch: int
    loss: str


Status = Literal["finished", "diverged"]


class RunResult(RunSpec):
    """What a run gave (``result.json``): its spec, provenance, cost, metrics and probes."""

    status: Status
    git_commit: str | None  # None: trained by an installed package, not a checkout ("unknown" in earlier versions)
    versions: dict[str, str]
    python: str
    device: str
    world_size: int
    started_at: str
    finished_at: str
    wall_time_s: float
    train_images_per_s: float | None
    params: int
    macs: int
    flops: int
    epochs: list[dict[str, float | int]]
    resumes: list[dict[str, Any]]
    test: dict[str, float]
    test_error: float | None
    probe: dict[str, float]  # of the final weights (ResponseProbe), on the split ``probe_split``
    noise_rate: float | None
    wandb: dict[str, Any]
    diverged: Divergence | None = None
    probe_split: str | None = None  # "test": the probe ran when the final weights were tested
    pack: dict[str, Any] | None = None  # trained in a pack: its folder, runs, seeds, images/s of all seeds
    # The unit of the errors in ``epochs`` and ``test`` (``test_error`` is always percent). Results
    # written before errors were logged in percent lack the field: theirs are fractions.
    error_unit: Literal["percent", "fraction"] = "fraction"
    # What the run trained and was tested on (resattn.data.CIFARDataModule.provenance): realised image
    # counts and a hash of their pixels and labels. None in results of earlier versions: data unrecorded.
    data: dict[str, Any] | None = None
    # Which test images the final weights got wrong (top-1), in the test split's order, as
    # :func:`pack_bits` writes them; None for results of earlier versions, diverged runs and runs
    # tested on several devices (their images arrive in the ranks' order).
    test_wrong: str | None = None
    # What code trained it (resattn.provenance): resattn's installed version; whether its git checkout
    # had uncommitted changes (None: no checkout); a hash of the resolved config (``digest(config,
    # 16)``, the settings of config.yaml). None in results of earlier versions: unrecorded.
    version: str | None = None
    git_dirty: bool | None = None
    config_digest: str | None = None

    def wrong_images(self) -> np.ndarray | None:
        """The per-image top-1 outcomes of the test (True: wrong), or None where not recorded."""
        return None if self.test_wrong is None else unpack_bits(self.test_wrong)

    def epoch_error(self, epoch: dict[str, float | int], key: str = "val/err1") -> float | None:
        """An error of one entry of ``epochs`` in percent, whatever unit the result was written in."""
        value = epoch.get(key)
        return None if value is None else float(value) * (100.0 if self.error_unit == "fraction" else 1.0)


def pack_bits(flags: np.ndarray) -> str:
    """Booleans as ``"<count>:<base64 of the packed bits>"``: 10,000 test images in 1.7 kB of JSON."""
    flags = np.asarray(flags, dtype=bool).ravel()
    return f"{flags.size}:{base64.b64encode(np.packbits(flags)).decode()}"


def unpack_bits(text: str) -> np.ndarray:
    """The booleans :func:`pack_bits` wrote."""
    count, _, data = text.partition(":")
    return np.unpackbits(np.frombuffer(base64.b64decode(data), dtype=np.uint8), count=int(count)).astype(bool)
