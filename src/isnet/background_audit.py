"""Does a classifier use the background? :func:`audit` measures it by intervention (``isnet audit``, ``eval --audit``).

A heatmap can hide a shortcut (docs/shortcut-study.md); an intervention cannot. Each image is changed with
its own foreground mask (:func:`isnet.masks.foreground`) and the classifier runs again:

* **background from another class** (``other_background``): the image's foreground, pixel for pixel, on
  the background of a random image of another class, whose own object is removed first and filled from
  its surroundings: the background swap's donor fill (:func:`isnet.data.augment.fill_foreground`), so no
  pixel of the donor's object shows. Predictions that change, and change to the donor's class, show the
  background's class information at work.
* **background only** (``background_only``): the foreground removed and filled from the image's own
  surroundings (the same fill). Accuracy above chance means the background alone carries class
  information that the model uses.
* **foreground only** (``foreground_only``): the background replaced by one constant, the mean background
  pixel of the audited images (per channel). A blur would keep the image's own low frequencies (its
  exposure, a tint, a bright marker's smudge) and with them part of a shortcut; noise would add texture
  the model never saw, and change with the draw; each image's own mean would still carry its brightness.
  The set's mean carries nothing of the image's own background and stays within the intensities seen.
* **regions painted out** (``regions_removed``, optional): given regions (markers, label boxes) filled
  from their surroundings.

Cost: one forward pass per image for the original and one per counterfactual, 4 (5 with regions), plus
one LRP-Flex pass per image for the heatmap background share when an explainer is given. The fills are
pooling pyramids, cheap beside a forward pass. The statistics and the verdict: :mod:`isnet.audit_stats`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .audit_stats import BACKGROUND, FOREGROUND, ORIGINAL, OTHER, REGIONS, summarise, verdict
from .data.augment import fill_foreground, paste_foreground
from .errors import IsnetWarning, UserError
from .lrp import LRPFlex
from .masks import background, foreground
from .metrics import background_share

__all__ = ["audit", "check_auditable", "choose_donors", "counterfactuals", "dataset_tensors", "neutral_fill"]


def neutral_fill(images: Tensor, masks: Tensor, chunk: int = 256) -> Tensor:
    """The mean background pixel of ``images`` per channel, (C,): the foreground-only fill (0 without background)."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    count = torch.zeros_like(total)
    for x, m in zip(images.split(chunk), masks.split(chunk)):
        weight = background(m, x.shape[-2:], dtype=torch.float64).expand(x.shape)
        total += (x.double() * weight).sum((0, 2, 3)).cpu()
        count += weight.sum((0, 2, 3)).cpu()
    return (total / count.clamp_min(1)).to(images.dtype)


def counterfactuals(images: Tensor, masks: Tensor, donor_images: Tensor, donor_masks: Tensor, fill: Tensor,
                    regions: Tensor | None = None) -> dict[str, Tensor]:
    """The counterfactuals of a batch by condition (see the module docstring); ``fill`` is :func:`neutral_fill`'s."""
    made = {OTHER: paste_foreground(images, masks, fill_foreground(donor_images, donor_masks)),
            BACKGROUND: fill_foreground(images, masks),
            FOREGROUND: paste_foreground(images, masks, fill.to(images).view(1, -1, 1, 1))}
    if regions is not None:
        made[REGIONS] = fill_foreground(images, regions)
    return made


def choose_donors(labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """For each image, the index of a random image of another class (uniform among them, with replacement)."""
    donors = torch.empty_like(labels)
    for c in labels.unique():
        others, mine = (labels != c).nonzero().flatten(), (labels == c).nonzero().flatten()
        donors[mine] = others[torch.randint(len(others), (len(mine),), generator=generator)]
    return donors


def check_auditable(labels: Sequence[int] | Tensor, *, has_masks: bool, what: str) -> None:
    """Refuse what cannot be audited: no foreground masks, or fewer than two classes (no donor of another class)."""
    if not has_masks:
        raise UserError(f"{what} has no foreground masks; the audit makes its counterfactuals with them "
                        "(a masks/ folder beside images/, see docs/dataset-layout.md)")
    present = sorted(set(torch.as_tensor(labels).tolist()))
    if len(present) < 2:
        raise UserError(f"{what} holds {len(present)} class(es) {present}; the background from another class needs "
                        "images of at least two classes")


def _check_shapes(images: Tensor, masks: Tensor, labels: Tensor, regions: Tensor | None) -> None:
    if images.ndim != 4:
        raise UserError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
    for name, m in (("masks", masks), ("regions", regions)):
        if m is not None and (m.ndim != 4 or m.shape[0] != images.shape[0] or m.shape[-2:] != images.shape[-2:]
                              or m.shape[1] not in (1, images.shape[1])):
            raise UserError(f"{name} must have shape (N, 1 or C, H, W) matching the images {tuple(images.shape)}, "
                            f"got {tuple(m.shape)}")
    if labels.shape != images.shape[:1]:
        raise UserError(f"labels must have shape ({images.shape[0]},), one class index per image, got "
                        f"{tuple(labels.shape)}")


def _warn_about_masks(masks: Tensor) -> None:
    inside = foreground(masks, merge_channels=True).flatten(1).mean(1)
    empty, full = int((inside == 0).sum()), int((inside == 1).sum())
    if empty or full:
        warnings.warn(f"{empty} of {len(masks)} masks have no foreground and {full} no background: those images' "
                      "counterfactuals change nothing or everything; check the masks", IsnetWarning, stacklevel=3)


def _predict(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        logits = model(x)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise UserError(f"the model's output has shape {tuple(logits.shape)}; the audit needs (batch, classes) "
                        "scores of at least two classes")
    return logits


def audit(model: nn.Module, images: Tensor, masks: Tensor, labels: Tensor, *, regions: Tensor | None = None,
          model_input: Callable[[Tensor, Tensor], Tensor] | None = None, lrp: LRPFlex | None = None, seed: int = 0,
          batch_size: int = 64, resamples: int = 1000, margin: float = 0.1) -> dict[str, Any]:
    """How much ``model`` relies on the background of ``images``, measured by intervention (module docstring).

    Parameters
    ----------
    model
        A classifier returning (B, K) scores, run as it is (put it in eval mode) on its parameters' device.
    images, masks, labels
        (N, C, H, W) pixels, (N, 1 or C, H, W) foreground masks (:mod:`isnet.masks`) and (N,) class
        indices of at least two classes. Held where they are; batches go to the model's device.
    regions
        (N, 1 or C, H, W) masks of regions to paint out (markers, label boxes); an empty one changes nothing.
    model_input
        What the model sees, from pixels and masks (a normalisation, a run's masked input); default the pixels.
    lrp
        An explainer of ``model`` (:class:`isnet.LRPFlex`) for the heatmap background share, quoted beside
        the interventions; None leaves it out.
    seed
        Seeds the choice of donors and the bootstrap.
    batch_size, resamples
        Images per forward pass; bootstrap resamples for the 95% intervals.
    margin
        How far above chance (a share: 0.1 is 10 points) the lower end of a 95% interval must lie for the
        verdict to count it (:func:`isnet.audit_stats.verdict`).

    Returns
    -------
    dict
        JSON-ready: ``n``, ``num_classes``, ``conditions`` (per condition its accuracy, flip rate,
        follows-the-background rate and chance levels with 95% intervals, :func:`isnet.audit_stats.summarise`),
        ``heatmap_background_share`` (None without ``lrp``), ``verdict`` (``label``, ``text``), ``cost``
        (passes per image), ``neutral_fill``, ``settings`` and ``per_image`` (label, donor index and the
        prediction under each condition).
    """
    check_auditable(labels, has_masks=masks is not None, what="the audited images")
    labels = torch.as_tensor(labels).long().cpu()
    _check_shapes(images, masks, labels, regions)
    if batch_size < 1 or resamples < 1 or not 0 <= margin < 1:
        raise UserError(f"need batch_size >= 1, resamples >= 1 and 0 <= margin < 1, got {batch_size}, {resamples}, "
                        f"{margin}")
    _warn_about_masks(masks)
    if model.training:
        warnings.warn("the model is in training mode: batch norm and dropout make its predictions depend on the "
                      "batch and the draw; call model.eval() first", IsnetWarning, stacklevel=2)
    device = next(model.parameters(), torch.empty(0)).device
    prepare = model_input or (lambda x, _: x)
    donors = choose_donors(labels, torch.Generator().manual_seed(seed))
    fill = neutral_fill(images, masks)
    predicted: dict[str, list[Tensor]] = {}
    shares = []
    for start in range(0, len(images), batch_size):
        part, d = slice(start, start + batch_size), donors[start:start + batch_size]
        x, m = images[part].to(device), masks[part].to(device)
        if lrp is None:
            logits = _predict(model, prepare(x, m))
        else:
            logits, heat = lrp.explain_prediction(prepare(x, m))
            shares.append(background_share(heat, m).cpu())
        if start == 0 and not 0 <= int(labels.min()) <= int(labels.max()) < logits.shape[1]:
            raise UserError(f"labels must be class indices in [0, {logits.shape[1]}) (the model's outputs), got "
                            f"{int(labels.min())} to {int(labels.max())}")
        predicted.setdefault(ORIGINAL, []).append(logits.argmax(1).cpu())
        made = counterfactuals(x, m, images[d].to(device), masks[d].to(device), fill,
                               None if regions is None else regions[part].to(device))
        for name, changed in made.items():
            predicted.setdefault(name, []).append(_predict(model, prepare(changed, m)).argmax(1).cpu())
    per_image = {name: torch.cat(p).numpy() for name, p in predicted.items()}
    y = labels.numpy()
    conditions = summarise(per_image, y, y[donors.numpy()], logits.shape[1], resamples=resamples, seed=seed)
    share = torch.cat(shares).double().mean().item() if shares else None
    return {
        "n": len(y), "num_classes": logits.shape[1], "conditions": conditions, "heatmap_background_share": share,
        "verdict": verdict(conditions, share, margin),
        "cost": {"forward_passes_per_image": len(per_image), "heatmap_passes_per_image": int(lrp is not None)},
        "neutral_fill": fill.tolist(), "settings": {"seed": seed, "resamples": resamples, "margin": margin},
        "per_image": {"label": y.tolist(), "donor": donors.tolist(),
                      "predicted": {name: p.tolist() for name, p in per_image.items()}},
    }


def dataset_tensors(dataset: Dataset, *, batch_size: int = 64, workers: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """The (image, mask, label) items of ``dataset`` (:class:`isnet.data.MaskedImageFolder`) as three tensors."""
    images, masks, labels = [], [], []
    for x, m, y in DataLoader(dataset, batch_size=batch_size, num_workers=workers):
        images.append(x)
        masks.append(m)
        labels.append(torch.as_tensor(y))
    return torch.cat(images), torch.cat(masks), torch.cat(labels)
