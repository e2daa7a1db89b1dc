"""Tests for isnet.metrics: sklearn agreement (also on test sets lacking classes), DeLong against brute force,
relevance shares; isnet eval's AUROC over the classes a test set holds."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from scipy.stats import norm
from PIL import Image
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, roc_auc_score
from sklearn.preprocessing import label_binarize

from isnet.metrics import (
    BackgroundRelevance,
    background_share,
    classification_metrics,
    delong_auroc_ci,
    present_class_auroc,
    relevance_share,
)


def _delong_brute_force(scores: np.ndarray, labels: np.ndarray, alpha: float) -> tuple[float, float, float]:
    """DeLong's interval from the O(m n) pairwise kernel psi (1 if x > y, 1/2 if tied)."""
    positive, negative = scores[labels == 1], scores[labels == 0]
    psi = (positive[:, None] > negative[None, :]) + 0.5 * (positive[:, None] == negative[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    auc = psi.mean()
    variance = v10.var(ddof=1) / positive.size + v01.var(ddof=1) / negative.size
    half = norm.ppf(0.5 + alpha / 2) * math.sqrt(variance)
    return auc, max(0.0, auc - half), min(1.0, auc + half)


@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_classification_metrics_match_sklearn(num_classes: int) -> None:
    generator = torch.Generator().manual_seed(num_classes)
    labels = torch.randint(0, num_classes, (300,), generator=generator)
    logits = torch.randn(300, num_classes, generator=generator)
    logits[torch.arange(300), labels] += 0.8  # better than chance, still many errors
    result = classification_metrics(logits, labels, num_classes)
    json.dumps(result)

    y, probs = labels.numpy(), torch.softmax(logits.double(), dim=1).numpy()
    predicted = probs.argmax(axis=1)
    assert result["n"] == 300
    assert result["accuracy"] == pytest.approx(accuracy_score(y, predicted), abs=1e-6)
    assert result["macro_f1"] == pytest.approx(f1_score(y, predicted, average="macro"), abs=1e-6)
    assert result["confusion_matrix"] == confusion_matrix(y, predicted).tolist()
    assert result["auroc_classes"] == list(range(num_classes))
    if num_classes == 2:
        expected_auc = roc_auc_score(y, probs[:, 1])
        low, high = result["auroc_ci95"]
        assert low < result["auroc"] < high
    else:
        expected_auc = roc_auc_score(y, probs, multi_class="ovr", average="macro")
        assert "auroc_ci95" not in result
    assert result["auroc"] == pytest.approx(expected_auc, abs=1e-5)


def _sklearn_present_class_auroc(labels: np.ndarray, probs: np.ndarray) -> float:
    """One-vs-rest macro AUROC over the classes in ``labels``, each scored by its probability (scikit-learn)."""
    present = np.unique(labels)
    if probs.shape[1] == 2:
        return roc_auc_score(labels, probs[:, 1])
    if present.size == 2:  # label_binarize gives one column for two classes
        return float(np.mean([roc_auc_score(labels == c, probs[:, c]) for c in present]))
    return roc_auc_score(label_binarize(labels, classes=present), probs[:, present], average="macro")


def test_auroc_of_a_perfect_classifier_on_a_test_set_lacking_classes_is_one() -> None:
    """Classes 1, 3, 5, 7, 9 of 10, four images each, every image's own class scored highest: AUROC 1.0
    (averaging over all ten classes, the absent ones counting 0, gave 0.5)."""
    labels = torch.tensor([1, 3, 5, 7, 9]).repeat_interleave(4)
    logits = torch.nn.functional.one_hot(labels, 10).double() * 5.0
    result = classification_metrics(logits, labels, 10)
    assert result["auroc"] == 1.0 and result["auroc_classes"] == [1, 3, 5, 7, 9] and result["accuracy"] == 1.0
    assert "auroc_ci95" not in result


@pytest.mark.parametrize("num_classes, present", [(10, [0, 2, 4, 6, 8]), (4, [1, 3]), (3, [0, 1, 2]), (2, [0, 1])])
def test_auroc_over_present_classes_matches_sklearn(num_classes: int, present: list[int]) -> None:
    generator = torch.Generator().manual_seed(num_classes + len(present))
    labels = torch.tensor(present)[torch.randint(0, len(present), (400,), generator=generator)]
    logits = torch.randn(400, num_classes, generator=generator)
    logits[torch.arange(400), labels] += 1.0
    result = classification_metrics(logits, labels, num_classes)
    probs = torch.softmax(logits.double(), dim=1).numpy()
    expected = _sklearn_present_class_auroc(labels.numpy(), probs)
    assert result["auroc"] == pytest.approx(expected, abs=1e-9) and result["auroc_classes"] == present
    assert present_class_auroc(torch.from_numpy(probs), labels) == pytest.approx(expected, abs=1e-9)
    json.dumps(result)


@pytest.mark.parametrize("num_classes", [2, 3])
def test_auroc_is_undefined_with_one_class_present(num_classes: int) -> None:
    labels = torch.ones(10, dtype=torch.long)
    logits = torch.nn.functional.one_hot(labels, num_classes).double()  # perfect: was reported as 0.0
    result = classification_metrics(logits, labels, num_classes)
    assert result["auroc"] is None and result["auroc_classes"] == [1] and result["accuracy"] == 1.0
    if num_classes == 2:
        assert result["auroc_ci95"] is None
    assert json.loads(json.dumps(result))["auroc"] is None  # null in JSON, not 0.0 or NaN
    with pytest.raises(ValueError, match="at least two classes"):
        present_class_auroc(torch.softmax(logits, 1), labels)


def test_classification_metrics_rejects_bad_shape_and_labels() -> None:
    with pytest.raises(ValueError):
        classification_metrics(torch.randn(10, 3), torch.zeros(10, dtype=torch.long), 2)
    with pytest.raises(ValueError, match=re.escape("class indices in [0, 3), got 0 to 3")):
        classification_metrics(torch.randn(4, 3), torch.tensor([0, 1, 2, 3]), 3)


def test_eval_reports_auroc_over_the_classes_each_test_set_holds(tmp_path) -> None:
    """isnet eval on a 3-class model: AUROC over the classes present (named), undefined for one class."""
    from isnet.evaluate import evaluate, format_table
    from isnet.models import build_model

    run = tmp_path / "run"
    run.mkdir()
    config = {"arch": "small_cnn", "num_classes": 3, "image_size": 16, "objective": "standard", "epsilon": 0.01,
              "zb": True, "classes": ["cat", "dog", "fox"]}
    (run / "config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    model = build_model("small_cnn", 3, image_size=16).eval()
    torch.save(model.state_dict(), run / "model.pt")
    rng = np.random.default_rng(0)
    images = {}
    for name, classes in (("two", ["cat", "fox"]), ("one", ["dog"])):
        for c in classes:
            (tmp_path / name / "images" / c).mkdir(parents=True)
            for i in range(6):
                pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / name / "images" / c / f"{i}.png")
                images.setdefault(name, []).append((pixels, config["classes"].index(c)))
    results = evaluate(run, {"two": tmp_path / "two", "one": tmp_path / "one"}, device="cpu")
    x = torch.stack([torch.from_numpy(p).permute(2, 0, 1).float() / 255 for p, _ in images["two"]])
    with torch.no_grad():
        probs = torch.softmax(model(x).double(), 1).numpy()
    labels = np.array([label for _, label in images["two"]])
    assert results["two"]["auroc"] == pytest.approx(_sklearn_present_class_auroc(labels, probs), abs=1e-6)
    assert results["two"]["auroc_classes"] == ["cat", "fox"]
    assert results["one"]["auroc"] is None and results["one"]["auroc_classes"] == ["dog"]
    table = format_table(results)
    assert re.search(r"^one .* undefined", table, re.M)
    assert "AUROC of two: one-vs-rest over the 2 of 3 classes present (cat, fox)" in table
    assert "AUROC of one: undefined, its labels hold 1 class(es) (dog); it needs two" in table


@pytest.mark.parametrize("ties", [False, True])
def test_delong_matches_brute_force_and_sklearn(ties: bool) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    scores = rng.normal(size=400) + 0.7 * labels
    if ties:
        scores = np.round(scores, 1)  # many tied scores across and within the classes
    auc, low, high = delong_auroc_ci(scores, labels)
    assert auc == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert (auc, low, high) == pytest.approx(_delong_brute_force(scores, labels, 0.95), abs=1e-12)
    assert low < auc < high


def test_delong_accepts_tensors_and_other_alpha() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 120)
    scores = rng.normal(size=120) + labels
    expected = _delong_brute_force(scores, labels, 0.8)
    assert delong_auroc_ci(torch.from_numpy(scores), torch.from_numpy(labels), alpha=0.8) == pytest.approx(
        expected, abs=1e-12
    )
    wide = delong_auroc_ci(scores, labels, alpha=0.99)
    assert wide[1] < expected[1] and wide[2] > expected[2]


def test_delong_interval_shrinks_with_n() -> None:
    rng = np.random.default_rng(2)
    widths = []
    for n in (50, 500, 5000):
        labels = rng.integers(0, 2, n)
        scores = rng.normal(size=n) + labels
        auc, low, high = delong_auroc_ci(scores, labels)
        assert low <= auc <= high
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]


def test_delong_clips_and_validates() -> None:
    auc, low, high = delong_auroc_ci(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1]))
    assert (auc, low, high) == (1.0, 1.0, 1.0)
    auc, low, high = delong_auroc_ci(np.array([0.1, 0.9, 0.95]), np.array([0, 1, 0]))
    assert 0.0 <= low <= auc <= high <= 1.0
    with pytest.raises(ValueError):
        delong_auroc_ci(np.array([0.1, 0.2]), np.array([1, 1]))
    with pytest.raises(ValueError):
        delong_auroc_ci(np.array([0.1, 0.2]), np.array([0, 2]))
    with pytest.raises(ValueError):
        delong_auroc_ci(np.array([0.1, 0.2]), np.array([0, 1]), alpha=1.0)


def test_background_share_exact_on_hand_made_maps() -> None:
    mask = torch.zeros(3, 1, 4, 4)
    mask[:, :, :, :2] = 1  # left half is foreground
    relevance = torch.zeros(3, 3, 4, 4)
    relevance[0, :, :, :2] = 1.0  # all inside the mask
    relevance[1, 0, :, :] = torch.tensor([1.0, -1.0, 2.0, -2.0]).repeat(4, 1)  # |R| 2 in, 4 out
    relevance[2, 1, 0, 0] = -3.0  # inside...
    relevance[2, 2, 3, 3] = 3.0  # ...and outside, in another channel: half
    shares = background_share(relevance, mask)
    assert shares.tolist() == pytest.approx([0.0, 4 / 6, 0.5])
    assert relevance_share(relevance, mask).tolist() == pytest.approx([1.0, 2 / 6, 0.5])


def test_background_share_sums_over_several_heatmaps_and_channel_masks() -> None:
    relevance = torch.zeros(1, 2, 3, 2, 2)  # (B, K, C, H, W)
    relevance[0, 0, 0, 0, 0] = 1.0
    relevance[0, 1, 2, 1, 1] = -3.0
    mask = torch.zeros(1, 3, 2, 2)
    mask[0, 1, 0, 0] = 1.0  # foreground in any channel counts
    assert background_share(relevance, mask).item() == pytest.approx(0.75)


def test_background_share_larger_mask_uses_any_foreground_rule() -> None:
    mask = torch.zeros(1, 1, 8, 8)
    mask[0, 0, 3, 3] = 1.0  # a single pixel makes heatmap cell (1, 1) foreground
    relevance = torch.ones(1, 1, 4, 4)
    assert background_share(relevance, mask).item() == pytest.approx(15 / 16)
    uneven = torch.zeros(1, 1, 9, 10)  # not an integer multiple: adaptive pooling windows
    uneven[0, 0, 8, 9] = 1.0
    relevance = torch.zeros(1, 1, 4, 4)
    relevance[0, 0, 3, 3] = 2.0
    relevance[0, 0, 0, 0] = 2.0
    assert background_share(relevance, uneven).item() == pytest.approx(0.5)


def test_background_share_smaller_mask_is_enlarged() -> None:
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    relevance = torch.ones(1, 1, 4, 4)
    assert background_share(relevance, mask).item() == pytest.approx(0.75)


def test_zero_relevance_gives_zero_share() -> None:
    shares = background_share(torch.zeros(2, 3, 4, 4), torch.zeros(2, 1, 4, 4))
    assert shares.tolist() == [0.0, 0.0]
    assert relevance_share(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)).tolist() == [0.0]


def test_background_relevance_metric_accumulates_mean() -> None:
    generator = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(3, 3, 8, 8, generator=generator), (torch.rand(3, 1, 16, 16, generator=generator) > 0.7).float()),
        (torch.randn(5, 3, 8, 8, generator=generator), (torch.rand(5, 1, 16, 16, generator=generator) > 0.7).float()),
    ]
    metric = BackgroundRelevance()
    for relevance, masks in batches:
        metric.update(relevance, masks)
    expected = torch.cat([background_share(r, m) for r, m in batches]).mean()
    assert metric.compute().item() == pytest.approx(expected.item(), abs=1e-6)
    assert int(metric.count) == 8
    metric.reset()
    metric.update(*batches[0])
    assert metric.compute().item() == pytest.approx(background_share(*batches[0]).mean().item(), abs=1e-6)
