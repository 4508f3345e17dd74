"""Pieces the benchmark scripts share: where the data is, encrypting through avp's Encryptor with
per-image rows, and the naive research-style loop the speed-ups are taken against."""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parents[1]

from avpcli.encryptor import Encryptor  # noqa: E402
from avpcli.engine import AttackSettings, LeakPenalty  # noqa: E402
from avpcli.images import atomic_write_bytes  # noqa: E402
from avpcli.key import load_key  # noqa: E402
from avpcli.metrics import ssim  # noqa: E402


def data_folder() -> Path:
    """../shared/data beside the repo, or $AVP_DATA: the one place the benchmarks look for shared data."""
    return Path(os.environ.get("AVP_DATA", REPO.parent / "shared" / "data"))


def write_generated_doc(doc: Path, generated: str, marker: str) -> None:
    """Write `generated` above the line `marker` and keep what stands below it; refuse a doc without the
    marker, whose text would otherwise be lost."""
    kept = ""
    if doc.exists():
        old = doc.read_text()
        if marker not in old:
            sys.exit(f"{doc} has no line {marker!r}: put it above the hand-written part (or give another --doc)")
        kept = old.partition(marker)[2]
    doc.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(doc, (generated.rstrip("\n") + "\n\n" + marker + (kept or "\n")).encode())


def lfw_by_role(data: Path) -> dict[str, list[tuple[str, Path]]]:
    """<data>/lfw.csv: role (probe, multi, distractor) → [(identity, photo path)], in the file's order."""
    import csv
    from collections import defaultdict

    roles: dict[str, list[tuple[str, Path]]] = defaultdict(list)
    with open(data / "lfw.csv", newline="") as stream:
        for row in csv.DictReader(stream):
            roles[row["role"]].append((row["identity"], data / row["path"]))
    return roles


def encrypt_and_measure(encryptor: Encryptor, images: list[torch.Tensor], names: list[str],
                        workspace: Path) -> list[dict[str, Any]]:
    """Encrypt target inputs (each (3, H, W) at the target's input size) in batches of the
    encryptor's batch_size; write each ciphertext's PNG into `workspace`.

    The figures are the Encryptor's own, measured on the PNG as written and read back (never the
    float tensor). Each row: name, those figures, iterations, seconds (the batch's time, the engine's
    steps plus the PNG round trip and the measurement, shared equally among its images),
    batch_seconds, the PNG's path and the ciphertext as read back ("image"). Progress lines go to stderr.
    """
    rows: list[dict[str, Any]] = []
    for start in range(0, len(images), encryptor.batch_size):
        batch = images[start:start + encryptor.batch_size]
        began = time.perf_counter()
        # One call per batch, so that each call is one engine batch and its time is the batch's.
        # noise_seed: the Encryptor seeds image i of a call with noise_seed + 1000·i + 1, so every
        # image of the run gets its own initial noise.
        ciphertexts = encryptor.encrypt(batch, noise_seed=1000 * start)
        batch_seconds = time.perf_counter() - began
        seconds = batch_seconds / len(batch)
        for ciphertext in ciphertexts:
            path = workspace / f"{start + ciphertext.source:04d}.png"
            path.write_bytes(ciphertext.png())
            rows.append({"file": names[start + ciphertext.source], **ciphertext.metrics, "seconds": seconds,
                         "batch_seconds": batch_seconds, "png": path, "image": ciphertext.image})
            row = rows[-1]
            print(f"  {row['file']}: distance {row['feature_distance']:.4f}, SSIM_e {row['ssim_encrypted']:.4f}, "
                  f"SSIM_d {row['ssim_decrypted']:.4f}, {row['iterations']} iterations, {seconds:.1f} s", file=sys.stderr)
    return rows


def naive_encrypt(original: torch.Tensor, target, key_path: Path, settings: AttackSettings, iterations: int,
                  noise_seed: int, device: str = "cpu") -> float:
    """The research code's loop, for timing: batch 1, fp32, fresh unfrozen modules, fixed K, sync per step.

    `original` is one image (1, 3, H, W); `target` a TargetModel on `device`; `settings` the caller's
    (from attack_settings, as avp's engine got them). Computes the same objective as `settings` asks
    of avp's engine, so the ratio measures the engine, not the loss; runs exactly `iterations` steps
    (the research code has no early stop) and ignores settings.autocast_dtype (always fp32).
    Returns the seconds taken.
    """
    # Weight gradients on, as in the research code: a fresh copy whose parameters require grad.
    key = load_key(key_path, device=device).model
    for parameter in key.parameters():
        parameter.requires_grad_(True)
    model = target.model
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    original = original.to(device)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)  # start the clock on an idle GPU
    started = time.perf_counter()
    reference = target(original).detach()
    # The same leak term as the engine's (an FFT): the ratio is to measure the engine, not the filters.
    leak = LeakPenalty(original, settings.lowpass_sigma) if settings.leak_weight else None
    if settings.initialization == "preimage" and key.scrambles:
        adversarial = key.preimage(original).detach()
    else:
        adversarial = torch.randn(original.shape, generator=torch.Generator().manual_seed(noise_seed)).to(device).clamp(0, 1)
    start_colour = adversarial.mean(dim=(2, 3), keepdim=True)
    momentum = torch.zeros_like(adversarial)
    step, rises, losses = settings.step_size, 0, []
    for _ in range(iterations):
        adversarial = adversarial.detach().clone().requires_grad_(True)
        decrypted = key(adversarial).clamp(0, 1)
        features = target(adversarial)
        loss_feature = torch.mean((features - reference) ** 2)
        loss_key = torch.mean((decrypted - original) ** 2)
        if settings.key_ssim_weight:
            loss_key = loss_key + settings.key_ssim_weight * (1 - ssim(decrypted, original).mean())
        blocks = torch.nn.functional.avg_pool2d(adversarial, 4, stride=1) * 16
        loss_variance = sum(blocks[:, channel].reshape(-1).var() for channel in range(3))
        loss = loss_feature + settings.key_weight * loss_key + settings.variance_weight * loss_variance
        if leak is not None:
            loss = loss + settings.leak_weight * leak.penalty(adversarial, torch.zeros(1, dtype=torch.long))
        key.zero_grad()
        model.zero_grad()
        loss.backward()
        gradient = adversarial.grad / adversarial.grad.abs().mean()
        momentum = settings.momentum * momentum + gradient
        adversarial = (adversarial - step * momentum).clamp(0, 1)
        if settings.hold_colour:
            adversarial = (adversarial - adversarial.mean(dim=(2, 3), keepdim=True) + start_colour).clamp(0, 1)
        losses.append(loss.item())  # the per-step host sync
        if len(losses) > 2 and losses[-1] > losses[-2]:
            rises += 1
            if rises == settings.decay_patience:
                step, rises = step * settings.step_decay, 0
    for parameter in list(key.parameters()) + list(model.parameters()):
        parameter.requires_grad_(False)
    return time.perf_counter() - started


def time_naive_loop(images: list[torch.Tensor], target, key_path: Path, settings: AttackSettings, iterations: int,
                    device: str = "cpu") -> list[float]:
    """Seconds of naive_encrypt on each image, one after another, at a fixed K of `iterations`."""
    seconds = []
    for index, image in enumerate(images):
        seconds.append(naive_encrypt(image[None], target, key_path, settings, iterations, index, device))
        print(f"  naive face {index}: {seconds[-1]:.1f} s", file=sys.stderr)
    return seconds


def print_speedup(naive_seconds: list[float], iterations: int, avp_seconds_per_face: float,
                  emit: Callable[[str], None] = print) -> None:
    """The naive loop's median seconds per face and avp's speed-up over it, to `emit` (stdout)."""
    naive_median = statistics.median(naive_seconds)
    emit(f"naive reference loop (batch 1, fp32, weight gradients, K={iterations} fixed, sync every step), "
         f"first {len(naive_seconds)} faces: median {naive_median:.1f} s per face")
    emit(f"speed-up of avp over the naive loop: {naive_median / avp_seconds_per_face:.1f}x")
