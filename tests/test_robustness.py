"""Bad input never stops a run or shows a traceback: every file is converted or failed with a one-line reason."""

from __future__ import annotations

import io
import json
import os
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from avpcli.cli import app
from conftest import snapshot

runner = CliRunner()


def encrypt(folder: Path, key: Path, out: Path, *extra: str):
    arguments = ["encrypt", folder, "--target", "tiny-embedding", "--key", key, "--out", out, "--iterations", "1",
                 "--batch-size", "256", "--device", "cpu", "--seed", "5", *extra]
    return runner.invoke(app, [str(argument) for argument in arguments], catch_exceptions=False)


def manifest_entries(out: Path) -> dict[str, list[dict]]:
    entries: dict[str, list[dict]] = {}
    for entry in json.loads((out / "avp-manifest.json").read_text())["files"]:
        entries.setdefault(entry["source"], []).append(entry)
    return entries


def chunk(kind: bytes, body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")


def png_declaring(width: int, height: int) -> bytes:
    """A PNG header that declares width x height pixels and carries almost no data."""
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def encoded(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def seed_images(rng: np.random.Generator) -> list[tuple[str, bytes]]:
    """Valid files of many formats, modes and sizes: the material the fuzzer mutates."""
    def noise(width: int, height: int, channels: int = 3) -> np.ndarray:
        return rng.integers(0, 256, (height, width, channels), dtype=np.uint8)

    rgb = Image.fromarray(noise(40, 30))
    gray = Image.fromarray(noise(24, 24, 1)[..., 0], "L")
    rgba = Image.fromarray(noise(20, 36, 4), "RGBA")
    deep = Image.fromarray((rng.integers(0, 65536, (20, 20))).astype(np.uint16))
    frames = [Image.fromarray(noise(20, 20)) for _ in range(3)]
    animated = io.BytesIO()
    frames[0].save(animated, format="GIF", save_all=True, append_images=frames[1:])
    return [
        (".png", encoded(rgb, "PNG")),
        (".jpg", encoded(rgb, "JPEG", quality=80)),
        (".jpg", encoded(Image.new("CMYK", (30, 30), (0, 128, 255, 10)), "JPEG")),
        (".jpg", encoded(gray, "JPEG")),
        (".png", encoded(gray, "PNG")),
        (".png", encoded(rgb.convert("P"), "PNG")),
        (".png", encoded(rgba, "PNG")),
        (".png", encoded(rgba.convert("LA"), "PNG")),
        (".png", encoded(deep, "PNG")),
        (".png", encoded(rgb.convert("1"), "PNG")),
        (".gif", encoded(rgb.convert("P"), "GIF")),
        (".gif", animated.getvalue()),
        (".bmp", encoded(rgb, "BMP")),
        (".tif", encoded(rgb, "TIFF")),
        (".tif", encoded(deep, "TIFF")),
        (".tif", encoded(Image.fromarray(rng.random((20, 20), dtype=np.float32), "F"), "TIFF")),
        (".webp", encoded(rgb, "WEBP", lossless=True)),
        (".ppm", encoded(rgb, "PPM")),
        (".png", encoded(Image.fromarray(noise(8, 8)), "PNG")),
        (".png", encoded(Image.fromarray(noise(300, 12)), "PNG")),
        (".png", png_declaring(100_000, 100_000)),
        (".png", png_declaring(0, 0)),
    ]


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One of: truncate, flip bytes, overwrite a run with zeros or noise, splice in garbage, duplicate a block."""
    data = bytearray(data)
    choice = rng.integers(6)
    if choice == 0:
        return bytes(data[: rng.integers(0, len(data))])
    if choice == 1:
        for _ in range(rng.integers(1, 8)):
            data[rng.integers(len(data))] ^= 1 << int(rng.integers(8))
        return bytes(data)
    start = int(rng.integers(len(data)))
    length = int(rng.integers(1, 64))
    if choice == 2:
        data[start:start + length] = bytes(len(data[start:start + length]))
        return bytes(data)
    if choice == 3:
        data[start:start + length] = rng.integers(0, 256, len(data[start:start + length]), dtype=np.uint8).tobytes()
        return bytes(data)
    if choice == 4:
        return bytes(data[:start] + rng.integers(0, 256, length, dtype=np.uint8).tobytes() + data[start:])
    return bytes(data[:start] + data[start:start + length] * 3 + data[start + length:])


def build_corpus(folder: Path, count: int, seed: int = 20240607) -> None:
    """`count` generated files: seeds, their mutations, and files that are not what their name says."""
    rng = np.random.default_rng(seed)
    seeds = seed_images(rng)
    suffixes = [".jpg", ".png", ".gif", ".bmp", ".tif", ".webp", ".heic"]
    folder.mkdir(parents=True)
    for number in range(count):
        kind = number % 10
        suffix, data = seeds[number % len(seeds)]
        if kind == 0:
            pass  # the seed itself
        elif kind == 1:
            data = rng.integers(0, 256, int(rng.integers(0, 400)), dtype=np.uint8).tobytes()
        elif kind == 2:
            suffix = suffixes[int(rng.integers(len(suffixes)))]  # a real image under another format's name
        elif kind == 3:
            data = "plain text, not an image\n".encode() * int(rng.integers(0, 4))
        else:
            data = mutate(data, rng)
        subfolder = folder / f"group{number % 7}"
        subfolder.mkdir(exist_ok=True)
        (subfolder / f"file{number:04d}{suffix}").write_bytes(data)


@pytest.fixture(scope="module")
def fuzz_run(tmp_path_factory, tiny_key_file):
    folder = tmp_path_factory.mktemp("fuzz") / "inputs"
    build_corpus(folder, 540)
    (folder / "folder-named.jpg").mkdir()
    (folder / "folder-named.jpg" / "inside.png").write_bytes(encoded(Image.new("RGB", (20, 20)), "PNG"))
    os.symlink("loop.jpg", folder / "loop.jpg")
    os.symlink("does-not-exist.png", folder / "broken.png")
    os.mkfifo(folder / "pipe.jpg")
    before = snapshot(folder)
    out = folder.parent / "encrypted"
    result = encrypt(folder, tiny_key_file, out)
    return folder, out, result, before


def test_fuzzed_files_are_each_converted_or_failed_with_a_reason(fuzz_run):
    folder, out, result, _ = fuzz_run
    assert result.exit_code == 1, "some files fail, so the run must exit 1"
    assert "Traceback" not in result.output
    expected = {str(path.relative_to(folder)) for path in folder.rglob("*")
                if path.suffix and not path.is_dir()}
    assert len(expected) >= 500
    entries = manifest_entries(out)
    assert set(entries) == expected, "every file must be accounted for in the manifest"
    failed = [entry for group in entries.values() for entry in group if entry["status"] not in ("ok", "sealed")]
    converted = [entry for group in entries.values() for entry in group if entry["status"] == "ok"]
    sealed_only = [entry for group in entries.values() for entry in group if entry["status"] == "sealed"]
    assert failed and converted
    for entry in sealed_only:  # decodes, but cannot be the model's input (issue #23)
        assert entry["reason"].endswith(": sealed only") and (out / entry["sealed"]).is_file()
    stderr_lines = set(result.stderr.splitlines())
    for entry in failed:
        assert entry["reason"] and "\n" not in entry["reason"]
        assert "internal error" not in entry["reason"], entry
        assert f"failed: {entry['source']}: {entry['reason']}" in stderr_lines
    for entry in converted:
        with Image.open(out / entry["output"]) as written:
            assert written.size == (32, 32) and written.mode == "RGB"
    containers = {entry["sealed"] for group in entries.values() for entry in group if "sealed" in entry}
    assert len(result.stdout.splitlines()) == len(converted) + len(containers)


def test_fuzzing_leaves_the_inputs_untouched(fuzz_run):
    folder, _, _, before = fuzz_run
    assert snapshot(folder) == before


def test_special_files_get_the_right_reason(fuzz_run):
    _, out, _, _ = fuzz_run
    entries = manifest_entries(out)
    reasons = {source: group[0].get("reason", "ok") for source, group in entries.items()}
    assert reasons["loop.jpg"] == "symbolic link loop"
    assert reasons["broken.png"] == "broken symbolic link"
    assert "not a regular file" in reasons["pipe.jpg"]
    assert reasons["folder-named.jpg/inside.png"] == "ok"


def image_folder(folder: Path) -> dict[str, str]:
    """One file of each kind the issue names, and the reason (or "ok") each must get."""
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8))
    files = {
        "zero.jpg": (b"", "empty file"),
        "truncated.png": (encoded(rgb, "PNG")[:90], "cannot read image"),
        "truncated.jpg": (encoded(rgb, "JPEG")[:400], "cannot read image"),
        "text.jpg": (b"hello, I am a text file\n", "not an image"),
        "[bracketed].jpg": (b"[red]not markup[/]", "not an image"),
        "photo.heic": (b"\x00\x00\x00\x18ftypheic" + bytes(40), "unsupported format .heic"),
        "animated.gif": (None, "animated"),
        "deep.png": (encoded(Image.fromarray(rng.integers(0, 65536, (30, 30)).astype(np.uint16)), "PNG"), "ok"),
        "cmyk.jpg": (encoded(Image.new("CMYK", (30, 30), (10, 200, 30, 0)), "JPEG"), "ok"),
        "palette.png": (encoded(rgb.convert("P"), "PNG"), "ok"),
        "alpha.png": (encoded(rgb.convert("RGBA"), "PNG"), "ok"),
        "gray.png": (encoded(rgb.convert("L"), "PNG"), "ok"),
        "bomb.png": (png_declaring(60_000, 60_000), "too large"),
        "tiny.png": (encoded(Image.new("RGB", (5, 5)), "PNG"), "too small"),
        "locked.jpg": (encoded(rgb, "JPEG"), "permission denied"),
        "trouble.png": (encoded(rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "PNG"), "internal error: RuntimeError: boom"),
    }
    folder.mkdir()
    for name, (data, _) in files.items():
        if data is not None:
            (folder / name).write_bytes(data)
    frames = [Image.new("RGB", (20, 20), colour) for colour in ("red", "blue")]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:])
    return {name: reason for name, (_, reason) in files.items()}


def test_each_kind_of_bad_input_fails_alone_with_its_reason(tmp_path, tiny_key_file, monkeypatch):
    import avpcli.images
    import avpcli.inputs
    import avpcli.jobs

    expected = image_folder(tmp_path / "in")
    locked = tmp_path / "in" / "locked.jpg"
    if os.geteuid() == 0:  # root reads mode-000 files, so simulate what a user without rights sees
        real_open = avpcli.images.Image.open

        def refusing_open(path, *args, **kwargs):  # avp opens the file itself and hands PIL the stream
            if Path(getattr(path, "name", path)).name == "locked.jpg":
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(avpcli.images.Image, "open", refusing_open)
    else:
        locked.chmod(0)
    with Image.open(tmp_path / "in" / "trouble.png") as opened:
        trouble = opened.convert("RGB").tobytes()
    real_fit = avpcli.inputs.fit_to_size

    def fit_with_a_bug(image, size):  # a bug in avp while preparing one file must not stop the run
        if image.tobytes() == trouble:
            raise RuntimeError("boom")
        return real_fit(image, size)

    monkeypatch.setattr(avpcli.inputs, "fit_to_size", fit_with_a_bug)

    result = encrypt(tmp_path / "in", tiny_key_file, tmp_path / "out")
    assert result.exit_code == 1 and "Traceback" not in result.output
    entries = manifest_entries(tmp_path / "out")
    assert set(entries) == set(expected)
    for name, reason in expected.items():
        entry = entries[name][0]
        if reason == "ok":
            assert entry["status"] == "ok", (name, entry)
        elif entry["status"] == "sealed":  # decodes, but cannot be the model's input: sealed only (issue #23)
            assert reason in entry["reason"] and entry["reason"].endswith(": sealed only"), (name, entry)
            assert (tmp_path / "out" / entry["sealed"]).is_file()
        else:
            assert entry["status"] == "failed" and reason in entry["reason"], (name, entry)
            assert f"failed: {name}: {entry['reason']}" in result.stderr.splitlines()
    failed_lines = [line for line in result.stderr.splitlines() if line.startswith("failed:")]
    assert len(failed_lines) == sum(reason != "ok" and entries[name][0]["status"] == "failed"
                                    for name, reason in expected.items())


def test_a_file_given_by_name_that_fails_still_exits_1(tmp_path, tiny_key_file):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"GIF89a not really")
    result = encrypt(bad, tiny_key_file, tmp_path / "out")
    assert result.exit_code == 1 and "bad.jpg" in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize("damage", ["empty", "truncated", "text", "foreign safetensors"])
def test_a_damaged_key_is_a_clear_one_line_error(tmp_path, tiny_key_file, damage):
    from safetensors.torch import save_file
    import torch

    key = tmp_path / "key.safetensors"
    if damage == "empty":
        key.write_bytes(b"")
    elif damage == "truncated":
        key.write_bytes(tiny_key_file.read_bytes()[:-100])
    elif damage == "text":
        key.write_text("-----BEGIN PRIVATE KEY-----\n")
    else:
        save_file({"weight": torch.zeros(3)}, str(key), metadata={"format": "something-else"})
    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("RGB", (32, 32)).save(folder / "a.png")
    result = encrypt(folder, key, tmp_path / "out")
    assert result.exit_code == 1
    message = " ".join(result.stderr.split())  # rich wraps long lines at the console's width
    assert message.startswith("error:") and str(key) in message and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
