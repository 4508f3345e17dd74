"""What the target sees of an image: the one place that loads a file or takes an image and cuts it to
the target's input (as it is, aligned by MTCNN, or centre-cropped and resized)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image

from avpcli.align import align_faces  # MTCNN itself loads only when a photo needs it
from avpcli.images import MAX_PIXELS, fit_to_size, load_rgb, to_pil, to_tensor
from avpcli.targets import TargetSpec

AlignMode = Literal["auto", "never"]
# How target_inputs says an image was taken as it is (already at the target's input size).
AT_INPUT_SIZE = "none (already at the target's input size)"


def target_inputs(image: Image.Image, spec: TargetSpec, align: AlignMode = "auto", all_faces: bool = False,
                  device: str = "cpu") -> list[tuple[torch.Tensor, str]]:
    """Cut an image to the target's input: [(tensor (3, H, W), how it was aligned)], one per face.

    The one place that decides what the target sees of an image: an image already at the input
    size as it is; a face target's photo aligned by MTCNN to its template (the largest face, or every
    face); anything else centre-cropped and resized. NoFaceError where a face target finds no face.
    """
    height, width = spec.input_size
    if image.size == (width, height):
        return [(to_tensor(image), AT_INPUT_SIZE)]
    if spec.alignment is None or align == "never":
        return [(to_tensor(fit_to_size(image, spec.input_size)), "centre crop and resize")]
    faces = align_faces(image, spec.alignment, all_faces=all_faces, device=device)
    return [(to_tensor(face.image), f"mtcnn to the {spec.alignment} template") for face in faces]


def prepare_file(path: Path, spec: TargetSpec, align: AlignMode = "auto", all_faces: bool = False,
                 device: str = "cpu", max_pixels: int = MAX_PIXELS) -> list[tuple[torch.Tensor, str]]:
    """Load one file (upright RGB, at most max_pixels) and cut it to the target's input: [(tensor, how aligned)]."""
    return target_inputs(load_rgb(path, max_pixels), spec, align, all_faces, device)


def as_pil(image: Any) -> Image.Image:
    """What encrypt() and decrypt() take for an image, as a PIL RGB image: a path, a PIL image or a
    (3, H, W) tensor (float in [0, 1], or uint8 in 1/255 steps)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.dtype == torch.uint8:
            tensor = tensor.float() / 255
        if tensor.ndim != 3 or tensor.shape[0] != 3:
            raise ValueError(f"an image tensor is (3, H, W); got {tuple(tensor.shape)}")
        return to_pil(tensor.clamp(0, 1))
    if isinstance(image, (str, os.PathLike)):
        return load_rgb(Path(image))
    raise TypeError(f"an image is a path, a PIL image or a tensor, not {type(image).__name__}")


def as_batch(images: Any) -> list[Any]:
    """A list of single images from one image, a batch tensor (N, 3, H, W) or an iterable of images."""
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        return list(images)
    if isinstance(images, (torch.Tensor, Image.Image, str, os.PathLike)):
        return [images]
    return list(images)
