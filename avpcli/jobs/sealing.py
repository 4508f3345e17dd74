"""Sealed originals in runs: every input file, byte for byte, under standard authenticated encryption
(avpcli.seal) beside the model's ciphertexts, and given back by decrypt.

The model's ciphertexts carry what the target model needs (a face chip, a resized image); a photo is
more than that. Its sealed container holds the whole file, name and metadata included, and needs no
model to open: only the key's sealing secret.
"""

from __future__ import annotations

from pathlib import Path

from avpcli.errors import ImageError
from avpcli.files import UnusableFile, open_regular_file, read_limited
from avpcli.seal import is_sealed, open_sealed, seal, seal_key  # noqa: F401 - is_sealed: re-exported for decrypt

# What a key's sealing secret is derived from (Key.derived_secret); versioned with the container format.
SEAL_PURPOSE = "seal-v1"
SEALED_INFIX = ".sealed"
# The largest input file sealed (the container is read whole into memory to open it).
MAX_SEALED_BYTES = 1 << 30


def sealing_key(key) -> bytes:
    """The sealing key of an avp Key (avpcli.key.Key)."""
    return seal_key(key.derived_secret(SEAL_PURPOSE))


def sealed_name(output: Path) -> Path:
    """The container's name beside a source's model ciphertext `output`: a.png → a.sealed.png."""
    return output.with_name(f"{output.stem}{SEALED_INFIX}{output.suffix}")


def read_source(path: Path) -> bytes:
    """The bytes of an input file to seal; ImageError (the file fails) if it cannot be read whole."""
    try:
        stream, _ = open_regular_file(path)
        with stream:
            return read_limited(stream, MAX_SEALED_BYTES)
    except UnusableFile as problem:
        raise ImageError(problem.reason) from None


def seal_source(path: Path, name: str, key: bytes) -> bytes:
    """The container of one input file: its bytes and `name` (its path relative to its input)."""
    return seal(read_source(path), name, key)
