"""What ``isnet audit`` runs: a classifier and test-set folders in, the audit's report out.

The classifier is loaded as ``isnet explain`` loads it (a run folder, or ``--arch`` with ``--weights``,
:func:`isnet.explain_files.load_model`), the test sets as ``isnet eval`` reads them (the dataset layout with
``masks/``, 8- and 16-bit images and DICOM), and each test set is audited with
:func:`isnet.background_audit.audit`. OUT receives ``audit.json`` (every number, per-image predictions),
``audit.md`` (the table, the verdicts and the cost) and ``audit.html`` (the same with example counterfactuals
and their predictions).

OUT may not be, contain or lie inside an input, and may hold only files isnet wrote (recorded in its
ledger, :mod:`isnet.outputs`): an earlier audit's three files are replaced. One audit at a time holds OUT
(:mod:`isnet.locks`). The options, the model and every test set (masks, classes, regions) are checked
before the first image is audited.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from textwrap import fill
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from .audit_stats import COLUMNS, CONDITIONS, ORIGINAL, OTHER, cost_text, table_rows
from .background_audit import audit, check_auditable, counterfactuals, dataset_tensors
from .checkpoints import classifier_input, explainer
from .data import MaskedImageFolder, make_transform
from .data.imageio import probe_size
from .errors import UserError, UserFileNotFoundError
from .evaluate import resolve_device
from .explain_files import check_model_input, input_normalisation, load_model
from .figures import image_grid
from .locks import LOCK, FolderLock
from .lrp import LRPFlex
from .outputs import LEDGER, claim, write_json, write_text
from .paths import check_new_files, check_separate
from .report_html import write_html_report
from .tables import markdown_table

__all__ = ["COMMAND", "OUTPUTS", "audit_folders", "audit_markdown", "examples_figure"]

COMMAND = "isnet audit"
OUTPUTS = ("audit.json", "audit.md", "audit.html")


def _check_out(out: Path, inputs: Sequence[Path]) -> None:
    """Refuse an OUT that is, contains or lies in an input, or holds anything isnet did not write."""
    check_separate(out, inputs, out_option="--out", in_option="--test")
    if out.is_dir():
        check_new_files(out, sorted(p for p in out.iterdir() if p.name not in (LEDGER, LOCK)), [], out_option="--out")


def examples_figure(images: Tensor, masks: Tensor, regions: Tensor | None, result: Mapping[str, Any],
                    classes: Sequence[str], count: int = 8) -> Figure:
    """Up to ``count`` images and their counterfactuals, each titled with its prediction.

    Images whose prediction moved to the donor's class come first, then other changed predictions, then the
    rest, each group taking the classes in turn. ``result`` is :func:`isnet.background_audit.audit`'s for
    these images.
    """
    per_image = result["per_image"]
    labels, donors = np.asarray(per_image["label"]), np.asarray(per_image["donor"])
    predicted = {name: np.asarray(p) for name, p in per_image["predicted"].items()}
    changed = predicted[OTHER] != predicted[ORIGINAL]
    to_donor = changed & (predicted[OTHER] == labels[donors])
    turn = np.zeros(labels.size, dtype=np.int64)  # the image's place among those of its class
    for c in np.unique(labels):
        turn[labels == c] = np.arange((labels == c).sum())
    chosen = np.lexsort((np.arange(labels.size), turn, ~changed, ~to_donor))[:count]
    own, donor = torch.from_numpy(chosen), torch.from_numpy(donors[chosen])
    made = counterfactuals(images[own], masks[own], images[donor], masks[donor], torch.tensor(result["neutral_fill"]),
                           None if regions is None else regions[own])

    def name(index: int) -> str:
        text = str(classes[index]) if index < len(classes) else str(index)
        return text if len(text) <= 14 else text[:13] + "…"

    shown, titles = {}, {}
    for condition, x in ((ORIGINAL, images[own]), *made.items()):
        cells = [f"pred {name(p)}" for p in predicted[condition][chosen]]
        if condition == ORIGINAL:
            cells = [f"label {name(y)}\n{cell}" for y, cell in zip(labels[chosen], cells)]
        if condition == OTHER:
            cells = [f"donor {name(y)}\n{cell}" for y, cell in zip(labels[donors[chosen]], cells)]
        row = fill(CONDITIONS[condition], 18)
        shown[row], titles[row] = x, cells
    return image_grid(shown, titles)


def audit_markdown(report: Mapping[str, Any]) -> str:
    """``audit.md``: the table, each test set's verdict and the cost."""
    tests = report["tests"]
    lines = ["# isnet audit", "", markdown_table(table_rows(tests)), "", COLUMNS, ""]
    lines += [f"* **{name}**: {r['verdict']['text']}" for name, r in tests.items()]
    lines += ["", *(f"Cost: {text}." for text in dict.fromkeys(cost_text(r) for r in tests.values())),
              "", "How to read it: docs/audit.md."]
    return "\n".join(lines) + "\n"


def _model_input(config: Mapping[str, Any] | None, mean: Tensor, std: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """What the loaded model sees from pixels and masks: a run's classifier input, or the normalised pixels."""
    if config is not None:
        return partial(classifier_input, config=config)
    return lambda x, _: (x - mean) / std


def audit_folders(tests: Mapping[str, str | Path], out: str | Path, *, checkpoint: str | Path | None = None,
                  arch: str | None = None, weights: str | Path | None = None, num_classes: int | None = None,
                  normalize: str | None = None, image_size: int | None = None,
                  regions: Mapping[str, str | Path] | None = None, batch_size: int = 64, workers: int = 0,
                  device: str | torch.device | None = None, seed: int = 0, resamples: int = 1000, margin: float = 0.1,
                  relevance: bool = True, examples: int = 8) -> dict[str, Any]:
    """Audit a classifier on each named test set and write OUT's report (see the module docstring).

    ``tests``: name -> dataset root with ``images/`` and ``masks/``. ``regions``: test-set name -> a folder laid
    out like ``masks/`` (``<class>/<name>.png``, one mask per image, all black where there is nothing) of regions
    to paint out. The model options are ``isnet explain``'s; ``relevance`` adds the heatmap background share;
    ``seed``, ``resamples`` and ``margin`` go to :func:`isnet.background_audit.audit`; ``examples`` images per
    test set are shown in ``audit.html``. Returns what ``audit.json`` holds.
    """
    if not tests:
        raise UserError("no test sets given (NAME=DIR)")
    tests = {name: Path(root).expanduser() for name, root in tests.items()}
    regions = {name: Path(root).expanduser() for name, root in (regions or {}).items()}
    unknown = sorted(set(regions) - set(tests))
    if unknown:
        raise UserError(f"--regions names {unknown} are not test sets; give NAME=DIR with NAME one of {sorted(tests)}")
    missing = [f"{name}={root}" for name, root in regions.items() if not root.is_dir()]
    if missing:
        raise UserFileNotFoundError(f"--regions {missing[0]}: no such folder")
    if batch_size < 1 or resamples < 1 or examples < 0 or workers < 0 or not 0 <= margin < 1:
        raise UserError(f"need --batch-size >= 1, --resamples >= 1, --examples >= 0, --workers >= 0 and "
                        f"0 <= --margin < 1, got {batch_size}, {resamples}, {examples}, {workers}, {margin}")
    out = Path(out).expanduser()
    _check_out(out, [*tests.values(), *regions.values()])
    dev = resolve_device(device)
    scanned = {name: MaskedImageFolder(root, masks=None) for name, root in tests.items()}
    sizes = {probe_size(path) for dataset in scanned.values() for path, _, _ in dataset.samples}
    model, classes, image_size, trained, config = load_model(
        checkpoint=checkpoint, arch=arch, weights=weights, num_classes=num_classes, image_size=image_size,
        normalize=normalize, sizes=sizes)
    classes = classes or sorted({c for dataset in scanned.values() for c in dataset.classes})
    channels, mean, std, bounds = input_normalisation(config, normalize=normalize, weights=weights, arch=arch)
    side = (image_size, image_size) if image_size else next(iter(sizes))[::-1]
    outputs = check_model_input(model.eval(), side, (torch.zeros(1, channels, *side) - mean) / std, trained)
    if len(classes) > outputs:
        raise UserError(f"the test sets hold {len(classes)} classes, but the model has {outputs} outputs; class "
                        "folders are matched to outputs in sorted order")
    transform = make_transform(image_size, train=False)
    datasets = {name: MaskedImageFolder(root, transform=transform, masks=None, classes=classes, channels=channels)
                for name, root in tests.items()}
    painted = {name: MaskedImageFolder(tests[name], transform=transform, classes=classes, channels=channels,
                                       mask_root=root) for name, root in regions.items()}
    for name, dataset in datasets.items():
        check_auditable(dataset.targets, has_masks=dataset.has_masks, what=f"test set {name} ({dataset.root})")
    model = model.to(dev)
    mean, std = mean.to(dev), std.to(dev)
    lrp = None
    if relevance:
        lrp = explainer(model, config) if config is not None else LRPFlex(
            model, bounds=tuple(b.to(dev) if isinstance(b, Tensor) else b for b in bounds))
    with FolderLock(out, COMMAND):  # one audit at a time in OUT, which it creates
        results, sections = {}, []
        for name, dataset in datasets.items():
            images, masks, labels = dataset_tensors(dataset, batch_size=batch_size, workers=workers)
            given = None
            if name in painted:
                given = dataset_tensors(painted[name], batch_size=batch_size, workers=workers)[1]
            results[name] = result = audit(model, images, masks, labels, regions=given,
                                           model_input=_model_input(config, mean, std), lrp=lrp, seed=seed,
                                           batch_size=batch_size, resamples=resamples, margin=margin)
            items: list = [result["verdict"]["text"], f"Cost: {cost_text(result)}."]
            if examples:
                items.append(examples_figure(images, masks, given, result, classes, examples))
            sections.append((f"Test set {name}", items))
        model_info = {"checkpoint": None if checkpoint is None else str(checkpoint),
                      "arch": (config or {}).get("arch", arch), "weights": None if weights is None else str(weights),
                      "classes": classes}
        report = {"model": model_info, "tests": results}
        claim(out, [out / name for name in OUTPUTS], "audit")  # before writing: a later audit may replace them
        write_json(out / OUTPUTS[0], report)
        write_text(out / OUTPUTS[1], audit_markdown(report))
        write_html_report(out / OUTPUTS[2], "isnet audit: does the classifier use the background?",
                          [("Summary", [table_rows(results), COLUMNS, "How to read it: docs/audit.md."]), *sections])
    return report
