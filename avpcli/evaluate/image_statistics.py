"""Statistics of ciphertexts as images (appendix A.1): adjacent-pixel correlation, grey histograms, face detection."""

from __future__ import annotations

import math
from typing import Literal, Sequence

import torch

from avpcli.engine import quantize
from avpcli.evaluate.summary import summarize

Direction = Literal["horizontal", "vertical", "diagonal"]
DIRECTIONS: tuple[Direction, ...] = ("horizontal", "vertical", "diagonal")
_OFFSETS: dict[str, tuple[int, int]] = {"horizontal": (0, 1), "vertical": (1, 0), "diagonal": (1, 1)}
# ITU-R BT.601 luma weights: correlation and histograms are taken on grey levels, as in the
# image-encryption literature the paper's appendix follows.
_LUMA = (0.299, 0.587, 0.114)


def grey_levels(image: torch.Tensor) -> torch.Tensor:
    """(H, W) grey levels on the 0–255 scale of a (3, H, W) image in [0, 1] (BT.601 luma)."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected one (3, H, W) image, got {tuple(image.shape)}")
    weights = torch.tensor(_LUMA, dtype=torch.float64).view(3, 1, 1)
    return (image.double() * weights).sum(dim=0) * 255


def adjacent_pairs(image: torch.Tensor, direction: Direction, pairs: int = 3000,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`pairs` random (pixel, right / lower / lower-right neighbour) grey-level pairs of one image."""
    grey = grey_levels(image)
    down, right = _OFFSETS[direction]
    height, width = grey.shape
    if height <= down or width <= right:
        raise ValueError(f"image {height}×{width} is too small for {direction} pairs")
    generator = generator or torch.Generator().manual_seed(0)
    rows = torch.randint(0, height - down, (pairs,), generator=generator)
    columns = torch.randint(0, width - right, (pairs,), generator=generator)
    return grey[rows, columns], grey[rows + down, columns + right]


def pearson(first: torch.Tensor, second: torch.Tensor) -> float:
    """Pearson's correlation coefficient; NaN (undefined) when either side has no variance."""
    first, second = first.double() - first.double().mean(), second.double() - second.double().mean()
    spread = math.sqrt(float((first * first).sum()) * float((second * second).sum()))
    if spread == 0:
        return float("nan")
    return float((first * second).sum()) / spread


def adjacent_correlation(image: torch.Tensor, direction: Direction, pairs: int = 3000, seed: int = 0) -> float:
    """Correlation of adjacent grey levels over `pairs` random pairs (appendix A.1, Fig. 9).

    Near 1 for photographs, near 0 for a good cipher. A constant image has no variance, so its
    correlation is undefined: NaN here, null in JSON, "undefined" in the tables (not 0, which would
    claim the cipher-like answer).
    """
    first, second = adjacent_pairs(image, direction, pairs, torch.Generator().manual_seed(seed))
    return pearson(first, second)


def correlation_table(images: torch.Tensor, pairs: int = 3000, seed: int = 0) -> dict[str, dict]:
    """Per direction: the summary over images of each image's adjacent-pixel correlation."""
    return {
        direction: summarize([adjacent_correlation(image, direction, pairs, seed + index)
                              for index, image in enumerate(images)])
        for direction in DIRECTIONS
    }


def grey_histogram(images: torch.Tensor) -> torch.Tensor:
    """Counts of the 256 grey levels over all images (N, 3, H, W), as int64 (256,)."""
    levels = torch.cat([grey_levels(quantize(image)).round().long().flatten() for image in images])
    return torch.bincount(levels.clamp(0, 255), minlength=256)


def histogram_entropy(counts: torch.Tensor) -> float:
    """Shannon entropy in bits of a histogram (8 bits for a flat 256-level histogram)."""
    probabilities = counts.double() / counts.sum()
    probabilities = probabilities[probabilities > 0]
    return float(-(probabilities * probabilities.log2()).sum())


def detection_rate(found: Sequence[bool]) -> float:
    """Fraction of images in which a detector found a face (NaN for no images)."""
    return sum(bool(flag) for flag in found) / len(found) if found else float("nan")


# A detection counts as the face when its box and the face's overlap by at least this much
# (intersection over union; PASCAL VOC's criterion of a correct detection).
AT_FACE_IOU = 0.5


def box_iou(first: Sequence[float], second: Sequence[float]) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1): 1 for equal boxes, 0 for disjoint or empty ones."""
    width = min(first[2], second[2]) - max(first[0], second[0])
    height = min(first[3], second[3]) - max(first[1], second[1])
    intersection = max(width, 0.0) * max(height, 0.0)
    union = ((first[2] - first[0]) * (first[3] - first[1]) + (second[2] - second[0]) * (second[3] - second[1])
             - intersection)
    return intersection / union if union > 0 else 0.0
