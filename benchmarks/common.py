"""Pieces the benchmark scripts share: where the data is, and encrypt → write PNG → read back → measure."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]

from avpcli.engine import AttackSettings, encrypt_batch, measure_images  # noqa: E402
from avpcli.images import read_png, save_png  # noqa: E402


def data_folder() -> Path:
    """../shared/data beside the repo, or $AVP_DATA."""
    return Path(os.environ.get("AVP_DATA", REPO.parent / "shared" / "data"))


def encrypt_and_measure(images: list[torch.Tensor], names: list[str], target: nn.Module, key: nn.Module,
                        settings: AttackSettings, loss: str, batch_size: int, workspace: Path) -> list[dict[str, Any]]:
    """Encrypt in batches, save each ciphertext as PNG, read it back and measure it (never the float tensor).

    Each row: name, the metrics of engine.measure_images, iterations, seconds (the batch's time
    shared equally among its images) and the PNG's path. Progress lines go to stderr.
    """
    rows: list[dict[str, Any]] = []
    for start in range(0, len(images), batch_size):
        batch = torch.stack(images[start:start + batch_size])
        began = time.perf_counter()
        result = encrypt_batch(batch, target, key, settings, loss, noise_seeds=list(range(start, start + len(batch))))
        seconds = (time.perf_counter() - began) / len(batch)
        written, paths = [], []
        for offset, image in enumerate(result.encrypted):
            path = workspace / f"{start + offset:04d}.png"
            save_png(image, path)
            written.append(read_png(path))
            paths.append(path)
        measured = measure_images(batch, torch.stack(written), target, key, loss)
        for offset, metrics in enumerate(measured):
            rows.append({"file": names[start + offset], **metrics, "iterations": result.metrics[offset].iterations,
                         "seconds": seconds, "png": paths[offset]})
            row = rows[-1]
            print(f"  {row['file']}: distance {row['feature_distance']:.4f}, SSIM_e {row['ssim_encrypted']:.4f}, "
                  f"SSIM_d {row['ssim_decrypted']:.4f}, {row['iterations']} iterations, {seconds:.1f} s", file=sys.stderr)
    return rows
