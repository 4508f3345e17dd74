"""The key's secret scramble S: a keyed, exactly invertible re-indexing of an image's values.

Decryption is G(S(x′)). A key that copies its input (G ≈ identity) needs x's layout in whatever
it is given; with S in front, the optimizer puts that layout into S(x′), and x′ itself holds it
scattered over secret positions, so no filter of x′ lines it up again (docs/PRIVACY.md).

For an image of H×W pixels, S
  1. moves every pixel to a secret position (a uniformly random permutation of the H·W positions),
  2. permutes the three channels of every pixel with its own secret permutation, and
  3. inverts (v ↦ 1 − v) a secret half of the values, balanced exactly within each pair (output
     channel, source channel), so that a ciphertext's mean colour is 1/2 whatever the original's:
     a mean over such a class is half values and half inverted values of one channel of x.
All three are one gather and one multiply-add, differentiable, with an exact inverse.

The plan for each size comes from the key's 256-bit secret alone: HMAC-SHA256(secret, label of
the size) seeds SHAKE-256, whose output bytes are ranked (a stable argsort of integers). That is
fixed forever by the two hash standards, so a key decrypts the same on any machine and any numpy
or torch version, and sizes are unrelated to each other.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

SECRET_BYTES = 32
SCHEME = "pixels+channels+inversion-v1"


@dataclass(frozen=True)
class ScramblePlan:
    """Where every value of an H×W image goes, for one device.

    source: (3·H·W,) indices into the flattened (C, H, W) image: output value i is input value source[i].
    inverted: (3·H·W,) 1.0 where the output value is inverted, else 0.0; within each (output channel,
        source channel) class, ⌊size/2⌋ of the values.
    """

    source: torch.Tensor
    inverted: torch.Tensor

    def to(self, device: torch.device | str) -> ScramblePlan:
        return ScramblePlan(self.source.to(device), self.inverted.to(device))

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) → (N, 3, H, W): output value i is input value source[i], inverted where marked.

        `source` need not be a permutation (a plan guessed by an attacker may use a value twice).
        """
        batch, channels, height, width = images.shape
        if channels * height * width != self.source.numel():
            raise ValueError(f"a plan for {self.source.numel()} values cannot scramble images of {tuple(images.shape[1:])}")
        gathered = images.reshape(batch, -1).index_select(1, self.source)
        inverted = self.inverted.to(images.dtype)
        # v for kept values, 1 − v for inverted ones.
        return (inverted + (1 - 2 * inverted) * gathered).reshape(batch, channels, height, width)

    def invert(self, scrambled: torch.Tensor) -> torch.Tensor:
        """The exact inverse of apply for a plan whose `source` is a permutation: invert(apply(x)) == x."""
        batch, channels, height, width = scrambled.shape
        if channels * height * width != self.source.numel():
            raise ValueError(f"a plan for {self.source.numel()} values cannot unscramble images of {tuple(scrambled.shape[1:])}")
        inverted = self.inverted.to(scrambled.dtype)
        gathered = inverted + (1 - 2 * inverted) * scrambled.reshape(batch, -1)  # undo the inversion first
        restored = torch.empty_like(gathered)
        restored[:, self.source] = gathered
        return restored.reshape(batch, channels, height, width)


def _random_bytes(secret: bytes, height: int, width: int, count: int) -> bytes:
    label = f"avp-scramble:{SCHEME}:{height}x{width}".encode()
    return hashlib.shake_256(hmac.new(secret, label, hashlib.sha256).digest()).digest(count)


def make_plan(secret: bytes, height: int, width: int) -> ScramblePlan:
    """The scramble of an H×W image under `secret` (at least 32 bytes)."""
    if len(secret) < SECRET_BYTES:
        raise ValueError(f"the scramble secret must have at least {SECRET_BYTES} bytes, got {len(secret)}")
    if height < 1 or width < 1:
        raise ValueError(f"an image needs at least one pixel, got {height}×{width}")
    pixels = height * width
    values = 3 * pixels
    stream = _random_bytes(secret, height, width, 8 * pixels + 4 * values + 8 * values)
    position_ranks = np.frombuffer(stream, dtype="<u8", count=pixels)
    channel_ranks = np.frombuffer(stream, dtype="<u4", count=values, offset=8 * pixels).reshape(pixels, 3)
    inversion_ranks = np.frombuffer(stream, dtype="<u8", count=values, offset=8 * pixels + 4 * values)
    # Ranking independent uniform integers gives a uniform permutation (ties are broken by index).
    positions = np.argsort(position_ranks, kind="stable")  # output pixel p takes input pixel positions[p]
    channels = np.argsort(channel_ranks, axis=1, kind="stable")  # output channel c takes input channel channels[p, c]
    source = (channels.T * pixels + positions[None, :]).reshape(-1)  # flattened (C, H·W) order
    # Balanced per (output channel, source channel): rank the values inside each class and invert
    # the lower half of every class.
    classes = (np.arange(3)[:, None] * 3 + channels.T).reshape(-1)  # output channel · 3 + source channel
    order = np.lexsort((inversion_ranks, classes))  # by class, then by rank inside it
    sizes = np.bincount(classes, minlength=9)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    position_in_class = np.empty(values, dtype=np.int64)
    position_in_class[order] = np.arange(values) - np.repeat(starts, sizes)
    inverted = (position_in_class < (sizes // 2)[classes]).astype(np.float32)
    return ScramblePlan(torch.from_numpy(source.astype(np.int64)), torch.from_numpy(inverted))


class Scramble(nn.Module):
    """S as a module: (N, 3, H, W) in [0, 1] → (N, 3, H, W) in [0, 1], any H and W.

    Plans are made on first use of each size and device and kept (a few hundred KB per size).
    The secret is held as a uint8 buffer so that it is saved with the key and counted in its
    fingerprint; it is never printed.
    """

    def __init__(self, secret: bytes) -> None:
        super().__init__()
        if len(secret) < SECRET_BYTES:
            raise ValueError(f"the scramble secret must have at least {SECRET_BYTES} bytes, got {len(secret)}")
        self.register_buffer("secret", torch.tensor(list(secret), dtype=torch.uint8))
        self._plans: dict[tuple[int, int, str], ScramblePlan] = {}

    def extra_repr(self) -> str:
        return f"scheme={SCHEME!r}"  # never the secret

    def plan(self, height: int, width: int, device: torch.device) -> ScramblePlan:
        cache_key = (height, width, str(device))
        if cache_key not in self._plans:
            self._plans[cache_key] = make_plan(bytes(self.secret.cpu().tolist()), height, width).to(device)
        return self._plans[cache_key]

    def _plan_for(self, images: torch.Tensor) -> ScramblePlan:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"the scramble works on (N, 3, H, W) RGB images, got {tuple(images.shape)}")
        return self.plan(images.shape[-2], images.shape[-1], images.device)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._plan_for(images).apply(images)

    def inverse(self, scrambled: torch.Tensor) -> torch.Tensor:
        """S⁻¹, exact: inverse(forward(x)) == x."""
        return self._plan_for(scrambled).invert(scrambled)
