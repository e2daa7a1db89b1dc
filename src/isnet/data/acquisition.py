"""Random acquisition changes of training images: what differs between scanners and hospitals.

Two sites image the same patient with different exposure, contrast, sharpness and detector
noise. Those differences sit in every pixel, inside the object's mask too, so neither the
background swap nor a heatmap loss can take them away; when the site predicts the label in the
training data, a classifier can read it from the foreground (``docs/bg-cxr.md``, where the
hospital is read). :class:`AcquisitionJitter` draws a new acquisition for each training image,
so that no particular one keeps predicting the class. It changes images only; masks pass.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

__all__ = ["AcquisitionJitter"]


class AcquisitionJitter(v2.Transform):
    """Random exposure, contrast, blur and noise of a float image in [0, 1] (masks unchanged).

    Per image: gamma ``exp(u 0.3 s)`` and gain ``1 + u 0.1 s`` (exposure), contrast ``1 + u 0.2 s``
    about the image's mean, on half the images a Gaussian blur of sigma up to ``s`` pixels, and
    pixel noise of standard deviation up to ``0.03 s``, the same in every channel (a grayscale
    image stays gray); ``u`` uniform in [-1, 1], ``s`` the ``strength`` (at most 3, so that gain
    and contrast stay positive). Blurs of sigma under 0.1 pixel are skipped, and the kernel is at
    most the image's side. The result is clipped to [0, 1].
    """

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, strength: float = 1.0) -> None:
        super().__init__()
        if not 0 < strength <= 3:
            raise ValueError(f"strength must be in (0, 3], got {strength}")
        self.strength = strength

    def make_params(self, flat_inputs: list[Any]) -> dict[str, float]:
        """One image's acquisition: gamma, gain, contrast, blur sigma and noise level."""
        s = self.strength
        u = (2 * torch.rand(3) - 1).tolist()
        blur = s * torch.rand(()).item() if torch.rand(()).item() < 0.5 else 0.0
        return {"gamma": math.exp(0.3 * s * u[0]), "gain": 1 + 0.1 * s * u[1], "contrast": 1 + 0.2 * s * u[2],
                "blur": blur, "noise": 0.03 * s * torch.rand(()).item()}

    def transform(self, inpt: Tensor, params: dict[str, float]) -> Tensor:
        """``inpt`` acquired with ``params`` (:meth:`make_params`)."""
        x = inpt.clamp(0, 1) ** params["gamma"] * params["gain"]
        mean = x.mean()
        x = (x - mean) * params["contrast"] + mean
        if params["blur"] > 0.1:  # narrower kernels change nothing
            side = min(x.shape[-2:])
            size = min(2 * math.ceil(3 * params["blur"]) + 1, side - 1 + side % 2)
            x = v2.functional.gaussian_blur(x, kernel_size=[size, size], sigma=[params["blur"]] * 2)
        x = x + params["noise"] * torch.randn_like(x[..., :1, :, :])
        return tv_tensors.wrap(x.clamp(0, 1), like=inpt)

    _get_params, _transform = make_params, transform  # the names torchvision < 0.21 calls
