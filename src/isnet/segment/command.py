"""The ``isnet segment`` command: its arguments and what each sub-command calls.

``isnet segment train`` takes every :class:`isnet.segment.config.SegmentConfig` option;
``predict`` writes masks for an image, a folder or a dataset root; ``eval`` reports Dice and IoU
on test sets with masks. The parser is built without importing PyTorch; the runners import
what they need.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..config_file import add_config_file_options, command_options
from ..options import add_dataclass_options, named_tests, number
from .config import SegmentConfig

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    """Add ``segment train|predict|eval`` to the ``isnet`` sub-parsers ``sub``."""
    p = sub.add_parser("segment", help="foreground masks from a U-Net (MONAI): train, predict, eval",
                       description="Train a segmentation network on images + masks (dataset layout), write masks for "
                                   "new images in the dataset layout (so `isnet train` can use them), or report Dice "
                                   "and IoU. Needs MONAI (pip install 'isnet[seg]').")
    seg = p.add_subparsers(dest="segment", required=True)
    train = seg.add_parser("train", help="train a U-Net on images and masks",
                           description="Train MONAI's UNet with Dice + cross-entropy (Lightning). Writes "
                                       "OUT/config.json, OUT/checkpoints/{last,best}.ckpt (best: validation Dice), "
                                       "OUT/metrics.csv and OUT/model.pt; --resume continues, --overwrite restarts an "
                                       "unfinished run.")
    add_config_file_options(train)
    add_dataclass_options(train, SegmentConfig)
    predict = seg.add_parser("predict", help="write PNG masks for an image, a folder or a dataset root",
                             description="A dataset root (images/<class>/...) gets OUT/masks/<class>/<name>.png and "
                                         "OUT/images linking to its images, so OUT is a dataset for `isnet train` (OUT "
                                         "may be the root itself); a folder gets OUT/<name>.png. Masks are 0/255, at "
                                         "each image's size. Files isnet did not write are never replaced.")
    predict.add_argument("--model", type=Path, required=True, help="the --out folder of isnet segment train")
    predict.add_argument("--images", type=Path, required=True, help="an image, a folder, or a dataset root")
    predict.add_argument("--out", type=Path, required=True, help="output folder (see above)")
    evaluate = seg.add_parser("eval", help="Dice and IoU of a segmenter on test sets with masks")
    evaluate.add_argument("--model", type=Path, required=True, help="the --out folder of isnet segment train")
    evaluate.add_argument("--test", action="append", required=True, metavar="NAME=DIR",
                          help="a named test set (dataset layout with masks/); repeat for several")
    evaluate.add_argument("--json", type=Path, help="write the results as JSON here")
    for q in (predict, evaluate):
        q.add_argument("--components", type=number(int, at_least=0), metavar="N",
                       help="keep the N largest connected regions of each mask (0: all; default: the run's "
                            "--components)")
        q.add_argument("--batch-size", type=number(int, at_least=1), default=8)
        q.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1, ...")


def _train(args: argparse.Namespace) -> None:
    config = command_options(args, SegmentConfig, "isnet segment train")
    if config is None:  # --print-config
        return
    args.out = config["out"]  # for the hint after an interruption
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from .train import fit_segmenter

    progress = logging.getLogger("isnet.training")
    handler = logging.StreamHandler(sys.stdout)
    progress.addHandler(handler)
    level = progress.level
    progress.setLevel(logging.INFO)
    try:
        run = fit_segmenter(config)
    finally:
        progress.removeHandler(handler)
        progress.setLevel(level)
    if rank_zero_only.rank == 0:
        print(f"segmentation run written to {run}")


def run(args: argparse.Namespace) -> None:
    """Run ``isnet segment <train|predict|eval>``."""
    if args.segment == "train":
        _train(args)
        return
    from .files import evaluate_segmenter, format_scores, predict_folder

    if args.segment == "predict":
        summary = predict_folder(model=args.model, images=args.images, out=args.out, batch_size=args.batch_size,
                                 device=args.device, components=args.components)
        where = "dataset (images/ + masks/) at" if summary["dataset"] else "masks in"
        print(f"wrote {summary['masks']} masks, mean foreground {100 * summary['mean_foreground']:.1f}%; "
              f"{where} {summary['out']}")
        return
    from ..outputs import write_result
    from ..paths import check_json_output

    if args.json is not None:
        check_json_output(args.json, option="--json")
    results = evaluate_segmenter(args.model, named_tests(args.test), batch_size=args.batch_size, device=args.device,
                                 components=args.components)
    print(format_scores(results))
    if args.json is not None:
        print(f"wrote {write_result(args.json, results)}")
