"""Image files in and out: find, load (EXIF-upright RGB), fit to a target's input, save lossless PNG atomically."""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from avpcli.errors import ImageError, NotModelInput, UsageError
from avpcli.files import (UnusableFile, atomic_write_bytes, open_regular_file, read_limited,  # noqa: F401 - atomic_write_bytes, write_output: re-exported
                          write_output)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"})
# Photo formats avp does not read: listed by find_images so that each is reported, not skipped unseen.
UNSUPPORTED_SUFFIXES = frozenset({".heic", ".heif", ".avif", ".jxl", ".svg", ".raw", ".dng", ".cr2", ".cr3", ".nef",
                                  ".arw", ".orf", ".rw2", ".raf", ".psd"})

# Refuse images whose declared size would need more memory than any photo does; PIL's own guard
# only warns below twice its limit, and a warning is not a refusal.
MAX_PIXELS = 80_000_000
MIN_SIDE = 16
# Avp's own PNGs read back (ciphertexts, outputs checked on a rerun) are far smaller.
MAX_PNG_BYTES = 1 << 30


@dataclass(frozen=True)
class SourceImage:
    """An input file, the relative path its outputs mirror, and the input folder it was found in
    (None for a file given by name)."""

    path: Path
    relative: Path
    root: Path | None = None


def find_images(inputs: Sequence[Path], listed: bool = False) -> list[SourceImage]:
    """Image files under the given files and folders, recursively, in sorted order.

    A folder's images keep their path relative to it; a file given directly keeps its name. With
    several inputs, each one's outputs go under the input's own name so that they cannot collide;
    where two inputs have the same name (x/a.png and y/a.png, or two folders called photos), each
    takes as many of its parent folders as make it unique (x/a.png, y/a.png). A path given twice
    counts once. Anything with an image suffix that is not a folder is listed, including broken
    links, link loops and other non-files, so that load_rgb reports them instead of them vanishing
    silently; files with suffixes of formats avp cannot read (HEIC, RAW, ...) are listed for the
    same reason. Hidden files and links to folders are not followed.

    listed: every input is one file, as read from a list (`avp encrypt -`): none is searched as a
    folder and none is refused here, so that one that is missing or no image fails alone when read.
    """
    given_paths: list[Path] = []
    seen: set[str] = set()
    for path in inputs:  # the same path twice counts once
        if os.path.abspath(path) not in seen:
            seen.add(os.path.abspath(path))
            given_paths.append(path)
    if not listed:
        for given in given_paths:
            if not given.exists() and not given.is_symlink():
                raise UsageError(f"input not found: {given}")
    # (input's position, path, its path below the input); a file reached twice (by name and in a folder) counts once.
    files: dict[str, tuple[int, Path, Path]] = {}
    for position, given in enumerate(given_paths):
        if listed or not given.is_dir():
            files.setdefault(os.path.abspath(given), (position, given, Path()))
            continue
        for path in sorted(given.rglob("*")):
            if (path.suffix.lower() in IMAGE_SUFFIXES | UNSUPPORTED_SUFFIXES and not path.is_dir()
                    and not _hidden(path, given)):
                files.setdefault(os.path.abspath(path), (position, path, path.relative_to(given)))
    found = list(files.values())
    labels = _input_labels(given_paths, [[below for position, _, below in found if position == index]
                                         for index in range(len(given_paths))], listed)
    return [SourceImage(path, labels[position] / below, None if below == Path() else given_paths[position])
            for position, path, below in found]


def _input_labels(inputs: list[Path], contents: list[list[Path]], listed: bool) -> list[Path]:
    """What each input's outputs are named under (its `contents`' paths go below it).

    A file its name; with several inputs, a folder its name (a lone folder, or ".", nothing). Where
    two outputs would get the same relative path, the inputs they come from are lengthened by
    parent folders (of their absolute paths) until none do: x/a.png and y/a.png, not a.png twice.
    """
    parts = [Path(os.path.abspath(path)).parts[1:] for path in inputs]
    folders = [not listed and path.is_dir() for path in inputs]
    lengths = [0 if folder and (len(inputs) == 1 or not path.name) else 1 for path, folder in zip(inputs, folders)]
    while True:
        labels = [parts[index][len(parts[index]) - lengths[index]:] if lengths[index] else ()
                  for index in range(len(inputs))]
        holders: dict[tuple[str, ...], set[int]] = {}
        for index, below in enumerate(contents):
            for path in below:
                holders.setdefault(labels[index] + path.parts, set()).add(index)
        clashing = {index for indices in holders.values() if len(indices) > 1 for index in indices}
        lengthened = False
        for index in clashing:
            if lengths[index] < len(parts[index]):
                lengths[index] += 1
                lengthened = True
        if not lengthened:
            # Only "/" given as a file has no name at all; it fails when read, under a name of its own.
            return [Path(*label) if label or folders[index] else Path("unnamed") for index, label in enumerate(labels)]


def check_named_file(path: Path, output: Path) -> None:
    """ImageError for a file named on its own (read from a list) that is not there, or that lies in
    the output folder, where an output could replace it; either fails alone and the run goes on."""
    if not path.exists() and not path.is_symlink():
        raise ImageError("no such file")
    try:
        inside = is_inside(path, output)
    except (OSError, RuntimeError):  # a link loop (RuntimeError before Python 3.13): reading it says so
        return
    if inside:
        raise ImageError("it lies in the output folder, where an output could replace it; choose another --out")


def check_link_stays_inside(source: SourceImage) -> None:
    """ImageError if a file found in an input folder is a symbolic link to something outside that folder.

    Such a link may be a planted way to make avp read (and write a ciphertext of) a file the user
    did not mean to give; `--follow-links` accepts them. Files given by name are the user's choice.
    """
    if source.root is None:
        return
    try:
        resolved = source.path.resolve(strict=True)
    except (OSError, RuntimeError):
        return  # a broken link or a loop: load_rgb says which
    if source.root.resolve() not in resolved.parents:
        raise ImageError("a symbolic link to a file outside the input folder (give --follow-links to follow it)")


def contained_path(folder: Path, name: object, follow_links: bool = False) -> Path:
    """folder / name for a file name read from a manifest, once it is known to stay inside `folder`.

    The name must be a relative path of plain names (no empty, '.' or '..' part, not absolute, no
    NUL) and must still lie inside `folder` once symbolic links are resolved (unless `follow_links`:
    a folder of the user's own whose links the user chose), so that a tampered manifest or a planted
    link cannot make avp read or write anywhere else. Otherwise ImageError with a one-line reason
    that does not repeat the name.
    """
    if not isinstance(name, str) or not name:
        raise ImageError(f"the manifest gives no usable file name ({_json_kind(name)})")
    if "\0" in name:
        raise ImageError("unsafe path: it holds a NUL character")
    if name.startswith("/"):
        raise ImageError("unsafe path: an absolute path")
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise ImageError("unsafe path: an empty, '.' or '..' part")
    path = folder / name
    if follow_links:
        return path
    try:
        inside = folder.resolve() in path.resolve().parents
    except (OSError, RuntimeError):  # RuntimeError: a link loop, before Python 3.13
        raise ImageError("unsafe path: a symbolic link loop") from None
    if not inside:
        raise ImageError("unsafe path: a symbolic link leads out of the folder")
    return path


def _json_kind(value: object) -> str:
    if value is None or value == "":
        return "missing" if value is None else "empty"
    kinds = {bool: "true or false", int: "a number", float: "a number", list: "a list", dict: "an object"}
    return f"{kinds.get(type(value), type(value).__name__)}, not a name"


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def output_names(sources: Iterable[SourceImage], suffix: str = ".png") -> dict[Path, Path]:
    """Map each source's relative path to its output's relative path, keeping names unique.

    `a.jpg` becomes `a.png`; if `a.png` is also an input, the two become `a.jpg.png` and `a.png.png`.
    """
    sources = list(sources)
    plain = [source.relative.with_suffix(suffix) for source in sources]
    taken: dict[Path, int] = {}
    for name in plain:
        taken[name] = taken.get(name, 0) + 1
    return {
        source.relative: (name if taken[name] == 1 else source.relative.with_name(source.relative.name + suffix))
        for source, name in zip(sources, plain)
    }


def longer_names(path: Path, relative: Path) -> list[Path]:
    """`relative` lengthened by the parent folders of `path` (absolute), one more at a time: for
    /p/B/x.png named x.png, [B/x.png, p/B/x.png]. The rule find_images applies to two inputs of one
    name, for a name that an earlier run's output already holds. [] if `relative` is not a tail of `path`."""
    parts = Path(os.path.abspath(path)).parts[1:]
    count = len(relative.parts)
    if not count or parts[len(parts) - count:] != relative.parts:
        return []
    return [Path(*parts[len(parts) - length:]) for length in range(count + 1, len(parts) + 1)]


def load_rgb(path: Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open an image file as upright 8-bit RGB, or raise ImageError with a one-line reason.

    Whatever the file holds, the only exception that leaves is ImageError; reasons never name the
    file (the caller knows it; an anonymized manifest must not). An image whose header declares
    more than `max_pixels` is refused before its pixels are decoded (check_pixel_cap).
    """
    if path.suffix.lower() in UNSUPPORTED_SUFFIXES:
        _open_image_file(path).close()  # a missing or unusable file says so first
        raise ImageError(f"unsupported format {path.suffix.lower()}: convert it to PNG or JPEG first")
    stream = _open_image_file(path)
    try:
        with stream, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's complaints about damaged metadata: the pixels decide
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(stream) as opened:
                check_pixel_cap(opened, max_pixels)
                if getattr(opened, "n_frames", 1) > 1 and opened.format in {"GIF", "PNG", "WEBP"}:
                    raise NotModelInput(f"animated image ({opened.n_frames} frames): give one frame as a still image")
                opened.load()
                image = ImageOps.exif_transpose(opened)
                image = _to_rgb(image)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError("image too large (decompression bomb guard)") from None
    except UnidentifiedImageError:
        raise ImageError("not an image PIL can read (unknown or corrupt format)") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except MemoryError:
        raise ImageError("not enough memory to decode this image") from None
    except Exception as broken:  # noqa: BLE001 - PIL's decoders raise many kinds for corrupt data
        raise ImageError(f"cannot read image: {describe_error(broken, path)}") from None
    if min(image.size) < MIN_SIDE:
        raise NotModelInput(f"image too small ({image.size[0]}x{image.size[1]}; at least {MIN_SIDE} pixels a side)")
    return image


def read_file_bytes(path: Path, limit: int) -> bytes:
    """The bytes of a non-empty regular file of at most `limit` bytes, or ImageError with load_rgb's reasons.

    A pipe or device is refused without blocking (files.open_regular_file).
    """
    with _open_image_file(path) as stream:
        try:
            return read_limited(stream, limit)
        except UnusableFile as problem:
            raise ImageError(problem.reason) from None


def _open_image_file(path: Path) -> BinaryIO:
    """The file opened for reading; ImageError unless it is a non-empty regular file (a FIFO would block)."""
    try:
        stream, status = open_regular_file(path)
    except UnusableFile as problem:
        raise ImageError(problem.reason) from None
    if status.st_size == 0:
        stream.close()
        raise ImageError("empty file")
    return stream


def describe_error(error: Exception, path: Path) -> str:
    """One line for an unexpected decoding error, without the file's path or name."""
    if isinstance(error, OSError) and error.strerror:
        text = error.strerror
    else:
        text = str(error) or type(error).__name__
    for secret in (str(path), path.name):
        text = text.replace(secret, "the file")
    return " ".join(text.split())[:200]


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any mode to RGB; transparency is composited on white, 16-bit and float are scaled to 8 bits."""
    if image.mode in {"I;16", "I;16B", "I;16L", "I", "F"}:
        array = np.nan_to_num(np.asarray(image, dtype=np.float64))
        peak = 65535.0 if array.max() > 255 else 1.0 if image.mode == "F" and array.max() <= 1 else 255.0
        image = Image.fromarray(np.clip(np.round(array / peak * 255), 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in {"RGBA", "LA", "PA"}:
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")


def fit_to_size(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Centre-crop to the target's aspect ratio and resize to (height, width), for unaligned input."""
    height, width = size
    return ImageOps.fit(image, (width, height), method=Image.Resampling.BICUBIC)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """(3, H, W) float32 in [0, 1] from an RGB PIL image."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255


def to_pil(image: torch.Tensor) -> Image.Image:
    """An RGB PIL image from a (3, H, W) tensor in [0, 1], rounded to 8 bits."""
    array = torch.round(image.detach().clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, "RGB")


def png_bytes(image: torch.Tensor) -> bytes:
    """Lossless 8-bit PNG of a (3, H, W) tensor with no metadata at all (no EXIF, ICC, text, time)."""
    buffer = io.BytesIO()
    # A fresh image from raw pixels carries no `info`, so PIL writes only IHDR, IDAT and IEND.
    to_pil(image).save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def save_png(image: torch.Tensor, path: Path) -> None:
    """Save a (3, H, W) tensor as a metadata-free PNG, atomically."""
    write_output(path, png_bytes(image))


def read_png(path: Path) -> torch.Tensor:
    """Read back a PNG that avp wrote, as (3, H, W) in [0, 1]."""
    with Image.open(path) as opened:
        return to_tensor(opened.convert("RGB"))


def check_pixel_cap(opened: Image.Image, max_pixels: int) -> None:
    """ImageError if an opened (not yet decoded) image declares more than `max_pixels` pixels: its header
    alone says so, and a small file can claim a size whose pixels would not fit in memory."""
    width, height = opened.size
    if width * height > max_pixels:
        raise ImageError(f"image too large ({width}x{height} pixels declared; the cap is {max_pixels:,} pixels, "
                         "--max-pixels)")


def png_tensor(data: bytes, size: tuple[int, int] | None = None, png_only: bool = False,
               max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """Decode PNG bytes from png_bytes, as (3, H, W) in [0, 1].

    With `size` (H, W), an image of any other size is an ImageError, raised before its pixels are
    decoded, as is data that is not an image or that declares more than `max_pixels` pixels; with
    `png_only`, so is anything but an 8-bit RGB PNG (what avp writes: a ciphertext in any other
    form has lost what the key needs).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as opened:
                if png_only and (opened.format, opened.mode) != ("PNG", "RGB"):
                    raise ImageError(f"not an 8-bit RGB PNG ({opened.format} image, mode {opened.mode})")
                if size is not None and opened.size != (size[1], size[0]):
                    raise ImageError(f"{opened.size[0]}x{opened.size[1]} pixels, not the target's input size")
                check_pixel_cap(opened, max_pixels)
                return to_tensor(opened.convert("RGB"))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError("image too large (decompression bomb guard)") from None
    except UnidentifiedImageError:
        raise ImageError("not an image PIL can read (unknown or corrupt format)") from None


def is_inside(inner: Path, outer: Path) -> bool:
    """True if `inner` is `outer` or lies below it (after resolving links)."""
    inner, outer = inner.resolve(), outer.resolve()
    return inner == outer or outer in inner.parents


def contact_sheet(rows: Sequence[Sequence[torch.Tensor]], gap: int = 4) -> torch.Tensor:
    """Tile (3, H, W) images into one image, a row per entry of `rows`, on a white background.

    Images in a row may differ in size; each cell is as large as the largest image given.
    """
    height = max(image.shape[1] for row in rows for image in row)
    width = max(image.shape[2] for row in rows for image in row)
    columns = max(len(row) for row in rows)
    sheet = torch.ones(3, len(rows) * (height + gap) + gap, columns * (width + gap) + gap)
    for row_index, row in enumerate(rows):
        for column_index, image in enumerate(row):
            top = gap + row_index * (height + gap)
            left = gap + column_index * (width + gap)
            sheet[:, top:top + image.shape[1], left:left + image.shape[2]] = image.clamp(0, 1)
    return sheet
