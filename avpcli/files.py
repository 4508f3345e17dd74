"""Safe file I/O: read a regular file without ever blocking on a pipe, and write atomically.

Every path avp reads may be hostile (a FIFO planted in a folder, a device, a link loop), so a file
is opened without blocking and then checked on its descriptor: checking the path first and opening
it after would leave a gap in which the path can change. Every output is written to a temporary file
beside its place and renamed into it, so a reader never sees part of a file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterable

from avpcli.errors import AvpError


class UnusableFile(Exception):
    """Why a path cannot be read as a regular file: `reason` is one line that never names the path.

    `missing` marks a path that names nothing (or a broken link); `not_regular` a folder, pipe,
    socket or device; `strerror` is the system's own words where the system refused (else the reason).
    Callers turn it into their own domain error (ImageError, KeyFileError).
    """

    def __init__(self, reason: str, *, missing: bool = False, not_regular: bool = False,
                 strerror: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.missing = missing
        self.not_regular = not_regular
        self.strerror = strerror or reason


def open_regular_file(path: Path) -> tuple[BinaryIO, os.stat_result]:
    """The file opened for binary reading, and its status; UnusableFile unless it is a regular file.

    Opened with O_NONBLOCK, then checked with fstat: a FIFO is refused without waiting for a writer.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise UnusableFile("broken symbolic link" if Path(path).is_symlink() else "file vanished",
                           missing=True) from None
    except PermissionError as error:
        raise UnusableFile("permission denied", strerror=error.strerror) from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise UnusableFile("symbolic link loop", strerror=error.strerror) from None
        raise UnusableFile(f"cannot read file: {error.strerror or error}", strerror=error.strerror) from None
    status = os.fstat(descriptor)
    if not stat.S_ISREG(status.st_mode):
        os.close(descriptor)
        if stat.S_ISDIR(status.st_mode):
            raise UnusableFile("a folder, not an image file", not_regular=True)
        raise UnusableFile("not a regular file (a pipe, socket or device)", not_regular=True)
    # Reads after the open are ordinary blocking reads of a regular file.
    os.set_blocking(descriptor, True)
    stream = os.fdopen(descriptor, "rb")
    stream.raw.name = os.fspath(path)  # not the descriptor's number: readers such as PIL name files by it
    return stream, status


def read_limited(stream: BinaryIO, limit: int) -> bytes:
    """At most `limit` bytes of an open file; UnusableFile if it holds more (or a read fails)."""
    try:
        data = stream.read(limit + 1)
    except OSError as error:
        raise UnusableFile(f"cannot read file: {error.strerror or error}") from None
    if len(data) > limit:
        raise UnusableFile(f"file too large (more than {limit:,} bytes)")
    return data


def atomic_write_bytes(path: Path, data: bytes | Iterable[bytes], mode: int | None = None) -> None:
    """Write to a temporary file beside `path`, flush it to disk, then rename it into place.

    A reader (or a rerun after a crash) sees either no file or the whole file, never a part. The
    file gets `mode`, or by default the permissions the umask allows (as open() would give). `data`
    may come in pieces (an iterable of bytes), so that a large document is never whole in memory.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            for piece in ([data] if isinstance(data, (bytes, bytearray)) else data):
                handle.write(piece)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp makes the file owner-only; give it the mode asked for, else what open() would have.
        os.chmod(temporary, mode if mode is not None else 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def write_output(path: Path, data: bytes | Iterable[bytes], mode: int | None = None) -> None:
    """atomic_write_bytes, with a failing disk (full, read-only, gone) as a one-line domain error."""
    try:
        atomic_write_bytes(path, data, mode)
    except OSError as error:
        raise AvpError(f"cannot write {path}: {error.strerror or error}") from None


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
