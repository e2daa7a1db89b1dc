"""The ``isnet bench`` command: its arguments and what each benchmark calls.

``speed`` and ``explain`` time training steps and heatmaps (:mod:`isnet.bench.speed`);
``bias`` and ``cxr`` train and evaluate every method on BG-Digits and BG-CXR
(:func:`isnet.bench.run.run_benchmark` with :mod:`isnet.bench.digits` or :mod:`isnet.bench.cxr`;
grid modes in :mod:`isnet.bench.digits.modes`).
The parser is built without importing PyTorch; the runners import what they need.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "run"]


def _add_grid_options(b: argparse.ArgumentParser, dataset: str, full: Mapping[str, Any],
                      methods_note: str = "") -> None:
    """The options of the background-bias benchmarks (``bench bias``, ``bench cxr``); ``full``: the full preset."""
    from .presets import METHODS

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
                   help=f"training processes at a time (default {full['jobs']}; each gets cores / jobs torch threads)")
    b.add_argument("--threads", type=int, help="torch CPU threads per process (default: torch's choice with one "
                   "job, else cores / jobs)")
    b.add_argument("--progress-bar", action="store_true", default=None, help="Lightning progress bars")


def _add_bench_bias(bench) -> None:
    from .digits.presets import CUES, FULL, PLACEMENTS, QUICK

    b = bench.add_parser(
        "bias", help="background-bias benchmark on BG-Digits: ISNets and baselines, three test sets, report",
        description="Train every method with the `isnet train` pipeline on BG-Digits (digits with a class-coded "
                    "background cue), evaluate on biased / unbiased / deceiving test sets (accuracy, background "
                    "and patch relevance, occlusion check), compare each method with the standard classifier "
                    "trained with the same background swap (names ending in +swap train with it), and write "
                    "results.json, results.md, results.csv, audit.csv, figures/ and report.html. Full run: "
                    f"{FULL['seeds']} seeds x {len(FULL['methods'])} methods, {FULL['n_train']} images, "
                    f"{FULL['epochs']} epochs; --quick: {', '.join(QUICK['methods'])}, {QUICK['seeds']} seed, "
                    f"{QUICK['n_train']} images, {QUICK['epochs']} epochs. --sweep, --swap-dose and --mask-quality "
                    "train other grids at the same sizes. Finished runs in OUT are reused.")
    _add_grid_options(b, "BG-Digits", FULL, "; with a grid mode, the methods of that mode")
    mode = b.add_mutually_exclusive_group()
    mode.add_argument("--sweep", action="store_true",
                      help="hyper-parameter sweep (RRR lambda, Grad-CAM weight, ISNet P; each without and with swap): "
                           "the value picked on the biased validation split and the oracle pick on the unbiased test "
                           "set, in sweep.json / sweep.md")
    mode.add_argument("--swap-dose", action="store_true",
                      help="standard, selective, stochastic, rrr and gradcam at swap probabilities 0, 0.25, 0.5, 0.75 "
                           "and 1: swap_dose.json / .md and figures/swap_dose.png")
    b.add_argument("--probabilities", type=float, nargs="+", metavar="P",
                   help="--swap-dose: the swap probabilities, each in [0, 1] (default 0 0.25 0.5 0.75 1)")
    mode.add_argument("--mask-quality", action="store_true",
                      help="train with degraded masks (dilated, eroded, bounding box, shifted; test masks exact): "
                           "mask_quality.json / .md")
    b.add_argument("--arch", help="small_cnn (default), small_vit, small_convnext, a torchvision model name or "
                                  "timm:NAME (BG-Digits images are 32x32)")
    b.add_argument("--mask", choices=["box", "strokes"], help="foreground masks: the digit's box (default) or strokes")
    b.add_argument("--placement", choices=list(PLACEMENTS),
                   help="digit box inside the central 24x24 area (centre, default) or anywhere on the canvas")
    b.add_argument("--cue", choices=list(CUES),
                   help="class-coded bias: a white border patch (patch, default) or a colour tint of the background "
                        "(tint: no patch, so no occlusion check)")


def _add_bench_cxr(bench) -> None:
    from .cxr.presets import CXR_FULL, CXR_SIZES

    b = bench.add_parser(
        "cxr", help="background-bias benchmark on BG-CXR (chest-X-ray-like, hospital shortcuts), four test sets",
        description="`bench bias` on BG-CXR (real lung shapes, anatomy around them, hospital shortcuts): evaluate on "
                    "biased / unbiased / external (unseen hospitals) / deceiving test sets (accuracy, AUROC, abnormal-"
                    "vs-normal AUROC with DeLong interval, relevance outside the lungs and on marker and label box); "
                    f"write results.json, results.md, results.csv, audit.csv, figures/ and report.html. {CXR_SIZES}")
    _add_grid_options(b, "BG-CXR", CXR_FULL)
    b.add_argument("--arch", help=f"small_cnn, small_vit, small_convnext, a torchvision model name or timm:NAME "
                                   f"(default: {CXR_FULL['arch']}, see above)")
    b.add_argument("--image-size", type=int, help=f"side, 64 to 512 (default: {CXR_FULL['image_size']}, see above)")
    b.add_argument("--correlation", type=float, help="share of each class from its own hospitals in training (0.95)")


def _run_bench_bias(args: argparse.Namespace) -> None:
    from ..errors import UserError
    from .digits.benchmark import BG_DIGITS
    from .digits.modes import run_mask_quality, run_swap_dose, run_sweep
    from .run import run_benchmark

    cfg = BG_DIGITS.settings(args.quick, vars(args), args.train_options)
    modes = {"sweep": (run_sweep, "sweep.md"), "swap_dose": (run_swap_dose, "swap_dose.md"),
             "mask_quality": (run_mask_quality, "mask_quality.md")}
    chosen = next((m for m in modes if getattr(args, m, False)), None)
    if args.probabilities is not None and chosen != "swap_dose":
        raise UserError("--probabilities sets the swap probabilities of --swap-dose; add --swap-dose or drop it")
    if chosen is None:
        print(BG_DIGITS.format_table(run_benchmark(BG_DIGITS, cfg, args.out)))
        return
    runner, table = modes[chosen]
    extra = {"probabilities": args.probabilities} if args.probabilities is not None else {}
    runner(cfg, args.out, methods=args.methods, **extra)
    print((args.out.expanduser() / table).read_text())


def _run_bench_cxr(args: argparse.Namespace) -> None:
    from .cxr.benchmark import BG_CXR
    from .run import run_benchmark

    cfg = BG_CXR.settings(args.quick, vars(args), args.train_options)
    print(BG_CXR.format_table(run_benchmark(BG_CXR, cfg, args.out)))


def add_parser(sub) -> None:
    """Add ``bench speed|explain|bias|cxr`` to the ``isnet`` sub-parsers ``sub``."""
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


def run(args: argparse.Namespace) -> None:
    """Run ``isnet bench <speed|explain|bias|cxr>``."""
    if args.bench in ("bias", "cxr"):
        from .grid import RunFailed

        try:
            (_run_bench_bias if args.bench == "bias" else _run_bench_cxr)(args)
        except RunFailed as err:
            raise ValueError(str(err)) from None
        return
    from .speed.benchmark import run_explain, run_speed

    if args.bench == "explain":
        run_explain(args.out, quick=args.quick, device=args.device, threads=args.threads, archs=args.archs)
    else:
        run_speed(args.out, quick=args.quick, device=args.device, threads=args.threads)
