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


def _add_train(sub) -> None:
    from .config import TrainConfig
    from .options import add_dataclass_options

    p = sub.add_parser(
        "train", help="train a classifier (standard, ISNet, Faster ISNet, baselines) on a masked dataset",
        description="Train a classifier with Lightning. ISNet variants penalise LRP relevance outside the "
                    "foreground masks; without --c1/--c2 they are calibrated by a short standard run first. "
                    "Writes OUT/config.json, OUT/checkpoints/{last,best}.ckpt, OUT/metrics.csv and OUT/model.pt.")
    add_dataclass_options(p, TrainConfig, required=("out",))


def _run_train(args: argparse.Namespace) -> None:
    from .config import TrainConfig
    from .options import given_values
    from .training import fit

    config = given_values(args, TrainConfig)
    if not config.get("resume") and "train" not in config:
        raise ValueError("--train is required (unless --resume)")
    run = fit(config)  # TrainingDiverged (a FloatingPointError) and FileExistsError are reported by main
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank == 0:  # under DDP every process runs this command
        print(f"run written to {run}")


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a trained classifier on test sets",
                       description="Accuracy, macro-F1, AUROC (binary: 95% DeLong interval), confusion matrix and "
                                   "the share of absolute LRP relevance on the background (test sets with masks).")
    p.add_argument("--checkpoint", type=Path, required=True, help="a run folder or a .ckpt / model.pt file")
    p.add_argument("--test", action="append", required=True, metavar="NAME=DIR",
                   help="a named test set (dataset layout; masks/ optional); repeat for several")
    p.add_argument("--json", type=Path, help="write the results as JSON here")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1, ...")
    p.add_argument("--no-relevance", action="store_true", help="skip the background-relevance share")


def _run_eval(args: argparse.Namespace) -> None:
    from .checkpoints import write_json
    from .evaluate import evaluate, format_table

    tests = {}
    for item in args.test:
        name, sep, root = item.partition("=")
        if not sep or not name or not root:
            raise ValueError(f"--test expects NAME=DIR, got {item!r}")
        if name in tests:
            raise ValueError(f"test set name {name!r} given twice")
        tests[name] = Path(root)
    results = evaluate(args.checkpoint, tests, batch_size=args.batch_size, workers=args.workers,
                       device=args.device, relevance=not args.no_relevance)
    print(format_table(results))
    if args.json is not None:
        print(f"wrote {write_json(args.json.expanduser(), results)}")


def _parse_option(item: str) -> tuple[str, object]:
    import json

    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _add_bench_bias(bench) -> None:
    from .bench.presets import FULL, METHODS, QUICK

    b = bench.add_parser(
        "bias", help="background-bias benchmark on BG-Digits: ISNets and baselines, three test sets, report",
        description="Train every method with the `isnet train` pipeline on BG-Digits (digits with a class-coded "
                    "background patch), evaluate on biased / unbiased / deceiving test sets (accuracy, background "
                    "and patch relevance, occlusion check) and write results.json, results.md, results.csv, "
                    f"figures/ and report.html. Full run: {FULL['seeds']} seeds x {len(FULL['methods'])} methods, "
                    f"{FULL['n_train']} images, {FULL['epochs']} epochs; --quick: {', '.join(QUICK['methods'])}, "
                    f"{QUICK['seeds']} seed, {QUICK['n_train']} images, {QUICK['epochs']} epochs. Finished runs in "
                    "OUT are reused.")
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--quick", action="store_true", help="fewer methods, images and epochs, one seed")
    b.add_argument("--methods", nargs="+", choices=list(METHODS), metavar="METHOD",
                   help=f"methods to run (choices: {', '.join(METHODS)})")
    b.add_argument("--seeds", type=int, help="training seeds per method")
    b.add_argument("--epochs", type=int, help="training epochs of every method")
    b.add_argument("--n-train", type=int, help="training images")
    b.add_argument("--n-val", type=int, help="validation images")
    b.add_argument("--n-test", type=int, help="images per test set")
    b.add_argument("--data-seed", type=int, help="BG-Digits seed (default 0)")
    b.add_argument("--examples", dest="n_examples", type=int, help="heatmap examples per test set")
    b.add_argument("--set", dest="train_options", action="append", default=[], metavar="KEY=VALUE",
                   help="training option for every method (a TrainConfig field, JSON value), e.g. --set P=0.9")
    b.add_argument("--jobs", type=int, help=f"training processes at a time (default {FULL['jobs']}; each gets cores / jobs torch threads)")
    b.add_argument("--threads", type=int, help="torch CPU threads per process (default: torch's choice with one "
                   "job, else cores / jobs)")
    b.add_argument("--progress-bar", action="store_true", default=None, help="Lightning progress bars")


def _bench_bias_config(args: argparse.Namespace, base: dict):
    from .bench.bias import BiasBenchConfig

    values = dict(base)
    for key in ("methods", "seeds", "epochs", "n_train", "n_val", "n_test", "data_seed", "n_examples", "jobs", "threads",
                "progress_bar"):
        if getattr(args, key, None) is not None:
            values[key] = getattr(args, key)
    options = dict(_parse_option(item) for item in getattr(args, "train_options", []) or [])
    if options:
        values["train_options"] = options
    return BiasBenchConfig(**values)


def _run_bench_bias(args: argparse.Namespace) -> None:
    from .bench.bias import run_benchmark
    from .bench.grid import RunFailed
    from .bench.presets import FULL, QUICK
    from .bench.report import format_table

    try:
        results = run_benchmark(_bench_bias_config(args, QUICK if args.quick else FULL), args.out)
    except RunFailed as err:
        raise ValueError(str(err)) from None
    print(format_table(results))


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks: training speed and memory, explain time, background bias",
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
    _add_bench_bias(bench)


def _run_bench(args: argparse.Namespace) -> None:
    if args.bench == "bias":
        _run_bench_bias(args)
        return
    from .bench import speed

    run = {"speed": speed.run_speed, "explain": speed.run_explain}[args.bench]
    run(args.out, quick=args.quick, device=args.device, threads=args.threads)


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo", help="BG-Digits demo: standard classifier vs selective ISNet, table and report (a few minutes)",
        description="Build BG-Digits, train a standard classifier and a selective ISNet (Faster ISNet) with the "
                    "training defaults, print accuracy and background relevance on the biased, unbiased and "
                    "deceiving test sets, and write OUT/report.html (`isnet bench bias` with a small grid).")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default runs/demo)")
    for flag, kind in (("--n-train", int), ("--n-val", int), ("--n-test", int), ("--epochs", int),
                       ("--threads", int)):
        p.add_argument(flag, type=kind, help=argparse.SUPPRESS)  # sizes, for tests and slow machines


def _run_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(args.out, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test, epochs=args.epochs,
             threads=args.threads)


COMMANDS = {
    "explain": (_add_explain, _run_explain),
    "data": (_add_data, _run_data),
    "train": (_add_train, _run_train),
    "eval": (_add_eval, _run_eval),
    "bench": (_add_bench, _run_bench),
    "demo": (_add_demo, _run_demo),
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
    except (ValueError, FileNotFoundError, FileExistsError, FloatingPointError) as error:
        print(f"isnet {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
