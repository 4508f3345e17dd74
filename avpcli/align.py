"""Face alignment: MTCNN finds faces and 5 landmarks; a similarity warp puts them on a target's template.

Coordinates follow the pixel-centre convention: pixel (i, j) covers [i - 0.5, i + 0.5], so the centre of
the top-left pixel is (0, 0). Landmarks are (x, y), templates are in output-chip pixels.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np
from PIL import Image

from avpcli.errors import NoFaceError

Points = tuple[tuple[float, float], ...]


class FaceTemplate(NamedTuple):
    """Where a target wants the 5 landmarks: left eye, right eye, nose, mouth left, mouth right.

    size: (height, width) of the chip. points: (x, y) in chip pixels. weights: how much each point
    counts in the least-squares fit (a landmark that predicts the target's own alignment poorly
    counts less).
    """

    size: tuple[int, int]
    points: Points
    weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0)


_ARCFACE_POINTS: Points = (
    (38.2946, 51.6963),
    (73.5318, 51.5014),
    (56.0252, 71.7366),
    (41.5493, 92.3655),
    (70.7299, 92.2041),
)

TEMPLATES: dict[str, FaceTemplate] = {
    # insightface's ArcFace template.
    "arcface": FaceTemplate((112, 112), _ARCFACE_POINTS),
    # The same face in a 96-wide chip (SphereFace / CosFace): 8 pixels less on each side.
    "arcface96": FaceTemplate((112, 96), tuple((x - 8.0, y) for x, y in _ARCFACE_POINTS)),
    # Where MTCNN's landmarks fall on average in facenet-pytorch's own 160x160 crop (its MTCNN box,
    # margin 0, resized), on 400 LFW photos (benchmarks/alignment_vs_dlib.py, fitting split). That
    # crop stretches the box to a square and its horizontal placement varies (std 13 px); a similarity
    # warp onto the mean is the least-squares compromise.
    "facenet": FaceTemplate(
        (160, 160),
        ((47.96, 62.82), (119.86, 61.45), (85.09, 93.45), (53.63, 122.05), (117.36, 120.94)),
    ),
    # dlib's get_face_chip(150, padding 0.25) places ITS 5 landmarks (eye corners, nose bottom), not
    # MTCNN's. benchmarks/alignment_vs_dlib.py ran dlib (HOG + 5-point predictor) and MTCNN on 398 LFW
    # photos, mapped MTCNN's landmarks through dlib's measured image -> chip transform and averaged
    # them. dlib's chip follows the eyes and nose only, so the mouth barely counts: with these weights
    # the chip is 2.35 px RMS from dlib's on the fitting photos (3.87 px with equal weights).
    "dlib": FaceTemplate(
        (150, 150),
        ((47.84, 46.23), (102.27, 46.16), (75.08, 77.75), (50.74, 105.76), (98.95, 105.81)),
        (1.0, 1.0, 0.3, 0.02, 0.02),
    ),
}


def template_size(name: str) -> tuple[int, int]:
    """(height, width) of the chips a template produces."""
    return _template(name).size


def _template(name: str) -> FaceTemplate:
    if name not in TEMPLATES:
        raise ValueError(f"unknown face template {name!r}; choose one of: {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


@dataclass(frozen=True)
class AlignedFace:
    """One face: the chip at the template size, and where the face was in the original image."""

    image: Image.Image
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in the original image
    probability: float  # MTCNN's face confidence
    landmarks: np.ndarray  # (5, 2) float64, x and y in the original image


def similarity_transform(source: np.ndarray, destination: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """The 2x3 matrix [sR | t] that best maps `source` points onto `destination` in (weighted) least squares.

    Rotation, uniform scale and translation only (never a reflection): Umeyama (1991), closed form.
    Both point arguments are (N, 2) arrays with at least 2 distinct points; `weights` (N,) >= 0.
    """
    source = np.asarray(source, dtype=np.float64)
    destination = np.asarray(destination, dtype=np.float64)
    weights = np.ones(len(source)) if weights is None else np.asarray(weights, dtype=np.float64)
    weights = weights / weights.sum()
    source_mean, destination_mean = weights @ source, weights @ destination
    source_centered, destination_centered = source - source_mean, destination - destination_mean
    source_variance = weights @ (source_centered**2).sum(axis=1)
    if source_variance <= 1e-12:
        raise ValueError("the source points coincide")
    covariance = (destination_centered * weights[:, None]).T @ source_centered
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1  # the best orthogonal map would reflect: take the best rotation instead
    rotation = u @ sign @ vt
    scale = (singular * np.diag(sign)).sum() / source_variance
    translation = destination_mean - scale * rotation @ source_mean
    return np.hstack([scale * rotation, translation[:, None]])


def _invert(matrix: np.ndarray) -> np.ndarray:
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def chip_transform(landmarks: Sequence[np.ndarray], source: str, destination: str) -> np.ndarray:
    """The 2x3 map from a face's `source`-template chip to the same face's `destination`-template chip.

    Per face (its 5 landmarks in its photo): the warp to `destination` after the inverse of the warp
    to `source`, each fitted as `warp_to_template` fits it; the mean over faces (a mean of similarity
    matrices is one). One fixed map for all chips: no detector finds a face in a ciphertext. With no
    faces, the source template's own points stand in for one.
    """
    source_template, destination_template = _template(source), _template(destination)
    faces = list(landmarks) or [np.array(source_template.points)]
    maps = []
    for points in faces:
        to_source = similarity_transform(points, np.array(source_template.points), np.array(source_template.weights))
        to_destination = similarity_transform(points, np.array(destination_template.points),
                                              np.array(destination_template.weights))
        maps.append(to_destination @ np.vstack([_invert(to_source), [0.0, 0.0, 1.0]]))
    return np.mean(maps, axis=0)


def resize_transform(source_size: tuple[int, int], destination_size: tuple[int, int]) -> np.ndarray:
    """The 2x3 map of a plain resize from a (height, width) image to another (pixel centres kept apart)."""
    scale_y, scale_x = destination_size[0] / source_size[0], destination_size[1] / source_size[1]
    return np.array([[scale_x, 0.0, 0.5 * scale_x - 0.5], [0.0, scale_y, 0.5 * scale_y - 0.5]])


def warp_affine(image: Image.Image, to_chip: np.ndarray, size: tuple[int, int], fill: str = "edge") -> Image.Image:
    """Resample `image` into a (height, width) chip; `to_chip` (2x3) maps image to chip coordinates.

    Bilinear sampling. Chip pixels that fall outside the photo repeat its nearest edge pixel
    (fill "edge"), or are black (fill "black", as in dlib's and insightface's chips). avp uses the
    edge: a key gives a continued edge back, but decrypts a black band as a brown one, and a face
    at the photo's border would lose a third of its SSIM_d to that band. When the chip is much smaller than
    the region it covers, the image is first shrunk by a power of 2 (box filter), like dlib's
    pyramid, so that the result is not aliased.
    """
    if fill not in ("edge", "black"):
        raise ValueError(f"fill is 'edge' or 'black', not {fill!r}")
    height, width = size
    source_pixels_per_chip_pixel = 1.0 / math.sqrt(abs(np.linalg.det(to_chip[:, :2])))
    factor = 2 ** int(math.floor(math.log2(max(source_pixels_per_chip_pixel, 1.0))))
    factor = min(factor, image.width, image.height)
    if factor > 1:
        image = image.reduce(factor)
        # Pixel i of the reduced image averages pixels [f*i, f*i + f) of the original: its centre is
        # at f*i + (f - 1)/2 in original coordinates.
        offset = (factor - 1) / 2
        enlarge = np.array([[factor, 0.0, offset], [0.0, factor, offset], [0.0, 0.0, 1.0]])
        to_chip = to_chip @ enlarge
    if fill == "edge":
        image, to_chip = _pad_to_cover(image, to_chip, size)
    # PIL maps output to input in its own convention (pixel centres at +0.5): shift in and out.
    (a, b, c), (d, e, f) = _invert(to_chip)
    coefficients = (a, b, c + 0.5 - 0.5 * (a + b), d, e, f + 0.5 - 0.5 * (d + e))
    return image.transform((width, height), Image.Transform.AFFINE, coefficients, Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))


def _pad_to_cover(image: Image.Image, to_chip: np.ndarray, size: tuple[int, int]) -> tuple[Image.Image, np.ndarray]:
    """Extend `image` by repeating its edge pixels until it covers the chip's footprint (plus the
    bilinear sampler's reach); returns the padded image and `to_chip` for its coordinates."""
    height, width = size
    corners = np.array([[0.0, 0.0], [width - 1.0, 0.0], [0.0, height - 1.0], [width - 1.0, height - 1.0]])
    to_image = _invert(to_chip)
    footprint = corners @ to_image[:, :2].T + to_image[:, 2]
    margin = 2
    left = max(0, math.ceil(-footprint[:, 0].min()) + margin)
    top = max(0, math.ceil(-footprint[:, 1].min()) + margin)
    right = max(0, math.ceil(footprint[:, 0].max() - (image.width - 1)) + margin)
    bottom = max(0, math.ceil(footprint[:, 1].max() - (image.height - 1)) + margin)
    if not (left or top or right or bottom):
        return image, to_chip
    pixels = np.pad(np.asarray(image.convert("RGB")), ((top, bottom), (left, right), (0, 0)), mode="edge")
    shift = np.array([[1.0, 0.0, -left], [0.0, 1.0, -top], [0.0, 0.0, 1.0]])
    return Image.fromarray(pixels), to_chip @ shift


def warp_to_template(image: Image.Image, landmarks: np.ndarray, template: str) -> Image.Image:
    """Warp `image` so that its 5 `landmarks` land (in weighted least squares) on the template's points."""
    size, points, weights = _template(template)
    return warp_affine(image, similarity_transform(landmarks, np.array(points), np.array(weights)), size)


@functools.lru_cache(maxsize=4)
def _detector(device: str):
    # facenet-pytorch ships MTCNN's P/R/O-net weights in its wheel: no download.
    from facenet_pytorch import MTCNN

    return MTCNN(keep_all=True, device=device)


def detect_faces(image: Image.Image, device: str = "cpu") -> list[tuple[tuple[float, float, float, float], float, np.ndarray]]:
    """MTCNN's faces as (box, probability, landmarks (5, 2)), the largest box first."""
    boxes, probabilities, landmarks = _detector(str(device)).detect(image.convert("RGB"), landmarks=True)
    if boxes is None:
        return []
    faces = [
        (tuple(float(v) for v in box), float(probability), np.asarray(points, dtype=np.float64))
        for box, probability, points in zip(boxes, probabilities, landmarks)
    ]
    faces.sort(key=lambda face: (face[0][2] - face[0][0]) * (face[0][3] - face[0][1]), reverse=True)
    return faces


def align_faces(image: Image.Image, template: str, all_faces: bool = False, device: str = "cpu") -> list[AlignedFace]:
    """Find faces in an RGB image and return them aligned to `template`, the largest first.

    Only the largest face unless `all_faces`. Raises NoFaceError when MTCNN finds none.
    """
    _template(template)  # fail on a bad name before the detector runs
    image = image.convert("RGB")
    faces = detect_faces(image, device)
    if not faces:
        raise NoFaceError("no face found")
    if not all_faces:
        faces = faces[:1]
    return [
        AlignedFace(warp_to_template(image, points, template), box, probability, points)
        for box, probability, points in faces
    ]
