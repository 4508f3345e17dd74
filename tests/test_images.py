"""Finding, loading, fitting and saving images."""

from __future__ import annotations

import os
import re
import stat
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from avpcli.errors import ImageError, UsageError
from avpcli.images import (
    SourceImage,
    atomic_write_bytes,
    check_link_stays_inside,
    contained_path,
    find_images,
    fit_to_size,
    is_inside,
    load_rgb,
    output_names,
    png_bytes,
    read_file_bytes,
    read_png,
    save_png,
    to_tensor,
)


def write_image(path: Path, mode: str = "RGB", size=(40, 30), **save_options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    array = rng.integers(0, 255, (size[1], size[0], len(mode) if mode not in ("P", "L", "1") else 1), dtype=np.uint8)
    image = Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array, "L" if mode in ("P", "L", "1") else mode)
    if mode == "P":
        image = image.convert("P")
    image.save(path, **save_options)
    return path


def test_find_images_is_recursive_sorted_and_skips_other_files(tmp_path):
    write_image(tmp_path / "b.png")
    write_image(tmp_path / "a" / "z.jpg")
    write_image(tmp_path / ".hidden" / "x.png")
    (tmp_path / "notes.txt").write_text("hello")
    found = find_images([tmp_path])
    assert [str(source.relative) for source in found] == ["a/z.jpg", "b.png"]


def test_find_images_keeps_several_inputs_apart(tmp_path):
    write_image(tmp_path / "one" / "a.png")
    write_image(tmp_path / "two" / "a.png")
    write_image(tmp_path / "single.png")
    found = find_images([tmp_path / "one", tmp_path / "two", tmp_path / "single.png"])
    assert [str(source.relative) for source in found] == ["one/a.png", "two/a.png", "single.png"]


def test_named_files_of_one_name_take_their_folders_names(tmp_path):
    for name in ("a/x.png", "b/x.png", "deep/a/x.png", "c.png"):
        write_image(tmp_path / name)
    given = [tmp_path / name for name in ("a/x.png", "b/x.png", "c.png", "a/x.png", "deep/a/x.png")]
    found = find_images(given)
    # The same path twice counts once; parent folders are added until no two names clash.
    assert [str(source.relative) for source in found] == [f"{tmp_path.name}/a/x.png", "b/x.png", "c.png",
                                                          "deep/a/x.png"]
    assert len(set(output_names(found).values())) == 4
    assert [str(source.relative) for source in find_images([tmp_path / "a/x.png"])] == ["x.png"]


def test_listed_inputs_are_files_and_a_missing_one_is_kept_for_its_own_failure(tmp_path):
    write_image(tmp_path / "a.png")
    (tmp_path / "sub").mkdir()
    found = find_images([tmp_path / "a.png", tmp_path / "nope.png", tmp_path / "sub"], listed=True)
    assert [(source.path.name, str(source.relative), source.root) for source in found] == [
        ("a.png", "a.png", None), ("nope.png", "nope.png", None), ("sub", "sub", None)]


def test_missing_input_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError):
        find_images([tmp_path / "nope"])


def test_output_names_avoid_collisions():
    sources = [SourceImage(Path(name), Path(name)) for name in ("a.jpg", "a.png", "b.jpeg")]
    names = output_names(sources)
    assert names[Path("b.jpeg")] == Path("b.png")
    assert names[Path("a.jpg")] != names[Path("a.png")]
    assert len(set(names.values())) == 3


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "RGBA", "CMYK"])
def test_every_common_mode_loads_as_rgb(tmp_path, mode):
    suffix = ".jpg" if mode == "CMYK" else ".png"
    path = tmp_path / f"image{suffix}"
    if mode == "CMYK":
        Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(path)
    else:
        write_image(path, mode)
    image = load_rgb(path)
    assert image.mode == "RGB"


def test_sixteen_bit_grayscale_is_scaled_to_8_bits(tmp_path):
    array = np.full((20, 20), 65535, dtype=np.uint16)
    array[:10] = 0
    path = tmp_path / "deep.png"
    Image.fromarray(array).save(path)
    rgb = np.asarray(load_rgb(path))
    assert rgb[0, 0, 0] == 0 and rgb[15, 0, 0] == 255


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    assert load_rgb(path).size == (20, 40)


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "empty file"),
        (b"this is not an image", "not an image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, "not an image"),
    ],
)
def test_bad_files_raise_image_error_with_a_reason(tmp_path, content, reason):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=reason.split()[0]):
        load_rgb(path)


def test_truncated_jpeg_is_an_image_error(tmp_path):
    path = write_image(tmp_path / "full.jpg", size=(200, 200))
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ImageError):
        load_rgb(truncated)


def test_tiny_and_huge_images_are_refused(tmp_path):
    tiny = write_image(tmp_path / "tiny.png", size=(4, 4))
    with pytest.raises(ImageError, match="too small"):
        load_rgb(tiny)
    # A PNG header declaring 100000 x 100000 pixels, with almost no data: a decompression bomb.
    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    ihdr = (100000).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))
    with pytest.raises(ImageError, match="too large"):
        load_rgb(bomb)


def test_animated_gif_is_refused(tmp_path):
    frames = [Image.new("RGB", (20, 20), color) for color in ((255, 0, 0), (0, 255, 0))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with pytest.raises(ImageError, match="animated"):
        load_rgb(path)


def test_fit_to_size_gives_height_by_width():
    image = Image.new("RGB", (300, 200))
    assert fit_to_size(image, (112, 96)).size == (96, 112)


def test_png_round_trip_is_lossless_on_the_8bit_grid(tmp_path):
    tensor = torch.round(torch.rand(3, 20, 24) * 255) / 255
    path = tmp_path / "out" / "x.png"
    save_png(tensor, path)
    assert torch.equal(read_png(path), tensor)


def test_png_has_no_metadata_chunks():
    data = png_bytes(torch.rand(3, 16, 16))
    chunks = []
    position = 8
    while position < len(data):
        length = int.from_bytes(data[position:position + 4], "big")
        chunks.append(data[position + 4:position + 8].decode())
        position += 12 + length
    assert set(chunks) == {"IHDR", "IDAT", "IEND"}


def test_atomic_write_leaves_no_temporary_and_sets_the_mode(tmp_path):
    path = tmp_path / "secret.bin"
    atomic_write_bytes(path, b"abc", mode=0o600)
    assert path.read_bytes() == b"abc"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [entry.name for entry in tmp_path.iterdir()] == ["secret.bin"]


def test_to_tensor_range_and_layout():
    image = Image.new("RGB", (5, 4), (255, 0, 128))
    tensor = to_tensor(image)
    assert tensor.shape == (3, 4, 5)
    assert tensor[0].max() == 1.0 and tensor[1].max() == 0.0


def test_is_inside(tmp_path):
    assert is_inside(tmp_path / "a" / "b", tmp_path)
    assert is_inside(tmp_path, tmp_path)
    assert not is_inside(tmp_path.parent, tmp_path)


@pytest.fixture
def linked(tmp_path) -> Path:
    """A folder with a file, a sub-folder, links out (to a file, to a folder), a link in, and a loop."""
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.png").write_bytes(b"a")
    (tmp_path / "outside.png").write_bytes(b"o")
    (folder / "out.png").symlink_to(tmp_path / "outside.png")
    (folder / "outdir").symlink_to(tmp_path)
    (folder / "in.png").symlink_to("a.png")
    (folder / "loop.png").symlink_to("loop.png")
    return folder


@pytest.mark.parametrize("name, reason", [
    ("a.png", None), ("sub/new.png", None), ("in.png", None), ("sub/deeper/new.png", None),
    ("a\\b.png", None),  # a backslash is part of a name on POSIX
    (None, "no usable file name (missing)"), ("", "no usable file name (empty)"), (3, "a number, not a name"),
    (["a.png"], "a list, not a name"), ("a\0.png", "NUL"), ("/etc/passwd", "absolute"), ("../x.png", "'..' part"),
    ("sub/../a.png", "'..' part"), ("./a.png", "'.' or"), ("sub//a.png", "empty"), ("sub/", "empty"),
    ("out.png", "leads out of the folder"), ("outdir/outside.png", "leads out of the folder"),
    ("outdir/folder/a.png", None),  # out and back in again
    ("loop.png", "symbolic link loop"), ("sub", None),
])
def test_contained_path_accepts_only_plain_names_that_stay_inside(linked, name, reason):
    if reason is None:
        assert contained_path(linked, name) == linked / name
    else:
        with pytest.raises(ImageError, match=re.escape(reason)):
            contained_path(linked, name)


def test_contained_path_follows_links_in_a_folder_of_the_users_own(linked):
    assert contained_path(linked, "out.png", follow_links=True) == linked / "out.png"
    with pytest.raises(ImageError, match="absolute"):
        contained_path(linked, "/etc/passwd", follow_links=True)


def test_links_out_of_an_input_folder_are_refused_and_others_left_to_load_rgb(linked):
    sources = {str(source.relative): source for source in find_images([linked])}
    with pytest.raises(ImageError, match="outside the input folder"):
        check_link_stays_inside(sources["out.png"])
    for name in ("a.png", "in.png", "loop.png"):  # the loop gets load_rgb's own reason
        check_link_stays_inside(sources[name])
    check_link_stays_inside(SourceImage(linked / "out.png", Path("out.png")))  # given by name: the user's choice


def test_read_file_bytes_refuses_pipes_and_large_files(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(ImageError, match="not a regular file"):
        read_file_bytes(tmp_path / "pipe.png", 100)
    (tmp_path / "big.png").write_bytes(b"x" * 101)
    with pytest.raises(ImageError, match="too large"):
        read_file_bytes(tmp_path / "big.png", 100)
    assert read_file_bytes(tmp_path / "big.png", 101) == b"x" * 101
