"""The ``isnet`` command: a thin layer over the library.

Each sub-command has an ``_add_<name>`` function declaring its arguments and a
``_run_<name>`` function that imports what it needs and calls the library.

Errors: option values are checked as they are parsed (argparse ``type`` functions); a user's
mistake found later is an :class:`isnet.errors.UserError` (or another ``ValueError``, the
library's convention for bad arguments), printed as ``isnet CMD: error: ...`` with exit
status 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from importlib import import_module
from pathlib import Path

from .errors import command_warnings, short_message
from .options import OneLineParser, number, target
from .outputs import DiskError, as_disk_error, write_result
from .signals import Terminated, raise_on_sigterm


def _add_model_options(p: argparse.ArgumentParser) -> None:
    """The classifier to load (:func:`isnet.explain_files.load_model`): a run, or an architecture and its weights."""
    src = p.add_mutually_exclusive_group()
    src.add_argument("--weights", metavar="NAME|FILE",
                     help="state dict (.pt) of --arch, or a torchvision weights name (DEFAULT, IMAGENET1K_V1) read "
                          "from the torch hub cache ($TORCH_HOME/hub/checkpoints), downloaded into it when missing "
                          "(ISNET_OFFLINE=1: never)")
    src.add_argument("--checkpoint", type=Path, help="a run folder or checkpoint written by `isnet train`")
    p.add_argument("--arch", help="small_cnn, small_vit, small_convnext, a torchvision model name or timm:NAME (not "
                                  "needed with --checkpoint)")
    p.add_argument("--num-classes", type=number(int, at_least=1), default=None,
                   help="classes (outputs) of --arch (default 1000)")
    p.add_argument("--image-size", type=number(int, at_least=1), default=None,
                   help="resize images to this square side (default: a checkpoint's training size, else the "
                        "images' own size, which must then be the same for all)")
    p.add_argument("--normalize", choices=["auto", "none", "imagenet"], default=None,
                   help="input normalisation the model expects (Z^B bounds follow it); default auto: imagenet for a "
                        "torchvision weights name, else none; not with --checkpoint, whose models see pixels in [0, 1]")


def _add_explain(sub) -> None:
    p = sub.add_parser("explain", help="write LRP-Flex heatmaps (PNG + .npy) for an image or a folder",
                       description="Explain a classifier's decisions with LRP-Flex heatmaps. OUT must not be or "
                                   "contain the input, and files in it that isnet did not write are never replaced.")
    _add_model_options(p)
    p.add_argument("--images", type=Path, required=True,
                   help="an image, a folder of images, or a dataset root (images/<class>/...)")
    p.add_argument("--out", type=Path, required=True, help="output folder (outside the input)")
    p.add_argument("--target", type=target, default="pred", help="label, pred (default) or a class index")
    p.add_argument("--epsilon", type=number(float, at_least=0), default=0.01)
    p.add_argument("--no-zb", action="store_true", help="LRP-epsilon down to the input instead of Z^B")
    p.add_argument("--rule", choices=["epsilon", "z+"], default="epsilon",
                   help="rule on convolutions and linear layers: LRP-epsilon (default) or LRP-z+ (positive "
                        "contributions only, stabilised by --epsilon)")
    p.add_argument("--batch-size", type=number(int, at_least=1), default=16)


def _run_explain(args: argparse.Namespace) -> None:
    from .explain_files import explain_files

    written = explain_files(
        images=args.images, out=args.out, arch=args.arch, weights=args.weights, checkpoint=args.checkpoint,
        num_classes=args.num_classes, target=args.target, image_size=args.image_size,
        normalize=args.normalize, epsilon=args.epsilon, zb=not args.no_zb, batch_size=args.batch_size, rule=args.rule,
    )
    print(f"wrote {len(written)} heatmaps to {args.out}")


def _add_data(sub) -> None:
    from .bench.digits.presets import CUES, MASK_QUALITIES, PLACEMENTS

    p = sub.add_parser("data", help="built-in datasets")
    data_sub = p.add_subparsers(dest="dataset", required=True)
    bg = data_sub.add_parser("bg-digits", help="write the BG-Digits background-bias benchmark (dataset layout)")
    bg.add_argument("--out", type=Path, required=True)
    bg.add_argument("--seed", type=int, default=0)
    bg.add_argument("--n-train", type=int, default=3300)
    bg.add_argument("--n-val", type=int, default=500)
    bg.add_argument("--n-test", type=int, default=500)
    bg.add_argument("--mask", choices=["box", "strokes"], default="box")
    bg.add_argument("--placement", choices=list(PLACEMENTS), default="centre",
                    help="digit box inside the central 24x24 area (centre, default) or anywhere on the canvas")
    bg.add_argument("--cue", choices=list(CUES), default="patch",
                    help="class-coded bias: a white border patch (patch, default) or a colour tint of the background")
    bg.add_argument("--train-mask", choices=list(MASK_QUALITIES), default="exact",
                    help="degrade the training split's masks (dilated / eroded by 2 px, bounding box, shifted by up "
                         "to 3 px); the other splits keep exact masks (default exact)")
    bg.add_argument("--extra-tests", action="store_true", help="also foreground-only and background-only tests")
    cxr = data_sub.add_parser("bg-cxr", help="write BG-CXR, chest-X-ray-like images with hospital shortcuts "
                              "(dataset layout; needs torchxrayvision for its lung masks)")
    cxr.add_argument("--out", type=Path, required=True)
    for flag, kind, default, text in (
            ("--seed", int, 0, None), ("--n-train", int, 3000, None), ("--n-val", int, 500, None),
            ("--n-test", int, 500, "images per test set"), ("--image-size", int, 128, "image side, 64 to 512"),
            ("--correlation", float, 0.95, "share of each class from its own hospitals in train, val and test/biased")):
        cxr.add_argument(flag, type=kind, default=default, help=text and f"{text} (default {default})")
    cxr.add_argument("--unbiased", action="store_true", help="also test/unbiased (hospital independent of the class)")


def _run_data(args: argparse.Namespace) -> None:
    if args.dataset == "bg-cxr":
        from .data.cxr.bg_cxr import write_dataset as write_cxr

        tests = ("biased", *(("unbiased",) if args.unbiased else ()), "external", "deceiving")
        paths = write_cxr(args.out, seed=args.seed, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test,
                          image_size=args.image_size, correlation=args.correlation, tests=tests, progress=True)
    else:
        from .data.digits.bg_digits import write_dataset

        paths = write_dataset(args.out, seed=args.seed, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test,
                              mask=args.mask, placement=args.placement, cue=args.cue, train_mask=args.train_mask,
                              extra_tests=args.extra_tests, progress=True)
    for split, path in paths.items():
        print(f"{split:>12}: {path}")


def _add_train(sub) -> None:
    from .config import TrainConfig
    from .config_file import add_config_file_options
    from .options import add_dataclass_options

    p = sub.add_parser(
        "train", help="train a classifier (standard, ISNet, Faster ISNet, baselines) on a masked dataset",
        description="Train a classifier with Lightning. ISNet objectives penalise LRP relevance outside the "
                    "foreground masks, continuing from a short standard run that also calibrates --c1/--c2. "
                    "Writes OUT/config.json, OUT/checkpoints/{last,best}.ckpt, OUT/metrics.csv and OUT/model.pt. "
                    "Everything is checked before OUT is written; OUT may not hold another run: --resume continues "
                    "one, --overwrite starts an unfinished one again (a finished model.pt is never replaced).")
    add_config_file_options(p)
    add_dataclass_options(p, TrainConfig)


def _run_train(args: argparse.Namespace) -> None:
    from .config import TrainConfig
    from .config_file import command_options

    config = command_options(args, TrainConfig, "isnet train")
    if config is None:  # --print-config
        return
    args.out = config["out"]  # for the hint after an interruption
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from .training import fit

    progress = logging.getLogger("isnet.training")  # calibration values, resume, overwrite
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(lambda record: rank_zero_only.rank == 0)  # under DDP every process runs this command
    progress.addHandler(handler)
    level = progress.level
    progress.setLevel(logging.INFO)
    try:
        run = fit(config)  # TrainingDiverged (a FloatingPointError) is reported by main
    finally:
        progress.removeHandler(handler)
        progress.setLevel(level)
    if rank_zero_only.rank == 0:
        print(f"run written to {run}")


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a trained classifier on test sets",
                       description="Accuracy, macro-F1, AUROC over the classes each test set holds (binary: 95% "
                                   "DeLong interval), confusion matrix and the share of absolute LRP relevance on "
                                   "the background (test sets with masks).")
    p.add_argument("--checkpoint", type=Path, required=True, help="a run folder or a .ckpt / model.pt file")
    p.add_argument("--test", action="append", required=True, metavar="NAME=DIR",
                   help="a named test set (dataset layout; masks/ optional); repeat for several")
    p.add_argument("--json", type=Path, help="write the results as JSON here (a new file or an earlier result)")
    p.add_argument("--batch-size", type=number(int, at_least=1), default=64)
    p.add_argument("--workers", type=number(int, at_least=0), default=0)
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1, ...")
    p.add_argument("--no-relevance", action="store_true", help="skip the background-relevance share")
    p.add_argument("--audit", action="store_true",
                   help="also audit the use of the background by intervention, as isnet audit does (test sets need "
                        "masks and two classes; 4 more forward passes per image, docs/audit.md)")


def _run_eval(args: argparse.Namespace) -> None:
    from .evaluate import evaluate, format_table
    from .options import named_tests
    from .paths import check_json_output

    tests = named_tests(args.test)
    if args.json is not None:
        check_json_output(args.json, option="--json")  # before the work, so no result is lost
    results = evaluate(args.checkpoint, tests, batch_size=args.batch_size, workers=args.workers,
                       device=args.device, relevance=not args.no_relevance, audit=args.audit)
    print(format_table(results))
    if args.json is not None:
        print(f"wrote {write_result(args.json, results)}")


def _add_audit(sub) -> None:
    p = sub.add_parser(
        "audit", help="measure how much a classifier relies on the background, by intervention",
        description="For each image, counterfactuals made with its mask: its foreground on the background of "
                    "another class (the donor's object removed), the background alone, the foreground alone on a "
                    "neutral fill, and optionally given regions painted out. Reports accuracy under each, the "
                    "prediction flip rate and the follows-the-background rate with bootstrap 95% intervals, the "
                    "heatmap background share beside them, and a verdict; writes OUT/audit.json, audit.md and "
                    "audit.html. Cost: 4 forward passes per image (5 with --regions) and 1 LRP-Flex pass. OUT must "
                    "be empty or hold only files isnet wrote. See docs/audit.md.")
    _add_model_options(p)
    p.add_argument("--test", action="append", required=True, metavar="NAME=DIR",
                   help="a named test set (dataset layout with masks/); repeat for several")
    p.add_argument("--regions", action="append", default=[], metavar="NAME=DIR",
                   help="regions to paint out in test set NAME (markers, label boxes): a folder laid out like masks/, "
                        "one mask per image (all black where there is none); repeat for several test sets")
    p.add_argument("--out", type=Path, required=True, help="output folder (outside the inputs)")
    p.add_argument("--seed", type=int, default=0, help="seeds the donors and the bootstrap (default 0)")
    p.add_argument("--resamples", type=number(int, at_least=1), default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--margin", type=number(float, at_least=0, at_most=0.99), default=0.1,
                   help="how far above chance, as a share, a 95%% interval's lower end must lie for the verdict "
                        "(default 0.1: 10 points)")
    p.add_argument("--examples", type=number(int, at_least=0), default=8,
                   help="example images per test set in audit.html (default 8)")
    p.add_argument("--batch-size", type=number(int, at_least=1), default=64)
    p.add_argument("--workers", type=number(int, at_least=0), default=0)
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1, ...")
    p.add_argument("--no-relevance", action="store_true", help="skip the heatmap background share")


def _run_audit(args: argparse.Namespace) -> None:
    from .audit_files import OUTPUTS, audit_folders
    from .audit_stats import audit_table
    from .options import named_tests

    report = audit_folders(
        named_tests(args.test), args.out, checkpoint=args.checkpoint, arch=args.arch, weights=args.weights,
        num_classes=args.num_classes, normalize=args.normalize, image_size=args.image_size,
        regions=named_tests(args.regions, option="--regions"), batch_size=args.batch_size, workers=args.workers,
        device=args.device, seed=args.seed, resamples=args.resamples, margin=args.margin,
        relevance=not args.no_relevance, examples=args.examples)
    print(audit_table(report["tests"]))
    print(f"wrote {', '.join(str(args.out / name) for name in OUTPUTS)}")


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo", help="BG-Digits demo: standard classifier (without and with background swap) vs selective ISNet, "
                     "table and report (a few minutes)",
        description="Build BG-Digits, train a standard classifier without and with the background swap and a "
                    "selective ISNet (Faster ISNet, with the swap) with the training defaults, print accuracy and "
                    "background relevance on the biased, unbiased and deceiving test sets, and write OUT/report.html "
                    "(`isnet bench bias` with a small grid).")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default runs/demo)")
    for flag, kind in (("--n-train", int), ("--n-val", int), ("--n-test", int), ("--epochs", int),
                       ("--threads", int)):
        p.add_argument(flag, type=kind, help=argparse.SUPPRESS)  # sizes, for tests and slow machines


def _run_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(args.out, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test, epochs=args.epochs,
             threads=args.threads)


def _sub_command(module: str, name: str):
    """A sub-command whose parser and runner live in ``module`` (``add_parser``, ``run``), imported when used."""
    return lambda arg: getattr(import_module(module), name)(arg)


COMMANDS = {
    "explain": (_add_explain, _run_explain),
    "data": (_add_data, _run_data),
    "train": (_add_train, _run_train),
    "eval": (_add_eval, _run_eval),
    "audit": (_add_audit, _run_audit),
    "segment": (_sub_command("isnet.segment.command", "add_parser"), _sub_command("isnet.segment.command", "run")),
    "bench": (_sub_command("isnet.bench.command", "add_parser"), _sub_command("isnet.bench.command", "run")),
    "demo": (_add_demo, _run_demo),
}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="isnet", description=(
        "LRP-Flex heatmaps for ReLU, attention and modern CNN classifiers, and ISNet / Faster ISNet training "
        "that keeps classifiers off image backgrounds."))
    from . import __version__

    parser.add_argument("--version", action="version", version=f"isnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


# user mistakes: UserError and the library's ValueErrors (bad arguments; UnknownModuleError, a module name
# the user gave, is also a KeyError), files that are not there or would be overwritten, training that
# diverged, relevance that is not finite; an OSError of a full or read-only disk, wherever it is raised
# (isnet.outputs.as_disk_error). KeyError, TypeError, RuntimeError, ... are bugs: traceback.
_REPORTED = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError, FloatingPointError)


def _reported(error: Exception) -> Exception | None:
    """What to print for a user's mistake (a full or read-only disk as a :class:`DiskError` naming the file);
    None for a bug."""
    if isinstance(error, OSError) and (disk := as_disk_error(error, writing=False)) is not None:
        return disk
    return error if isinstance(error, _REPORTED) else None


def _continue_hint(args: argparse.Namespace) -> str:
    """How to go on after a Ctrl-C or a SIGTERM: resume a training run that has started, rerun a benchmark."""
    if args.command == "bench" and args.bench in ("bias", "cxr"):
        return "; run the same command again: finished runs are reused"
    if args.command == "train" or (args.command == "segment" and args.segment == "train"):
        from .paths import run_contents

        out = Path(args.out).expanduser() if args.out is not None else None
        if out is not None and (out / "config.json").is_file():
            return "; continue the run with --resume (from its last checkpoint)"
        if out is not None and out.is_dir() and run_contents(out):
            return "; nothing was trained yet: run the command again with --overwrite"
        return "; nothing was written yet: run the command again"
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with command_warnings(args.command), raise_on_sigterm():
            COMMANDS[args.command][1](args)
    except Exception as error:  # noqa: BLE001 - a bug is raised again, with its traceback
        shown = _reported(error)
        if shown is None:
            raise
        hint = (_continue_hint(args) or ", then run the command again") if isinstance(shown, DiskError) else ""
        print(f"isnet {args.command}: error: {short_message(shown)}{hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"isnet {args.command}: interrupted{_continue_hint(args)}", file=sys.stderr)
        return 130
    except Terminated as stop:  # SIGTERM: a batch scheduler's time limit, kill, ...
        print(f"isnet {args.command}: terminated (SIGTERM){_continue_hint(args)}", file=sys.stderr)
        return int(stop.code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
