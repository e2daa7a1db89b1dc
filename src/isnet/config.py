"""The configuration of a training run: one typed dataclass, the single source of its options.

Every :class:`TrainConfig` field carries its command-line help and group in its metadata, so
``isnet train --help``, the defaults and the validation all come from this one place. Fields
have one of four roles:

* **recipe** fields decide what is trained (data, model, loss, optimisation, seed);
* **runtime** fields decide where and how fast (hardware, workers, logging); a resumed run may
  change them, and :data:`RESUMABLE` names those that ``--resume`` accepts;
* **bookkeeping** fields (the output folder, ``quiet``, ``workers``, ``resume``) change nothing
  about the trained network;
* **resolved** fields are filled in by training (class list, image size, calibrated C1/C2) and
  have no command-line option.

This module imports no third-party package, so the command line can be built without loading
PyTorch.
"""

from __future__ import annotations

import dataclasses
import typing
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .errors import IsnetDeprecationWarning, UserError

__all__ = ["BOOKKEEPING", "BOUND_GROUPS", "GRADIENT_RULES", "OPTIMIZERS", "RENAMED", "RESUMABLE", "SCHEDULES",
           "TrainConfig", "current_names", "flag", "from_fields", "option", "out_of_range", "plain_fields",
           "validate_ranges"]

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("none", "cosine", "step")
GRADIENT_RULES = ("sum", "project", "balance", "guard")


def option(default: Any, help: str, group: str, *, flag: str | None = None, choices: tuple | None = None,
           metavar: str | None = None, resumable: bool = False, bookkeeping: bool = False,
           at_least: float | None = None, above: float | None = None, at_most: float | None = None) -> Any:
    """A dataclass field with its command-line description.

    ``flag`` overrides the generated ``--field-name``; ``resumable`` marks options that a
    resumed run may change; ``bookkeeping`` marks options that do not change the trained model.
    ``at_least`` / ``above`` / ``at_most`` give the valid range of a number (checked by the
    command-line parser and by :meth:`TrainConfig.validate`).
    """
    meta = {"help": help, "group": group, "flag": flag, "choices": choices, "metavar": metavar,
            "resumable": resumable, "bookkeeping": bookkeeping, "at_least": at_least, "above": above,
            "at_most": at_most}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def resolved(default: Any = None) -> Any:
    """A field that training fills in (no command-line option)."""
    return field(default=default, metadata={"resolved": True})


def out_of_range(meta: Mapping[str, Any], value: Any) -> str | None:
    """Why ``value`` is outside the range in a field's metadata (``"must be >= 0"``), or None."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    low, above, high = meta.get("at_least"), meta.get("above"), meta.get("at_most")
    if value != value:  # NaN
        return "must be a number, got nan"

    def show(x: float) -> str:
        return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"

    if low is not None and high is not None and not low <= value <= high:
        return f"must be in [{show(low)}, {show(high)}], got {show(value)}"
    if low is not None and value < low:
        return f"must be >= {show(low)}, got {show(value)}"
    if above is not None and value <= above:
        return f"must be > {show(above)}, got {show(value)}"
    if high is not None and value > high:
        return f"must be <= {show(high)}, got {show(value)}"
    return None


BOUND_GROUPS = ("", "_zplus")
"""Suffixes of the foreground-range fields: ``C1``/``C2`` (LRP-epsilon heatmaps) and
``C1_zplus``/``C2_zplus`` (the Dual ISNet's LRP-z+ heatmaps)."""

@dataclass
class TrainConfig:
    """Everything a training run depends on; :func:`isnet.training.fit` fills the resolved fields."""

    # data
    train: str | None = option(None, "training set root (images/<class>/..., masks/<class>/...)", "data")
    val: str | None = option(None, "validation set root (best.ckpt tracks its accuracy)", "data")
    image_size: int | None = option(None, "resize images and masks to this square side (default: the first "
                                          "training image's side, which must then be square)", "data", at_least=1)
    hflip: bool = option(False, "random horizontal flips in training (image and mask together)", "data")
    acquisition: float | None = option(
        None, "strength of random exposure, contrast, blur and noise of each training image, inside the mask "
              "too (1: gamma 0.74-1.35, gain 0.9-1.1, contrast 0.8-1.2, blur up to 1 pixel, noise sd up to 0.03): "
              "against site or scanner cues that neither the swap nor the heatmap loss removes", "data",
        metavar="STRENGTH", above=0, at_most=3)
    workers: int = option(2, "DataLoader workers per process", "data", resumable=True, bookkeeping=True,
                          at_least=0)
    # model
    arch: str = option("small_cnn", "small_cnn, small_vit, small_convnext, a torchvision classification model "
                                    "name or timm:NAME", "model")
    weights: str | None = option(
        None, "start from pretrained weights: a torchvision weights name (DEFAULT, IMAGENET1K_V1), read from the "
              "torch hub cache ($TORCH_HOME/hub/checkpoints), downloaded into it when missing (ISNET_OFFLINE=1: "
              "never), or a state-dict file; the last linear layer is replaced when the class count differs", "model", metavar="NAME|FILE")
    normalize: str = option("auto", "input normalisation the weights expect, folded into the first convolution "
                                    "(the model still takes pixels in [0, 1]); auto: imagenet for a torchvision "
                                    "weights name, else none", "model", choices=("auto", "none", "imagenet"))
    in_channels: int = option(3, "image channels the model reads: 3 (RGB; grayscale is replicated) or 1 "
                                 "(grayscale; colour images are converted; a pretrained first convolution is summed "
                                 "over its colour channels)", "model", choices=(1, 3))
    objective: str = option("selective", "training objective: an ISNet objective (standard, original, selective, "
                                         "stochastic, dual), the swap control or a baseline (rrr, gradcam, masked, "
                                         "seg-classify with --segmenter)", "model")
    deep_supervision: bool | list[str] = option(
        False, "LRP deep supervision: without names the default layers (ResNet stages, DenseNet transitions, "
               "VGG stages, else the max-pool outputs), or these module names", "model", metavar="LAYER")
    selective_class: str = option("lowest", "class whose eta the selective and dual objectives explain (lowest, as the "
                                            "reference implementation)", "model",
                                  choices=("lowest", "label", "highest"))
    selective_eps: float = option(0.01, "e_s of the selective quantity", "model", at_least=0)
    epsilon: float = option(0.01, "LRP epsilon", "model", at_least=0)
    zb: bool = option(True, "Z^B rule on the first layer (--no-zb: LRP-epsilon down to the input)", "model")
    batch_stats: str = option("constant", "training-mode batch norm in the heatmap pass: constant (its batch "
                                          "statistics held constant: each image's heatmap is its own) or gradient "
                                          "(their ordinary derivative, as the reference implementation: each "
                                          "heatmap also carries the other images' gradients)", "model",
                              choices=("constant", "gradient"))
    # ISNet loss
    P: float = option(0.5, "heatmap-loss weight: (1-P) CE + P heatmap loss (the papers: 0.7)", "ISNet loss",
                      at_least=0, at_most=1)
    p_warmup: float = option(3.0, "epochs of linear warm-up of P from 0 (0: none)", "ISNet loss", at_least=0)
    d: float = option(0.99, "GWRP decay over background pixels (the papers use 0.9)", "ISNet loss",
                      at_least=0, at_most=1)
    E: float = option(1.0, "background-term scale", "ISNet loss", above=0)
    A: float = option(1.0, "background-term weight", "ISNet loss", at_least=0)
    B: float = option(1.0, "foreground-term weight: the foreground relevance is kept above C1 (and, with "
                           "--foreground L2 or hybrid, below C2: the papers); 0 leaves the background term, which "
                           "is scale-free, alone", "ISNet loss", at_least=0)
    C1: float | None = option(None, "foreground relevance lower bound (with --c2; default: calibrated)",
                              "ISNet loss", flag="--c1", above=0)
    C2: float | None = option(None, "foreground relevance upper bound (with --c1; default: calibrated)",
                              "ISNet loss", flag="--c2", above=0)
    C1_zplus: float | None = option(None, "dual: the LRP-z+ heatmap's foreground relevance lower bound (with "
                                          "--c2-zplus; default: calibrated)", "ISNet loss",
                                    flag="--c1-zplus", above=0)
    C2_zplus: float | None = option(None, "dual: the LRP-z+ heatmap's foreground relevance upper bound (with "
                                          "--c1-zplus; default: calibrated)", "ISNet loss",
                                    flag="--c2-zplus", above=0)
    foreground: str = option("floor", "with --B above 0, the foreground penalty above C2: floor (none: only the "
                             "lower bound C1 is kept, so the network's confidence is not capped), hybrid (quadratic "
                             "up to C1 + C2, then linear; the Faster ISNet's) or L2 (quadratic; the ISNet paper's)",
                             "ISNet loss",
                             choices=("L2", "hybrid", "floor"))
    norm: str = option("absRoIMean", "heatmap normalisation", "ISNet loss", choices=("absRoIMean", "RoIMean"))
    d_loss: float = option(1.0, "GWRP decay over deep-supervision layers (1: mean)", "ISNet loss",
                           at_least=0, at_most=1)
    heatmap_gradient: str = option(
        "guard", "how the heatmap loss's gradient joins the cross-entropy's: sum ((1-P) CE + P heatmap loss, the "
               "papers), project (its component against the cross-entropy's gradient removed when they conflict), "
               "balance (its norm capped at --gradient-ratio times the cross-entropy's) or guard (projected, then "
               "capped); every rule but sum takes one more backward pass", "ISNet loss", choices=GRADIENT_RULES)
    gradient_ratio: float = option(1.0, "balance, guard: the largest heatmap-loss gradient norm, as a multiple of the "
                                        "cross-entropy's", "ISNet loss", above=0)
    log_gradients: bool = option(False, "log the norms of the cross-entropy and heatmap-loss gradients and their "
                                        "cosine per step (train/grad_*; with --heatmap-gradient sum this takes one "
                                        "more backward pass)", "ISNet loss")
    calibrate_epochs: int = option(2, "epochs of the standard run that starts the warm start and calibrates --c1/--c2 "
                                   "when --B is above 0 and they are not given (with the warm start at most "
                                   "--epochs - 1)",
                                   "ISNet loss", at_least=1)
    background_swap: float | None = option(
        None, "probability that a training image gets another image's background (mask-based); default: the "
              "objective's own (see --objective)", "ISNet loss", metavar="PROB", at_least=0, at_most=1)
    warm_start: bool = option(
        True, "the heatmap-loss training continues from the calibration network's weights instead of a fresh "
               "initialisation; the calibration epochs count towards --epochs (the heatmap-loss training keeps at "
               "least one), so the run sees as many epochs of data as a plain classifier trained for --epochs (from "
               "--epochs 2 on)",
        "ISNet loss")
    calibration_swap: float = option(
        1.0, "background-swap probability of the calibration run: C1/C2 come from a standard classifier "
             "trained with the swap, whatever the run's own --background-swap (one trained on the raw biased "
             "data reads the shortcut, and its relevance totals give C1/C2 that collapse the ISNet)",
        "ISNet loss", metavar="PROB", at_least=0, at_most=1)
    # baselines
    rrr_lambda: float = option(10.0, "rrr: weight of the input-gradient penalty", "baselines", at_least=0)
    gradcam_weight: float = option(1.0, "gradcam: weight of the background Grad-CAM share", "baselines", at_least=0)
    gradcam_layer: str | None = option(None, "gradcam: module whose output is the Grad-CAM feature map "
                                             "(default: the last convolutional feature map)", "baselines")
    segmenter: str | None = option(None, "seg-classify: the `isnet segment train` run whose predicted masks "
                                         "zero the background of the classifier's input (training and test)",
                                   "baselines", metavar="RUN")
    # optimisation
    epochs: int = option(30, "training epochs", "optimisation", resumable=True, at_least=1)
    batch_size: int = option(64, "batch size per process", "optimisation", at_least=1)
    lr: float = option(0.001, "learning rate", "optimisation", above=0)
    optimizer: str = option("adam", "optimiser (sgd uses --momentum)", "optimisation", choices=OPTIMIZERS)
    momentum: float = option(0.9, "SGD momentum", "optimisation", at_least=0)
    weight_decay: float | None = option(None, "weight decay (default 0, AdamW 0.01)", "optimisation", at_least=0)
    schedule: str = option("cosine", "learning-rate schedule", "optimisation", choices=SCHEDULES)
    lr_step: int | None = option(None, "step schedule: epochs per decay (default epochs // 3)", "optimisation",
                                 at_least=1)
    lr_gamma: float = option(0.1, "step schedule: decay factor", "optimisation", above=0)
    gradient_clip: float | None = option(1.0, "gradient-norm clipping (0: off)", "optimisation", at_least=0)
    # run
    seed: int = option(0, "seed of initialisation, shuffling and augmentation", "run",
                       at_least=0, at_most=2**32 - 1)
    out: str = option("run", "run folder", "run", bookkeeping=True)
    resume: bool = option(False, "continue OUT from checkpoints/last.ckpt with OUT/config.json (only --epochs "
                                 "and the hardware options may change)", "run", bookkeeping=True)
    overwrite: bool = option(False, "start OUT again when it holds an unfinished run (a failed or killed start): "
                                    "isnet's files in OUT are deleted first; a finished run (model.pt) is never "
                                    "deleted", "run", bookkeeping=True)
    deterministic: bool = option(True, "deterministic algorithms and seeding", "run")
    quiet: bool = option(False, "no progress bar or Lightning info", "run", resumable=True, bookkeeping=True)
    accelerator: str = option("auto", "Lightning accelerator: auto, cpu, gpu, ...", "run", resumable=True)
    devices: int | str | list[int] = option("auto", "Lightning devices: auto, a count, or a list such as 0,1",
                                            "run", resumable=True)
    num_nodes: int = option(1, "nodes for multi-node DDP", "run", resumable=True, at_least=1)
    strategy: str = option("auto", "Lightning strategy: auto, ddp, ddp_find_unused_parameters_true, ...", "run",
                           resumable=True)
    precision: str = option("32-true", "Lightning precision: 32-true, bf16-mixed, 16-mixed, ...", "run",
                            resumable=True)
    logger: str = option("csv", "experiment tracking besides RUN/metrics.csv (always written): tensorboard "
                                "(RUN/tensorboard) or mlflow (RUN/mlruns)", "run",
                         choices=("csv", "tensorboard", "mlflow"), resumable=True, bookkeeping=True)
    log_images: int = option(4, "validation images whose heatmaps are logged as pictures each epoch "
                                "(tensorboard, mlflow; 0: none)", "run", resumable=True, bookkeeping=True, at_least=0)
    # resolved by training
    classes: list[str] | None = resolved()
    num_classes: int | None = resolved()
    calibration: dict | None = resolved()

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """A configuration from a mapping of field values; an unknown key is an error."""
        return from_fields(cls, values, "training")

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain JSON-ready values."""
        return plain_fields(self)

    def lrp_options(self) -> dict[str, Any]:
        """The LRP-Flex options of this run (keyword arguments of :class:`isnet.LRPFlex`)."""
        return {"epsilon": self.epsilon, "zb": self.zb, "batch_stats": self.batch_stats}

    def uses_bounds(self) -> bool:
        """Whether the heatmap loss reads C1/C2: only its foreground term does (``B`` above 0)."""
        return self.B > 0

    def first_phase_epochs(self) -> int:
        """Epochs the standard first phase trains unless its network is still at chance: ``calibrate_epochs``,
        for a warm start at most ``epochs - 1`` (the main training keeps one) and at least 1."""
        return max(1, min(self.calibrate_epochs, self.epochs - 1)) if self.warm_start else self.calibrate_epochs

    def warm_epochs(self) -> int:
        """Calibration epochs that count towards ``epochs``: those a warm start continues from (the main
        training keeps at least one epoch)."""
        if self.warm_start and self.calibration:
            return max(0, min(int(self.calibration["epochs"]), self.epochs - 1))
        return 0

    def main_epochs(self) -> int:
        """Epochs of the main training: ``epochs`` less :meth:`warm_epochs`."""
        return self.epochs - self.warm_epochs()

    def validate(self) -> None:
        """Raise :class:`isnet.errors.UserError` naming the first option out of range.

        Ranges come from the fields' metadata; the objective and architecture names are checked
        by their registries when training starts.
        """
        validate_ranges(self)
        for suffix in BOUND_GROUPS:
            low, high = getattr(self, "C1" + suffix), getattr(self, "C2" + suffix)
            flags = f"--c1{suffix.replace('_', '-')}", f"--c2{suffix.replace('_', '-')}"
            if (low is None) != (high is None):
                raise UserError(f"give both {flags[0]} and {flags[1]}, or neither (then they are calibrated)")
            if low is not None and not low <= high:
                raise UserError(f"need {flags[0]} <= {flags[1]}, got {low} and {high}")
        if not _valid_devices(self.devices):
            raise UserError(f"--devices must be auto, a count >= 1, -1 (all) or a list such as 0,1; "
                            f"got {self.devices!r}")
        if self.resume and self.overwrite:
            raise UserError("--resume continues a run and --overwrite starts it again; give one of them")
        if self.train is None:
            raise UserError("no training set: give --train, a dataset root (images/ + masks/)")


RENAMED = MappingProxyType({"variant": "objective"})
"""Earlier option names and today's. Run folders and checkpoints written under an earlier name
(their ``config.json``, a checkpoint's hyper-parameters) are read with today's; a configuration
file, ``--set`` or a Python mapping that uses one works, with an :class:`IsnetDeprecationWarning`;
the command line takes the earlier flag too (``--variant``, :mod:`isnet.options`)."""


def current_names(values: Mapping[str, Any], source: str | None = None) -> dict[str, Any]:
    """``values`` with each key of :data:`RENAMED` under today's name.

    ``source`` names where the values were written (``--config FILE``, ``--set``): each earlier
    name found is then reported as an :class:`isnet.errors.IsnetDeprecationWarning`; a run's own
    records are read without one. Both names with different values is a :class:`UserError`.
    """
    out = dict(values)
    for old, new in RENAMED.items():
        if old not in out:
            continue
        value = out.pop(old)
        where = f"{source}: " if source else ""
        if new in out and out[new] != value:
            raise UserError(f"{where}{old} {value!r} and {new} {out[new]!r} disagree; {old} is the earlier name of "
                            f"{new}: give {new} only")
        out[new] = value
        if source is not None:
            warnings.warn(f"{where}{old} is deprecated; use {new}", IsnetDeprecationWarning, stacklevel=2)
    return out


def from_fields(cls: type, values: Mapping[str, Any], kind: str) -> Any:
    """An instance of the dataclass ``cls`` from a mapping of its field values; an unknown key is a
    :class:`isnet.errors.UserError` (``kind`` names the options in its message). An earlier name
    (:data:`RENAMED`) is read as today's, with a deprecation warning."""
    values = current_names(values, source=f"{kind} options")
    declared = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"unknown {kind} options {unknown}; known: {sorted(known)}")
    return cls(**{key: _as_declared(declared[key], value) for key, value in values.items()})


def _as_declared(declared: Any, value: Any) -> Any:
    """An integer given for a float field as a float, so ``1`` and ``1.0`` make the same configuration."""
    if declared in (float, float | None) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def plain_fields(instance: Any) -> dict[str, Any]:
    """A run configuration's fields as plain JSON-ready values (its ``train``, ``val`` and ``out`` paths as text)."""
    out = dataclasses.asdict(instance)
    for key in ("train", "val", "out"):
        if out[key] is not None:
            out[key] = str(out[key])
    return out


def validate_ranges(instance: Any) -> None:
    """Raise :class:`isnet.errors.UserError` naming (by its command-line flag) the first field of a dataclass
    instance whose value is not among its metadata's ``choices`` or out of its metadata's range
    (:func:`out_of_range`)."""
    for f in dataclasses.fields(instance):
        value, meta = getattr(instance, f.name), f.metadata
        name = meta.get("flag") or "--" + f.name.replace("_", "-")
        if meta.get("choices") and value not in meta["choices"]:
            raise UserError(f"{name} must be one of {list(meta['choices'])}, got {value!r}")
        problem = out_of_range(meta, value)
        if problem:
            raise UserError(f"{name} {problem}")


def _valid_devices(devices: Any) -> bool:
    """Lightning's ``devices``: "auto", -1 (all), a count >= 1, or device indices (a list or "0,1")."""
    if devices in ("auto", -1, "-1"):
        return True
    if isinstance(devices, int):
        return devices >= 1
    if isinstance(devices, list):
        return bool(devices) and all(isinstance(d, int) and d >= 0 for d in devices)
    if isinstance(devices, str) and devices.replace(",", "").isdigit():
        return "," in devices or int(devices) >= 1
    return False


def flag(name: str) -> str:
    """The command-line flag of a :class:`TrainConfig` field (``"workers"`` -> ``"--workers"``)."""
    meta = next((f.metadata for f in dataclasses.fields(TrainConfig) if f.name == name), {})
    return meta.get("flag") or "--" + name.replace("_", "-")


def _names(key: str) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get(key))


RESUMABLE = _names("resumable")
"""Options that ``resume`` takes from the new call; everything else comes from the run's config.json."""
BOOKKEEPING = _names("bookkeeping")
"""Options that do not change the trained network (left out of a stored benchmark run's training key)."""
