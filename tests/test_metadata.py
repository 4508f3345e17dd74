"""Nothing leaks: no source metadata in the PNGs, no key path or seed in the output folder, anonymized names."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms
from typer.testing import CliRunner

from avpcli.cli import app
from avpcli.key import load_key

runner = CliRunner()


def encrypt(inputs: Path, key: Path, out: Path, *extra: str):
    arguments = ["encrypt", inputs, "--target", "tiny-embedding", "--key", key, "--out", out, "--iterations", "2",
                 "--device", "cpu", "--seed", "3", *extra]
    return runner.invoke(app, [str(argument) for argument in arguments], catch_exceptions=False)


def png_chunks(data: bytes) -> list[str]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, position = [], 8
    while position < len(data):
        length = int.from_bytes(data[position:position + 4], "big")
        chunks.append(data[position + 4:position + 8].decode("latin-1"))
        position += 12 + length
    return chunks


def photo_with_metadata(path: Path) -> None:
    """A JPEG carrying EXIF (GPS position, camera, time), an ICC profile, XMP and a comment."""
    exif = Image.Exif()
    gps = exif.get_ifd(0x8825)
    gps.update({1: "N", 2: (52.0, 31.0, 12.5), 3: "E", 4: (13.0, 24.0, 1.0)})
    exif[0x010F] = "SecretCam"
    exif[0x0132] = "2021:05:01 10:11:12"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(
        path, exif=exif, icc_profile=icc, xmp=b"<x:xmpmeta>hidden-xmp</x:xmpmeta>", comment=b"secret comment")
    with Image.open(path) as check:
        assert check.getexif().get_ifd(0x8825) and "icc_profile" in check.info and "xmp" in check.info


def test_exif_gps_icc_and_xmp_do_not_reach_the_png(tmp_path, tiny_key_file):
    photos = tmp_path / "photos"
    photos.mkdir()
    photo_with_metadata(photos / "holiday.jpg")
    out = tmp_path / "out"
    assert encrypt(photos, tiny_key_file, out).exit_code == 0
    data = (out / "holiday.png").read_bytes()
    assert png_chunks(data) == ["IHDR"] + ["IDAT"] * (len(png_chunks(data)) - 2) + ["IEND"]
    for secret in (b"SecretCam", b"2021:05:01", b"hidden-xmp", b"secret comment", b"Exif", b"sRGB", b"GPS"):
        assert secret not in data
    with Image.open(out / "holiday.png") as written:
        assert not written.getexif() and "icc_profile" not in written.info and "exif" not in written.info


def test_the_output_folder_holds_neither_the_key_path_nor_its_seed(tmp_path, tiny_key_file):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (40, 40), "green").save(photos / "a.png")
    key = tmp_path / "private-keyfolder" / "alices-key.safetensors"
    key.parent.mkdir()
    key.write_bytes(tiny_key_file.read_bytes())
    out = tmp_path / "out"
    assert encrypt(photos, key, out).exit_code == 0
    seed = load_key(key).metadata["seed"]
    assert len(seed) > 6
    for path in out.rglob("*"):
        text = path.read_bytes()
        for secret in (str(key), "private-keyfolder", "alices-key", seed):
            assert secret.encode() not in text, (path, secret)


def test_anonymize_names_outputs_by_random_ids_and_keeps_the_map_beside_the_key(tmp_path, tiny_key_file):
    key = tmp_path / "keys" / "mine.safetensors"
    key.parent.mkdir()
    key.write_bytes(tiny_key_file.read_bytes())
    photos = tmp_path / "alice-and-bob"
    (photos / "alice").mkdir(parents=True)
    for name in ("alice/portrait.jpg", "bob-at-home.png"):
        Image.fromarray(np.random.default_rng(len(name)).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(photos / name)
    (photos / "carol-broken.jpg").write_bytes(b"nope")
    out = tmp_path / "out"
    result = encrypt(photos, key, out, "--anonymize")
    assert result.exit_code == 1 and "carol-broken.jpg" in result.stderr  # the user sees names on stderr

    maps = list(key.parent.glob("mine.safetensors.names-*.json"))
    assert len(maps) == 1 and stat.S_IMODE(maps[0].stat().st_mode) == 0o600
    names = json.loads(maps[0].read_text())["names"]
    assert sorted(names.values()) == ["alice/portrait.jpg", "bob-at-home.png", "carol-broken.jpg"]

    written = sorted(path.name for path in out.rglob("*"))
    ids = {Path(line).name.split(".")[0] for line in result.stdout.splitlines()}
    # Each photo's ciphertext and its sealed container (issue #23), both named by the photo's id.
    assert written == sorted(["avp-manifest.json", *(name for name in names if name.split(".")[0] in ids),
                              *(name.replace(".png", ".sealed.png") for name in names if name.split(".")[0] in ids)])
    everything = b"".join(path.read_bytes() for path in out.rglob("*"))
    for secret in (b"alice", b"bob", b"carol", b"portrait", b"mine.safetensors"):
        assert secret not in everything
    manifest = json.loads((out / "avp-manifest.json").read_text())
    assert {entry["source"] + ".png" for entry in manifest["files"]} == set(names)

    # A rerun resumes with the same ids (it finds the map through the run id in the manifest).
    again = encrypt(photos, key, out, "--anonymize")
    assert again.exit_code == 1 and sorted(path.name for path in out.rglob("*")) == written
    assert len(list(key.parent.glob("mine.safetensors.names-*.json"))) == 1


def test_a_names_map_inside_the_output_folder_is_refused(tmp_path, tiny_key_file):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (40, 40)).save(photos / "a.png")
    result = encrypt(photos, tiny_key_file, tmp_path / "out", "--anonymize", "--names-map", tmp_path / "out" / "m.json")
    assert result.exit_code == 2 and "anonymize" in result.stderr
    explicit = tmp_path / "private" / "map.json"
    assert encrypt(photos, tiny_key_file, tmp_path / "out2", "--anonymize", "--names-map", explicit).exit_code == 0
    assert stat.S_IMODE(explicit.stat().st_mode) == 0o600
    assert encrypt(photos, tiny_key_file, tmp_path / "out3", "--names-map", explicit).exit_code == 2
