"""The ``isnet`` command: a thin layer over the library.

Each sub-command has an ``_add_<name>`` function declaring its arguments and a
``_run_<name>`` function that imports what it needs and calls the library.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def _add_explain(sub) -> None:
    p = sub.add_parser("explain", help="write LRP-Flex heatmaps (PNG + .npy) for an image or a folder",
                       description="Explain a classifier's decisions with LRP-Flex heatmaps.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--weights", type=Path, help="state dict (.pt) of --arch")
    src.add_argument("--checkpoint", type=Path, help="a run folder or checkpoint written by `isnet train`")
    p.add_argument("--arch", help="small_cnn or a torchvision model name (not needed with --checkpoint)")
    p.add_argument("--num-classes", type=int, default=1000, help="classes of --arch (default 1000)")
    p.add_argument("--images", type=Path, required=True,
                   help="an image, a folder of images, or a dataset root (images/<class>/...)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--target", default="pred", help="label, pred (default) or a class index")
    p.add_argument("--image-size", type=int, default=None, help="resize images to this size")
    p.add_argument("--normalize", choices=["none", "imagenet"], default="none",
                   help="input normalisation the model expects (Z^B bounds follow it)")
    p.add_argument("--epsilon", type=float, default=0.01)
    p.add_argument("--no-zb", action="store_true", help="LRP-epsilon down to the input instead of Z^B")
    p.add_argument("--batch-size", type=int, default=16)


def _run_explain(args: argparse.Namespace) -> None:
    from .explain_files import explain_files

    written = explain_files(
        images=args.images, out=args.out, arch=args.arch, weights=args.weights, checkpoint=args.checkpoint,
        num_classes=args.num_classes, target=args.target, image_size=args.image_size,
        normalize=args.normalize, epsilon=args.epsilon, zb=not args.no_zb, batch_size=args.batch_size,
    )
    print(f"wrote {len(written)} heatmaps to {args.out}")


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="built-in datasets")
    data_sub = p.add_subparsers(dest="dataset", required=True)
    bg = data_sub.add_parser("bg-digits", help="write the BG-Digits background-bias benchmark (dataset layout)")
    bg.add_argument("--out", type=Path, required=True)
    bg.add_argument("--seed", type=int, default=0)
    bg.add_argument("--n-train", type=int, default=3300)
    bg.add_argument("--n-val", type=int, default=500)
    bg.add_argument("--n-test", type=int, default=500)
    bg.add_argument("--mask", choices=["box", "strokes"], default="box")
    bg.add_argument("--extra-tests", action="store_true", help="also foreground-only and background-only tests")


def _run_data(args: argparse.Namespace) -> None:
    from .data.bg_digits import write_dataset

    paths = write_dataset(args.out, seed=args.seed, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test,
                          mask=args.mask, extra_tests=args.extra_tests, progress=True)
    for split, path in paths.items():
        print(f"{split:>12}: {path}")


COMMANDS = {
    "explain": (_add_explain, _run_explain),
    "data": (_add_data, _run_data),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="isnet", description=(
        "LRP-Flex heatmaps for any ReLU network, and ISNet / Faster ISNet training "
        "that keeps classifiers off image backgrounds."))
    from . import __version__

    parser.add_argument("--version", action="version", version=f"isnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command][1](args)
    except (ValueError, FileNotFoundError, KeyError) as error:
        print(f"isnet {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
