"""`avp demo`: the whole round trip offline on the shipped public-domain photos against the real dlib model."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from avpcli.encryptor import Encryptor
from avpcli.evaluate import blur_reveal
import torch
import torch.nn.functional as F

from avpcli.images import MAX_PIXELS, contact_sheet, load_rgb, read_png, save_png, to_tensor
from avpcli.events import EventCallback, ignore_events
from avpcli.jobs import decrypt_paths, encrypt_folder
from avpcli.scramble import PER_IMAGE_SCHEME
from avpcli.key import Key, cached_key
from avpcli.weights import user_cache_home

SAMPLES = Path(__file__).parent / "samples"
DEMO_TARGET = "dlib"
DEMO_PRESET = "demo"
# The contact sheet's columns are scaled to this height (the whole photo, its container and the chips alike).
SHEET_HEIGHT = 256
COLUMNS = ("original photo", "sealed container", "face's ciphertext", "its blur, contrast-stretched",
           "decrypted face", "restored photo")


def demo_key_path() -> Path:
    """Where the demo keeps its key between runs: $XDG_CACHE_HOME/avp (or ~/.cache/avp)."""
    return user_cache_home() / "avp" / "demo-key.safetensors"


@dataclass
class DemoResult:
    rows: list[dict[str, Any]] = field(default_factory=list)
    contact_sheet: Path | None = None
    key_trained: bool = False
    seconds: float = 0.0


def ensure_demo_key(path: Path, device: str, on_training_step: Callable[[int, int], None]) -> tuple[Key, bool]:
    """Load the cached demo key, or train one (the demo preset, a fresh secret seed) and cache it.

    A cached key of another scramble scheme than today's default (no scramble, avp 0.1's one scramble
    per size, avp 0.2's nonce without key check) is replaced: the demo shows what avp's defaults do.
    """
    key, trained = cached_key(path, DEMO_PRESET, device=device,
                              accept=lambda cached: cached.scrambles and cached.scramble.scheme == PER_IMAGE_SCHEME,
                              progress=lambda step, total, loss: on_training_step(step, total))
    return key, trained is not None


def run_demo(
    output: Path,
    images: Path = SAMPLES,
    device: str = "cpu",
    key_path: Path | None = None,
    on_training_step: Callable[[int, int], None] = lambda step, total: None,
    on_event: EventCallback = ignore_events,
) -> DemoResult:
    """Train or reuse a key, encrypt `images` against dlib (each photo sealed whole beside its face's
    ciphertext), decrypt them (the photos restored byte for byte, the faces through the key), and draw a
    contact sheet: a row per photo, COLUMNS. Each row of `rows` says whether the restored file's sha256
    equals the original's ("restored_identical")."""
    started = time.perf_counter()
    key, trained = ensure_demo_key(key_path or demo_key_path(), device, on_training_step)
    encryptor = Encryptor(DEMO_TARGET, key, device=device, batch_size=4)
    encrypted_folder, decrypted_folder, aligned_folder = output / "encrypted", output / "decrypted", output / "aligned"
    manifest = encrypt_folder(encryptor, [images], encrypted_folder, on_event, noise_seed=0, overwrite=True,
                              aligned_output=aligned_folder)
    decrypt_paths([encrypted_folder], decrypted_folder, key=key, device=encryptor.device, overwrite=True,
                  on_event=on_event, chips=True)
    result = DemoResult(key_trained=trained)
    sheet_rows = []
    for entry in manifest.files:
        source, restored = images / entry["source"], decrypted_folder / entry["source"]
        row = dict(entry)
        if "sealed" in entry:
            row["restored_identical"] = restored.is_file() and _sha256(restored) == _sha256(source)
        result.rows.append(row)
        if entry["status"] != "ok" or entry.get("face", 1) != 1:
            continue
        name = entry["output"]
        encrypted = read_png(encrypted_folder / name)
        decrypted = read_png(decrypted_folder / ("chips" if "sealed" in entry else "") / name)
        photo = to_tensor(load_rgb(source, MAX_PIXELS))
        # The container as the image it is; the blur shows what a filter and a contrast stretch find in the
        # ciphertext (docs/PRIVACY.md); the restored photo is the original file's bytes, given back.
        sealed = read_png(encrypted_folder / entry["sealed"]) if "sealed" in entry else torch.ones(3, 8, 8)
        back = to_tensor(load_rgb(restored, MAX_PIXELS)) if restored.is_file() else torch.ones(3, 8, 8)
        sheet_rows.append([_scaled(image) for image in (photo, sealed, encrypted, blur_reveal(encrypted[None])[0],
                                                        decrypted, back)])
    if sheet_rows:
        result.contact_sheet = output / "contact-sheet.png"
        save_png(contact_sheet(sheet_rows), result.contact_sheet)
    result.seconds = time.perf_counter() - started
    return result


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _scaled(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) scaled to SHEET_HEIGHT rows, its aspect kept."""
    height, width = image.shape[-2:]
    size = (SHEET_HEIGHT, max(1, round(width * SHEET_HEIGHT / height)))
    return F.interpolate(image[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0].clamp(0, 1)
