"""Key recipes (presets) and seeds: what decides a key, and the secret it is derived from."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import secrets

from avpcli.errors import UsageError
from avpcli.scramble import PER_IMAGE_SCHEME, SCHEMES as SCRAMBLE_SCHEMES


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


def derived_seed(seed: int, purpose: str) -> int:
    """A 63-bit torch seed for one random stream (init, data) derived from the user's seed of any size."""
    digest = hashlib.sha256(f"avp-key:{purpose}:{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2 ** 63 - 1)


def scramble_secret(seed: int) -> bytes:
    """The 256-bit scramble secret of a key, derived from its seed so that a seed gives one key."""
    return hashlib.sha256(f"avp-key:scramble:{seed}".encode()).digest()


def resolve_preset(preset: str | KeyPreset) -> tuple[str, KeyPreset]:
    """(name, preset) for a preset name or a KeyPreset (named 'custom'); UsageError for an unknown name."""
    if isinstance(preset, KeyPreset):
        return "custom", preset
    try:
        return preset, KEY_PRESETS[preset]
    except KeyError:
        raise UsageError(f"unknown key preset {preset!r}; choose one of {', '.join(KEY_PRESETS)}") from None


def resolve_recipe(preset: str | KeyPreset, seed: int, steps: int | None = None,
                   scramble: bool | str = True) -> tuple[str, KeyPreset, str | None]:
    """What train_key will do, checked before any work: (preset name, preset, scramble scheme or None).

    `steps` replaces the preset's step count (warm-up cut to at most a tenth of it); `scramble` is
    True (PER_IMAGE_SCHEME), a scheme's name, or False (None: the paper's plain G). An unknown preset
    or scheme, steps below 1 or a negative seed is a UsageError, so a command can check its options
    before it starts showing progress.
    """
    name, resolved = resolve_preset(preset)
    scheme = PER_IMAGE_SCHEME if scramble is True else (scramble or None)
    if scheme is not None and scheme not in SCRAMBLE_SCHEMES:
        raise UsageError(f"unknown scramble scheme {scheme!r}; choose one of: {', '.join(SCRAMBLE_SCHEMES)}")
    if steps is not None:
        if steps < 1:
            raise UsageError("steps must be at least 1")
        resolved = dataclasses.replace(resolved, steps=steps, warmup_steps=min(resolved.warmup_steps, steps // 10))
    if seed < 0:
        raise UsageError("the seed must be a non-negative integer")
    return name, resolved, scheme
