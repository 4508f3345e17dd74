"""`avp demo`: the whole round trip offline on the shipped public-domain photos against the real dlib model."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from avpcli.encryptor import Encryptor
from avpcli.evaluate import blur_reveal
from avpcli.images import contact_sheet, read_png, save_png
from avpcli.events import EventCallback, ignore_events
from avpcli.jobs import decrypt_paths, encrypt_folder
from avpcli.scramble import PER_IMAGE_SCHEME
from avpcli.key import Key, cached_key
from avpcli.weights import user_cache_home

SAMPLES = Path(__file__).parent / "samples"
DEMO_TARGET = "dlib"
DEMO_PRESET = "demo"


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
    """Train or reuse a key, encrypt `images` against dlib, decrypt them, and draw a contact sheet."""
    started = time.perf_counter()
    key, trained = ensure_demo_key(key_path or demo_key_path(), device, on_training_step)
    encryptor = Encryptor(DEMO_TARGET, key, device=device, batch_size=4)
    encrypted_folder, decrypted_folder, aligned_folder = output / "encrypted", output / "decrypted", output / "aligned"
    manifest = encrypt_folder(encryptor, [images], encrypted_folder, on_event, noise_seed=0, overwrite=True,
                              aligned_output=aligned_folder)
    decrypt_paths([encrypted_folder], decrypted_folder, key=key, device=encryptor.device, overwrite=True,
                  on_event=on_event)
    result = DemoResult(key_trained=trained)
    sheet_rows = []
    for entry in manifest.files:
        result.rows.append(entry)
        if entry["status"] != "ok":
            continue
        name = entry["output"]
        original, encrypted, decrypted = (read_png(folder / name)
                                          for folder in (aligned_folder, encrypted_folder, decrypted_folder))
        # The third column is what a blur and a contrast stretch show of the ciphertext (docs/PRIVACY.md).
        sheet_rows.append([original, encrypted, blur_reveal(encrypted[None])[0], decrypted])
    if sheet_rows:
        result.contact_sheet = output / "contact-sheet.png"
        save_png(contact_sheet(sheet_rows), result.contact_sheet)
    result.seconds = time.perf_counter() - started
    return result
