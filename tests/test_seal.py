"""avpcli.seal: a whole file sealed into a metadata-free PNG and opened byte for byte; any damage, re-encoding
or other key is refused with one line; the container stays within 1.01× the file + 1 KiB."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from avpcli import seal as sealing
from avpcli.errors import AvpError, ImageError
from avpcli.seal import DAMAGED, SealError, is_sealed, open_sealed, seal, seal_key

KEY = seal_key(bytes(range(32)))
OTHER_KEY = seal_key(bytes(range(1, 33)))
NAMES = ["photo.jpg", "", "été 2024.HEIC", os.fsdecode(b"caf\xe9\xff.jpg")]  # the last: Latin-1 bytes, not UTF-8


def noise(size: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def chunk_types(png: bytes) -> list[bytes]:
    types, position = [], 8
    while position < len(png):
        length = int.from_bytes(png[position: position + 4], "big")
        types.append(png[position + 4: position + 8])
        position += 12 + length
    return types


def pixels_of(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB")).copy()


def resave(pixels: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", **options)  # RGB, or RGBA for 4 channels
    return buffer.getvalue()


def assert_refused(container: bytes, key: bytes = KEY) -> None:
    with pytest.raises(SealError) as raised:
        open_sealed(container, key)
    assert str(raised.value) == DAMAGED == "damaged, or sealed with another key"
    assert isinstance(raised.value, AvpError)


@pytest.mark.parametrize("size", [0, 1, 2, 3, 29, 30, 31, 1000, 65_535 * 3 + 7, 300_001])
@pytest.mark.parametrize("name", NAMES)
def test_round_trip_gives_back_the_name_and_every_byte(size, name):
    data = noise(size, seed=size)
    container = seal(data, name, KEY)
    assert open_sealed(container, KEY) == (name, data)
    assert is_sealed(container)


def test_a_name_of_non_utf8_bytes_comes_back_as_the_same_bytes():
    name = NAMES[-1]
    opened, _ = open_sealed(seal(b"x", name, KEY), KEY)
    assert os.fsencode(opened) == b"caf\xe9\xff.jpg"


def test_sealing_is_deterministic_and_depends_on_data_name_and_key():
    data = noise(5000)
    container = seal(data, "a.jpg", KEY)
    assert seal(data, "a.jpg", KEY) == container
    others = {seal(data[:-1] + bytes([data[-1] ^ 1]), "a.jpg", KEY), seal(data, "b.jpg", KEY), seal(data, "a.jpg", OTHER_KEY)}
    assert container not in others and len(others) == 3


def test_the_container_is_a_plain_rgb_png_with_no_metadata_and_no_readable_name_or_data():
    data = b"Exif\x00\x00 GPS 48.85N 2.35E " * 40
    container = seal(data, "secret-name.jpg", KEY)
    assert container.startswith(b"\x89PNG\r\n\x1a\n")
    assert chunk_types(container) == [b"IHDR", b"IDAT", b"IEND"]
    with Image.open(io.BytesIO(container)) as image:
        assert (image.format, image.mode) == ("PNG", "RGB") and not image.info
    assert b"secret-name" not in container and b"GPS" not in container and b"Exif" not in container


def test_the_pixels_hold_the_header_the_ciphertext_and_zero_padding():
    data = noise(1234)
    container = seal(data, "n", KEY)
    pixels = pixels_of(container).reshape(-1)
    magic, version, algorithm, _nonce, size = sealing.HEADER.unpack(pixels[: sealing.HEADER.size].tobytes())
    assert (magic, version, algorithm) == (b"avp-seal", 1, sealing.ALGORITHM)
    assert size == 4 + 1 + len(data) + 16  # name length, name, data, tag
    assert pixels.size - sealing.HEADER.size - size < 3 * pixels_of(container).shape[1]  # less than a row
    assert not pixels[sealing.HEADER.size + size:].any()


def test_a_flipped_bit_in_any_byte_of_the_file_is_refused():
    container = seal(noise(700), "small.jpg", KEY)
    for position in range(len(container)):
        damaged = bytearray(container)
        damaged[position] ^= 1 << (position % 8)
        assert_refused(bytes(damaged))


def test_a_flipped_bit_in_any_pixel_byte_is_refused_even_in_a_valid_png():
    # The PNG is rewritten around the changed pixels, so only the seal itself can notice: header,
    # ciphertext and padding alike.
    container = seal(noise(400), "small.jpg", KEY)
    pixels = pixels_of(container)
    flat = pixels.reshape(-1)
    assert flat.size > sealing.HEADER.size + 4 + 9 + 400 + 16  # there is padding to test too
    for position in range(flat.size):
        damaged = flat.copy()
        damaged[position] ^= 1 << (position % 8)
        assert_refused(resave(damaged.reshape(pixels.shape), compress_level=1))


def test_truncated_or_extended_containers_are_refused():
    container = seal(noise(3000), "t.jpg", KEY)
    for length in [*range(0, 60), *range(60, len(container), 97), len(container) - 12, len(container) - 1]:
        assert_refused(container[:length])
    assert_refused(container + b"\0")
    assert_refused(container + container)


def test_a_jpeg_re_encoding_is_refused_even_back_as_png():
    container = seal(noise(20_000), "j.jpg", KEY)
    buffer = io.BytesIO()
    Image.fromarray(pixels_of(container)).save(buffer, format="JPEG", quality=100)
    assert_refused(buffer.getvalue())
    assert_refused(resave(pixels_of(buffer.getvalue())))


def test_another_key_is_refused():
    container = seal(noise(100), "k.jpg", KEY)
    assert_refused(container, OTHER_KEY)


def test_other_images_and_forms_are_refused():
    container = seal(noise(100), "k.jpg", KEY)
    pixels = pixels_of(container)
    assert_refused(resave(np.dstack([pixels, np.full(pixels.shape[:2], 255, np.uint8)])))  # RGBA
    assert_refused(resave(np.frombuffer(noise(3 * 64 * 64), np.uint8).reshape(64, 64, 3)))  # a model's ciphertext
    assert_refused(resave(pixels[:, :-1].copy()))  # another shape
    wider = np.zeros((pixels.shape[0], pixels.shape[1] + 1, 3), np.uint8)
    wider[:, :-1] = pixels
    assert_refused(resave(wider))
    sixteen_bit = io.BytesIO()
    Image.fromarray(pixels[..., 0].astype(np.uint16) * 257).save(sixteen_bit, format="PNG")
    assert_refused(sixteen_bit.getvalue())
    assert_refused(b"")
    assert_refused(b"not an image at all")


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")


def _with_image_header(container: bytes, width: int, height: int) -> bytes:
    return container[:8] + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + container[33:]


def test_a_rebuilt_png_around_a_cut_or_extended_zlib_stream_is_refused():
    # Every chunk's CRC is right: only the zlib stream's own end tells.
    container = seal(noise(3000), "z.jpg", KEY)
    assert chunk_types(container) == [b"IHDR", b"IDAT", b"IEND"]
    idat = container[33 + 8: -12 - 4]
    assert zlib.decompress(idat)  # what is cut below is a whole, valid stream
    for body in (idat[:-4], idat[:-1], idat + b"\0", idat + zlib.compress(b"more")):
        assert_refused(container[:33] + png_chunk(b"IDAT", body) + container[-12:])


def test_chunks_after_the_end_are_refused_but_metadata_added_by_a_re_save_is_not_damage():
    data = noise(3000)
    container = seal(data, "m.jpg", KEY)
    text = png_chunk(b"tEXt", b"Comment\0re-saved")
    assert_refused(container + text)
    assert_refused(container + text + container[-12:])  # ... even before a second IEND
    assert open_sealed(container[:-12] + text + container[-12:], KEY) == ("m.jpg", data)


def test_a_huge_image_header_is_refused_before_anything_is_decoded():
    container = seal(noise(100), "k.jpg", KEY)
    assert_refused(_with_image_header(container, 100_000, 100_000))
    width, height = pixels_of(container).shape[1::-1]
    assert_refused(_with_image_header(container, width, height - 1))  # more scanlines than the header says
    assert_refused(_with_image_header(container, width, height + 1))


@pytest.mark.parametrize("options", [{"compress_level": 9}, {"compress_level": 1}, {"optimize": True}])
def test_a_lossless_re_save_opens(options):
    data = noise(50_000)
    container = seal(data, "r.jpg", KEY)
    resaved = resave(pixels_of(container), **options)
    assert resaved != container
    assert open_sealed(resaved, KEY) == ("r.jpg", data)
    assert is_sealed(resaved)


def adam7(pixels: np.ndarray) -> bytes:
    """An interlaced 8-bit RGB PNG of these pixels (PIL writes none), every pass unfiltered."""
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    raw = b"".join(b"\0" + row.tobytes() for x, y, dx, dy in passes
                   for row in pixels[y::dy, x::dx] if row.size)
    height, width = pixels.shape[:2]

    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 1))
            + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b""))


def test_an_interlaced_re_save_opens():
    data = noise(5_000)
    container = seal(data, "i.jpg", KEY)
    interlaced = adam7(pixels_of(container))
    assert np.array_equal(pixels_of(interlaced), pixels_of(container))
    assert open_sealed(interlaced, KEY) == ("i.jpg", data)
    assert is_sealed(interlaced)


def test_aes_gcm_with_a_derived_nonce_where_openssl_lacks_gcm_siv(monkeypatch):
    data = noise(2_000)
    siv = seal(data, "g.jpg", KEY)
    monkeypatch.setattr(sealing, "ALGORITHM", sealing.AES_GCM)
    gcm = seal(data, "g.jpg", KEY)
    assert gcm == seal(data, "g.jpg", KEY) and gcm != siv
    assert pixels_of(gcm).reshape(-1)[9] == sealing.AES_GCM
    assert open_sealed(gcm, KEY) == ("g.jpg", data)
    assert_refused(gcm, OTHER_KEY)
    # A GCM-SIV container where OpenSSL lacks GCM-SIV: a line that says so, not "damaged".
    monkeypatch.setattr(sealing, "_has_siv", lambda: False)
    with pytest.raises(SealError, match="GCM-SIV"):
        open_sealed(siv, KEY)


def test_seal_key_is_a_labelled_derivation_of_the_secret():
    assert len(KEY) == 32 and KEY == seal_key(bytes(range(32))) and KEY != OTHER_KEY
    assert KEY != bytes(range(32))
    with pytest.raises(ValueError):
        seal_key(b"short")
    with pytest.raises(ValueError):
        seal(b"x", "n", b"not 32 bytes")


def test_a_file_too_large_to_seal_is_an_image_error(monkeypatch):
    monkeypatch.setattr(sealing, "MAX_ORIGINAL_SIZE", 10)
    with pytest.raises(ImageError, match="too large to seal"):
        seal(b"x" * 11, "big.tif", KEY)
    with pytest.raises(ImageError, match="too large to seal"):
        seal(b"x", "n" * 5000, KEY)


def test_is_sealed_tells_containers_from_other_files(tmp_path):
    container = seal(noise(10_000), "s.jpg", KEY)
    (tmp_path / "sealed.png").write_bytes(container)
    assert is_sealed(container) and is_sealed(bytearray(container)) and is_sealed(tmp_path / "sealed.png")
    assert is_sealed(str(tmp_path / "sealed.png"))
    assert is_sealed(container[:200])  # cheap: only the start counts (open_sealed checks the rest)
    model_ciphertext = resave(np.frombuffer(noise(3 * 32 * 32), np.uint8).reshape(32, 32, 3))
    jpeg = io.BytesIO()
    Image.fromarray(pixels_of(container)).save(jpeg, format="JPEG")
    grey = io.BytesIO()
    Image.new("L", (8, 8)).save(grey, format="PNG")
    for other in [model_ciphertext, jpeg.getvalue(), grey.getvalue(), resave(np.zeros((1, 1, 3), np.uint8)),
                  b"", b"\x89PNG\r\n\x1a\n", b"avp-seal" * 10]:
        assert not is_sealed(other)
    (tmp_path / "text.txt").write_text("hello")
    assert not is_sealed(tmp_path / "text.txt")


def real_photos(root: Path) -> list[Path]:
    lfw = sorted((root / "lfw").glob("*/*.jpg"))[:20]
    knn = sorted((root / "faces_misc" / "face_recognition_knn").rglob("*.jp*g"))
    if not lfw or not knn:
        pytest.skip(f"LFW or faces_misc/face_recognition_knn not found under {root} (set AVP_DATA)")
    return lfw + knn


def test_the_container_of_a_real_photo_is_at_most_1_01_times_it_plus_1_kib(data_root):
    for path in real_photos(data_root):
        data = path.read_bytes()
        container = seal(data, path.name, KEY)
        assert len(container) <= 1.01 * len(data) + 1024, (path.name, len(data), len(container))
        assert open_sealed(container, KEY) == (path.name, data)
