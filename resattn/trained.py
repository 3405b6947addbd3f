"""Trained models out of a study: load one, predict with it, export it, and draw its masks on any image.

:func:`load_run` takes a study run folder (``runs/<study>/<run id>/``), a Lightning checkpoint
(``.ckpt``) or an export folder (``python -m resattn export``) and returns the network in eval
mode with everything needed to use it without its data: the model config, the class names and
the per-pixel training mean the inputs are centred with (stored in every checkpoint by the data
module; recomputed from the run's data for older checkpoints).

Their commands (``python -m resattn masks|predict|export``) are :mod:`resattn.cli.models`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from resattn.config import ModelConfig
from resattn.network import ResidualAttentionNetwork, build_model
from resattn.study.store import RunDir, StoreError, atomic_path

WEIGHTS, CONFIG, CARD = "model.safetensors", "config.json", "README.md"  # an export folder
CIFAR_SIZE = 32
IMAGENET_RESIZE, IMAGENET_CROP = 256, 224
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # as the data module's


class RunError(ValueError):
    """A run, checkpoint, export or image that cannot be used (names it and says what to do)."""


@dataclass
class TrainedModel:
    """A trained network in eval mode and what using it needs.

    Attributes:
        net: the network, in eval mode on the CPU.
        config: its :class:`~resattn.config.ModelConfig`.
        classes: the class names, in label order.
        mean: the per-pixel training mean (3, 32, 32) in 0-255 units the CIFAR inputs are centred
            with (None for the ImageNet family, which uses the ImageNet mean and std).
        card: where it comes from: study, run id, variant, seed, profile, data, test error, and what
            code trained it (resattn version, commit, uncommitted changes, config hash).
    """

    net: ResidualAttentionNetwork
    config: ModelConfig
    classes: list[str]
    mean: torch.Tensor | None
    card: dict = field(default_factory=dict)

    def preprocess(self, images: list[torch.Tensor] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 RGB (3, H, W) images of any size (a list, or one image) -> (the resized uint8 images,
        the network's input batch).

        CIFAR networks: resized to 32x32 (antialiased), centred with the training mean, in 1/255
        units as in training. ImageNet networks: resized to 256, centre crop 224, ImageNet mean/std.

        Raises:
            ValueError: an image that is not a uint8 (3, H, W) tensor, named by its place and shape.
        """
        from torchvision.transforms.v2 import functional as TF

        from resattn.loader import normalize

        images = [images] if isinstance(images, torch.Tensor) and images.dim() == 3 else list(images)
        for i, im in enumerate(images):
            if not isinstance(im, torch.Tensor) or im.dim() != 3 or im.shape[0] != 3 or im.dtype != torch.uint8:
                what = f"{im.dtype} {tuple(im.shape)}" if isinstance(im, torch.Tensor) else type(im).__name__
                raise ValueError(
                    f"image {i}: expected a uint8 RGB tensor of shape (3, H, W), got {what}; read images with "
                    "torchvision.io.decode_image(path, mode=ImageReadMode.RGB)."
                )

        if self.config.family == "cifar":
            shown = torch.stack([TF.resize(im, [CIFAR_SIZE, CIFAR_SIZE], antialias=True) for im in images])
            return shown, normalize(shown, self.mean)
        shown = torch.stack(
            [TF.center_crop(TF.resize(im, [IMAGENET_RESIZE], antialias=True), [IMAGENET_CROP]) for im in images]
        )
        x = TF.normalize(shown.float() / 255.0, list(IMAGENET_MEAN), list(IMAGENET_STD))
        return shown, x

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).softmax(1)


def _model(settings: dict, state: dict, source: Path) -> ResidualAttentionNetwork:
    """The network that ``settings`` (a checkpoint's hyperparameters, an export's model config)
    describe, with the weights ``state``; a ``RunError`` naming ``source`` when they describe no
    network or do not fit it."""
    try:
        net = build_model(ModelConfig.from_hparams(settings))
    except ValueError as err:
        raise RunError(f"{source} describes no network resattn can build: {err}") from None
    try:
        net.load_state_dict(state)
    except RuntimeError:
        ours, theirs = net.state_dict(), state
        odd = sorted(set(ours) ^ set(theirs)) or [k for k in ours if ours[k].shape != theirs[k].shape]
        raise RunError(
            f"{source}: its weights do not fit the {net.config.name} network its settings describe (width "
            f"{net.config.width}); first mismatch: {odd[0]}. Is it a checkpoint of another network?"
        ) from None
    return net


def _from_checkpoint(path: Path, card: dict, data_config: dict | None = None) -> TrainedModel:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        hparams = dict(ckpt["hyper_parameters"])
        state = {k[len("net.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    except Exception as err:
        raise RunError(f"{path} is not a readable resattn checkpoint ({type(err).__name__}: {err}).") from err
    net = _model(hparams, state, path)
    data_state = ckpt.get("CIFARDataModule") or {}
    mean, classes = data_state.get("mean"), data_state.get("classes")
    if not classes:  # a checkpoint of an older version: the mean and the classes come from the data
        mean, classes = _data_facts(path, data_config)
    config = net.config
    return TrainedModel(net.eval(), config, list(classes), mean if config.family == "cifar" else None, card)


def _data_facts(path: Path, data_config: dict | None) -> tuple[torch.Tensor | None, list[str]]:
    from resattn.data import CIFARDataModule

    if data_config is None:
        raise RunError(
            f"{path} holds no training mean and class names (written by an older resattn); load it from its study "
            "run folder, whose config.yaml names the data they are computed from."
        )
    try:
        data = CIFARDataModule(**data_config)
        data.setup()
    except (OSError, ValueError) as err:
        raise RunError(
            f"the training mean of {path} is computed from the run's data, which is not here: {err}"
        ) from err
    return getattr(data, "mean", None), data.classes


def _from_export(folder: Path) -> TrainedModel:
    from safetensors.torch import load_file

    try:
        info = json.loads((folder / CONFIG).read_text())
        state = load_file(str(folder / WEIGHTS))
    except Exception as err:
        raise RunError(f"{folder} is not a readable resattn export ({type(err).__name__}: {err}).") from err
    missing = [k for k in ("model", "classes") if k not in info]
    if missing or not isinstance(info["model"], dict):
        raise RunError(f"{folder / CONFIG} has no {(missing or ['model'])[0]!r} mapping: not a resattn export's.")
    net = _model(info["model"], state, folder)
    mean = torch.tensor(info["mean"]) if info.get("mean") is not None else None
    return TrainedModel(net.eval(), net.config, info["classes"], mean, info.get("card", {}))


def load_run(path: str | Path) -> TrainedModel:
    """The trained network of a study run folder, a checkpoint file or an export folder, in eval mode.

    A study run's weights are its ``checkpoints/last.ckpt``: the final weights once the run has a
    result, else those of its last checkpoint (``card["finished"]`` says which).

    Raises:
        RunError: the path is none of these, or has no weights (names it and says what to do).
    """
    path = Path(path).expanduser()
    if path.is_dir() and (path / WEIGHTS).is_file():
        return _from_export(path)
    if path.is_file():
        return _from_checkpoint(path, {"checkpoint": str(path.resolve())})
    run_dir = RunDir(path)
    if not run_dir.spec.is_file():
        what = (
            "does not exist" if not path.exists() else "is not a study run folder (no run.json), checkpoint or export"
        )
        raise RunError(f"{path} {what}.")
    try:
        spec, result = run_dir.read_spec(), run_dir.read_result()
    except StoreError as err:
        raise RunError(str(err)) from err
    if not run_dir.checkpoint.is_file():
        raise RunError(
            f"{path} has no weights ({run_dir.checkpoint} is missing): the run has not trained yet, or its checkpoint "
            "was moved (e.g. into attic/ by --force). Train it with the study command first."
        )
    card = {
        "study": spec.study,
        "run_id": spec.run_id,
        "variant": spec.variant,
        "seed": spec.seed,
        "profile": spec.profile,
        "precision": spec.precision,
        "data": {k: v for k, v in spec.config["data"].items() if k != "data_dir"},
        "finished": result is not None and result.status == "finished",
        "test_error": result.test_error if result else None,
        # what code trained it; results of earlier versions have the version only among ``versions``
        "version": (result.version or result.versions.get("resattn")) if result else None,
        "git_commit": result.git_commit if result else None,
        "git_dirty": result.git_dirty if result else None,
        "config_digest": result.config_digest if result else None,
        "source": str(path.resolve()),
    }
    return _from_checkpoint(run_dir.checkpoint, card, spec.config["data"])


def read_images(paths: list[str]) -> list[torch.Tensor]:
    """Each file as a uint8 RGB (3, H, W) tensor (torchvision's decoders: PNG, JPEG, GIF, WebP, ...).

    Raises:
        RunError: a file that is missing or not an image, named.
    """
    from torchvision.io import ImageReadMode, decode_image

    images = []
    for name in paths:
        path = Path(name).expanduser()
        if not path.is_file():
            raise RunError(f"{path}: no such image file.")
        try:
            images.append(decode_image(str(path), mode=ImageReadMode.RGB))
        except Exception as err:  # torchvision's message names its C++ source file: not for users
            raise RunError(f"{path} is not an image torchvision can read (PNG, JPEG, GIF or WebP).") from err
    return images


def top_classes(model: TrainedModel, x: torch.Tensor, k: int = 5) -> list[list[tuple[str, float]]]:
    """The ``k`` most probable classes of each image, with their probabilities."""
    probs = model.probabilities(x)
    values, indices = probs.topk(min(k, probs.shape[1]), dim=1)
    return [[(model.classes[i], float(p)) for p, i in zip(v, ix)] for v, ix in zip(values.tolist(), indices.tolist())]


def export(model: TrainedModel, out: Path) -> list[Path]:
    """Write ``model.safetensors`` (the network's weights), ``config.json`` (model config, class names,
    training mean, provenance) and ``README.md`` (a model card) into ``out``; :func:`load_run`
    loads the folder without the study."""
    from safetensors.torch import save

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.net.state_dict().items()}
    info = {
        "format": "resattn export 1",
        "model": model.config.to_dict(),
        "classes": model.classes,
        "mean": model.mean.tolist() if model.mean is not None else None,
        "input": "CIFAR: RGB 32x32, minus the per-pixel training mean, divided by 255"
        if model.config.family == "cifar"
        else "ImageNet: RGB, resize 256, centre crop 224, ImageNet mean and std",
        "card": model.card,
    }
    weights, config, card = out / WEIGHTS, out / CONFIG, out / CARD
    with atomic_path(weights) as tmp:  # bytes written here take the umask's mode (safetensors' own file: 0600)
        tmp.write_bytes(save(state, metadata={"format": "pt"}))
    with atomic_path(config) as tmp:
        tmp.write_text(json.dumps(info, indent=2))
    with atomic_path(card) as tmp:
        tmp.write_text(model_card(model))
    return [weights, config, card]


def model_card(model: TrainedModel) -> str:
    c, cfg = model.card, model.config
    error = c.get("test_error")
    lines = [
        f"# {cfg.name} ({cfg.attention_learning}, {cfg.mask_structure}, {cfg.normalization}, {cfg.attention_block})",
        "",
        "A Residual Attention Network (Wang et al., CVPR 2017) trained with resattn.",
        "",
        "| | |",
        "|---|---|",
        f"| model | `{json.dumps(cfg.to_dict())}` |",
        f"| study / run | {c.get('study', '—')} / {c.get('run_id', '—')} (variant {c.get('variant', '—')}) |",
        f"| seed | {c.get('seed', '—')} |",
        f"| profile | {c.get('profile', '—')} (precision {c.get('precision', '—')}) |",
        f"| data | `{json.dumps(c.get('data', {}))}` |",
        f"| test error | {f'{error:.2f}% (final weights)' if error is not None else 'not measured'} |",
        f"| trained to the end | {c.get('finished', '—')} |",
        f"| resattn | {c.get('version') or '—'} |",
        f"| commit | {_commit(c)} |",
        f"| classes | {', '.join(model.classes)} |",
        "",
        "Load it with `resattn.trained.load_run(folder)`; predict with `python -m resattn predict FOLDER IMAGE...`.",
    ]
    return "\n".join(lines) + "\n"


def _commit(card: dict) -> str:
    """The card's commit and whether its checkout had uncommitted changes (—: no checkout, or unrecorded)."""
    commit, dirty = card.get("git_commit"), card.get("git_dirty")
    if not commit:
        return "—"
    return commit + {True: " (with uncommitted changes)", False: " (clean)", None: ""}[dirty]


def mask_figure(model: TrainedModel, images: list[torch.Tensor], names: list[str], out: Path, channels: int = 0):
    """Paper Fig. 1 for any images: each image (resized as the network sees it) and, beside it, the
    soft mask of the first module of each stage, mean over channels, then optionally the
    ``channels`` channels of highest spatial variance. One row per image; every map on one colour
    scale, printed: [0, 1] for a sigmoid's masks (mixed, spatial), the range of all maps for channel
    attention's (f2), so that a near-constant mask looks constant."""
    import matplotlib.pyplot as plt

    from resattn.figures import mask_image, save_figure
    from resattn.probes import mask_outputs

    shown, x = model.preprocess(images)
    masks = mask_outputs(model.net, x)
    firsts = sorted(k for k in masks if k.endswith("m1"))
    most = min(masks[k].shape[1] for k in firsts)
    if channels > most:
        raise RunError(
            f"--channels {channels}: these masks have {most} channels in their smallest stage; at most {most}."
        )
    cols = 1 + len(firsts) * (1 + channels)
    fig, axes = plt.subplots(len(images), cols, figsize=(1.9 * cols + 0.8, 2.1 * len(images) + 0.9), squeeze=False)
    maps = []  # (axes, mask view), drawn once the common scale is known
    for row, (image, original, name) in enumerate(zip(shown, images, names)):
        picture = image.permute(1, 2, 0).numpy()
        ax = axes[row, 0]
        ax.imshow(picture)
        ax.set_xticks([])
        ax.set_yticks([])
        h, w = original.shape[-2:]
        resized = f"\nresized {w}x{h} -> {picture.shape[1]}x{picture.shape[0]}" if (h, w) != picture.shape[:2] else ""
        ax.set_title(f"{Path(name).name}{resized}", fontsize=7)
        col = 1
        for module in firsts:
            m = masks[module][row]  # (C, h, w)
            views = [("mean over channels", m.mean(0))]
            order = m.flatten(1).var(1).argsort(descending=True)[:channels]
            views += [(f"channel {int(c)}", m[c]) for c in order]
            for label, view in views:
                maps.append((axes[row, col], view.numpy()))
                axes[row, col].set_title(f"stage {module[1]} ({module}): {label}", fontsize=7)
                col += 1
    low, high = min(float(v.min()) for _, v in maps), max(float(v.max()) for _, v in maps)
    if model.config.normalization != "channel":  # a sigmoid's values: its whole range, [0, 1]
        low, high = 0.0, 1.0
    im = None
    for ax, v in maps:
        im = mask_image(ax, v, low, high)
    card = model.card
    source = f"{card.get('study')}/{card.get('run_id')}" if card.get("run_id") else card.get("checkpoint", "")
    fig.suptitle(
        f"Soft masks of {model.config.name} ({model.config.attention_learning}), {source}; every map on one colour "
        f"scale, {low:.3g} to {high:.3g}",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0, 0.94, 1))  # the colour bar's room on the right
    fig.colorbar(im, cax=fig.add_axes((0.95, 0.15, 0.012, 0.7)), label="mask value").ax.tick_params(labelsize=6)
    return save_figure(fig, out, tight=False)
