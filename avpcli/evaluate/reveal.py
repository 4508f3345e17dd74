"""What a person with an image editor sees in a ciphertext (docs/PRIVACY.md): reveal filters and leak correlations."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F

from avpcli.metrics import (bandpass_correlation, difference_of_gaussians, edge_correlation, gaussian_blur,
                            lowpass_correlation, luminance)


def percentile_stretch(images: torch.Tensor, low: float = 0.01, high: float = 0.99) -> torch.Tensor:
    """Auto levels: per image and channel, the `low` and `high` quantiles map to 0 and 1, clipped.

    (N, C, H, W) → (N, C, H, W) in [0, 1]. A flat channel stays finite (it becomes 0).
    """
    flat = images.float().flatten(2)
    bottom = flat.quantile(low, dim=2, keepdim=True)
    top = flat.quantile(high, dim=2, keepdim=True)
    return ((flat - bottom) / (top - bottom).clamp_min(1e-6)).clamp(0, 1).view(images.shape)


def median_filter(images: torch.Tensor, size: int = 5) -> torch.Tensor:
    """The median of every size×size window (odd size, reflect borders), per channel: (N, C, H, W), same size."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"a median filter needs an odd size, got {size}")
    radius = size // 2
    if radius >= min(images.shape[-2:]):
        raise ValueError(f"a {size}×{size} median needs images larger than {radius} pixels")
    # One image at a time: the windows take size² times the image's memory.
    filtered = []
    for image in images.float():
        padded = F.pad(image[None], (radius,) * 4, mode="reflect")[0]
        windows = padded.unfold(1, size, 1).unfold(2, size, 1)  # (C, H, W, size, size)
        filtered.append(windows.flatten(3).median(dim=3).values)
    return torch.stack(filtered)


def downscale_and_back(images: torch.Tensor, factor: int = 4) -> torch.Tensor:
    """Shrink by `factor` (area average) and enlarge back to the same size (bilinear): a thumbnail, enlarged."""
    height, width = images.shape[-2:]
    small = F.interpolate(images.float(), size=(max(1, height // factor), max(1, width // factor)), mode="area")
    return F.interpolate(small, size=(height, width), mode="bilinear", align_corners=False)


def _as_grey(luma: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) → a grey (N, 3, H, W) picture."""
    return luma.expand(-1, 3, -1, -1).contiguous()


def _blur_grey(images: torch.Tensor, sigma: float) -> torch.Tensor:
    return _as_grey(percentile_stretch(gaussian_blur(luminance(images.float()), sigma)))


def _blur_colour(images: torch.Tensor, sigma: float) -> torch.Tensor:
    return percentile_stretch(gaussian_blur(images.float(), sigma))


@dataclass(frozen=True)
class RevealFilter:
    """One thing a person would try on a ciphertext: (N, 3, H, W) in [0, 1] → (N, 3, H, W) in [0, 1]."""

    name: str
    description: str
    apply: Callable[[torch.Tensor], torch.Tensor]


REVEAL_FILTERS: tuple[RevealFilter, ...] = (
    RevealFilter("none", "the image as it is", lambda images: images.float()),
    *(RevealFilter(f"blur{sigma:g}-{kind}", f"Gaussian blur σ {sigma:g} px of the {label}, contrast-stretched",
                   partial(blur, sigma=sigma))
      for sigma in (1.5, 3.0, 5.0)
      for kind, label, blur in (("grey", "brightness", _blur_grey), ("colour", "colour channels", _blur_colour))),
    RevealFilter("median5", "median 5×5 of the colour channels, contrast-stretched",
                 lambda images: percentile_stretch(median_filter(images, 5))),
    RevealFilter("downscale4", "shrunk ×4 and enlarged back (colour), contrast-stretched",
                 lambda images: percentile_stretch(downscale_and_back(images, 4))),
    RevealFilter("dog1-4", "difference of Gaussians σ 1 − σ 4 of the brightness, contrast-stretched",
                 lambda images: _as_grey(percentile_stretch(difference_of_gaussians(luminance(images.float()))))),
)


def reveal_filter(name: str) -> RevealFilter:
    """The filter of REVEAL_FILTERS called `name`."""
    for candidate in REVEAL_FILTERS:
        if candidate.name == name:
            return candidate
    raise ValueError(f"unknown filter {name!r}; choose one of: {', '.join(f.name for f in REVEAL_FILTERS)}")


def blur_reveal(images: torch.Tensor, sigma: float = 3.0) -> torch.Tensor:
    """The simplest attack on a ciphertext: blur its brightness and stretch the contrast, per image.

    (N, 3, H, W) → (N, 3, H, W) grey pictures in [0, 1]; the 1st and 99th percentiles of each blurred
    image map to black and white. Where the face survives at a coarse scale this shows it.
    """
    return _blur_grey(images, sigma)


def leak_correlations(encrypted: torch.Tensor, originals: torch.Tensor, batch_size: int = 32) -> dict[str, list[float]]:
    """Per ciphertext, on luma: |low-pass r|, |band-pass r| and the (signed) edge r with its original.

    0 means that view of x' shows nothing of x (metrics.py: a negative low- or band-pass shows x as
    well as a positive one, so those count as magnitudes; edges are magnitudes already).
    """
    measures = {"lowpass_abs": lambda a, b: lowpass_correlation(a, b).abs(),
                "bandpass_abs": lambda a, b: bandpass_correlation(a, b).abs(),
                "edge": edge_correlation}
    found: dict[str, list[float]] = {name: [] for name in measures}
    for start in range(0, encrypted.shape[0], batch_size):
        cipher, plain = encrypted[start:start + batch_size].float(), originals[start:start + batch_size].float()
        for name, measure in measures.items():
            found[name] += measure(cipher, plain).tolist()
    return found
