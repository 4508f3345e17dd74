"""Key recipes (presets) and seeds: what decides a key, and the secret it is derived from."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import math
import re
import secrets

from avpcli.errors import UsageError
from avpcli.scramble import PER_IMAGE_SCHEME, SCHEMES as SCRAMBLE_SCHEMES


SEED_KDF_SALT = b"avp-seed-kdf:scrypt-v1"  # fixed, so that a seed gives one key; labelled and versioned
_SEED_KDF_NAME = re.compile(r"scrypt-v1:n=(\d+),r=(\d+),p=(\d+)")


@dataclasses.dataclass(frozen=True)
class SeedKdf:
    """The memory-hard function a key's seed goes through: scrypt with cost n (a power of 2), block size r
    and parallelism p, which take 128·r·n bytes of memory; every guess of a seed costs one run.

    Its `name` ("scrypt-v1:n=…,r=…,p=…") is recorded in the key file's `seed_kdf` metadata.
    """

    n: int
    r: int
    p: int = 1

    def __post_init__(self) -> None:
        if not (self.n > 1 and self.n & (self.n - 1) == 0 and self.r >= 1 and self.p >= 1
                and 128 * self.r * (self.n + self.p + 2) < 2 ** 31):
            raise UsageError(f"scrypt needs n a power of 2 above 1, r and p at least 1 and under 2 GiB of memory: "
                             f"n={self.n}, r={self.r}, p={self.p}")

    @property
    def name(self) -> str:
        return f"scrypt-v1:n={self.n},r={self.r},p={self.p}"

    @property
    def memory_bytes(self) -> int:
        return 128 * self.r * self.n

    @classmethod
    def parse(cls, name: str) -> SeedKdf:
        """The SeedKdf a `seed_kdf` metadata value names; UsageError for anything else."""
        match = _SEED_KDF_NAME.fullmatch(name)
        if match is None:
            raise UsageError(f"unknown seed KDF {name!r}")
        return cls(*(int(group) for group in match.groups()))

    def master(self, seed: int) -> bytes:
        """32 bytes: scrypt over the seed's decimal digits with the fixed salt (the slow step of a guess)."""
        return hashlib.scrypt(str(seed).encode(), salt=SEED_KDF_SALT, n=self.n, r=self.r, p=self.p,
                              maxmem=128 * self.r * (self.n + self.p + 2) + (1 << 20), dklen=32)


# Every built-in preset's: 160 MiB and 0.52 s per derivation on one core of the development machine
# (docs/KEY.md). Lowering it makes every seed cheaper to guess; tests/test_key.py pins it.
SEED_KDF = SeedKdf(n=2 ** 17, r=10, p=1)
# For tests' tiny presets only: microseconds per guess, so a key of it is as guessable as its seed's bits.
TEST_SEED_KDF = SeedKdf(n=2, r=1, p=1)


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
        procedural: the built-in training source keygen uses without --data (training_data.PROCEDURAL_SOURCES).
        seed_kdf: the memory-hard function the seed goes through before any secret is derived from it
            (SEED_KDF, about 0.5 s per guess); TEST_SEED_KDF for tests' tiny keys; None for the fast
            derivation of keys made before the KDF (no `seed_kdf` metadata), to retrain one of them only.
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
    procedural: str = "procedural-v1"
    seed_kdf: SeedKdf | None = SEED_KDF

    def learning_rate_at(self, step: int) -> float:
        """Learning rate for the 0-based optimizer step `step`."""
        if step < self.warmup_steps:
            return self.learning_rate * (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return self.learning_rate
        progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        return self.learning_rate * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


KEY_PRESETS: dict[str, KeyPreset] = {
    # Trains on 2 CPU cores in about 6 minutes; see docs/KEY.md for how it was chosen.
    # No norm (BatchNorm's running statistics and InstanceNorm both cost SSIM), no residual block
    # (from 6 blocks to 2 and from 2 to 0 cost nothing in SSIM; the last two were 37% of G's time
    # per attack step), SSIM in the loss; 5e-3 won at 600 steps, but at 1,500 it left a green cast
    # that 2e-3 does not. 4,500 steps since avp 0.3 (about 6 min): 1,500 left G short on sharp faces
    # (SSIM of the start 0.93 on the chips of large photos, 0.96 on LFW; 0.955 and 0.98 at 4,500).
    # procedural-v2 (hair-like strands) since avp 0.3: curly hair and beards were what G reproduced
    # worst (0.90 on one chip, which no attack could take to 0.95; docs/KEY.md "Hair-like strands").
    # Keys of avp 0.2 (2 blocks) keep working: a key file names its own shape.
    "default": KeyPreset(ngf=16, blocks=0, norm="none", steps=4500, batch_size=16, crop_size=64,
                         learning_rate=2e-3, warmup_steps=75, schedule="cosine", ssim_weight=0.5,
                         procedural="procedural-v2"),
    # For images of about 32×32 (CIFAR-10), avp 0.2's answer: its default key (2 blocks, procedural-v1)
    # gave CIFAR-10 test images back at SSIM 0.87 only, this one at 0.89–0.91. Since avp 0.3 the
    # default key (procedural-v2) gives them back at 0.966–0.971 and is the one to use (docs/KEY.md).
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

# Below this a seed can be enumerated, and so can any a person would remember: `avp keygen --seed` warns.
GUESSABLE_SEED_LIMIT = 2 ** 64
SEED_BITS = 256


def new_seed() -> int:
    """A fresh secret seed: 256 random bits from the OS (as many as the scramble secret holds)."""
    return secrets.randbits(SEED_BITS)


def seed_is_guessable(seed: int) -> bool:
    """True for seeds small enough to enumerate (below 2**64): whoever finds it has the key's scramble."""
    return 0 <= seed < GUESSABLE_SEED_LIMIT


@dataclasses.dataclass(frozen=True, repr=False)
class SeedSecrets:
    """What a seed decides: the scramble's 256-bit secret and G's two 63-bit torch seeds (init, data)."""

    scramble: bytes
    init: int
    data: int


def seed_secrets(seed: int, kdf: SeedKdf | None) -> SeedSecrets:
    """A key's secrets from its seed: HMAC-SHA256(scrypt(seed), label) per secret, so that every one
    costs a guesser a run of `kdf`; with kdf None, the fast hashes of keys without `seed_kdf` metadata."""
    if kdf is None:
        return SeedSecrets(scramble_secret(seed), derived_seed(seed, "init"), derived_seed(seed, "data"))
    master = kdf.master(seed)

    def derive(label: str) -> bytes:
        return hmac.new(master, f"avp-key:{kdf.name}:{label}".encode(), hashlib.sha256).digest()

    return SeedSecrets(derive("scramble"), _torch_seed(derive("init")), _torch_seed(derive("data")))


def _torch_seed(digest: bytes) -> int:
    return int.from_bytes(digest[:8], "big") & (2 ** 63 - 1)


def derived_seed(seed: int, purpose: str) -> int:
    """The fast (no KDF) 63-bit torch seed of keys made before the seed KDF, for one random stream (init, data)."""
    return _torch_seed(hashlib.sha256(f"avp-key:{purpose}:{seed}".encode()).digest())


def scramble_secret(seed: int) -> bytes:
    """The fast (no KDF) 256-bit scramble secret of keys made before the seed KDF: sha256 of a label and the seed.
    A guess of the seed costs a microsecond (benchmarks/seed_search.py); keys now use seed_secrets."""
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
