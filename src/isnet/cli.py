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

from .errors import command_warnings
from .options import OneLineParser, number, target


def _add_explain(sub) -> None:
    p = sub.add_parser("explain", help="write LRP-Flex heatmaps (PNG + .npy) for an image or a folder",
                       description="Explain a classifier's decisions with LRP-Flex heatmaps. OUT must not be or "
                                   "contain the input, and files in it that isnet did not write are never replaced.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--weights", metavar="NAME|FILE",
                     help="state dict (.pt) of --arch, or a torchvision weights name (DEFAULT, IMAGENET1K_V1) read "
                          "from the torch hub cache ($TORCH_HOME/hub/checkpoints; never downloaded)")
    src.add_argument("--checkpoint", type=Path, help="a run folder or checkpoint written by `isnet train`")
    p.add_argument("--arch", help="small_cnn, small_vit, small_convnext, a torchvision model name or timm:NAME (not "
                                  "needed with --checkpoint)")
    p.add_argument("--num-classes", type=number(int, at_least=1), default=None,
                   help="classes (outputs) of --arch (default 1000)")
    p.add_argument("--images", type=Path, required=True,
                   help="an image, a folder of images, or a dataset root (images/<class>/...)")
    p.add_argument("--out", type=Path, required=True, help="output folder (outside the input)")
    p.add_argument("--target", type=target, default="pred", help="label, pred (default) or a class index")
    p.add_argument("--image-size", type=number(int, at_least=1), default=None,
                   help="resize images to this square side (default: a checkpoint's training size, else the "
                        "images' own size, which must then be the same for all)")
    p.add_argument("--normalize", choices=["auto", "none", "imagenet"], default=None,
                   help="input normalisation the model expects (Z^B bounds follow it); default auto: imagenet for a "
                        "torchvision weights name, else none; not with --checkpoint, whose models see pixels in [0, 1]")
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
    from .bench.presets import CUES, MASK_QUALITIES, PLACEMENTS

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
        from .data.bg_cxr import write_dataset as write_cxr

        tests = ("biased", *(("unbiased",) if args.unbiased else ()), "external", "deceiving")
        paths = write_cxr(args.out, seed=args.seed, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test,
                          image_size=args.image_size, correlation=args.correlation, tests=tests, progress=True)
    else:
        from .data.bg_digits import write_dataset

        paths = write_dataset(args.out, seed=args.seed, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test,
                              mask=args.mask, placement=args.placement, cue=args.cue, train_mask=args.train_mask,
                              extra_tests=args.extra_tests, progress=True)
    for split, path in paths.items():
        print(f"{split:>12}: {path}")


def _add_train(sub) -> None:
    from .config import TrainConfig
    from .options import add_dataclass_options

    p = sub.add_parser(
        "train", help="train a classifier (standard, ISNet, Faster ISNet, baselines) on a masked dataset",
        description="Train a classifier with Lightning. ISNet variants penalise LRP relevance outside the "
                    "foreground masks; without --c1/--c2 they are calibrated by a short standard run first. "
                    "Writes OUT/config.json, OUT/checkpoints/{last,best}.ckpt, OUT/metrics.csv and OUT/model.pt. "
                    "Everything is checked before OUT is written; OUT may not hold another run: --resume continues "
                    "one, --overwrite starts an unfinished one again (a finished model.pt is never replaced).")
    add_dataclass_options(p, TrainConfig, required=("out",))


def _run_train(args: argparse.Namespace) -> None:
    from .config import TrainConfig
    from .errors import UserError
    from .options import given_values

    config = given_values(args, TrainConfig)
    if not config.get("resume") and "train" not in config:
        raise UserError("--train is required (unless --resume)")
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
                       description="Accuracy, macro-F1, AUROC (binary: 95% DeLong interval), confusion matrix and "
                                   "the share of absolute LRP relevance on the background (test sets with masks).")
    p.add_argument("--checkpoint", type=Path, required=True, help="a run folder or a .ckpt / model.pt file")
    p.add_argument("--test", action="append", required=True, metavar="NAME=DIR",
                   help="a named test set (dataset layout; masks/ optional); repeat for several")
    p.add_argument("--json", type=Path, help="write the results as JSON here (a new file or an earlier result)")
    p.add_argument("--batch-size", type=number(int, at_least=1), default=64)
    p.add_argument("--workers", type=number(int, at_least=0), default=0)
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1, ...")
    p.add_argument("--no-relevance", action="store_true", help="skip the background-relevance share")


def _run_eval(args: argparse.Namespace) -> None:
    from .checkpoints import write_json
    from .evaluate import evaluate, format_table
    from .options import named_tests
    from .paths import check_json_output

    tests = named_tests(args.test)
    if args.json is not None:
        check_json_output(args.json, option="--json")  # before the work, so no result is lost
    results = evaluate(args.checkpoint, tests, batch_size=args.batch_size, workers=args.workers,
                       device=args.device, relevance=not args.no_relevance)
    print(format_table(results))
    if args.json is not None:
        print(f"wrote {write_json(args.json.expanduser(), results)}")


def _add_grid_options(b: argparse.ArgumentParser, dataset: str, methods_note: str = "") -> None:
    """The options of the background-bias benchmarks (``bench bias``, ``bench cxr``)."""
    from .bench.presets import FULL, METHODS

    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--quick", action="store_true", help="fewer methods, images and epochs, one seed")
    b.add_argument("--methods", nargs="+", choices=list(METHODS), metavar="METHOD",
                   help=f"methods to run (choices: {', '.join(METHODS)}){methods_note}")
    b.add_argument("--seeds", type=int, help="training seeds per method")
    b.add_argument("--epochs", type=int, help="training epochs of every method")
    b.add_argument("--n-train", type=int, help="training images")
    b.add_argument("--n-val", type=int, help="validation images")
    b.add_argument("--n-test", type=int, help="images per test set")
    b.add_argument("--data-seed", type=int, help=f"{dataset} seed (default 0)")
    b.add_argument("--examples", dest="n_examples", type=int, help="heatmap examples per test set")
    b.add_argument("--set", dest="train_options", action="append", default=[], metavar="KEY=VALUE",
                   help="training option for every method (a TrainConfig field, JSON value), e.g. --set P=0.9; "
                        "not one a method sets itself, such as background_swap")
    b.add_argument("--jobs", type=int,
                   help=f"training processes at a time (default {FULL['jobs']}; each gets cores / jobs torch threads)")
    b.add_argument("--threads", type=int, help="torch CPU threads per process (default: torch's choice with one "
                   "job, else cores / jobs)")
    b.add_argument("--progress-bar", action="store_true", default=None, help="Lightning progress bars")


def _add_bench_bias(bench) -> None:
    from .bench.presets import CUES, FULL, PLACEMENTS, QUICK

    b = bench.add_parser(
        "bias", help="background-bias benchmark on BG-Digits: ISNets and baselines, three test sets, report",
        description="Train every method with the `isnet train` pipeline on BG-Digits (digits with a class-coded "
                    "background cue), evaluate on biased / unbiased / deceiving test sets (accuracy, background "
                    "and patch relevance, occlusion check), compare each method with the standard classifier "
                    "trained with the same background swap (names ending in +swap train with it), and write "
                    "results.json, results.md, results.csv, figures/ and report.html. Full run: "
                    f"{FULL['seeds']} seeds x {len(FULL['methods'])} methods, {FULL['n_train']} images, "
                    f"{FULL['epochs']} epochs; --quick: {', '.join(QUICK['methods'])}, {QUICK['seeds']} seed, "
                    f"{QUICK['n_train']} images, {QUICK['epochs']} epochs. --sweep, --swap-dose and --mask-quality "
                    "train other grids at the same sizes. Finished runs in OUT are reused.")
    _add_grid_options(b, "BG-Digits", "; with a grid mode, the methods of that mode")
    mode = b.add_mutually_exclusive_group()
    mode.add_argument("--sweep", action="store_true",
                      help="hyper-parameter sweep (RRR lambda, Grad-CAM weight, ISNet P; each without and with swap): "
                           "the value picked on the biased validation split and the oracle pick on the unbiased test "
                           "set, in sweep.json / sweep.md")
    mode.add_argument("--swap-dose", action="store_true",
                      help="standard, selective, stochastic, rrr and gradcam at swap probabilities 0, 0.25, 0.5, 0.75 "
                           "and 1: swap_dose.json / .md and figures/swap_dose.png")
    mode.add_argument("--mask-quality", action="store_true",
                      help="train with degraded masks (dilated, eroded, bounding box, shifted; test masks exact): "
                           "mask_quality.json / .md")
    b.add_argument("--mask", choices=["box", "strokes"], help="foreground masks: the digit's box (default) or strokes")
    b.add_argument("--placement", choices=list(PLACEMENTS),
                   help="digit box inside the central 24x24 area (centre, default) or anywhere on the canvas")
    b.add_argument("--cue", choices=list(CUES),
                   help="class-coded bias: a white border patch (patch, default) or a colour tint of the background "
                        "(tint: no patch, so no occlusion check)")


def _add_bench_cxr(bench) -> None:
    from .bench.cxr_presets import CXR_FULL, CXR_SIZES

    b = bench.add_parser(
        "cxr", help="background-bias benchmark on BG-CXR (chest-X-ray-like, hospital shortcuts), four test sets",
        description="`bench bias` on BG-CXR (real lung shapes, anatomy around them, hospital shortcuts): evaluate on "
                    "biased / unbiased / external (unseen hospitals) / deceiving test sets (accuracy, AUROC, abnormal-"
                    "vs-normal AUROC with DeLong interval, relevance outside the lungs and on marker and label box); "
                    f"write results.json, results.md, results.csv, figures/ and report.html. {CXR_SIZES}")
    _add_grid_options(b, "BG-CXR")
    b.add_argument("--arch", help=f"small_cnn, small_vit, small_convnext or a torchvision model name (default: "
                                   f"{CXR_FULL['arch']}, see above)")
    b.add_argument("--image-size", type=int, help=f"side, 64 to 512 (default: {CXR_FULL['image_size']}, see above)")
    b.add_argument("--correlation", type=float, help="share of each class from its own hospitals in training (0.95)")


def _run_bench_bias(args: argparse.Namespace) -> None:
    from .bench.bias import run_benchmark
    from .bench.modes import run_mask_quality, run_swap_dose, run_sweep
    from .bench.presets import FULL, QUICK, BiasBenchConfig, bench_config
    from .bench.report import format_table

    cfg = bench_config(BiasBenchConfig, QUICK if args.quick else FULL, vars(args), args.train_options)
    modes = {"sweep": (run_sweep, "sweep.md"), "swap_dose": (run_swap_dose, "swap_dose.md"),
             "mask_quality": (run_mask_quality, "mask_quality.md")}
    chosen = next((modes[m] for m in modes if getattr(args, m, False)), None)
    if chosen is None:
        print(format_table(run_benchmark(cfg, args.out)))
        return
    chosen[0](cfg, args.out, methods=args.methods)
    print((args.out.expanduser() / chosen[1]).read_text())


def _run_bench_cxr(args: argparse.Namespace) -> None:
    from .bench.cxr import run_benchmark
    from .bench.cxr_presets import CXR_FULL, CXR_QUICK, CxrBenchConfig
    from .bench.cxr_report import format_table
    from .bench.presets import bench_config

    cfg = bench_config(CxrBenchConfig, CXR_QUICK if args.quick else CXR_FULL, vars(args), args.train_options)
    print(format_table(run_benchmark(cfg, args.out)))


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks: training speed and memory, explain time, background bias "
                       "(BG-Digits, BG-CXR)",
                       description="Benchmarks; each writes JSON, Markdown tables and plots to --out.")
    bench = p.add_subparsers(dest="bench", required=True)
    speed = bench.add_parser("speed", help="training-step time and peak memory of every variant vs the class "
                             "count, and explain time vs gradient x input (full run: about 20-30 min on CPU)")
    explain = bench.add_parser("explain", help="LRP-Flex explain time vs gradient x input (and zennit)")
    for b in (speed, explain):
        b.add_argument("--out", type=Path, required=True)
        b.add_argument("--quick", action="store_true", help="small inputs, fewer K and repeats (a few minutes)")
        b.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
        b.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    explain.add_argument("--archs", nargs="+", metavar="ARCH",
                         help="architectures to time (default: resnet18 vgg11 densenet121 vit_b_16 convnext_tiny "
                              "swin_t efficientnet_b0; --quick: resnet18)")
    _add_bench_bias(bench)
    _add_bench_cxr(bench)


def _run_bench(args: argparse.Namespace) -> None:
    if args.bench in ("bias", "cxr"):
        from .bench.grid import RunFailed

        try:
            (_run_bench_bias if args.bench == "bias" else _run_bench_cxr)(args)
        except RunFailed as err:
            raise ValueError(str(err)) from None
        return
    from .bench import speed

    if args.bench == "explain":
        speed.run_explain(args.out, quick=args.quick, device=args.device, threads=args.threads, archs=args.archs)
    else:
        speed.run_speed(args.out, quick=args.quick, device=args.device, threads=args.threads)


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


def _segment(name: str):
    """``isnet segment``: its parser and runner live in :mod:`isnet.segment.command`, imported when used."""
    return lambda arg: getattr(import_module("isnet.segment.command"), name)(arg)


COMMANDS = {
    "explain": (_add_explain, _run_explain),
    "data": (_add_data, _run_data),
    "train": (_add_train, _run_train),
    "eval": (_add_eval, _run_eval),
    "segment": (_segment("add_parser"), _segment("run")),
    "bench": (_add_bench, _run_bench),
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
# diverged, relevance that is not finite. KeyError, TypeError, RuntimeError, ... are bugs: traceback.
_REPORTED = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError, FloatingPointError)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with command_warnings(args.command):
            COMMANDS[args.command][1](args)
    except _REPORTED as error:
        print(f"isnet {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = {"train": "; continue the run with --resume (from its last checkpoint)",
                "segment": "; continue a training run with --resume (from its last checkpoint)",
                "bench": "; run the same command again: finished runs are reused"}.get(args.command, "")
        print(f"isnet {args.command}: interrupted{hint}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
