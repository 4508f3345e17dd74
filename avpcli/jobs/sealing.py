"""Sealed originals in runs: every input file, byte for byte, under standard authenticated encryption
(avpcli.seal) beside the model's ciphertexts, and given back by decrypt.

The model's ciphertexts carry what the target model needs (a face chip, a resized image); a photo is
more than that. Its sealed container holds the whole file, name and metadata included, and needs no
model to open: only the key's sealing secret.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from avpcli.errors import ImageError
from avpcli.files import UnusableFile, open_regular_file, read_limited
from avpcli.images import contained_path, read_file_bytes
from avpcli.jobs.folders import file_digest, write_into
from avpcli.seal import DAMAGED, SealError, is_sealed, open_sealed, seal, seal_key

# What a key's sealing secret is derived from (Key.derived_secret); versioned with the container format.
SEAL_PURPOSE = "seal-v1"
SEALED_INFIX = ".sealed"
# The largest input file sealed (the container is read whole into memory to open it).
MAX_SEALED_BYTES = 1 << 30
# The largest container read (seal.MAX_PIXEL_BYTES of pixels, their PNG framing and some slack).
MAX_CONTAINER_BYTES = 3 * 89_478_485 + (1 << 20)


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


def container_of(output: Path) -> Path:
    """The container name of a source whose model ciphertext is (or would be) `output`."""
    return sealed_name(output)


def seal_into(folder: Path, container: Path, source: Path, name: str, key: bytes) -> dict[str, str]:
    """Seal the input file `source` (its bytes and `name`) and write the container folder/container
    atomically; returns the manifest fields that link a source's entries to it."""
    data = seal_source(source, name, key)
    write_into(folder, container, data)
    return {"sealed": str(container), "sealed_sha256": hashlib.sha256(data).hexdigest()}


def container_kept(entry: dict[str, Any], folder: Path, container: Path) -> bool:
    """Whether an earlier run's entry names this source's container `container`, and the file is there unchanged."""
    return entry.get("sealed") == str(container) and file_digest(folder, str(container)) == entry.get("sealed_sha256")


def looks_sealed(path: Path) -> bool:
    """Whether `path` is meant as a container: named *.sealed.png, or a regular file that starts like one
    (seal.is_sealed); never blocks on a FIFO. A damaged container is thus refused as one, not read as a ciphertext."""
    if path.name.lower().endswith(f"{SEALED_INFIX}.png"):
        return True
    try:
        stream, _ = open_regular_file(path)
        with stream:
            head = stream.read(1 << 16)
    except (UnusableFile, OSError):
        return False
    return is_sealed(head)


@dataclass(frozen=True)
class SealedFile:
    """A container to open in a decryption: its place in the run, what the events and the manifest call it,
    where it is read, and what the manifest says of it (its sha256 and the source it holds; None: a lone file)."""

    position: int
    label: str
    path: Path
    sha256: str | None = None
    source: str | None = None


def restore_all(containers: list[SealedFile], output: Path, key: bytes | None, overwrite: bool,
                earlier: dict[str, dict[str, Any]], record: Callable[[int, dict[str, Any], str], None],
                fail: Callable[[int, str, str], None]) -> set[str]:
    """Open each container and write its file, byte for byte, at output/<its name>; returns the names written.

    A container that does not open (altered, truncated, re-encoded, another key's), whose bytes are not the
    sha256 its manifest lists, or that holds another source than its entry names is refused with DAMAGED,
    and nothing is written for it. `record(position, entry, kind)` takes each restored file ("written") or
    one that an earlier run restored from these very bytes ("skipped"); `fail(position, label, reason)`.
    """
    done_before = {(entry.get("source"), entry.get("source_sha256")): entry for entry in earlier.values()
                   if entry.get("restored") and entry.get("status") == "ok"}
    written: set[str] = set()
    for item in containers:
        try:
            data = read_file_bytes(item.path, MAX_CONTAINER_BYTES)
        except ImageError as unreadable:
            fail(item.position, item.label, f"cannot read: {unreadable}")
            continue
        digest = hashlib.sha256(data).hexdigest()
        if item.sha256 is not None and digest != item.sha256:
            fail(item.position, item.label, DAMAGED)
            continue
        before = done_before.get((item.label, digest))
        if (before is not None and isinstance(before.get("output"), str) and before["output"] not in written
                and file_digest(output, before["output"]) == before.get("sha256")):
            written.add(before["output"])
            record(item.position, before, "skipped")
            continue
        if key is None:
            fail(item.position, item.label, "a sealed original: give the key (avpcli.Key) to open it")
            continue
        try:
            name, original = open_sealed(data, key)
        except SealError as refused:
            fail(item.position, item.label, str(refused))
            continue
        del data
        if item.source is not None and name != item.source:
            fail(item.position, item.label, DAMAGED)  # a container renamed onto another entry
            continue
        try:
            path = contained_path(output, name)
        except ImageError as unsafe:
            fail(item.position, item.label, f"holds an unsafe name: {unsafe}")
            continue
        if name in written:
            fail(item.position, item.label, f"{name} is restored from another container of this run")
            continue
        if not overwrite and (path.exists() or path.is_symlink()) and file_digest(output, name) != hashlib.sha256(original).hexdigest():
            fail(item.position, item.label, f"{name} in the output folder holds another file; use --overwrite to "
                                            "replace it, or choose another --out")
            continue
        write_into(output, name, original)
        written.add(name)
        record(item.position, {"source": item.label, "output": name, "status": "ok", "restored": True,
                               "source_sha256": digest, "sha256": hashlib.sha256(original).hexdigest()}, "written")
    return written
