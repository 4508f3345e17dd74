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

The plan comes from the key's 256-bit secret: HMAC-SHA256(secret, a label) seeds SHAKE-256,
whose output bytes are ranked (a stable argsort of integers). That is fixed forever by the two hash
standards, so a key decrypts the same on any machine and any numpy or torch version. Two schemes:

- per image (PER_IMAGE_SCHEME, keys made since avp 0.2): the label holds the image's size and a
  96-bit nonce, which the ciphertext itself carries in its top row's first NONCE_PIXELS pixels
  (exact on the 8-bit grid, so it survives a PNG and needs no file metadata). The engine writes
  the nonce at the start and never moves those pixels. Every image then has its own plan, and
  (ciphertext, original) pairs of other images say nothing about it (docs/PRIVACY.md: key
  recovery). The nonce is HMAC(secret, the original's 8-bit pixels): the same image encrypted
  twice gets the same nonce, two different images different ones, and without the secret the
  nonce says nothing of the image.
- per size (SCHEME, keys of avp 0.1): one plan per key and image size, which every pair of the
  key teaches an attacker. Such keys still load, encrypt and decrypt as they always did.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

SECRET_BYTES = 32
SCHEME = "pixels+channels+inversion-v1"  # one plan per key and image size
PER_IMAGE_SCHEME = "pixels+channels+inversion+nonce-v2"  # one plan per image, keyed by its nonce
SCHEMES = (SCHEME, PER_IMAGE_SCHEME)
NONCE_PIXELS = 4  # the top row's first 4 pixels hold an image's nonce: 12 bytes, 96 bits
PLANS_KEPT = 64  # single plans kept (about 0.8 MB each at 150×150); a batch's stacked plans are kept apart


@dataclass(frozen=True)
class ScramblePlan:
    """Where every value of an H×W image goes, for one device.

    source: (3·H·W,) indices into the flattened (C, H, W) image: output value i is input value source[i];
        or (N, 3·H·W), one plan per image of a batch (a per-image scramble).
    inverted: (3·H·W,) (or (N, 3·H·W)) 1.0 where the output value is inverted, else 0.0; within each
        (output channel, source channel) class, ⌊size/2⌋ of the values.
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
        self._check(images)
        flat = images.reshape(batch, -1)
        gathered = flat.index_select(1, self.source) if self.source.ndim == 1 else flat.gather(1, self.source)
        inverted = self.inverted.to(images.dtype)
        # v for kept values, 1 − v for inverted ones.
        return (inverted + (1 - 2 * inverted) * gathered).reshape(batch, channels, height, width)

    def invert(self, scrambled: torch.Tensor) -> torch.Tensor:
        """The exact inverse of apply for a plan whose `source` is a permutation: invert(apply(x)) == x."""
        batch, channels, height, width = scrambled.shape
        self._check(scrambled)
        inverted = self.inverted.to(scrambled.dtype)
        gathered = inverted + (1 - 2 * inverted) * scrambled.reshape(batch, -1)  # undo the inversion first
        restored = torch.empty_like(gathered)
        if self.source.ndim == 1:
            restored[:, self.source] = gathered
        else:
            restored.scatter_(1, self.source, gathered)
        return restored.reshape(batch, channels, height, width)

    def _check(self, images: torch.Tensor) -> None:
        values = self.source.shape[-1]
        if images.shape[1] * images.shape[2] * images.shape[3] != values:
            raise ValueError(f"a plan for {values} values cannot (un)scramble images of {tuple(images.shape[1:])}")
        if self.source.ndim == 2 and self.source.shape[0] != images.shape[0]:
            raise ValueError(f"a plan for {self.source.shape[0]} images cannot (un)scramble {images.shape[0]}")

    def row(self, index: int) -> ScramblePlan:
        """One image's plan of a per-image batch plan."""
        return ScramblePlan(self.source[index], self.inverted[index]) if self.source.ndim == 2 else self


def _random_bytes(secret: bytes, label: str, count: int) -> bytes:
    return hashlib.shake_256(hmac.new(secret, label.encode(), hashlib.sha256).digest()).digest(count)


def make_plan(secret: bytes, height: int, width: int, nonce: bytes | None = None) -> ScramblePlan:
    """The scramble of an H×W image under `secret` (at least 32 bytes): the key's plan for the size
    (SCHEME), or with `nonce` (NONCE_PIXELS · 3 bytes) the plan of the image carrying it (PER_IMAGE_SCHEME)."""
    if len(secret) < SECRET_BYTES:
        raise ValueError(f"the scramble secret must have at least {SECRET_BYTES} bytes, got {len(secret)}")
    if height < 1 or width < 1:
        raise ValueError(f"an image needs at least one pixel, got {height}×{width}")
    if nonce is None:
        label = f"avp-scramble:{SCHEME}:{height}x{width}"
    else:
        if len(nonce) != 3 * NONCE_PIXELS:
            raise ValueError(f"a nonce has {3 * NONCE_PIXELS} bytes, got {len(nonce)}")
        label = f"avp-scramble:{PER_IMAGE_SCHEME}:{height}x{width}:{nonce.hex()}"
    pixels = height * width
    values = 3 * pixels
    stream = _random_bytes(secret, label, 8 * pixels + 4 * values + 8 * values)
    position_ranks = np.frombuffer(stream, dtype="<u8", count=pixels)
    channel_ranks = np.frombuffer(stream, dtype="<u4", count=values, offset=8 * pixels).reshape(pixels, 3)
    inversion_ranks = np.frombuffer(stream, dtype="<u8", count=values, offset=8 * pixels + 4 * values)
    # Ranking independent uniform integers gives a uniform permutation (ties are broken by index).
    positions = np.argsort(position_ranks, kind="stable")  # output pixel p takes input pixel positions[p]
    channels = np.argsort(channel_ranks, axis=1, kind="stable")  # output channel c takes input channel channels[p, c]
    if nonce is not None:
        # The nonce's pixels (the top row's first NONCE_PIXELS) stay where they are, as they are: what
        # the key makes of them lands in the decrypted image's corner, where SSIM's windows hardly
        # reach and KeyModel fills them from the row below, not at secret places all over it.
        if width < NONCE_PIXELS:
            raise ValueError(f"a per-image scramble needs images at least {NONCE_PIXELS} pixels wide")
        positions = np.concatenate([np.arange(NONCE_PIXELS),
                                    NONCE_PIXELS + np.argsort(position_ranks[NONCE_PIXELS:], kind="stable")])
        channels[:NONCE_PIXELS] = np.arange(3)
        fixed = (np.arange(3)[:, None] * pixels + np.arange(NONCE_PIXELS)[None, :]).reshape(-1)
        inversion_ranks = inversion_ranks.copy()
        inversion_ranks[fixed] = np.iinfo(np.uint64).max  # last of their classes: never inverted
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


def _levels(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] images as their 8-bit levels (uint8, same shape and device)."""
    return images.detach().float().mul(255).round().clamp(0, 255).to(torch.uint8)


def _with_nonces(images: torch.Tensor, nonces: list[bytes]) -> torch.Tensor:
    """A copy of `images` whose nonce pixels hold `nonces` (one per image), as nonces_of reads them back."""
    levels = torch.tensor([list(nonce) for nonce in nonces], dtype=torch.float32)
    values = (levels.reshape(-1, NONCE_PIXELS, 3).permute(0, 2, 1) / 255).to(images.device, images.dtype)
    stamped = images.clone()
    stamped[:, :, 0, :NONCE_PIXELS] = values
    return stamped


class Scramble(nn.Module):
    """S as a module: (N, 3, H, W) in [0, 1] → (N, 3, H, W) in [0, 1], any H and W (per image: W ≥ NONCE_PIXELS).

    Plans are made on first use and kept (per size and device; per image, the PLANS_KEPT most recent).
    The secret is held as a uint8 buffer so that it is saved with the key and counted in its
    fingerprint; it is never printed.
    """

    def __init__(self, secret: bytes, scheme: str = SCHEME) -> None:
        super().__init__()
        if len(secret) < SECRET_BYTES:
            raise ValueError(f"the scramble secret must have at least {SECRET_BYTES} bytes, got {len(secret)}")
        if scheme not in SCHEMES:
            raise ValueError(f"unknown scramble scheme {scheme!r}; this avp knows {', '.join(SCHEMES)}")
        self.register_buffer("secret", torch.tensor(list(secret), dtype=torch.uint8))
        self.scheme = scheme
        self._plans: OrderedDict[tuple, ScramblePlan] = OrderedDict()
        # The last batch's stacked plans, with each nonce's row: an encryption asks for the same batch,
        # or a part of it, at every step.
        self._batch: tuple[tuple, dict[bytes, int], ScramblePlan] | None = None

    @property
    def per_image(self) -> bool:
        return self.scheme == PER_IMAGE_SCHEME

    def extra_repr(self) -> str:
        return f"scheme={self.scheme!r}"  # never the secret

    def _secret(self) -> bytes:
        return bytes(self.secret.cpu().tolist())

    def plan(self, height: int, width: int, device: torch.device, nonce: bytes | None = None) -> ScramblePlan:
        """The plan of an H×W image: the key's for the size, or the one of the image carrying `nonce`."""
        cache_key = (height, width, str(device), nonce)
        if cache_key in self._plans:
            self._plans.move_to_end(cache_key)
        else:
            self._plans[cache_key] = make_plan(self._secret(), height, width, nonce).to(device)
            if len(self._plans) > PLANS_KEPT:
                self._plans.popitem(last=False)
        return self._plans[cache_key]

    # -- the per-image scheme's nonce -------------------------------------------------------------

    def nonces_of(self, images: torch.Tensor) -> list[bytes]:
        """The nonce each image carries: its top row's first NONCE_PIXELS pixels as 8-bit RGB bytes."""
        if images.shape[-1] < NONCE_PIXELS:
            raise ValueError(f"a per-image scramble needs images at least {NONCE_PIXELS} pixels wide")
        rows = _levels(images[:, :, 0, :NONCE_PIXELS]).permute(0, 2, 1).reshape(images.shape[0], -1).cpu().numpy()
        return [row.tobytes() for row in rows]

    def nonces_for(self, originals: torch.Tensor) -> list[bytes]:
        """The nonce an original gets: HMAC(secret, its 8-bit pixels), cut to NONCE_PIXELS · 3 bytes."""
        secret = self._secret()
        return [hmac.new(secret, b"avp-scramble-nonce:" + level.tobytes(), hashlib.sha256).digest()[:3 * NONCE_PIXELS]
                for level in _levels(originals).cpu().numpy()]

    def stamp(self, images: torch.Tensor, originals: torch.Tensor) -> torch.Tensor:
        """`images` with each original's nonce written into its nonce pixels (a copy; as is for a per-size key)."""
        return _with_nonces(images, self.nonces_for(originals)) if self.per_image else images

    def fill_nonce(self, decrypted: torch.Tensor) -> torch.Tensor:
        """A decryption with the nonce's pixels (which S leaves in place, so G turns them into nothing of x)
        taken from the row below; as is for a per-size key or a one-row image."""
        if not self.per_image or decrypted.shape[-2] < 2:
            return decrypted
        filled = decrypted.clone()
        filled[:, :, 0, :NONCE_PIXELS] = decrypted[:, :, 1, :NONCE_PIXELS]
        return filled

    def pinned(self, height: int, width: int, device: torch.device | str) -> torch.Tensor | None:
        """(1, 1, H, W) True where an encryption must not change the pixels (the nonce); None for a per-size key."""
        if not self.per_image:
            return None
        mask = torch.zeros(1, 1, height, width, dtype=torch.bool, device=device)
        mask[..., 0, :NONCE_PIXELS] = True
        return mask

    # -- applying it ------------------------------------------------------------------------------

    def _plan_for(self, images: torch.Tensor, nonces: list[bytes] | None = None) -> ScramblePlan:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"the scramble works on (N, 3, H, W) RGB images, got {tuple(images.shape)}")
        height, width = images.shape[-2:]
        if not self.per_image:
            return self.plan(height, width, images.device)
        nonces = nonces if nonces is not None else self.nonces_of(images)
        if len(nonces) != images.shape[0]:
            raise ValueError(f"{len(nonces)} nonces for {images.shape[0]} images")
        where = (height, width, str(images.device))
        if self._batch is not None and self._batch[0] == where and all(nonce in self._batch[1] for nonce in nonces):
            _, rows, stacked = self._batch
            indices = [rows[nonce] for nonce in nonces]
            if indices == list(range(stacked.source.shape[0])):
                return stacked
            chosen = torch.tensor(indices, device=stacked.source.device)
            return ScramblePlan(stacked.source[chosen], stacked.inverted[chosen])
        plans = [self.plan(height, width, images.device, nonce) for nonce in nonces]
        stacked = ScramblePlan(torch.stack([plan.source for plan in plans]),
                               torch.stack([plan.inverted for plan in plans]))
        self._batch = (where, {nonce: row for row, nonce in reversed(list(enumerate(nonces)))}, stacked)
        return stacked

    def plans_of(self, images: torch.Tensor) -> ScramblePlan:
        """The plan each image is scrambled with: (3·H·W,) for a per-size key, (N, 3·H·W) per image."""
        return self._plan_for(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._plan_for(images).apply(images)

    def inverse(self, scrambled: torch.Tensor, nonces: list[bytes] | None = None) -> torch.Tensor:
        """S⁻¹, exact: inverse(forward(x)) == x. Per image, S(x) depends on the nonce x carries, which
        S(x) no longer shows: `nonces` (nonces_of(x)) is then required."""
        if self.per_image and nonces is None:
            raise ValueError("a per-image scramble's inverse needs the images' nonces")
        return self._plan_for(scrambled, nonces).invert(scrambled)

    def preimage(self, originals: torch.Tensor) -> torch.Tensor:
        """An input that S maps onto the originals, the nonce pixels aside: S⁻¹(x), stamped per image with
        x's nonce (its plan's)."""
        if not self.per_image:
            return self.inverse(originals)
        nonces = self.nonces_for(originals)
        return _with_nonces(self.inverse(originals, nonces), nonces)
