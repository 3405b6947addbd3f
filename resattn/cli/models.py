"""The commands of trained models: ``python -m resattn masks RUN IMAGE... --out FILE.png`` (the
soft masks over your images), ``python -m resattn predict RUN IMAGE...`` (the most probable
classes), ``python -m resattn export RUN --out DIR`` (safetensors, config and model card). Each
checks its inputs before it writes anything, and answers bad input with one line and exit code 2.
What they do is :mod:`resattn.trained`'s.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from resattn.cli.entry import OneLineParser
from resattn.study.store import EXIT_BAD_INPUT
from resattn.trained import CARD, CONFIG, WEIGHTS, RunError, export, load_run, mask_figure, read_images, top_classes


def _check_out(path: Path, flag: str = "--out") -> None:
    from resattn.study.preflight import check_folder

    try:
        check_folder(path.parent if path.suffix else path, flag)
    except ValueError as err:
        raise RunError(str(err)) from err


def _parser(prog: str, doc: str) -> argparse.ArgumentParser:
    parser = OneLineParser(prog=f"resattn {prog}", description=doc)
    parser.add_argument("run", help="a study run folder (runs/<study>/<run id>), a .ckpt file or an export folder")
    return parser


def _failed(err: OSError | RunError, out: Path | None = None) -> int:
    """Bad input, or a write to ``out`` that failed once the folder passed the checks (each file is
    written atomically: nothing is left), in one line; the exit code of bad input."""
    message = f"could not write {out}: {err}" if isinstance(err, OSError) else str(err)
    print(f"error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def masks_main(argv: list[str] | None = None) -> int:
    parser = _parser("masks", "Draw a trained network's soft masks over your own images (the paper's Fig. 1).")
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--channels", type=int, default=0, help="also show the K channels of highest variance")
    args = parser.parse_args(argv)
    try:
        if args.channels < 0:
            raise RunError(f"--channels {args.channels}: must be an integer >= 0.")
        if args.out.suffix.lower() != ".png":
            raise RunError(f"--out {args.out}: must name a .png file.")
        _check_out(args.out)
        model = load_run(args.run)
        if not any(m.mask is not None for _, m in model.net.attention_modules()):
            block = model.config.attention_block if model.config.attention_learning != "none" else "none"
            raise RunError(f"{args.run} has no soft mask (attention {block}): there is no mask to draw.")
        images = read_images(args.images)
        mask_figure(model, images, args.images, args.out, args.channels)
    except (OSError, RunError) as err:
        return _failed(err, args.out)
    print(f"Wrote {args.out}")
    return 0


def predict_main(argv: list[str] | None = None) -> int:
    parser = _parser("predict", "Print a trained network's most probable classes for your own images.")
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    parser.add_argument("--top", type=int, default=5, help="how many classes (default 5)")
    args = parser.parse_args(argv)
    try:
        if args.top < 1:
            raise RunError(f"--top {args.top}: must be an integer >= 1.")
        model = load_run(args.run)
        images = read_images(args.images)
        _, x = model.preprocess(images)
        for name, image, best in zip(args.images, images, top_classes(model, x, args.top)):
            h, w = image.shape[-2:]
            print(f"{name} ({w}x{h}): " + ", ".join(f"{c} {100 * p:.1f}%" for c, p in best))
    except RunError as err:
        return _failed(err)
    return 0


def export_main(argv: list[str] | None = None) -> int:
    parser = _parser("export", f"Write a trained network as {WEIGHTS}, {CONFIG} and a model card ({CARD}).")
    parser.add_argument("--out", type=Path, required=True, help="the folder to write (created if needed)")
    args = parser.parse_args(argv)
    try:
        _check_out(args.out / CONFIG)
        model = load_run(args.run)
        written = export(model, args.out)
    except (OSError, RunError) as err:
        return _failed(err, args.out)
    print(f"Wrote {', '.join(str(p) for p in written)}")
    if not model.card.get("finished", True):
        print("note: the run has no result yet: these are the weights of its last checkpoint, not its final ones.")
    return 0
