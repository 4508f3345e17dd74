"""Keygen's training data: a built-in procedural source of natural-looking images, or crops from a folder."""

from __future__ import annotations

import hashlib
import io
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from avpcli.errors import UsageError
from avpcli.images import IMAGE_SUFFIXES

PROCEDURAL_SOURCE = "procedural-v1"  # the first built-in source; KeyPreset.procedural names each preset's

# A source of training batches: (random generator, batch, size) → (batch, 3, size, size) in [0, 1].
ImageSource = Callable[[torch.Generator, int, int], torch.Tensor]


def _rand(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=generator)


def _opponent_to_rgb(luminance: torch.Tensor, red_blue: torch.Tensor, green_magenta: torch.Tensor) -> torch.Tensor:
    """RGB from luminance (R+G+B)/3 and two opponent axes (R−B)/2 and (2G−R−B)/4; channel dim 1."""
    red = luminance + red_blue - 2 * green_magenta / 3
    green = luminance + 4 * green_magenta / 3
    blue = luminance - red_blue - 2 * green_magenta / 3
    return torch.cat([red, green, blue], dim=1)


def _natural_colours(generator: torch.Generator, count: int) -> torch.Tensor:
    """(count,3) RGB colours with natural-image statistics: mostly muted, near the grey axis,
    luminance over the whole range, and a share of skin, sky and foliage hues."""
    luminance = _rand(generator, count, 1) ** 1.2 * 0.9 + 0.05
    spread = 0.04 + 0.08 * _rand(generator, count, 1) ** 2
    red_blue = torch.randn(count, 1, generator=generator) * spread
    green_magenta = torch.randn(count, 1, generator=generator) * spread * 0.6
    # Typical hue families: skin (red over blue, a little less green), sky (blue), foliage (green).
    families = torch.tensor([[0.10, -0.02], [-0.08, 0.0], [-0.02, 0.05], [0.0, 0.0]])
    family = torch.multinomial(torch.tensor([0.35, 0.15, 0.15, 0.35]), count, replacement=True, generator=generator)
    strength = _rand(generator, count, 1) * 1.2
    red_blue = red_blue + families[family, :1] * strength * (0.4 + luminance)
    green_magenta = green_magenta + families[family, 1:] * strength * (0.4 + luminance)
    return _opponent_to_rgb(luminance, red_blue, green_magenta).clamp(0, 1)


def _smooth_field(generator: torch.Generator, batch: int, channels: int, size: int, cells: int) -> torch.Tensor:
    """Band-limited noise: Gaussian values on a cells×cells grid, bicubic-upsampled to size×size."""
    coarse = torch.randn(batch, channels, cells + 1, cells + 1, generator=generator)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)


def _gaussian_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image with its own σ (Tensor[N], 0 = none), 7-tap separable kernel, reflect borders."""
    offsets = torch.arange(-3, 4, dtype=images.dtype)
    weights = torch.exp(-0.5 * (offsets[None] / sigma.clamp_min(1e-3)[:, None]) ** 2)
    weights = weights / weights.sum(dim=1, keepdim=True)  # (N,7)
    batch, channels, height, width = images.shape
    x = F.pad(images, (3, 3, 3, 3), mode="reflect").reshape(1, batch * channels, height + 6, width + 6)
    kernel = weights.repeat_interleave(channels, dim=0)
    x = F.conv2d(x, kernel.view(-1, 1, 1, 7), groups=batch * channels)
    x = F.conv2d(x, kernel.view(-1, 1, 7, 1), groups=batch * channels)
    return x.view(batch, channels, height, width)


def _jpeg_roundtrip(image: torch.Tensor, quality: int) -> torch.Tensor:
    """Compress and decompress one (3,H,W) image in [0,1] as JPEG (the artifacts face photos carry)."""
    array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    decoded = np.asarray(Image.open(buffer).convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(decoded).permute(2, 0, 1)


def procedural_images(generator: torch.Generator, batch: int, size: int) -> torch.Tensor:
    """A batch (batch,3,size,size) in [0,1] of natural-looking synthetic images ('procedural-v1').

    Dead leaves (occluding ellipses with power-law radii) over a smooth background, each surface with
    a natural colour, shading and texture; then lighting, blur, sensor noise and JPEG compression.
    """
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    # Background: a natural colour plus smooth low-frequency variation (like skin, sky, walls).
    base = _natural_colours(generator, batch).view(batch, 3, 1, 1)
    field = _smooth_field(generator, batch, 3, size, 3) * torch.tensor([0.12, 0.03, 0.02]).view(1, 3, 1, 1)
    images = base + _opponent_to_rgb(field[:, :1], field[:, 1:2], field[:, 2:])
    # Texture at two scales (fine grain like hair or fabric, coarser like skin pores or foliage).
    texture = (_smooth_field(generator, batch, 1, size, max(4, size // 2))
               + _smooth_field(generator, batch, 1, size, max(4, size // 6)))
    leaves = int(_rand(generator, 1).item() * 40) + 5
    for _ in range(leaves):
        colour = _natural_colours(generator, batch).view(batch, 3, 1, 1)
        centre_x, centre_y = (_rand(generator, 2, batch, 1, 1, 1) * 2.4 - 1.2).unbind(0)
        # Power-law radii: many small shapes, a few large ones (scale invariance of natural scenes).
        radius = 0.03 / (_rand(generator, batch, 1, 1, 1) * 0.97 + 0.03)
        aspect = 0.4 + _rand(generator, batch, 1, 1, 1) * 1.2
        angle = _rand(generator, batch, 1, 1, 1) * math.pi
        dx, dy = xs - centre_x, ys - centre_y
        u = dx * torch.cos(angle) + dy * torch.sin(angle)
        v = (-dx * torch.sin(angle) + dy * torch.cos(angle)) * aspect
        distance = torch.sqrt(u * u + v * v) - radius
        edge = (0.5 + _rand(generator, batch, 1, 1, 1) * 3) * (2 / size)  # soft edges of 0.5–3.5 px
        mask = torch.sigmoid(-distance / edge)
        shading = (_rand(generator, batch, 2, 1, 1) - 0.5) * 0.3
        surface = colour * (1 + shading[:, :1] * u / (radius + 0.1) + shading[:, 1:] * v / (radius + 0.1))
        surface = surface + texture * _rand(generator, batch, 1, 1, 1) ** 2 * 0.15
        images = images * (1 - mask) + surface * mask
    # Lighting: a smooth multiplicative gradient over the whole scene.
    light_angle = _rand(generator, batch, 1, 1, 1) * 2 * math.pi
    lighting = 1 + (_rand(generator, batch, 1, 1, 1) - 0.5) * 0.6 * (
        xs * torch.cos(light_angle) + ys * torch.sin(light_angle))
    images = images * lighting
    images = _gaussian_blur(images, _rand(generator, batch) ** 2 * 1.2)
    images = images + torch.randn(images.shape, generator=generator) * _rand(generator, batch).view(batch, 1, 1, 1) * 0.02
    images = images.clamp(0, 1)
    qualities = (_rand(generator, batch) * 60 + 40).round().int().tolist()
    use_jpeg = (_rand(generator, batch) < 0.5).tolist()
    return torch.stack([_jpeg_roundtrip(image, quality) if jpeg else image
                        for image, quality, jpeg in zip(images, qualities, use_jpeg)])


def _hair_strands(generator: torch.Generator, images: torch.Tensor) -> torch.Tensor:
    """`images` with 0–39 thin, sharp, wavy strands of natural colours drawn over them (hair, beard,
    eyelashes): 0.6–3 px wide with half-pixel edges, after the blur, noise and JPEG of the rest."""
    batch, _, size, _ = images.shape
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    pixel = 2 / size
    for _ in range(int(_rand(generator, 1).item() * 40)):
        colour = _natural_colours(generator, batch).view(batch, 3, 1, 1)
        angle = _rand(generator, batch, 1, 1, 1) * math.pi
        centre_x, centre_y = (_rand(generator, 2, batch, 1, 1, 1) * 2 - 1).unbind(0)
        dx, dy = xs - centre_x, ys - centre_y
        along = dx * torch.cos(angle) + dy * torch.sin(angle)
        across = -dx * torch.sin(angle) + dy * torch.cos(angle)
        amplitude = _rand(generator, batch, 1, 1, 1) * 0.3
        frequency = 1 + _rand(generator, batch, 1, 1, 1) * 8
        phase = _rand(generator, batch, 1, 1, 1) * 2 * math.pi
        length = 0.2 + _rand(generator, batch, 1, 1, 1) * 0.8
        half_width = (0.3 + _rand(generator, batch, 1, 1, 1) * 1.2) * pixel
        distance = (across - amplitude * torch.sin(frequency * along + phase)).abs() - half_width
        mask = torch.sigmoid(-distance / (0.5 * pixel)) * torch.sigmoid((length - along.abs()) / 0.05)
        images = images * (1 - mask) + colour * mask
    return images


def procedural_images_with_strands(generator: torch.Generator, batch: int, size: int) -> torch.Tensor:
    """'procedural-v2': procedural-v1's images, 60 % of them with hair-like strands (_hair_strands).

    Keys trained on procedural-v1 alone reproduced the fine, high-contrast texture of sharp faces
    (curly hair, beards in photos scaled down to a chip) worst: SSIM(G(x), x) down to 0.90 on the
    chips of large photos, which the attack could raise to 0.936 only, short of the 0.95 bar.
    """
    images = procedural_images(generator, batch, size)
    with_strands = _hair_strands(generator, images)
    chosen = (_rand(generator, batch) < 0.6).view(batch, 1, 1, 1)
    return torch.where(chosen, with_strands, images).clamp(0, 1)


# The built-in sources by the name a key records as its training data.
PROCEDURAL_SOURCES: dict[str, ImageSource] = {
    "procedural-v1": procedural_images,
    "procedural-v2": procedural_images_with_strands,
}


def find_training_images(data_dir: str | os.PathLike[str]) -> list[Path]:
    """Image files under data_dir, recursively, sorted by relative path."""
    root = Path(data_dir)
    if not root.is_dir():
        raise UsageError(f"training data folder not found: {root}")
    files = sorted((p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                   key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise UsageError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}")
    return files


def training_data_fingerprint(data_dir: str | os.PathLike[str]) -> str:
    """sha256 over the sorted relative paths and bytes of every training image."""
    root = Path(data_dir)
    digest = hashlib.sha256()
    for path in find_training_images(root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


class _FolderCrops:
    """Random crops (with horizontal flips) from a folder of images, decoded on demand."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.files = find_training_images(data_dir)

    def _load(self, path: Path) -> torch.Tensor:
        with Image.open(path) as image:
            array = np.asarray(ImageOps.exif_transpose(image).convert("RGB"), dtype=np.float32) / 255
        return torch.from_numpy(array).permute(2, 0, 1)

    def __call__(self, generator: torch.Generator, batch: int, size: int) -> torch.Tensor:
        crops = []
        for _ in range(batch):
            index = int(torch.randint(len(self.files), (1,), generator=generator))
            image = self._load(self.files[index])
            height, width = image.shape[-2:]
            if min(height, width) < size:
                scale = size / min(height, width)
                image = F.interpolate(image[None], size=(max(size, round(height * scale)), max(size, round(width * scale))),
                                      mode="bilinear", align_corners=False)[0].clamp(0, 1)
                height, width = image.shape[-2:]
            top = int(torch.randint(height - size + 1, (1,), generator=generator))
            left = int(torch.randint(width - size + 1, (1,), generator=generator))
            crop = image[:, top:top + size, left:left + size]
            if bool(torch.rand(1, generator=generator) < 0.5):
                crop = crop.flip(-1)
            crops.append(crop)
        return torch.stack(crops)


def training_source(data_dir: str | os.PathLike[str] | None,
                    procedural: str = PROCEDURAL_SOURCE) -> tuple[ImageSource, str]:
    """The source of training batches and the fingerprint a key records for it.

    None gives the built-in procedural source named `procedural` (PROCEDURAL_SOURCES); a folder gives
    random crops of its images (searched recursively) and the sha256 of their paths and bytes. A
    missing or image-less folder is a UsageError.
    """
    if data_dir is None:
        if procedural not in PROCEDURAL_SOURCES:
            raise UsageError(f"unknown procedural source {procedural!r}; "
                             f"choose one of {', '.join(PROCEDURAL_SOURCES)}")
        return PROCEDURAL_SOURCES[procedural], procedural
    return _FolderCrops(data_dir), training_data_fingerprint(data_dir)
