"""Sealing: a whole original file (name and bytes) under authenticated encryption, stored as the pixels of a PNG.

The container is a metadata-free 8-bit RGB PNG (only IHDR, IDAT, IEND) whose pixel bytes, row by row,
are a 30-byte header, the AEAD ciphertext and zero padding up to the last pixel:

    magic b"avp-seal" | version 1 (1 byte) | algorithm (1 byte) | nonce (12 bytes) | ciphertext length (8, big-endian)

The ciphertext encrypts: the name's length (4 bytes, big-endian), the name (UTF-8, surrogateescape)
and the file's bytes; the header is the associated data. The algorithm is AES-256-GCM-SIV where the
installed OpenSSL has it, else AES-256-GCM; either way the nonce is an HMAC of the plaintext under a
key of its own, so a rerun gives the same bytes (docs/SEALING.md says why that is safe).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import math
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESGCMSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from PIL import Image

from avpcli.errors import AvpError, ImageError

MAGIC = b"avp-seal"
VERSION = 1
AES_GCM_SIV, AES_GCM = 1, 2
ALGORITHM_NAMES = {AES_GCM_SIV: "AES-256-GCM-SIV", AES_GCM: "AES-256-GCM"}
HEADER = struct.Struct(">8sBB12sQ")  # magic, version, algorithm, nonce, ciphertext length
TAG_SIZE = 16
# Pixel bytes at most: 3 × PIL's own decompression-bomb limit, so that no container trips it; the
# largest original and name leave room below it for the header, the tag and the padding.
MAX_PIXEL_BYTES = 3 * 89_478_485
MAX_ORIGINAL_SIZE = 255 * 2**20
MAX_NAME_SIZE = 4096
DAMAGED = "damaged, or sealed with another key"

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STORED_BLOCK = 65_535  # the most bytes one stored (uncompressed) deflate block holds


class SealError(AvpError):
    """A container that does not open: altered, truncated, re-encoded, not a container, or another key's."""

    def __init__(self, message: str = DAMAGED) -> None:
        super().__init__(message)


def seal_key(secret: bytes) -> bytes:
    """The 32-byte sealing key for an avp key's secret (e.g. `Key.derived_secret("seal-v1")`): HKDF-SHA256."""
    if len(secret) < 16:
        raise ValueError("a sealing secret needs at least 16 bytes")
    return HKDF(hashes.SHA256(), length=32, salt=None, info=b"avp seal v1").derive(secret)


def _subkeys(key: bytes) -> tuple[bytes, bytes]:
    """(the AEAD's key, the nonce's HMAC key): one job per key, both from the sealing key."""
    if len(key) != 32:
        raise ValueError("a sealing key is 32 bytes (seal_key)")
    both = HKDF(hashes.SHA256(), length=64, salt=None, info=b"avp seal v1 subkeys").derive(key)
    return both[:32], both[32:]


def _has_siv() -> bool:
    try:
        AESGCMSIV(bytes(32))
    except UnsupportedAlgorithm:
        return False
    return True


ALGORITHM = AES_GCM_SIV if _has_siv() else AES_GCM


def _aead(algorithm: int, key: bytes) -> AESGCM | AESGCMSIV:
    if algorithm == AES_GCM_SIV and not _has_siv():
        raise SealError("sealed with AES-256-GCM-SIV, which this installation's OpenSSL lacks (3.2 or later has it)")
    return AESGCMSIV(key) if algorithm == AES_GCM_SIV else AESGCM(key)


def container_shape(content_size: int) -> tuple[int, int]:
    """(width, height) of the near-square RGB image that holds `content_size` bytes (header + ciphertext)."""
    pixels = max(1, -(-content_size // 3))
    width = math.isqrt(pixels - 1) + 1  # ceil(sqrt(pixels))
    return width, -(-pixels // width)


def seal(data: bytes, name: str, key: bytes) -> bytes:
    """The container (PNG bytes) for a file's `data` and `name` under a sealing key (seal_key).

    The same data, name and key give the same bytes. ImageError for a file over MAX_ORIGINAL_SIZE.
    """
    encoded_name = name.encode("utf-8", "surrogateescape")
    if len(data) > MAX_ORIGINAL_SIZE or len(encoded_name) > MAX_NAME_SIZE:
        raise ImageError(f"too large to seal ({len(data):,} bytes, a name of {len(encoded_name):,}; "
                         f"at most {MAX_ORIGINAL_SIZE:,} and {MAX_NAME_SIZE:,})")
    plaintext = b"".join((len(encoded_name).to_bytes(4, "big"), encoded_name, data))
    aead_key, nonce_key = _subkeys(key)
    nonce = hmac.new(nonce_key, bytes([ALGORITHM]) + plaintext, hashlib.sha256).digest()[:12]
    header = HEADER.pack(MAGIC, VERSION, ALGORITHM, nonce, len(plaintext) + TAG_SIZE)
    ciphertext = _aead(ALGORITHM, aead_key).encrypt(nonce, plaintext, header)
    del plaintext
    width, height = container_shape(HEADER.size + len(ciphertext))
    pixels = np.zeros(height * 3 * width, np.uint8)  # the padding stays zero
    pixels[: HEADER.size] = np.frombuffer(header, np.uint8)
    pixels[HEADER.size: HEADER.size + len(ciphertext)] = np.frombuffer(ciphertext, np.uint8)
    del ciphertext
    # Scanlines: a filter byte 0 ("none"), then the row's pixel bytes.
    scanlines = bytearray(height * (3 * width + 1))
    np.frombuffer(scanlines, np.uint8).reshape(height, 3 * width + 1)[:, 1:] = pixels.reshape(height, 3 * width)
    del pixels
    return _png(width, height, memoryview(scanlines))


def _chunk(kind: bytes, body: bytes | memoryview) -> bytes:
    return b"".join((len(body).to_bytes(4, "big"), kind, body, zlib.crc32(body, zlib.crc32(kind)).to_bytes(4, "big")))


def _png(width: int, height: int, scanlines: memoryview) -> bytes:
    """An 8-bit RGB PNG of these scanlines in stored deflate blocks: no compression to spend time on
    (sealed bytes do not compress), the same bytes from every zlib, and no chunk besides IHDR/IDAT/IEND."""
    blocks = [b"\x78\x01"]  # zlib header: deflate, 32 KiB window, no dictionary, "fastest"
    for start in range(0, max(len(scanlines), 1), STORED_BLOCK):
        block = scanlines[start: start + STORED_BLOCK]
        final = start + STORED_BLOCK >= len(scanlines)
        blocks += [struct.pack("<BHH", final, len(block), 0xFFFF ^ len(block)), block]
    blocks.append(zlib.adler32(scanlines).to_bytes(4, "big"))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"".join((PNG_SIGNATURE, _chunk(b"IHDR", ihdr), _chunk(b"IDAT", b"".join(blocks)), _chunk(b"IEND", b"")))


def _chunks(container: memoryview, check_crc: bool = True):
    """(type, body) for each chunk after the signature; SealError for a bad CRC or a cut chunk."""
    position = len(PNG_SIGNATURE)
    while position < len(container):
        if position + 12 > len(container):
            raise SealError()
        length = int.from_bytes(container[position: position + 4], "big")
        kind = bytes(container[position + 4: position + 8])
        body = container[position + 8: position + 8 + length]
        end = position + 12 + length
        if end > len(container) and check_crc:
            raise SealError()
        if check_crc and zlib.crc32(body, zlib.crc32(kind)) != int.from_bytes(container[end - 4: end], "big"):
            raise SealError()
        yield kind, body
        position = end


def _image_header(container: memoryview) -> tuple[int, int, int]:
    """(width, height, interlace) of an 8-bit RGB PNG; SealError for anything else."""
    if len(container) < 33 or bytes(container[:8]) != PNG_SIGNATURE or bytes(container[12:16]) != b"IHDR":
        raise SealError()
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", container[16:29])
    if (depth, colour, compression, filtering) != (8, 2, 0, 0) or interlace > 1 or not width or not height:
        raise SealError()
    return width, height, interlace


def _pixel_bytes(container: memoryview) -> tuple[memoryview, int, int]:
    """The container's pixel bytes, row by row, with its width and height; checks every chunk's CRC and
    caps the pixel count before anything is decompressed."""
    width, height, interlace = _image_header(container)
    if width * height * 3 > MAX_PIXEL_BYTES:
        raise SealError()
    idat, seen_end = [], False
    for kind, body in _chunks(container):
        if seen_end:
            raise SealError()  # bytes after IEND
        if kind == b"IDAT":
            idat.append(body)
        seen_end = kind == b"IEND"
    if not seen_end or not idat:
        raise SealError()
    if not interlace:
        # Fast path: decompress at most the expected scanlines; PIL only where rows are filtered.
        expected = height * (3 * width + 1)
        inflater = zlib.decompressobj()
        try:
            scanlines = inflater.decompress(idat[0] if len(idat) == 1 else b"".join(idat), expected + 1)
        except zlib.error:
            raise SealError() from None
        if len(scanlines) != expected or not inflater.eof or inflater.unused_data:
            raise SealError()
        rows = np.frombuffer(scanlines, np.uint8).reshape(height, 3 * width + 1)
        if not rows[:, 0].any():
            return memoryview(np.ascontiguousarray(rows[:, 1:])).cast("B"), width, height
        del rows, scanlines
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(container), formats=["PNG"]) as image:
                if image.mode != "RGB" or image.size != (width, height):
                    raise SealError()
                return memoryview(image.tobytes()), width, height
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error, Image.DecompressionBombError,
            Image.DecompressionBombWarning):
        raise SealError() from None


def open_sealed(container: bytes, key: bytes) -> tuple[str, bytes]:
    """(name, data) of the file sealed in `container` (PNG bytes) under a sealing key (seal_key).

    A lossless re-save of the PNG (same pixels, any compression or filters) still opens. Anything
    else that is not the container as sealed, or another key, raises SealError with one line.
    """
    pixels, width, height = _pixel_bytes(memoryview(container))
    if len(pixels) < HEADER.size:
        raise SealError()
    magic, version, algorithm, nonce, size = HEADER.unpack(pixels[: HEADER.size])
    if (magic, version) != (MAGIC, VERSION) or algorithm not in ALGORITHM_NAMES or size < TAG_SIZE + 4:
        raise SealError()
    if container_shape(HEADER.size + size) != (width, height):
        raise SealError()
    end = HEADER.size + size
    if np.frombuffer(pixels, np.uint8)[end:].any():  # the padding is not authenticated: it must be zeros
        raise SealError()
    aead_key, _ = _subkeys(key)
    try:
        plaintext = _aead(algorithm, aead_key).decrypt(nonce, pixels[HEADER.size: end], bytes(pixels[: HEADER.size]))
    except InvalidTag:
        raise SealError() from None
    del pixels
    name_size = int.from_bytes(plaintext[:4], "big")
    if 4 + name_size > len(plaintext):
        raise SealError()  # authentic, so only a sealer of ours with another layout could write it
    body = memoryview(plaintext)
    return bytes(body[4: 4 + name_size]).decode("utf-8", "surrogateescape"), bytes(body[4 + name_size:])


def is_sealed(data_or_path: bytes | bytearray | memoryview | str | os.PathLike[str]) -> bool:
    """True if this looks like a container (an 8-bit RGB PNG whose first pixels are the magic and
    version): cheap, reads and inflates only the start. It says nothing about the key or damage."""
    is_path = isinstance(data_or_path, (str, os.PathLike))
    if is_path:
        with open(data_or_path, "rb") as stream:
            head = memoryview(stream.read(1 << 16))
    else:
        head = memoryview(data_or_path)
    try:
        width, _, interlace = _image_header(head)
        idat = next(body for kind, body in _chunks(head, check_crc=False) if kind == b"IDAT")
        if interlace:  # Adam7's first pixels are not the first row's: decode it all (rare)
            pixels = _pixel_bytes(memoryview(Path(data_or_path).read_bytes()) if is_path else head)[0]
            return bytes(pixels[:9]) == MAGIC + bytes([VERSION])
        line = zlib.decompressobj().decompress(idat, 1 + min(3 * width, 9))
    except (SealError, StopIteration, zlib.error):
        return False
    if len(line) < 10 or line[0] > 4:
        return False
    # The first row's filters see a zero row above it: Sub and Paeth add the left byte, Average half of it.
    row = bytearray(line[1:10])
    for index in range(3, len(row)):
        left = row[index - 3]
        row[index] = (row[index] + (left if line[0] in (1, 4) else left // 2 if line[0] == 3 else 0)) & 0xFF
    return bytes(row) == MAGIC + bytes([VERSION])
