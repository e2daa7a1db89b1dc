"""The background-bias benchmark on BG-CXR: ISNets and baselines where the background is anatomy.

BG-CXR (:mod:`isnet.data.cxr.bg_cxr`) draws chests around real lung masks; the class lives in the
lungs, and eight fictional hospitals add the shortcuts (marker text, label box, exposure, noise,
field of view), correlated with the class in training. :data:`BG_CXR` is the benchmark
(:class:`isnet.bench.interface.Benchmark`); ``isnet bench cxr --out DIR`` (and
:func:`isnet.bench.run.run_benchmark` with it) follows ``isnet bench bias``
(:mod:`isnet.bench.digits.benchmark`):

1. writes BG-CXR to ``DIR/data`` (:func:`isnet.data.cxr.bg_cxr.write_dataset`, all four test sets);
2. trains every method (the BG-Digits names and options) and seed with
   :func:`isnet.training.fit` into ``DIR/runs/<method>/seed<k>`` (:mod:`isnet.bench.grid`;
   finished runs are reused);
3. evaluates each classifier on the ``biased``, ``unbiased``, ``external`` and ``deceiving``
   test sets (:data:`~isnet.bench.cxr.presets.CXR_METRICS`): accuracy, macro AUROC, the
   abnormal-vs-normal AUROC with its DeLong interval, and the shares of absolute LRP-Flex
   relevance (predicted class, one rule for every method) outside the lungs and on the marker
   and label box; and on two composites of the same patients that put another class's hospital
   only outside or only inside the lungs (:data:`~isnet.bench.cxr.presets.CXR_PLACES`);
4. compares each method with the standard classifier of the same swap setting, seed by seed
   (:mod:`isnet.bench.paired`), and writes ``results.json``, ``results.md``, ``results.csv``,
   figures and ``report.html`` (:mod:`isnet.bench.report`, with the parts of
   :mod:`isnet.bench.cxr.report`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from ...checkpoints import explainer
from ...data.augment import fill_foreground, paste_foreground
from ...data.cxr.bg_cxr import CLASSES, HOSPITALS, generate, to_tensors, write_dataset
from ...evaluate import predict_batch
from ...metrics import background_share, classification_metrics, delong_auroc_ci, relevance_share
from ..interface import Benchmark, Records, Section
from ..presets import RAW_INPUT
from . import report
from .presets import (ABNORMAL_CI, CXR_COMPARED, CXR_FULL, CXR_METRICS, CXR_PLACES, CXR_QUICK, CXR_TEST_SETS,
                      CxrBenchConfig)

__all__ = ["BG_CXR", "BGCXRBenchmark", "CxrTestSet"]

_NORMAL = CLASSES.index("normal")


@dataclass
class CxrTestSet:
    """One BG-CXR test set in memory."""

    images: Tensor  # (N, 3, H, W) in [0, 1], grayscale replicated
    masks: Tensor  # (N, 1, H, W), the lungs
    labels: Tensor  # (N,)
    shortcuts: Tensor  # (N, 1, H, W), the hospital's marker and label box
    hospitals: Tensor  # (N,), index into isnet.data.cxr.bg_cxr.HOSPITALS (of the lungs, in a composite)


def composite(lungs: CxrTestSet, background: CxrTestSet) -> CxrTestSet:
    """The same patients with the pixels inside the lungs from ``lungs`` and the rest from ``background``.

    ``background``'s own lungs are removed first and filled from their surroundings
    (:func:`isnet.data.augment.fill_foreground`, the training swap's fill), so the composite's
    lungs, lung mask and hospital imprint inside the lungs are ``lungs``'; its marker and label box,
    exposure and noise outside the lungs are ``background``'s.
    """
    images = paste_foreground(lungs.images, lungs.masks, fill_foreground(background.images, background.masks))
    return CxrTestSet(images, lungs.masks, lungs.labels, background.shortcuts * (1 - lungs.masks), lungs.hospitals)


class BGCXRBenchmark(Benchmark[CxrBenchConfig, CxrTestSet]):
    """BG-CXR: chests around real lung masks, imaged by hospitals that give the class away (module docstring)."""

    name = "cxr"
    dataset = "BG-CXR"
    settings_type = CxrBenchConfig
    quick = CXR_QUICK
    full = CXR_FULL
    test_sets = CXR_TEST_SETS
    metrics = CXR_METRICS
    compared = CXR_COMPARED
    segmenter_input = (2, 1)  # the segmenter reads grayscale and keeps the two largest regions: a pair of lungs
    report = report
    example_note = " (test set, class, hospital)"
    title_size = 7

    def prepare_data(self, root: Path, cfg: CxrBenchConfig) -> dict[str, Path]:
        """BG-CXR on disk (reused when ``root/bg-cxr.json`` matches the settings); the train and val roots."""
        meta = root / "bg-cxr.json"
        sizes = {"train": cfg.n_train, "val": cfg.n_val, **{f"test/{t}": cfg.n_test for t in CXR_TEST_SETS}}
        wanted = {"seed": cfg.data_seed, "image_size": cfg.image_size, "correlation": cfg.correlation, "n": sizes}
        if meta.is_file():
            saved = json.loads(meta.read_text())
            have = {key: saved.get(key) for key in ("seed", "image_size", "correlation")}
            have["n"] = {name: split.get("n") for name, split in saved.get("splits", {}).items()}
            if have == wanted:
                return {name: root / name for name in ("train", "val")}
            raise FileExistsError(f"{root} holds BG-CXR made with other settings ({have}); choose another --out")
        if root.exists() and any(root.iterdir()):
            raise FileExistsError(f"{root} exists and is not a BG-CXR folder; choose another --out")
        paths = write_dataset(root, seed=cfg.data_seed, n_train=cfg.n_train, n_val=cfg.n_val, n_test=cfg.n_test,
                              image_size=cfg.image_size, correlation=cfg.correlation, tests=CXR_TEST_SETS)
        return {"train": paths["train"], "val": paths["val"]}

    def make_test_sets(self, cfg: CxrBenchConfig) -> dict[str, CxrTestSet]:
        """The test sets in memory, identical to the files under ``DATA/test``, and the two composites of
        :data:`~isnet.bench.cxr.presets.CXR_PLACES` (:func:`composite`)."""
        sets = {}
        for bias in CXR_TEST_SETS:
            d = generate(cfg.n_test, split="test", seed=cfg.data_seed, bias=bias, image_size=cfg.image_size,
                         correlation=cfg.correlation)
            images, masks, labels = to_tensors(d)
            sets[bias] = CxrTestSet(images, masks, labels, torch.from_numpy(d.shortcut_masks).float()[:, None],
                                    torch.from_numpy(d.hospitals))
        outside, inside = CXR_PLACES
        sets[outside] = composite(sets["biased"], sets["deceiving"])
        sets[inside] = composite(sets["deceiving"], sets["biased"])
        return sets

    def ready(self, cfg: CxrBenchConfig) -> str:
        """Sizes, image size and correlation."""
        return (f"BG-CXR ready ({cfg.n_train} train, {cfg.n_val} val, {cfg.n_test} per test set; "
                f"{cfg.image_size}x{cfg.image_size}, correlation {cfg.correlation:g})")

    def test_key(self, cfg: CxrBenchConfig) -> dict[str, Any]:
        """The dataset, size, seed, image size and correlation of the test sets, their names and the composites'."""
        return {"dataset": "bg-cxr", "n": cfg.n_test, "data_seed": cfg.data_seed, "image_size": cfg.image_size,
                "correlation": cfg.correlation, "tests": list(CXR_TEST_SETS), "places": list(CXR_PLACES)}

    def earlier_test_keys(self, cfg: CxrBenchConfig) -> list[dict[str, Any]]:
        """The test key before the composites."""
        return [{k: v for k, v in self.test_key(cfg).items() if k != "places"}]

    def evaluate_classifier(self, model: nn.Module, config: Mapping[str, Any], test: CxrTestSet, *,
                            raw_input: bool = False, batch_size: int = 100) -> dict[str, Any]:
        """Scores and relevance shares of a trained classifier (eval mode) on one test set.

        ``accuracy`` and the macro one-vs-rest ``auroc`` come from
        :func:`isnet.metrics.classification_metrics`; ``abnormal_auroc`` scores abnormal
        (consolidation or ground glass) against normal by 1 - p(normal), with its DeLong interval
        (``abnormal_auroc_ci95``). Heatmaps: LRP-Flex of the predicted class with the config's
        ``epsilon`` / ``zb`` (:func:`isnet.evaluate.predict_batch`); ``background_relevance`` is the
        mean share of absolute relevance outside the lungs, ``shortcut_relevance`` the mean share on
        the marker and label box. Masked-input methods see ``x * mask`` unless ``raw_input``.
        """
        model.eval()
        lrp = explainer(model, config)
        logits, bg, shortcut = [], [], []
        for start in range(0, len(test.labels), batch_size):
            part = slice(start, start + batch_size)
            out, heat = predict_batch(model, lrp, config, test.images[part], test.masks[part], raw_input=raw_input)
            logits.append(out.detach().float())
            bg.append(background_share(heat, test.masks[part]))
            shortcut.append(relevance_share(heat, test.shortcuts[part]))
        scores = classification_metrics(torch.cat(logits), test.labels, len(CLASSES))
        abnormal = 1.0 - torch.softmax(torch.cat(logits).double(), dim=1)[:, _NORMAL]
        auc, low, high = delong_auroc_ci(abnormal, (test.labels != _NORMAL).long())
        return {
            "accuracy": scores["accuracy"],
            "auroc": scores["auroc"],
            "abnormal_auroc": auc,
            ABNORMAL_CI: [low, high],
            "background_relevance": torch.cat(bg).double().mean().item(),
            "shortcut_relevance": torch.cat(shortcut).double().mean().item(),
            "confusion_matrix": scores["confusion_matrix"],
            "n": int(len(test.labels)),
        }

    def describe(self, record: Mapping[str, Any]) -> str:
        """Accuracy on every test set, the abnormal AUROC on the deceiving one, the background relevance."""
        r = record["results"]
        accuracies = " ".join(f"{t} {100 * r[t]['accuracy']:.1f}%" for t in CXR_TEST_SETS)
        return (f"accuracy {accuracies}; abnormal AUROC deceiving {r['deceiving']['abnormal_auroc']:.3f}; "
                f"background relevance {100 * r['biased']['background_relevance']:.1f}%")

    def complete_aggregate(self, methods: dict[str, dict], records: Records) -> None:
        """Put each seed's DeLong interval of the abnormal AUROC next to the aggregated metrics."""
        for method, recs in records.items():
            for name, key in ((method, "results"), (method + RAW_INPUT, "raw_input_results")):
                for test, entry in methods.get(name, {}).items():
                    entry[ABNORMAL_CI] = [r[key][test][ABNORMAL_CI] for r in recs]

    def results_entries(self, tests: Mapping[str, CxrTestSet]) -> dict[str, Any]:
        """The test sets, the composites, the metrics and the class names."""
        return {"test_sets": list(CXR_TEST_SETS), "places": list(CXR_PLACES), "metrics": list(CXR_METRICS),
                "classes": list(CLASSES)}

    def example_title(self, tests: Mapping[str, CxrTestSet], name: str, index: int) -> str:
        """Test set, class and hospital."""
        label, hospital = int(tests[name].labels[index]), int(tests[name].hospitals[index])
        return f"{name}\n{CLASSES[label]}\n{HOSPITALS[hospital].name}"

    def class_name(self, label: int) -> str:
        """The class's name."""
        return CLASSES[label]

    def figures(self, cfg: CxrBenchConfig, results: Mapping[str, Any], heatmaps: Figure | None,
                tests: Mapping[str, CxrTestSet]) -> dict[str, Figure]:
        """:func:`isnet.bench.cxr.report.figures`, the swap shown on the biased test images."""
        biased = tests["biased"]
        return report.figures(cfg, results, heatmaps, (biased.images, biased.masks))

    def result_sections(self, cfg: CxrBenchConfig, results: Mapping[str, Any],
                        figures: Mapping[str, Figure]) -> list[Section]:
        """:func:`isnet.bench.cxr.report.result_sections`."""
        return report.result_sections(cfg, results, figures)


BG_CXR = BGCXRBenchmark()
"""The BG-CXR benchmark (``isnet bench cxr``)."""
