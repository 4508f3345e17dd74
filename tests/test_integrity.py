"""Decrypt never calls garbage "ok" (issue #24): the folder form checks each ciphertext's sha256 against its
manifest, and every path runs the key check of the ciphertext's nonce (KeyModel.verify): a damaged
nonce, another key's ciphertext or a re-encoded file is refused with one line, nothing written, unless --force."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from avpcli.cli import app
from avpcli.scramble import NONCE_PIXELS
from conftest import write_noise_photos

ENCRYPT = ["--target", "tiny-embedding", "--iterations", "2", "--device", "cpu", "--seed", "5", "--no-align"]
LINE = "damaged, or made with another key"


def invoke(*args):
    return CliRunner().invoke(app, [str(arg) for arg in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def encrypted(tmp_path_factory, tiny_key_file, other_tiny_key_file) -> dict[str, Path]:
    """Three photos encrypted with the tiny key (V), one with the other tiny key (W)."""
    root = tmp_path_factory.mktemp("integrity")
    photos = write_noise_photos(root / "photos", ["a.png", "b.png", "c.png"], 32, 32, seed=24)
    for out, key in (("V", tiny_key_file), ("W", other_tiny_key_file)):
        result = invoke("encrypt", photos, "--key", key, "--out", root / out, *ENCRYPT)
        assert result.exit_code == 0, result.stderr
    return {"root": root, "photos": photos, "V": root / "V", "W": root / "W"}


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).copy()


def _png(array: np.ndarray, path: Path) -> Path:
    Image.fromarray(array.astype(np.uint8), "RGB").save(path)
    return path


def _reencoded(path: Path, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.open(path).convert("RGB").save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB")).copy()


def damaged_ciphertexts(encrypted: dict[str, Path], folder: Path) -> tuple[dict[Path, str], dict[Path, Path]]:
    """≥ 100 damaged ciphertexts as loose PNGs in `folder` (no manifest there): each file's kind of damage,
    and for those whose nonce is left as it was, the ciphertext they were made from."""
    folder.mkdir()
    kinds: dict[Path, str] = {}
    intact: dict[Path, Path] = {}
    rng = np.random.default_rng(24)
    for name in ("a.png", "b.png", "c.png"):
        source = encrypted["V"] / name
        pixels = _pixels(source)
        stem = Path(name).stem
        for pixel in range(NONCE_PIXELS):  # every channel of every nonce pixel, three bits each: 36 a file
            for channel in range(3):
                for bit in (0, 3, 7):
                    flipped = pixels.copy()
                    flipped[0, pixel, channel] ^= 1 << bit
                    kinds[_png(flipped, folder / f"{stem}-nonce-{pixel}{channel}{bit}.png")] = "nonce bit"
        for index in range(4):  # bits outside the nonce
            flipped = pixels.copy()
            row, column = int(rng.integers(1, pixels.shape[0])), int(rng.integers(0, pixels.shape[1]))
            flipped[row, column, int(rng.integers(0, 3))] ^= 1 << int(rng.integers(0, 8))
            path = _png(flipped, folder / f"{stem}-flip-{index}.png")
            kinds[path], intact[path] = "bit outside the nonce", source
        for quality in (95, 75):
            kinds[_png(_reencoded(source, quality), folder / f"{stem}-jpeg{quality}.png")] = f"JPEG {quality}"
        image = Image.open(source).convert("RGB")
        for size in ((33, 32), (32, 31)):
            resized = np.asarray(image.resize(size, Image.Resampling.BICUBIC))
            kinds[_png(resized, folder / f"{stem}-resize-{size[0]}x{size[1]}.png")] = "resize by 1 px"
        kinds[_png(pixels[:, 1:], folder / f"{stem}-crop-left.png")] = "crop (left column)"
        kinds[_png(pixels[:-2], folder / f"{stem}-crop-bottom.png")] = "crop (bottom rows: nonce kept, size not)"
        other = folder / f"{stem}-other-key.png"
        shutil.copyfile(encrypted["W"] / name, other)
        kinds[other] = "another key"
    return kinds, intact


def test_a_hundred_damaged_ciphertexts_are_refused_or_decrypt_near_the_original(encrypted, tiny_key_file, tmp_path):
    from avpcli.engine import decrypt_batch
    from avpcli.images import read_png
    from avpcli.key import load_key
    from avpcli.metrics import ssim

    kinds, intact = damaged_ciphertexts(encrypted, tmp_path / "damaged")
    assert len(kinds) >= 100
    out = tmp_path / "dec"
    result = invoke("decrypt", *sorted(kinds), "--key", tiny_key_file, "--out", out, "--device", "cpu")
    assert result.exit_code == 1
    refused = {line.removeprefix("failed: ").rsplit(": ", 1)[0] for line in result.stderr.splitlines()}
    assert all(line.endswith(f": {LINE}") for line in result.stderr.splitlines()), result.stderr
    assert refused == {str(path) for path in kinds if path not in intact}
    manifest = json.loads((out / "avp-manifest.json").read_text())
    written = {entry["source"]: entry for entry in manifest["files"] if entry["status"] == "ok"}
    assert set(written) == {str(path) for path in intact}
    assert sorted(path.name for path in out.glob("*.png")) == sorted(path.name for path in intact)
    # A bit flipped outside the nonce decrypts near the undamaged ciphertext's decryption.
    model = load_key(tiny_key_file).model
    for path, source in sorted(intact.items()):
        clean = decrypt_batch(read_png(source)[None], model)
        original = read_png(encrypted["photos"] / source.name)[None]
        damaged = read_png(out / path.name)[None]
        near, to_original = float(ssim(damaged, clean)), float(ssim(damaged, original))
        print(f"{path.name}: SSIM {near:.4f} to the undamaged ciphertext's decryption, {to_original:.4f} to the original "
              f"(undamaged: {float(ssim(clean, original)):.4f})")
        assert near > 0.9
    counts: dict[str, int] = {}
    for kind in kinds.values():
        counts[kind] = counts.get(kind, 0) + 1
    print("damaged ciphertexts by kind:", counts)


def test_force_decrypts_what_fails_the_key_check_and_says_so(encrypted, tiny_key_file, tmp_path):
    pixels = _pixels(encrypted["V"] / "a.png")
    pixels[0, 0, 0] ^= 1
    damaged = _png(pixels, tmp_path / "a.png")
    refused = invoke("decrypt", damaged, "--key", tiny_key_file, "--out", tmp_path / "dec", "--device", "cpu")
    assert refused.exit_code == 1 and refused.stderr == f"failed: {damaged}: {LINE}\n"
    assert not (tmp_path / "dec" / "a.png").exists()
    forced = invoke("decrypt", damaged, "--key", tiny_key_file, "--out", tmp_path / "dec", "--device", "cpu", "--force")
    assert forced.exit_code == 0, forced.stderr
    [entry] = json.loads((tmp_path / "dec" / "avp-manifest.json").read_text())["files"]
    assert entry["forced"] == "key check" and (tmp_path / "dec" / "a.png").is_file()


def test_the_folder_form_checks_each_ciphertext_against_the_manifests_sha256(encrypted, tiny_key_file, tmp_path):
    folder = tmp_path / "V"
    shutil.copytree(encrypted["V"], folder)
    pixels = _pixels(folder / "b.png")
    pixels[5, 5, 1] ^= 1  # outside the nonce: only the manifest's sha256 tells
    _png(pixels, folder / "b.png")
    out = tmp_path / "dec"
    result = invoke("decrypt", folder, "--key", tiny_key_file, "--out", out, "--device", "cpu")
    assert result.exit_code == 1
    assert result.stderr == ("failed: b.png: its bytes do not match the sha256 its manifest lists "
                             "(damaged or replaced); use --force to decrypt it anyway\n")
    assert sorted(path.name for path in out.glob("*.png")) == ["a.png", "c.png"]
    forced = invoke("decrypt", folder, "--key", tiny_key_file, "--out", out, "--device", "cpu", "--force")
    assert forced.exit_code == 0, forced.stderr
    entries = {entry["output"]: entry for entry in json.loads((out / "avp-manifest.json").read_text())["files"]}
    assert entries["b.png"]["forced"] == "sha256" and "forced" not in entries["a.png"]
    assert entries["b.png"]["source_sha256"] == hashlib.sha256((folder / "b.png").read_bytes()).hexdigest()


def test_a_key_without_the_check_decrypts_as_before(tmp_path):
    """A key of avp 0.2 (nonce-v2) carries no check: a damaged nonce decrypts (the check is None)."""
    from avpcli.key import KeyPreset, train_key
    from avpcli.scramble import NONCE_V2_SCHEME

    key = train_key(KeyPreset(ngf=4, blocks=1, norm="batch", steps=1, batch_size=2, crop_size=32, learning_rate=1e-3),
                    seed=2**70 + 3, scramble=NONCE_V2_SCHEME)
    model = key.model
    image = torch.rand(1, 3, 32, 32)
    assert model.verify(image) is None
    from avpcli.jobs.decrypt import _key_check

    assert _key_check(model, image[0]) is None and _key_check(key.plain_model, image[0]) is None
