"""Encrypt LFW faces against a face target on this machine and report quality and speed.

    python -m benchmarks.encrypt_faces --key K.safetensors [--faces 20] [--target dlib] [--threads 2]
                                       [--batch-size 8] [--naive-faces 3] [--iterations 800]

Faces: the first photo of the first N identities marked `multi` in ../shared/data/lfw.csv (or
$AVP_DATA; --skip leaves out the first ones), aligned by avp (MTCNN to the target's template). Each
face is encrypted by avp's engine (per-sample early stopping on the 8-bit image), written as PNG,
read back, and measured: feature distance, SSIM_e, SSIM_d, and what a filter shows of the original
(low-pass, band-pass and edge correlation of luma, and the colour-mean correlation across the
faces; avpcli/metrics.py). --other-key decrypts every ciphertext with a key of another seed. For the dlib target the distances are also computed by the real dlib
(dlib-bin) on the written PNGs. The encryptor is avp's own (avpcli.encryptor.Encryptor on the CPU,
settings from attack_settings with this script's options as overrides). Speed: seconds per face
(median; a batch's time — the engine's steps, the PNG round trip and the measurement — shared
equally by its faces) and faces per second; in the same run, a naive loop written the way the research code works (batch 1, fp32, weight gradients on,
fixed K iterations, a host sync every step) encrypts the first --naive-faces faces, and the ratio
of median seconds per face is the speed-up. Without --key a default-preset key is trained first
(seed 1) and its training time is reported separately.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from avpcli import Encryptor, StopCriteria, __version__, attack_settings, load_key, load_target
from avpcli.align import align_faces
from avpcli.engine import quantize
from avpcli.evaluate import blur_reveal
from avpcli.images import load_rgb, to_tensor
from avpcli.key import KeyModel
from avpcli.metrics import bandpass_correlation, colour_mean_correlation, edge_correlation, ssim
from avpcli.report import sheet_picture
from benchmarks.common import (add_settings_options, cached_key, data_folder, encrypt_and_measure, lfw_faces,
                               print_speedup, settings_overrides, time_naive_loop)

# The research code's settings: its fixed K is the naive loop's.
RESEARCH_DEFAULTS = attack_settings("embedding", "research")


def real_dlib_distances(originals: list[np.ndarray], encrypted: list[np.ndarray]) -> list[float] | None:
    try:
        import dlib
    except ImportError:
        return None
    from avpcli.targets.dlib import default_model_path

    model = dlib.face_recognition_model_v1(str(default_model_path()))
    return [
        float(np.linalg.norm(np.array(model.compute_face_descriptor(a)) - np.array(model.compute_face_descriptor(b))))
        for a, b in zip(originals, encrypted)
    ]


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


@dataclass
class OtherKeyDecryption:
    """SSIM(·, x) of the ciphertexts decrypted with a key of another seed, and with this key's G behind
    the other key's scramble."""

    seed: Any
    ssim_mean: float
    ssim_max: float
    mixed_mean: float
    mixed_max: float


@dataclass
class FacesRun:
    """What one run measured, for callers that quote it (benchmarks/privacy_doc.py)."""

    rows: list[dict[str, Any]]  # encrypt_and_measure's, one per face, in order
    bars: StopCriteria
    first_identity: int  # 1-based, of lfw.csv's `multi` identities
    leaks: dict[str, tuple[float, float]]  # low-pass and band-pass: (|r| mean, max); edge: (r mean, max)
    colour: float | None  # colour-mean r across the faces; None for one face
    other_key: OtherKeyDecryption | None
    summary: list[str]  # the lines after the per-face table, as printed


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--key", type=Path)
    parser.add_argument("--target", default="dlib")
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--faces", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8, help="faces optimized together (avp encrypt's default)")
    parser.add_argument("--skip", type=int, default=0, help="leave out the first N faces (faces the settings were not tuned on)")
    parser.add_argument("--other-key", type=Path, help="a key of another seed: decrypt every ciphertext with it, and with "
                        "this key's G behind the other key's scramble")
    # avp's settings; each defaults to the target's recipe (the tuned one for faces, as `avp encrypt` has it).
    add_settings_options(parser, aliases={"--init": "initialization", "--lowpass-bar": "max_lowpass_correlation"})
    parser.add_argument("--sheet", type=Path, help="write original | encrypted | blurred+stretched | decrypted here")
    parser.add_argument("--sheet-rows", type=int, help="only the first N faces on the sheet (default: all)")
    parser.add_argument("--naive-iterations", type=int, default=RESEARCH_DEFAULTS.iterations,
                        help="the naive loop's fixed K (the research code's 800)")
    parser.add_argument("--naive-faces", type=int, default=3)
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                        help="model forwards of avp's engine, as avp encrypt's --precision (the naive loop is always fp32)")
    return parser


def run(args: argparse.Namespace, emit: Callable[[str], None] = print) -> FacesRun:
    """Encrypt and measure the faces as `args` say; every line the command prints goes to `emit`."""
    torch.set_num_threads(args.threads)
    workspace = Path(tempfile.mkdtemp(prefix="avp-bench-"))

    key_path = args.key
    if key_path is None:
        key_path = workspace / "key.safetensors"
        trained = cached_key(key_path, "default", seed=1, before_training=lambda: print(
            "training a default-preset key (seed 1)...", file=sys.stderr))
        print(f"key training: {trained.seconds:.0f} s", file=sys.stderr)
    key = load_key(key_path)
    overrides = settings_overrides(args)
    encryptor = Encryptor(args.target, key, weights=args.weights, device="cpu", precision=args.precision,
                          batch_size=args.batch_size, **overrides)
    spec, settings = encryptor.spec, encryptor.settings
    bars = settings.stop

    files = lfw_faces(data_folder(), args.skip + args.faces)[args.skip:]
    chips = [to_tensor(align_faces(load_rgb(path), spec.alignment)[0].image) for path in files]
    emit(f"avp {__version__}; target {args.target}; key {key.metadata.get('preset')} preset "
         f"(ngf {key.metadata.get('ngf')}, {key.metadata.get('blocks')} blocks, {key.metadata.get('steps')} steps, "
         f"seed {key.metadata.get('seed')}, scramble {key.metadata.get('scramble', 'none')}); "
         f"torch {torch.__version__}, {args.threads} threads, CPU; {len(files)} LFW faces aligned by avp "
         f"(identities {args.skip + 1}-{args.skip + len(files)} of lfw.csv's 'multi'); batch {args.batch_size}; "
         f"K={settings.iterations}, start {settings.initialization}, step {settings.step_size}, momentum {settings.momentum}, "
         f"mu {settings.key_weight}, key SSIM weight {settings.key_ssim_weight}, lambda {settings.variance_weight}, "
         f"leak weight {settings.leak_weight}, colour held {settings.hold_colour}, start-side weight {settings.start_side_weight:g}, "
         f"check every {settings.check_every} (early checks {settings.early_checks}); bars: distance ≤ {bars.max_feature_distance}, "
         f"SSIM_e ≤ {bars.max_ssim_encrypted}, SSIM_d ≥ {bars.min_ssim_decrypted}, low-pass bar {overrides['max_lowpass_correlation']}, "
         f"start side ≤ {bars.max_start_side}; "
         f"forwards in {settings.autocast_dtype or torch.float32} ({args.precision}), NHWC")

    rows = encrypt_and_measure(encryptor, chips, [path.name for path in files], workspace)
    seconds_per_face = [row["seconds"] for row in rows]
    originals = torch.stack(chips)
    encrypted = torch.stack([row["image"] for row in rows])  # the PNGs as written, read back
    bandpass = bandpass_correlation(encrypted, originals).tolist()
    edges = edge_correlation(encrypted, originals).tolist()

    if args.sheet:
        shown = slice(args.sheet_rows)
        with torch.no_grad():
            decrypted = key.model(encrypted[shown]).clamp(0, 1)
        reveal = blur_reveal(encrypted[shown])
        sheet_picture([[chip, cipher, blurred, plain] for chip, cipher, blurred, plain
                       in zip(chips[shown], encrypted[shown], reveal, decrypted)]).save(args.sheet)
        emit(f"contact sheet (original | encrypted | encrypted blurred σ 3 and stretched | decrypted): {args.sheet}")

    dlib_distances = None
    if args.target == "dlib":
        to_uint8 = lambda tensor: np.ascontiguousarray((tensor.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))  # noqa: E731
        dlib_distances = real_dlib_distances([to_uint8(chip) for chip in chips], [to_uint8(image) for image in encrypted])

    emit("")
    emit("| face | distance (avp) | distance (real dlib) | SSIM_e | SSIM_d | low-pass r | band-pass r | edge r | "
         "iterations | seconds |")
    emit("|---|---|---|---|---|---|---|---|---|---|")
    for index, row in enumerate(rows):
        real = f"{dlib_distances[index]:.4f}" if dlib_distances else "n/a"
        emit(f"| {row['file']} | {row['feature_distance']:.4f} | {real} | {row['ssim_encrypted']:.4f} | "
             f"{row['ssim_decrypted']:.4f} | {row['lowpass_correlation']:+.3f} | {bandpass[index]:+.3f} | "
             f"{edges[index]:+.3f} | {row['iterations']} | {row['seconds']:.2f} |")

    summary: list[str] = []
    distances = [row["feature_distance"] for row in rows]
    summary.append(f"feature distance on the PNGs: max {max(distances):.4f}, mean {statistics.mean(distances):.4f} "
                   f"(bar: every face ≤ {bars.max_feature_distance} → {verdict(max(distances) <= bars.max_feature_distance)})")
    cosines = [row["cosine"] for row in rows]
    summary.append(f"cosine on the PNGs: min {min(cosines):.4f}, mean {statistics.mean(cosines):.4f} "
                   "(meaningful for L2-normalized embeddings)")
    if dlib_distances:
        summary.append(f"real dlib on the same PNGs: max {max(dlib_distances):.4f}, mean {statistics.mean(dlib_distances):.4f} "
                       f"(every face ≤ {bars.max_feature_distance} → {verdict(max(dlib_distances) <= bars.max_feature_distance)})")
    ssim_e = [row["ssim_encrypted"] for row in rows]
    ssim_d = [row["ssim_decrypted"] for row in rows]
    summary.append(f"SSIM_e: max {max(ssim_e):.4f}, mean {statistics.mean(ssim_e):.4f} "
                   f"(every face ≤ {bars.max_ssim_encrypted} → {verdict(max(ssim_e) <= bars.max_ssim_encrypted)})")
    summary.append(f"SSIM_d: min {min(ssim_d):.4f}, mean {statistics.mean(ssim_d):.4f} "
                   f"(every face ≥ {bars.min_ssim_decrypted} → {verdict(min(ssim_d) >= bars.min_ssim_decrypted)})")
    lowpass = [abs(row["lowpass_correlation"]) for row in rows]
    leaks = {"low-pass": (statistics.mean(lowpass), max(lowpass)),
             "band-pass": (statistics.mean(map(abs, bandpass)), max(map(abs, bandpass))),
             "edge": (statistics.mean(edges), max(edges))}
    summary.append(f"leaks, luma of the ciphertext vs the original (docs/PRIVACY.md): low-pass σ 3 |r| mean "
                   f"{leaks['low-pass'][0]:.3f} (max {leaks['low-pass'][1]:.3f}); band-pass σ 1 − σ 4 |r| mean "
                   f"{leaks['band-pass'][0]:.3f} (max {leaks['band-pass'][1]:.3f}); edge r mean {leaks['edge'][0]:+.3f} "
                   f"(max {leaks['edge'][1]:+.3f})")
    colour = colour_mean_correlation(encrypted, originals) if len(rows) > 1 else None
    if colour is not None:
        summary.append(f"colour leak: r between per-image mean RGB of ciphertexts and originals, across the "
                       f"{len(rows)} faces: {colour:+.3f}")
    met_all = sum(1 for row in rows if bars.accepts(row["feature_distance"], row["ssim_encrypted"], row["ssim_decrypted"]))
    summary.append(f"faces meeting every bar: {met_all}/{len(rows)}")
    median = statistics.median(seconds_per_face)
    iterations = [row["iterations"] for row in rows]
    summary.append(f"avp: median {median:.2f} s per face, median iterations {statistics.median(iterations):g}, mean "
                   f"{statistics.mean(iterations):.0f}, max {max(iterations)}; {len(rows) / sum(seconds_per_face):.3f} faces/s")

    other_key = None
    if args.other_key:
        other = load_key(args.other_key)
        with torch.no_grad():
            by_other = ssim(quantize(other.model(encrypted)), originals)
            mixed = ssim(quantize(KeyModel(key.generator, other.scramble).freeze()(encrypted)), originals)
        other_key = OtherKeyDecryption(other.metadata.get("seed"), float(by_other.mean()), float(by_other.max()),
                                       float(mixed.mean()), float(mixed.max()))
        summary.append(f"decrypted with a key of another seed (seed {other_key.seed}): SSIM mean "
                       f"{other_key.ssim_mean:.4f}, max {other_key.ssim_max:.4f}; this key's G behind "
                       f"the other key's scramble: mean {other_key.mixed_mean:.4f}, max {other_key.mixed_max:.4f}")
    emit("")
    for line in summary:
        emit(line)

    if args.naive_faces:
        # A fresh target in the default memory format, as the research code has it.
        naive_target = load_target(args.target, args.weights)
        naive_seconds = time_naive_loop(chips[:args.naive_faces], naive_target, key_path, settings,
                                        args.naive_iterations)
        print_speedup(naive_seconds, args.naive_iterations, median, emit)
    return FacesRun(rows, bars, args.skip + 1, leaks, colour, other_key, summary)


def main() -> None:
    args = build_parser().parse_args()
    if not (data_folder() / "lfw.csv").is_file():
        print(f"skipped: no LFW data at {data_folder()} (set AVP_DATA)", file=sys.stderr)
        return
    run(args)


if __name__ == "__main__":
    main()
