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
All three are one gather and one select, differentiable, with an exact inverse.

The plan comes from the key's 256-bit secret: HMAC-SHA256(secret, a label) seeds SHAKE-256,
whose output bytes are ranked (a stable argsort of integers). That is fixed forever by the two hash
standards, so a key decrypts the same on any machine and any numpy or torch version. Three schemes:

- per image with a key check (CHECKED_SCHEME, nonce-v3, = PER_IMAGE_SCHEME: keys made since
  issue #24): the label holds the image's size and a 96-bit nonce, which the ciphertext itself
  carries in its top row's first NONCE_PIXELS pixels (exact on the 8-bit grid, so it survives a
  PNG and needs no file metadata). The engine writes the nonce at the start and never moves those
  pixels. Every image then has its own plan, and (ciphertext, original) pairs of other images say
  nothing about it (docs/PRIVACY.md: key recovery). The nonce's first 8 bytes are HMAC(secret, the
  original's 8-bit pixels): the same image encrypted twice gets the same nonce, two different images
  different ones, and without the secret the nonce says nothing of the image. Its last 4 bytes are a
  tag, HMAC(secret, scheme, H×W, those 8 bytes): `verify` tells a ciphertext of this key and size
  with an intact nonce from anything else (a changed nonce, another key, a crop or resize) but for a
  2⁻³² chance, with no plan made.
- per image without a check (NONCE_V2_SCHEME, keys of avp 0.2): the same, the 12 bytes all HMAC of
  the pixels; nothing tells a wrong key or a damaged nonce (verify gives None).
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
NONCE_V2_SCHEME = "pixels+channels+inversion+nonce-v2"  # one plan per image, keyed by its nonce; no key check
CHECKED_SCHEME = "pixels+channels+inversion+nonce-v3"  # as v2, and the nonce carries a key check (its tag)
PER_IMAGE_SCHEME = CHECKED_SCHEME  # what new keys get (avpcli.key.presets: scramble=True)
PER_IMAGE_SCHEMES = (NONCE_V2_SCHEME, CHECKED_SCHEME)
SCHEMES = (SCHEME, *PER_IMAGE_SCHEMES)
NONCE_PIXELS = 4  # the top row's first 4 pixels hold an image's nonce: 12 bytes, 96 bits
NONCE_BODY_BYTES = 8  # CHECKED_SCHEME: HMAC(secret, the original's pixels), then
TAG_BYTES = 4  # HMAC(secret, scheme, size, body): another key, size or a changed byte fails it but for 2⁻³²
FLIP_SLICE = 2 ** 22  # values inverted at a time in place (decryption): 16 MB of float32 temporaries
PLAN_BYTES_KEPT = 256 * 2 ** 20  # plans kept, by their bytes (least recently used first out); a larger one is not kept


@dataclass(frozen=True)
class ScramblePlan:
    """Where every value of an H×W image goes, for one device.

    source: (3·H·W,) indices into the flattened (C, H, W) image: output value i is input value source[i];
        or (N, 3·H·W), one plan per image of a batch (a per-image scramble). make_plan gives int32
        (int64 from 2³¹ values on).
    inverted: (3·H·W,) (or (N, 3·H·W)) True where the output value is inverted; within each
        (output channel, source channel) class, ⌊size/2⌋ of the values. make_plan gives bool; a float
        0/1 mask (an attacker's guess) works the same.
    """

    source: torch.Tensor
    inverted: torch.Tensor

    @property
    def nbytes(self) -> int:
        return self.source.element_size() * self.source.numel() + self.inverted.element_size() * self.inverted.numel()

    def to(self, device: torch.device | str) -> ScramblePlan:
        """On another device; off the CPU with int64 sources (the index type every kernel takes; CPU ones take int32)."""
        if torch.device(device).type == "cpu":
            return ScramblePlan(self.source.to(device), self.inverted.to(device))
        return ScramblePlan(self.source.to(device, torch.int64), self.inverted.to(device))

    def _flip(self, values: torch.Tensor, inverted: torch.Tensor | None = None) -> torch.Tensor:
        """v for kept values, 1 − v for inverted ones (`inverted`: this plan's mask unless given). In place,
        a slice at a time, where no gradient is asked for (decryption); else a new tensor."""
        inverted = self.inverted if inverted is None else inverted
        if inverted.dtype != torch.bool:
            inverted = inverted.to(values.dtype)
            return inverted + (1 - 2 * inverted) * values
        if torch.is_grad_enabled() and values.requires_grad:
            return torch.where(inverted, 1 - values, values)
        step = FLIP_SLICE
        for start in range(0, values.shape[-1], step):
            part, mask = values[..., start:start + step], inverted[..., start:start + step]
            part.copy_(torch.where(mask, 1 - part, part))
        return values

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) → (N, 3, H, W): output value i is input value source[i], inverted where marked.

        `source` need not be a permutation (a plan guessed by an attacker may use a value twice).
        """
        batch, channels, height, width = images.shape
        self._check(images)
        flat = images.reshape(batch, -1)
        gathered = flat.index_select(1, self.source) if self.source.ndim == 1 else flat.gather(1, self.source)
        return self._flip(gathered).reshape(batch, channels, height, width)

    def invert(self, scrambled: torch.Tensor) -> torch.Tensor:
        """The exact inverse of apply for a plan whose `source` is a permutation: invert(apply(x)) == x."""
        batch, channels, height, width = scrambled.shape
        self._check(scrambled)
        flat = scrambled.reshape(batch, -1)
        if self.inverted.dtype == torch.bool and not (torch.is_grad_enabled() and scrambled.requires_grad):
            # Move first, then undo the inversion in place where each value landed: one image's worth
            # of output and a byte per value, no float temporaries.
            restored, landed = torch.empty_like(flat), torch.empty_like(self.inverted)
            if self.source.ndim == 1:
                restored[:, self.source] = flat
                landed[self.source] = self.inverted
            else:
                restored.scatter_(1, self.source, flat)
                landed.scatter_(1, self.source, self.inverted)
            return self._flip(restored, landed).reshape(batch, channels, height, width)
        gathered = self._flip(flat)  # undo the inversion first
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


def _stable_order_of_three(ranks: np.ndarray) -> np.ndarray:
    """(P, 3) integers → (3, P) uint8: row c holds the column of each row's c-th smallest rank, ties by
    column, i.e. np.argsort(ranks, axis=1, kind="stable").T, without its eight-byte indices."""
    first, second, third = ranks[:, 0], ranks[:, 1], ranks[:, 2]
    # Where column i goes in its row's order: how many ranks sort before it (ties: the lower column first).
    place_of_second = (first <= second).view(np.uint8) + (third < second).view(np.uint8)
    place_of_third = (first <= third).view(np.uint8) + (second <= third).view(np.uint8)
    order = np.empty((3, len(ranks)), dtype=np.uint8)
    for place in range(3):
        order[place] = (place_of_second == place).view(np.uint8)
        order[place] += 2 * (place_of_third == place).view(np.uint8)
    return order


def make_plan(secret: bytes, height: int, width: int, nonce: bytes | None = None,
              scheme: str | None = None) -> ScramblePlan:
    """The scramble of an H×W image under `secret` (at least 32 bytes): the key's plan for the size
    (SCHEME), or with `nonce` (NONCE_PIXELS · 3 bytes) the plan of the image carrying it under a
    per-image `scheme` (NONCE_V2_SCHEME unless said).

    The plan holds 5 bytes per value (int32 sources, a bool mask). Making it needs the SHAKE-256
    stream whole (hashlib has no incremental read: 44 bytes per pixel, ≈ 14.7 per value) and about
    6 bytes per value more at its peak."""
    if len(secret) < SECRET_BYTES:
        raise ValueError(f"the scramble secret must have at least {SECRET_BYTES} bytes, got {len(secret)}")
    if height < 1 or width < 1:
        raise ValueError(f"an image needs at least one pixel, got {height}×{width}")
    scheme = scheme or (SCHEME if nonce is None else NONCE_V2_SCHEME)
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scramble scheme {scheme!r}; this avp knows {', '.join(SCHEMES)}")
    if scheme == SCHEME:
        if nonce is not None:
            raise ValueError(f"the per-size scheme {SCHEME} takes no nonce")
        label = f"avp-scramble:{SCHEME}:{height}x{width}"
    else:
        if nonce is None or len(nonce) != 3 * NONCE_PIXELS:
            raise ValueError(f"a nonce has {3 * NONCE_PIXELS} bytes, got {None if nonce is None else len(nonce)}")
        if width < NONCE_PIXELS:
            raise ValueError(f"a per-image scramble needs images at least {NONCE_PIXELS} pixels wide")
        label = f"avp-scramble:{scheme}:{height}x{width}:{nonce.hex()}"
    pixels = height * width
    values = 3 * pixels
    index = np.int32 if values < 2 ** 31 else np.int64
    fixed = NONCE_PIXELS if nonce is not None else 0  # the nonce's pixels stay where they are, as they are
    stream = _random_bytes(secret, label, 8 * pixels + 4 * values + 8 * values)
    position_ranks = np.frombuffer(stream, dtype="<u8", count=pixels)
    channel_ranks = np.frombuffer(stream, dtype="<u4", count=values, offset=8 * pixels).reshape(pixels, 3)
    inversion_ranks = np.frombuffer(stream, dtype="<u8", count=values, offset=8 * pixels + 4 * values)
    # Ranking independent uniform integers gives a uniform permutation (ties are broken by index).
    # Output pixel p takes input pixel positions[p]; output channel c takes input channel channels[c, p].
    positions = np.empty(pixels, dtype=index)
    positions[:fixed] = np.arange(fixed)
    positions[fixed:] = np.argsort(position_ranks[fixed:], kind="stable")
    positions[fixed:] += fixed
    channels = _stable_order_of_three(channel_ranks)
    # The nonce's pixels: what the key makes of them lands in the decrypted image's corner, where SSIM's
    # windows hardly reach and KeyModel fills them from the row below, not at secret places all over it.
    channels[:, :fixed] = np.arange(3, dtype=np.uint8)[:, None]
    # Balanced per (output channel, source channel): rank the values inside each class (ties by index)
    # and invert the lower half of every class; the nonce's values rank last in theirs.
    inverted = np.zeros((3, pixels), dtype=bool)
    for output in range(3):
        ranks_of_channel = inversion_ranks[output * pixels:(output + 1) * pixels]
        for source_channel in range(3):
            members = np.flatnonzero(channels[output] == source_channel)
            ranks = ranks_of_channel[members]
            ranks[:np.searchsorted(members, fixed)] = np.iinfo(np.uint64).max
            lower = np.argsort(ranks, kind="stable")[:len(members) // 2]
            inverted[output, members[lower]] = True
            del members, ranks, lower
    del stream, position_ranks, channel_ranks, inversion_ranks, ranks_of_channel
    source = np.empty((3, pixels), dtype=index)  # flattened (C, H·W) order
    for output in range(3):
        source[output] = channels[output]
        source[output] *= pixels
        source[output] += positions
    return ScramblePlan(torch.from_numpy(source.reshape(-1)), torch.from_numpy(inverted.reshape(-1)))


def nonce_tag(secret: bytes, height: int, width: int, body: bytes, scheme: str = CHECKED_SCHEME) -> bytes:
    """CHECKED_SCHEME's key check: the TAG_BYTES that follow a nonce's body, for an H×W image."""
    message = f"avp-scramble-tag:{scheme}:{height}x{width}:".encode() + body
    return hmac.new(secret, message, hashlib.sha256).digest()[:TAG_BYTES]


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

    Plans are made on first use and kept, least recently used first out, while they and the last
    batch's stacked plans hold at most PLAN_BYTES_KEPT bytes; a plan larger than that is made for
    each use and not kept. The secret is held as a uint8 buffer so that it is saved with the key and
    counted in its fingerprint; it is never printed.
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
        self._plan_bytes = 0  # what self._plans hold
        # The last batch's stacked plans, with each nonce's row: an encryption asks for the same batch,
        # or a part of it, at every step.
        self._batch: tuple[tuple, dict[bytes, int], ScramblePlan] | None = None

    @property
    def per_image(self) -> bool:
        return self.scheme in PER_IMAGE_SCHEMES

    @property
    def checks_key(self) -> bool:
        """Whether this scheme's ciphertexts carry a key check (verify)."""
        return self.scheme == CHECKED_SCHEME

    def extra_repr(self) -> str:
        return f"scheme={self.scheme!r}"  # never the secret

    def _secret(self) -> bytes:
        return bytes(self.secret.cpu().tolist())

    # -- the plans kept ---------------------------------------------------------------------------

    def kept_bytes(self) -> int:
        """What the kept plans hold: at most PLAN_BYTES_KEPT."""
        return self._plan_bytes + (self._batch[2].nbytes if self._batch is not None else 0)

    def _make_room(self) -> None:
        while self._plans and self.kept_bytes() > PLAN_BYTES_KEPT:
            self._plan_bytes -= self._plans.popitem(last=False)[1].nbytes

    def plan(self, height: int, width: int, device: torch.device, nonce: bytes | None = None) -> ScramblePlan:
        """The plan of an H×W image: the key's for the size, or the one of the image carrying `nonce`."""
        cache_key = (self.scheme, height, width, str(device), nonce)
        if cache_key in self._plans:
            self._plans.move_to_end(cache_key)
            return self._plans[cache_key]
        made = make_plan(self._secret(), height, width, nonce, self.scheme if nonce is not None else None).to(device)
        if made.nbytes <= PLAN_BYTES_KEPT:
            self._plans[cache_key] = made
            self._plan_bytes += made.nbytes
            self._make_room()  # the least recently used first; the last batch's stack stays
        return made

    # -- the per-image scheme's nonce -------------------------------------------------------------

    def nonces_of(self, images: torch.Tensor) -> list[bytes]:
        """The nonce each image carries: its top row's first NONCE_PIXELS pixels as 8-bit RGB bytes."""
        if images.shape[-1] < NONCE_PIXELS:
            raise ValueError(f"a per-image scramble needs images at least {NONCE_PIXELS} pixels wide")
        rows = _levels(images[:, :, 0, :NONCE_PIXELS]).permute(0, 2, 1).reshape(images.shape[0], -1).cpu().numpy()
        return [row.tobytes() for row in rows]

    def nonces_for(self, originals: torch.Tensor) -> list[bytes]:
        """The nonce an original gets: HMAC(secret, its 8-bit pixels), cut to NONCE_PIXELS · 3 bytes; under
        CHECKED_SCHEME cut to NONCE_BODY_BYTES and followed by its tag (nonce_tag, over the image's size)."""
        secret = self._secret()
        height, width = originals.shape[-2:]
        digests = [hmac.new(secret, b"avp-scramble-nonce:" + level.tobytes(), hashlib.sha256).digest()
                   for level in _levels(originals).cpu().numpy()]
        if not self.checks_key:
            return [digest[:3 * NONCE_PIXELS] for digest in digests]
        return [digest[:NONCE_BODY_BYTES] + nonce_tag(secret, height, width, digest[:NONCE_BODY_BYTES], self.scheme)
                for digest in digests]

    def verify(self, images: torch.Tensor) -> torch.Tensor | None:
        """Per image (N,) bool on the images' device: True where the nonce's tag holds for this key and the
        image's size (a changed nonce byte, another key, another size: False but for a 2⁻³² chance). None
        for a scheme without a check (per size, NONCE_V2_SCHEME). Reads the nonce pixels only: no plan."""
        if not self.checks_key:
            return None
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"the scramble works on (N, 3, H, W) RGB images, got {tuple(images.shape)}")
        batch, _, height, width = images.shape
        if width < NONCE_PIXELS:  # no room for a nonce: not a ciphertext of this scheme
            return torch.zeros(batch, dtype=torch.bool, device=images.device)
        secret = self._secret()
        held = [hmac.compare_digest(nonce[NONCE_BODY_BYTES:],
                                    nonce_tag(secret, height, width, nonce[:NONCE_BODY_BYTES], self.scheme))
                for nonce in self.nonces_of(images)]
        return torch.tensor(held, dtype=torch.bool, device=images.device)

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
        where = (self.scheme, height, width, str(images.device))
        if self._batch is not None and self._batch[0] == where and all(nonce in self._batch[1] for nonce in nonces):
            _, rows, stacked = self._batch
            indices = [rows[nonce] for nonce in nonces]
            if indices == list(range(stacked.source.shape[0])):
                return stacked
            chosen = torch.tensor(indices, device=stacked.source.device)
            return ScramblePlan(stacked.source[chosen], stacked.inverted[chosen])
        if len(nonces) == 1:  # one image: its (kept) plan as a one-row view, no copy
            plan = self.plan(height, width, images.device, nonces[0])
            return ScramblePlan(plan.source[None], plan.inverted[None])
        plans = [self.plan(height, width, images.device, nonce) for nonce in nonces]
        stacked = ScramblePlan(torch.stack([plan.source for plan in plans]),
                               torch.stack([plan.inverted for plan in plans]))
        del plans
        self._batch = None
        if stacked.nbytes <= PLAN_BYTES_KEPT:
            self._batch = (where, {nonce: row for row, nonce in reversed(list(enumerate(nonces)))}, stacked)
            self._make_room()
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
