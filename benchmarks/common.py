"""Pieces the benchmark scripts share: where the data is and LFW's list of it, the settings options,
keys trained once, logging, encrypting through avp's Encryptor with per-image rows, and the naive
research-style loop the speed-ups are taken against.

Run every benchmark from the repository's root as a module: `python -m benchmarks.NAME --help`.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import inspect
import os
import re
import statistics
import sys
import time
import typing
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch

from avpcli import AttackSettings, Encryptor, Key, KeyPreset, load_key
from avpcli import cached_key as load_or_train_key
from avpcli.engine import LeakPenalty
from avpcli.files import atomic_write_bytes
from avpcli.metrics import ssim

REPO = Path(__file__).resolve().parents[1]

# Where the shared data keeps each face model's weights (None: the model finds its own).
FACE_WEIGHTS = {"dlib": None, "mobilefacenet": "weights/mobilefacenet_xiaoccer/068.ckpt"}


def data_folder() -> Path:
    """../shared/data beside the repo, or $AVP_DATA: the one place the benchmarks look for shared data."""
    return Path(os.environ.get("AVP_DATA", REPO.parent / "shared" / "data"))


def log(message: str) -> None:
    """A progress line with the time, on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def events(label: str) -> Callable[[Any], None]:
    """An on_event for folder runs that logs each file written or failed under `label`."""
    def on_event(event) -> None:
        if event.kind == "written":
            log(f"{label}: encrypted {event.source}")
        elif event.kind == "failed":
            log(f"{label}: FAILED {event.source}: {event.reason}")
    return on_event


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


# ------------------------------------------------------------------------------------------------
# LFW: <data>/lfw.csv, columns path, identity, role (../shared/data/README.md)


@dataclasses.dataclass(frozen=True)
class LfwPhoto:
    """One row of lfw.csv."""

    identity: str
    file: str  # the photo relative to the data folder, as lfw.csv writes it
    role: str  # probe (12 identities, all their photos), multi (≥ 5 photos, up to 10) or distractor (one each)
    path: Path  # the data folder / file


def read_lfw(data: Path, role: str | None = None) -> list[LfwPhoto]:
    """The rows of <data>/lfw.csv in the file's order: all of them, or those of one role."""
    with open(data / "lfw.csv", newline="") as stream:
        return [LfwPhoto(row["identity"], row["path"], row["role"], data / row["path"])
                for row in csv.DictReader(stream) if role is None or row["role"] == role]


def lfw_identities(data: Path, role: str) -> dict[str, list[Path]]:
    """identity → its photos of one role, both sorted by name."""
    photos: dict[str, list[Path]] = defaultdict(list)
    for photo in read_lfw(data, role):
        photos[photo.identity].append(photo.path)
    return {identity: sorted(paths) for identity, paths in sorted(photos.items())}


def lfw_faces(data: Path, count: int) -> list[Path]:
    """The first photo of each of the first `count` `multi` identities (sorted by name)."""
    return [photos[0] for photos in lfw_identities(data, "multi").values()][:count]


def lfw_split(data: Path, gallery_size: int) -> tuple[dict[str, list[Path]], list[tuple[str, Path]]]:
    """Table 2's sets: the probe identities' photos, and the first `gallery_size` distractors as
    (identity, photo)."""
    gallery = [(photo.identity, photo.path) for photo in read_lfw(data, "distractor")[:gallery_size]]
    return lfw_identities(data, "probe"), gallery


# ------------------------------------------------------------------------------------------------
# Settings options: one per AttackSettings field, so that the benchmarks take what avp's settings are


# attack_settings's stop bars beside the fields: a negative value keeps the recipe's bar.
BARS = {"max_lowpass_correlation": "stop bar on |low-pass correlation| of x′ and x",
        "max_feature_distance": "stop bar on the feature distance (replaces the recipe's)"}


def _field_help() -> dict[str, str]:
    """Each AttackSettings field's first sentence in the class's docstring ("name: meaning. ...")."""
    meanings: dict[str, str] = {}
    names: list[str] = []
    for line in (inspect.getdoc(AttackSettings) or "").splitlines():
        head, colon, rest = line.partition(": ")
        if colon and not line.startswith(" ") and all(name.strip().isidentifier() for name in head.split(",")):
            names = [name.strip() for name in head.split(",")]
            for name in names:
                meanings[name] = rest
        elif names and line.startswith(" "):
            for name in names:
                meanings[name] += " " + line.strip()
        else:
            names = []
    return {name: re.split(r"\. (?=[A-Z])", meaning)[0].rstrip(".") for name, meaning in meanings.items()}


def _bar(value: str) -> float | None:
    number = float(value)
    return number if number >= 0 else None


def add_settings_options(parser: argparse.ArgumentParser, only: Iterable[str] | None = None,
                         aliases: Mapping[str, str] | None = None, defaults: Mapping[str, Any] | None = None) -> None:
    """Add an option for each AttackSettings field of a plain type (--key-weight for key_weight, ...) and
    for attack_settings's stop bars (--max-lowpass-correlation, --max-feature-distance).

    Each defaults to None, which keeps the recipe's value (the target's: attack_settings), unless
    `defaults` gives the benchmark's own. only: these names alone. aliases: option → name, another
    spelling a benchmark has taken (e.g. {"--init": "initialization"}). settings_overrides reads them back.
    """
    hints = typing.get_type_hints(AttackSettings)
    meanings = _field_help()
    choices: dict[str, tuple[Any, dict[str, Any]]] = {}
    for field in dataclasses.fields(AttackSettings):
        kind = hints[field.name]
        if kind in (int, float):
            choices[field.name] = (meanings.get(field.name), {"type": kind})
        elif kind is bool:
            choices[field.name] = (meanings.get(field.name), {"action": argparse.BooleanOptionalAction})
        elif typing.get_origin(kind) is typing.Literal:
            choices[field.name] = (meanings.get(field.name), {"choices": typing.get_args(kind)})
    for name, meaning in BARS.items():
        choices[name] = (meaning + "; a negative value keeps the recipe's", {"type": _bar})
    wanted = list(choices) if only is None else list(only)
    unknown = set(wanted) - set(choices)
    if unknown:
        raise ValueError(f"no settings option for {', '.join(sorted(unknown))}")
    spellings: dict[str, list[str]] = defaultdict(list)
    for option, name in (aliases or {}).items():
        spellings[name].append(option)
    defaults = defaults or {}
    for name in wanted:
        meaning, how = choices[name]
        default = defaults.get(name)
        shown = "the recipe's" if default is None else str(default)
        help_text = f"{meaning or 'AttackSettings.' + name} (default: {shown})".replace("%", "%%")
        parser.add_argument(f"--{name.replace('_', '-')}", *spellings.pop(name, []), dest=name, default=default,
                            help=help_text, **how)
    if spellings:
        raise ValueError(f"aliases of options not added: {', '.join(sorted(spellings))}")


def settings_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings options in `args` (add_settings_options) as overrides for attack_settings(...) or
    Encryptor(...): {name: value}, None where the recipe's value stays."""
    names = [field.name for field in dataclasses.fields(AttackSettings)] + list(BARS)
    return {name: getattr(args, name) for name in names if hasattr(args, name)}


# ------------------------------------------------------------------------------------------------
# Keys


def cached_key(path: Path, preset: str | KeyPreset, seed: int | None = None, *, steps: int | None = None,
               device: str = "cpu", before_training: Callable[[], None] = lambda: None) -> Key | None:
    """Make sure a key of `preset` and `seed` (None: a fresh secret seed) lies at `path`: trained
    (avpcli.cached_key) only when no file is there, so that a rerun reuses it.

    Returns the key when this call trained it (`seconds`: its training time), None when the file was
    there. before_training runs just before a training starts (to say so).
    """
    _, trained = load_or_train_key(path, preset, seed, steps=steps, device=device, before_training=before_training)
    return trained


# ------------------------------------------------------------------------------------------------
# Encryption and the naive loop


def encrypt_and_measure(encryptor: Encryptor, images: list[torch.Tensor], names: list[str],
                        workspace: Path) -> list[dict[str, Any]]:
    """Encrypt target inputs (each (3, H, W) at the target's input size) in batches of the
    encryptor's batch_size; write each ciphertext's PNG into `workspace`.

    The figures are the Encryptor's own, those of the PNG as written and read back (never of the
    float tensor; where the PNG reads back bit for bit as the engine's last measured 8-bit image, the
    engine's measurement of it). Each row: name, those figures, iterations, seconds (the batch's time, the engine's
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
