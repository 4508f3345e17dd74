"""The output folder of a run: its lock, atomic writes inside it, the manifest rewritten as the run goes,
and what a killed run left behind."""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Callable, Iterator

from avpcli.errors import AvpError, ImageError, UsageError
from avpcli.files import write_output
from avpcli.images import MAX_PNG_BYTES, contained_path, is_inside, read_file_bytes
from avpcli.manifest import MANIFEST_NAME, Manifest, read_manifest


def check_output_folder(inputs: list[Path], output: Path) -> None:
    """Refuse an output folder where outputs could become inputs or replace them.

    That is: the output folder is an input folder or lies inside one; it is the folder of an input
    file given by name (ciphertexts would sit among, and could replace, the originals); or an input
    lies inside it.
    """
    for given in inputs:
        if given.is_dir() and is_inside(output, given):
            raise UsageError(f"the output folder {output} is inside the input folder {given}; choose another --out")
        if not given.is_dir() and output.resolve() == given.absolute().parent.resolve():
            raise UsageError(f"the output folder {output} is the folder of the input {given}; choose another --out")
        if is_inside(given, output):
            raise UsageError(f"the input {given} is inside the output folder {output}; choose another --out")


@contextmanager
def owned_folder(folder: Path, shared: bool = False) -> Iterator[None]:
    """Create `folder` if needed and hold its advisory lock while a run writes into it.

    The lock is an flock on the folder itself: it leaves no file behind and ends with its process,
    so a killed run never leaves the folder locked. It is exclusive, or `shared` among the shards
    of one run (they write separate manifest parts); either way a second run into a held folder
    gets AvpError at once instead of mixing its files and manifest with the first's. A folder
    that this call created is removed again if the run fails before writing anything into it.
    """
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as error:
        raise AvpError(f"cannot use the output folder {folder}: {error.strerror or error}") from None
    try:
        try:
            fcntl.flock(descriptor, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AvpError(f"another avp run is writing into {folder}; wait until it has finished, "
                           "or choose another --out") from None
        try:
            yield
        except BaseException:
            if created:
                with suppress(OSError):
                    folder.rmdir()  # only if still empty
            raise
    finally:
        os.close(descriptor)


def write_into(folder: Path, name: str | Path, data: bytes) -> Path:
    """Write folder/name atomically; AvpError if the disk refuses or a link would take the file out of `folder`."""
    try:
        path = contained_path(folder, str(name))
    except ImageError as unsafe:
        raise AvpError(f"cannot write {folder / name}: {unsafe}") from None
    write_output(path, data)
    return path


def write_records(manifest: Manifest, records: list[tuple[Any, dict[str, Any]]], folder: Path,
                   name: str = MANIFEST_NAME, earlier: list[dict[str, Any]] = ()) -> None:
    """Write `manifest` listing the records' entries in their order, then the entries kept from earlier runs."""
    records.sort(key=lambda record: record[0])
    manifest.files = [entry for _, entry in records] + list(earlier)
    manifest.write(folder, name)


class Checkpoint:
    """Rewrites a run's manifest as the run goes, as often as that stays cheap.

    At most once a second, and never more than a fifth of the time: a manifest of a million entries
    takes seconds to write, and rewriting it after every batch would cost more than the run itself.
    """

    def __init__(self, write: Callable[[], None]) -> None:
        self._write = write
        self._due = 0.0

    def write(self) -> None:
        started = time.monotonic()
        self._write()
        finished = time.monotonic()
        self._due = finished + max(1.0, 4 * (finished - started))

    def write_if_due(self) -> None:
        if time.monotonic() >= self._due:
            self.write()


def face_output_name(output: Path, face_index: int) -> Path:
    return output if face_index == 0 else output.with_name(f"{output.stem}_face{face_index + 1}{output.suffix}")


_FACE_SUFFIX = re.compile(r"_face\d+$")


# atomic_write_bytes's temporaries: ".<name>.<8 random characters>.part".
_TEMPORARY = re.compile(r"\.(.+)\.[a-z0-9_]{8}\.part")


def remove_stale_temporaries(folder: Path, owned: set[Path]) -> None:
    """Delete temporaries that a killed run left for the outputs in `owned` (relative paths).

    Only our own: other shards may be writing into the same folder right now.
    """
    if not folder.is_dir():
        return
    for temporary in folder.rglob(".*.part"):
        match = _TEMPORARY.fullmatch(temporary.name)
        if not match:
            continue
        name = temporary.parent.relative_to(folder) / match.group(1)
        if name in owned or name.with_name(_FACE_SUFFIX.sub("", name.stem) + name.suffix) in owned:
            temporary.unlink(missing_ok=True)


def previous_manifest(folder: Path, names: tuple[str, ...]) -> Manifest | None:
    """The first of these manifests in `folder` that reads; None if none does (its outputs are then redone)."""
    for name in dict.fromkeys(names):
        path = folder / name
        if path.is_file():
            try:
                return read_manifest(path)
            except AvpError:
                continue
    return None


def file_digest(folder: Path, name: str) -> str | None:
    """sha256 of the PNG folder/name, or None if it is not a readable regular file inside `folder`."""
    try:
        return hashlib.sha256(read_file_bytes(contained_path(folder, name), MAX_PNG_BYTES)).hexdigest()
    except ImageError:
        return None
