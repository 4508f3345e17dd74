"""The key: a ResNet generator G trained to reproduce its input, its training (keygen) and its file format."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import math
import os
import secrets
import stat
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageOps

from avpcli import __version__
from avpcli.errors import KeyFileError, UsageError
from avpcli.images import IMAGE_SUFFIXES
from avpcli.metrics import ssim
from avpcli.scramble import PER_IMAGE_SCHEME, SCHEMES as SCRAMBLE_SCHEMES, SECRET_BYTES, Scramble

KEY_FORMAT = "avp-key"
KEY_FORMAT_VERSION = "2"
# Format 1 keys (a plain G, no scramble) still load, encrypt and decrypt.
READABLE_FORMAT_VERSIONS = ("1", "2")
NO_SCRAMBLE = "none"
SCRAMBLE_SECRET_TENSOR = "scramble.secret"
ARCHITECTURE = "resnet-generator"
PROCEDURAL_SOURCE = "procedural-v1"
NORMS = ("batch", "instance", "none")
# The generator halves the size twice, so it works on multiples of 4 (other sizes are padded).
SIZE_MULTIPLE = 4

ProgressCallback = Callable[[int, int, float], None]


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------

def _norm_layer(norm: str, channels: int) -> nn.Module:
    """The normalization after each conv: 'batch' (a fixed affine in eval mode), 'instance', or 'none'."""
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=False)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")


class ResidualBlock(nn.Module):
    """x + (reflect-pad, 3×3 conv, norm, ReLU, reflect-pad, 3×3 conv, norm)(x) at a fixed width.

    Args:
        channels: feature maps in and out.
        norm: 'batch', 'instance' or 'none'.
    """

    def __init__(self, channels: int, norm: str) -> None:
        super().__init__()
        bias = norm != "batch"  # BatchNorm's own shift makes a conv bias redundant.
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=bias), _norm_layer(norm, channels),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=bias), _norm_layer(norm, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def resnet_generator(ngf: int = 64, blocks: int = 9, norm: str = "batch") -> nn.Sequential:
    """The CycleGAN/pix2pix ResNet generator, mapping [-1,1] images to [-1,1] images of the same size.

    Args:
        ngf: feature maps after the first conv; the residual blocks work at 4·ngf.
        blocks: residual blocks at the bottleneck (1/4 resolution).
        norm: 'batch', 'instance' or 'none'; with 'batch' the convs carry no bias.

    Input height and width must be multiples of 4 and at least 8 (see KeyGenerator for other sizes).
    """
    bias = norm != "batch"
    layers: list[nn.Module] = [
        nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7, bias=bias), _norm_layer(norm, ngf), nn.ReLU(inplace=True),
    ]
    for factor in (1, 2):  # two stride-2 convs: ngf → 2·ngf → 4·ngf
        layers += [nn.Conv2d(ngf * factor, ngf * factor * 2, 3, stride=2, padding=1, bias=bias),
                   _norm_layer(norm, ngf * factor * 2), nn.ReLU(inplace=True)]
    layers += [ResidualBlock(ngf * 4, norm) for _ in range(blocks)]
    for factor in (4, 2):  # two transposed convs back: 4·ngf → 2·ngf → ngf
        layers += [nn.ConvTranspose2d(ngf * factor, ngf * factor // 2, 3, stride=2, padding=1, output_padding=1,
                                      bias=bias),
                   _norm_layer(norm, ngf * factor // 2), nn.ReLU(inplace=True)]
    layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7), nn.Tanh()]
    return nn.Sequential(*layers)


def _frozen(module: nn.Module) -> nn.Module:
    """The module in eval mode with no gradients for its parameters (returned for chaining)."""
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


class KeyGenerator(nn.Module):
    """G as the engine sees it: RGB images in [0,1], (N,3,H,W) → (N,3,H,W) in [0,1].

    Sizes that are not multiples of 4 are reflect-padded up to one and cropped back, so any
    H, W ≥ 8 works. Each image's output depends only on that image once the module is in eval mode
    (BatchNorm then uses its stored statistics).
    """

    def __init__(self, ngf: int, blocks: int, norm: str) -> None:
        super().__init__()
        self.ngf, self.blocks, self.norm = ngf, blocks, norm
        self.network = resnet_generator(ngf, blocks, norm)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        if min(height, width) < 8:
            raise ValueError(f"the key needs images of at least 8×8 pixels, got {height}×{width}")
        pad_bottom = -height % SIZE_MULTIPLE
        pad_right = -width % SIZE_MULTIPLE
        x = images * 2 - 1
        if pad_bottom or pad_right:
            x = F.pad(x, (0, pad_right, 0, pad_bottom), mode="reflect")
        y = (self.network(x) + 1) / 2
        return y[..., :height, :width]

    def freeze(self) -> KeyGenerator:
        """Eval mode and no gradients for the parameters: how encryption and decryption use G."""
        return _frozen(self)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable-or-frozen parameters (buffers such as BatchNorm statistics excluded)."""
    return sum(p.numel() for p in module.parameters())


class KeyModel(nn.Module):
    """The key as encryption and decryption use it: x′ ↦ G(S(x′)), or G(x′) for a key without scramble.

    Per image, the nonce's 4 pixels of G(S(x′)) are filled from the row below (Scramble.fill_nonce).

    Args:
        generator: the frozen G.
        scramble: the key's secret scramble S (avpcli.scramble), or None for the paper's plain G.
    """

    def __init__(self, generator: KeyGenerator, scramble: Scramble | None) -> None:
        super().__init__()
        self.generator = generator
        self.scramble = scramble

    @property
    def scrambles(self) -> bool:
        return self.scramble is not None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.scramble is None:
            return self.generator(images)
        return self.scramble.fill_nonce(self.generator(self.scramble(images)))

    def preimage(self, originals: torch.Tensor) -> torch.Tensor:
        """An input that the key maps close to `originals`: S⁻¹(x) (with x's nonce, for a per-image
        scramble), since G is trained to copy its input."""
        return self.scramble.preimage(originals) if self.scramble is not None else originals.clone()

    def stamp(self, images: torch.Tensor, originals: torch.Tensor) -> torch.Tensor:
        """Starts of an encryption with each original's nonce in place (a per-image scramble), else as they are."""
        return self.scramble.stamp(images, originals) if self.scramble is not None else images

    def pinned(self, height: int, width: int, device: torch.device | str) -> torch.Tensor | None:
        """(1, 1, H, W) True where an encryption must leave the pixels as stamped (the nonce), or None."""
        return self.scramble.pinned(height, width, device) if self.scramble is not None else None

    def freeze(self) -> KeyModel:
        return _frozen(self)


# --------------------------------------------------------------------------------------------
# Presets and seeds
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class KeyPreset:
    """Everything that decides a key besides its seed and training data.

    Attributes:
        ngf: generator width (residual blocks at 4·ngf).
        blocks: residual blocks.
        norm: 'batch', 'instance' or 'none'.
        steps: optimizer steps (fixed so that a seed gives the same key).
        batch_size: images per step.
        crop_size: side of the square training crops (the "image size trained").
        learning_rate: peak Adam learning rate.
        warmup_steps: linear warm-up from 0 to the peak.
        schedule: 'cosine' (decay to 0 after warm-up) or 'constant'.
        betas: Adam betas.
        ssim_weight: weight of (1 − SSIM) added to the L1 loss.
    """

    ngf: int
    blocks: int
    norm: str
    steps: int
    batch_size: int
    crop_size: int
    learning_rate: float
    warmup_steps: int = 0
    schedule: str = "cosine"
    betas: tuple[float, float] = (0.9, 0.999)
    ssim_weight: float = 0.0

    def learning_rate_at(self, step: int) -> float:
        """Learning rate for the 0-based optimizer step `step`."""
        if step < self.warmup_steps:
            return self.learning_rate * (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return self.learning_rate
        progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        return self.learning_rate * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


KEY_PRESETS: dict[str, KeyPreset] = {
    # Trains on 2 CPU cores in under 10 minutes; see docs/KEY.md for how it was chosen.
    # No norm (BatchNorm's running statistics and InstanceNorm both cost SSIM), 2 blocks (blocks
    # are 3/4 of the cost and did not help), SSIM in the loss; 5e-3 won at 600 steps, but at 1,500
    # it left a green cast that 2e-3 does not.
    "default": KeyPreset(ngf=16, blocks=2, norm="none", steps=1500, batch_size=16, crop_size=64,
                         learning_rate=2e-3, warmup_steps=75, schedule="cosine", ssim_weight=0.5),
    # For images of about 32×32 (CIFAR-10): the default recipe on 32-pixel crops. The default key,
    # trained on 64-pixel crops, reproduces CIFAR-10 test images to SSIM 0.87 only; this one to
    # 0.89–0.91, and the attack reaches SSIM_d 0.918–0.925 instead of 0.897–0.904 (docs/KEY.md).
    "small": KeyPreset(ngf=16, blocks=2, norm="none", steps=1500, batch_size=16, crop_size=32,
                       learning_rate=2e-3, warmup_steps=75, schedule="cosine", ssim_weight=0.5),
    # `avp demo`'s key: the default recipe cut to 600 steps so that the demo runs in minutes
    # (docs/KEY.md: 0.95 mean SSIM at 600 steps with this recipe at LR 5e-3, 0.947 with 6 blocks
    # at 2e-3); a cast-free key needs the full default.
    "demo": KeyPreset(ngf=16, blocks=2, norm="none", steps=600, batch_size=16, crop_size=64,
                      learning_rate=2e-3, warmup_steps=30, schedule="cosine", ssim_weight=0.5),
    # The paper's size (11.38 M parameters) and pix2pix's optimizer: a GPU job.
    "paper": KeyPreset(ngf=64, blocks=9, norm="batch", steps=50_000, batch_size=1, crop_size=256,
                       learning_rate=2e-4, warmup_steps=0, schedule="cosine", betas=(0.5, 0.999)),
}

GUESSABLE_SEED_LIMIT = 2 ** 32


SEED_BITS = 256


def new_seed() -> int:
    """A fresh secret seed: 256 random bits from the OS (as many as the scramble secret holds)."""
    return secrets.randbits(SEED_BITS)


def seed_is_guessable(seed: int) -> bool:
    """True for seeds small enough to enumerate (below 2**32): anyone could retrain that key."""
    return 0 <= seed < GUESSABLE_SEED_LIMIT


def _derived_seed(seed: int, purpose: str) -> int:
    """A 63-bit torch seed for one random stream (init, data) derived from the user's seed of any size."""
    digest = hashlib.sha256(f"avp-key:{purpose}:{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2 ** 63 - 1)


def scramble_secret(seed: int) -> bytes:
    """The 256-bit scramble secret of a key, derived from its seed so that a seed gives one key."""
    return hashlib.sha256(f"avp-key:scramble:{seed}".encode()).digest()


def resolve_preset(preset: str | KeyPreset) -> tuple[str, KeyPreset]:
    """(name, preset) for a preset name or a KeyPreset (named 'custom')."""
    if isinstance(preset, KeyPreset):
        return "custom", preset
    try:
        return preset, KEY_PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown key preset {preset!r}; choose one of {', '.join(KEY_PRESETS)}") from None


# --------------------------------------------------------------------------------------------
# Training data: a folder of images or a procedural source
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------

def train_key(preset_name: str | KeyPreset, seed: int, data_dir: str | os.PathLike[str] | None = None,
              steps: int | None = None, device: str | torch.device = "cpu",
              progress: ProgressCallback | None = None, scramble: bool | str = True) -> Key:
    """Train G to reproduce its input (L1, plus (1 − SSIM) where the preset asks for it).

    Args:
        preset_name: a name in KEY_PRESETS, or a KeyPreset.
        seed: the secret; the same seed, data, settings, torch version and thread count give a
            byte-identical key on CPU.
        data_dir: a folder of images (searched recursively); None for the built-in procedural source.
            A missing or image-less folder is a UsageError.
        steps: overrides the preset's step count (the learning-rate schedule follows it).
        device: where to train.
        progress: called as progress(step, total, loss) after every step (step counts from 1).
        scramble: give the key a secret scramble S, derived from the seed (avpcli.scramble): True for
            one plan per image (PER_IMAGE_SCHEME), or a scheme's name (SCHEME: one plan per size, as
            avp 0.1 made them); False keeps the paper's plain G. G's training is the same either way.

    No adversarial (PatchGAN) loss: at CPU budgets it only slows the identity fit (docs/KEY.md).
    The global torch RNG state is left as it was.
    """
    name, preset = resolve_preset(preset_name)
    scheme = PER_IMAGE_SCHEME if scramble is True else (scramble or None)
    if scheme is not None and scheme not in SCRAMBLE_SCHEMES:
        raise ValueError(f"unknown scramble scheme {scheme!r}; choose one of: {', '.join(SCRAMBLE_SCHEMES)}")
    if steps is not None:
        if steps < 1:
            raise ValueError("steps must be at least 1")
        preset = dataclasses.replace(preset, steps=steps, warmup_steps=min(preset.warmup_steps, steps // 10))
    if seed < 0:
        raise ValueError("the seed must be a non-negative integer")
    if data_dir is None:
        source: Callable[[torch.Generator, int, int], torch.Tensor] = procedural_images
        data_fingerprint = PROCEDURAL_SOURCE
    else:
        source = _FolderCrops(data_dir)
        data_fingerprint = training_data_fingerprint(data_dir)

    started = time.perf_counter()
    devices = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(_derived_seed(seed, "init"))
        model = KeyGenerator(preset.ngf, preset.blocks, preset.norm).to(device)
    data_generator = torch.Generator().manual_seed(_derived_seed(seed, "data"))
    optimizer = torch.optim.Adam(model.parameters(), lr=preset.learning_rate_at(0), betas=preset.betas)
    model.train()
    for step in range(preset.steps):
        for group in optimizer.param_groups:
            group["lr"] = preset.learning_rate_at(step)
        images = source(data_generator, preset.batch_size, preset.crop_size).to(device)
        output = model(images)
        loss = (output - images).abs().mean()
        if preset.ssim_weight:
            loss = loss + preset.ssim_weight * (1 - ssim(output, images).mean())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if progress is not None:
            progress(step + 1, preset.steps, float(loss.detach()))
    model.freeze()
    metadata = {
        "format": KEY_FORMAT,
        "format_version": KEY_FORMAT_VERSION,
        "architecture": ARCHITECTURE,
        "ngf": str(preset.ngf),
        "blocks": str(preset.blocks),
        "norm": preset.norm,
        "image_size": str(preset.crop_size),
        "seed": str(seed),
        "training_data": data_fingerprint,
        "steps": str(preset.steps),
        "preset": name,
        "scramble": scheme or NO_SCRAMBLE,
        "avp_version": __version__,
    }
    scrambler = Scramble(scramble_secret(seed), scheme) if scheme else None
    return Key(model.cpu(), metadata, scrambler, seconds=time.perf_counter() - started)


# --------------------------------------------------------------------------------------------
# The file format
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(eq=False, repr=False)
class Key:
    """A key: the frozen generator G, its scramble S (None: the paper's plain G) and its file's metadata.

    `model` is the key as encryption and decryption use it (G∘S); `plain_model` is G alone, the
    paper's key, which `--recipe research` encrypts for. Made by `Key.train` and `Key.load`,
    written by `save`; `path` is the file it was read from or last saved to, `seconds` the training
    time of a key just trained.
    """

    generator: KeyGenerator
    metadata: dict[str, str]
    scramble: Scramble | None = None
    path: Path | None = None
    seconds: float = 0.0

    def __repr__(self) -> str:  # never the seed (in the metadata) or the weights: a repr ends up in logs
        return (f"Key(fingerprint={self.fingerprint[:16]}…, preset={self.metadata.get('preset')!r}, "
                f"scramble={self.scrambles}, path={str(self.path) if self.path else None!r})")

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Key:
        """load_key: read and check a key file."""
        return load_key(path, device)

    @classmethod
    def train(cls, preset: str | KeyPreset = "default", seed: int | None = None, **options: Any) -> Key:
        """train_key, with a fresh 256-bit secret seed when none is given."""
        return train_key(preset, new_seed() if seed is None else seed, **options)

    def save(self, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
        """save_key: write the key owner-only and atomically; remembers the path."""
        self.path = save_key(self, path, overwrite)
        return self.path

    def tensors(self) -> dict[str, torch.Tensor]:
        """Everything the key file stores: G's weights and, for a scrambling key, the scramble secret."""
        return _key_tensors(self.generator, self.scramble)

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 over the stored tensors: names the key (in manifests) without giving away its seed."""
        return key_fingerprint(self.tensors())

    def derived_secret(self, purpose: str) -> bytes:
        """32 secret bytes of this key's for `purpose` (e.g. tagging sources in a manifest)."""
        return bytes.fromhex(key_fingerprint(self.tensors(), purpose))

    @property
    def scrambles(self) -> bool:
        return self.scramble is not None

    @property
    def model(self) -> KeyModel:
        return KeyModel(self.generator, self.scramble).freeze()

    @property
    def plain_model(self) -> KeyModel:
        return KeyModel(self.generator, None).freeze()

    def model_for(self, scramble: bool) -> KeyModel:
        """G∘S when `scramble` (a key without scramble refuses), else G alone."""
        if scramble and self.scramble is None:
            raise KeyFileError(f"{self.path or 'this key'} has no scramble (a format-1 or --no-scramble key)")
        return self.model if scramble else self.plain_model


def key_fingerprint(state_dict: Mapping[str, torch.Tensor], purpose: str = "") -> str:
    """sha256 (hex) over the sorted tensor names, dtypes, shapes and bytes: names a key without its seed.

    With a `purpose`, the hash starts with it: a secret of the key's own for that purpose, which only
    a holder of the key can compute and which the public fingerprint does not give away.
    """
    digest = hashlib.sha256(f"avp-key-derived:{purpose}\0".encode() if purpose else b"")
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _key_tensors(generator: KeyGenerator, scramble: Scramble | None) -> dict[str, torch.Tensor]:
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in generator.state_dict().items()}
    if scramble is not None:
        tensors[SCRAMBLE_SECRET_TENSOR] = scramble.secret.detach().cpu().contiguous()
    return tensors


def _canonical_header(payload: bytes) -> bytes:
    """The same safetensors bytes with the metadata in sorted order.

    safetensors writes its metadata map in a random order, so two saves of one key would differ;
    a key must be byte-identical per seed. Same entries, so the header keeps its length.
    """
    length = int.from_bytes(payload[:8], "little")
    header = json.loads(payload[8:8 + length])
    ordered = {"__metadata__": dict(sorted(header.pop("__metadata__", {}).items())), **header}
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > length:  # never happens with the same entries; keep the library's bytes then
        return payload
    return payload[:8] + text + b" " * (length - len(text)) + payload[8 + length:]


def save_key(trained: Key, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Write the key as safetensors with its metadata: owner-only (0600), fsynced, atomically renamed.

    Raises KeyFileError if the file exists and overwrite is False, or if it cannot be written.
    """
    from safetensors.torch import save

    target = Path(path)
    if target.exists() and not overwrite:
        raise KeyFileError(f"key file already exists: {target} (refusing to overwrite a secret)")
    payload = _canonical_header(save(trained.tensors(), metadata=dict(trained.metadata)))
    folder = target.parent if str(target.parent) else Path(".")
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as error:
        raise KeyFileError(f"cannot write key file {target}: {error.strerror}") from None
    try:
        os.fchmod(handle, 0o600)
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
            stream.flush()
            os.fsync(stream.fileno())
        if overwrite:
            os.replace(temporary, target)
        else:
            try:
                os.link(temporary, target)  # fails if someone created the file meanwhile
            except FileExistsError:
                raise KeyFileError(f"key file already exists: {target} (refusing to overwrite a secret)") from None
            os.unlink(temporary)
        directory = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as error:
        raise KeyFileError(f"cannot write key file {target}: {error.strerror}") from None
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return target


# Values (parameters and buffers) a key may hold: the paper preset's hold 11.39 M. A key file whose
# metadata declares more is refused before anything is allocated for it.
MAX_KEY_VALUES = 50_000_000
# The header of a real key is a few KB (the paper preset's: about 12 KB).
MAX_HEADER_BYTES = 1 << 20
MAX_KEY_BYTES = 8 + MAX_HEADER_BYTES + 4 * MAX_KEY_VALUES
# The dtypes a key holds, as safetensors names them, and their sizes in bytes.
_DTYPE_NAMES = {torch.float32: ("F32", 4), torch.int64: ("I64", 8), torch.uint8: ("U8", 1)}


def _metadata_int(metadata: Mapping[str, str], field: str, path: Path, largest: int) -> int:
    try:
        value = int(metadata[field])
    except (KeyError, ValueError):
        raise KeyFileError(f"{path} is not a usable avp key: metadata field {field!r} is missing or not a number") from None
    if not 1 <= value <= largest:  # bounds first: a forged ngf must not make us build a huge network
        raise KeyFileError(f"{path} is not a usable avp key: metadata field {field!r} = {value} is out of range")
    return value


def expected_key_tensors(ngf: int, blocks: int, norm: str, scrambles: bool) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name → (shape, safetensors dtype) of every tensor a key of this architecture holds.

    Built on the meta device, so it costs no memory whatever the sizes: a key's metadata is checked
    against its tensors before anything is allocated for them.
    """
    with torch.device("meta"):
        generator = KeyGenerator(ngf, blocks, norm)
    expected = {name: (tuple(tensor.shape), _DTYPE_NAMES[tensor.dtype][0])
                for name, tensor in generator.state_dict().items()}
    if scrambles:
        expected[SCRAMBLE_SECRET_TENSOR] = ((SECRET_BYTES,), "U8")
    return expected


def _open_key_file(source: Path) -> tuple[io.BufferedReader, int]:
    """The key file opened for reading, and its size; KeyFileError unless it is a regular file of a key's size.

    Opened without blocking and checked on the descriptor, so that a pipe or a device (in keys/, say)
    is refused instead of hanging or filling memory.
    """
    try:
        descriptor = os.open(source, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise KeyFileError(f"key file not found: {source}") from None
    except OSError as error:
        raise KeyFileError(f"cannot read key file {source}: {error.strerror or error}") from None
    status = os.fstat(descriptor)
    if not stat.S_ISREG(status.st_mode):
        os.close(descriptor)
        raise KeyFileError(f"{source} is not a regular file (a folder, pipe or device), so it is not a key")
    if status.st_size > MAX_KEY_BYTES:
        os.close(descriptor)
        raise KeyFileError(f"{source} is too large to be an avp key ({status.st_size:,} bytes; "
                           f"a key has at most {MAX_KEY_BYTES:,})")
    return os.fdopen(descriptor, "rb"), status.st_size


def _read_header(stream: io.BufferedReader, size: int, source: Path) -> tuple[bytes, dict]:
    """The safetensors header's bytes (with their 8-byte length) and its JSON; KeyFileError if it is not one."""
    not_safetensors = KeyFileError(f"{source} is not a safetensors file (corrupt, truncated or another kind of file)")
    prefix = stream.read(8)
    length = int.from_bytes(prefix, "little")
    if len(prefix) < 8 or length > min(MAX_HEADER_BYTES, size - 8):
        raise not_safetensors
    text = stream.read(length)
    try:
        header = json.loads(text)
    except (ValueError, RecursionError):
        raise not_safetensors from None
    metadata = header.get("__metadata__", {}) if isinstance(header, dict) else None
    if (not isinstance(metadata, dict) or not all(isinstance(value, str) for value in metadata.values())
            or not all(isinstance(entry, dict) for name, entry in header.items() if name != "__metadata__")):
        raise not_safetensors
    return prefix + text, header


def _check_metadata(metadata: Mapping[str, str], source: Path) -> tuple[bool, int, int, str]:
    """(scrambles, ngf, blocks, norm) from a key's metadata; KeyFileError if it is not an avp key this avp reads."""
    if metadata.get("format") != KEY_FORMAT:
        raise KeyFileError(f"{source} is a safetensors file but not an avp key (no '{KEY_FORMAT}' metadata)")
    version = metadata.get("format_version")
    if version not in READABLE_FORMAT_VERSIONS:
        raise KeyFileError(f"{source} is an avp key of format version {version!r}; "
                           f"this avp ({__version__}) reads versions {', '.join(READABLE_FORMAT_VERSIONS)}")
    scheme = metadata.get("scramble", NO_SCRAMBLE) if version != "1" else NO_SCRAMBLE
    if scheme not in (NO_SCRAMBLE, *SCRAMBLE_SCHEMES):
        raise KeyFileError(f"{source} has a scramble this avp does not know: {scheme!r}")
    if metadata.get("architecture") != ARCHITECTURE:
        raise KeyFileError(f"{source} has unknown architecture {metadata.get('architecture')!r}")
    ngf = _metadata_int(metadata, "ngf", source, largest=512)
    blocks = _metadata_int(metadata, "blocks", source, largest=64)
    norm = metadata.get("norm")
    if norm not in NORMS:
        raise KeyFileError(f"{source} has unknown norm {norm!r}")
    return scheme != NO_SCRAMBLE, ngf, blocks, norm


def _check_tensors(header: dict, expected: dict[str, tuple[tuple[int, ...], str]], data_bytes: int, source: Path,
                   architecture: str) -> None:
    """KeyFileError unless the header lists exactly the expected tensors with their shapes and dtypes,
    and the file holds exactly their bytes (`data_bytes`) after the header."""
    declared = {name: entry for name, entry in header.items() if name != "__metadata__"}
    missing = sorted(set(expected) - set(declared))
    unexpected = sorted(set(declared) - set(expected))
    if missing or unexpected:
        what = f"missing tensor {missing[0]}" if missing else f"unexpected tensor {unexpected[0]}"
        raise KeyFileError(f"{source} does not match its declared architecture ({architecture}): {what}")
    for name, (shape, dtype) in sorted(expected.items()):
        found_shape, found_dtype = declared[name].get("shape"), declared[name].get("dtype")
        if found_shape != list(shape) or found_dtype != dtype:
            shown = tuple(found_shape) if isinstance(found_shape, list) else found_shape
            raise KeyFileError(f"{source} is damaged: tensor {name} has shape {shown!r} {found_dtype}, "
                               f"expected {shape} {dtype}")
    widths = {dtype_name: width for dtype_name, width in _DTYPE_NAMES.values()}
    needed = sum(math.prod(shape) * widths[dtype] for shape, dtype in expected.values())
    if data_bytes != needed:
        raise KeyFileError(f"{source} is damaged: it holds {data_bytes:,} bytes of tensor data where its "
                           f"architecture needs {needed:,} (truncated or padded)")


def load_key(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Key:
    """Read a key file written by save_key: checks format, architecture, tensor names, shapes and dtypes.

    Everything is checked on the header first, before the tensors are read or any memory is spent on
    them: the metadata, the architecture it describes (at most MAX_KEY_VALUES values), and
    every tensor's name, shape and dtype against it. Returns the generator frozen and in eval mode.
    Raises KeyFileError (one-line message) for a missing, unreadable, truncated, corrupt, foreign or
    oversized file, or one that is not a regular file.
    """
    from safetensors.torch import load

    source = Path(path)
    stream, size = _open_key_file(source)
    with stream:
        head, header = _read_header(stream, size, source)
        metadata = header.get("__metadata__", {})
        scrambles, ngf, blocks, norm = _check_metadata(metadata, source)
        architecture = f"ngf {ngf}, {blocks} blocks"
        expected = expected_key_tensors(ngf, blocks, norm, scrambles)
        values = sum(math.prod(shape) for shape, _ in expected.values())
        if values > MAX_KEY_VALUES:
            raise KeyFileError(f"{source} declares an architecture ({architecture}) whose tensors hold {values:,} "
                               f"values; an avp key holds at most {MAX_KEY_VALUES:,}")
        _check_tensors(header, expected, size - len(head), source, architecture)
        try:
            payload = head + stream.read(size - len(head))
        except OSError as error:
            raise KeyFileError(f"cannot read key file {source}: {error.strerror or error}") from None
    try:
        tensors = load(payload)
    except Exception:  # whatever the parser trips on (offsets, a file changed while read), it is not one of ours
        raise KeyFileError(f"{source} is not a safetensors file (corrupt, truncated or another kind of file)") from None
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise KeyFileError(f"{source} is damaged: tensor {name} holds NaN or infinite values")
    scramble = (Scramble(bytes(tensors.pop(SCRAMBLE_SECRET_TENSOR).tolist()), metadata["scramble"]).to(device)
                if scrambles else None)
    with torch.device("meta"):  # the loaded tensors become the parameters: nothing is allocated twice
        generator = KeyGenerator(ngf, blocks, norm)
    generator.load_state_dict(tensors, assign=True)
    generator.to(device).freeze()
    return Key(generator, dict(metadata), scramble, path=source)


def find_key(fingerprint: str, folders: Sequence[Path], device: str | torch.device = "cpu",
             on_unusable: Callable[[str], None] = lambda reason: None) -> Key:
    """The key in `folders` (their *.safetensors files) whose fingerprint matches, loaded.

    A file there that is not a usable key (foreign, damaged, a pipe, too large) is skipped, its
    reason passed to on_unusable. Raises KeyFileError if no key matches.
    """
    for folder in folders:
        if not folder.is_dir():
            continue
        for candidate in sorted(folder.glob("*.safetensors")):
            try:
                loaded = load_key(candidate, device=device)
            except KeyFileError as unusable:
                on_unusable(str(unusable))
                continue
            if loaded.fingerprint == fingerprint:
                return loaded
    searched = ", ".join(str(folder) for folder in folders)
    raise KeyFileError(f"no key with fingerprint {fingerprint[:16]}… in {searched}; give it with --key")
