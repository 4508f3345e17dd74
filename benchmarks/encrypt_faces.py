"""Encrypt LFW faces against a face target on this machine and report quality and speed.

    python benchmarks/encrypt_faces.py --key K.safetensors [--faces 20] [--target dlib] [--threads 2]
                                       [--batch-size 1] [--naive-faces 3] [--iterations 800]

Faces: the first photo of the first N identities marked `multi` in ../shared/data/lfw.csv (or
$AVP_DATA), aligned by avp (MTCNN to the target's template). Each face is encrypted by avp's engine
(per-sample early stopping on the 8-bit image), written as PNG, read back, and measured: feature
distance, SSIM_e, SSIM_d. For the dlib target the distances are also computed by the real dlib
(dlib-bin) on the written PNGs. Speed: seconds per face (median) and faces per second; in the same
run, a naive loop written the way the research code works (batch 1, fp32, weight gradients on,
fixed K iterations, a host sync every step) encrypts the first --naive-faces faces, and the ratio
of median seconds per face is the speed-up. Without --key a default-preset key is trained first
(seed 1) and its training time is reported separately.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from avpcli import __version__  # noqa: E402
from benchmarks.common import (data_folder, encrypt_and_measure, print_speedup,  # noqa: E402
                               time_naive_loop)
from avpcli.align import align_faces  # noqa: E402
from avpcli.engine import FACE_SETTINGS, AttackSettings, StopCriteria, autocast_dtype_for, prepare_models  # noqa: E402
from avpcli.evaluate import blur_reveal  # noqa: E402
from avpcli.report import sheet_picture  # noqa: E402
from avpcli.images import load_rgb, read_png, to_tensor  # noqa: E402
from avpcli.key import load_key, save_key, train_key  # noqa: E402
from avpcli.targets import get_spec, load_target  # noqa: E402


def lfw_faces(count: int) -> list[Path]:
    seen: dict[str, Path] = {}
    with open(data_folder() / "lfw.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            if row["role"] == "multi" and row["identity"] not in seen:
                seen[row["identity"]] = data_folder() / row["path"]
    return [seen[name] for name in sorted(seen)][:count]


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--key", type=Path)
    parser.add_argument("--target", default="dlib")
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--faces", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=FACE_SETTINGS.iterations)
    parser.add_argument("--key-weight", type=float, default=FACE_SETTINGS.key_weight)
    parser.add_argument("--key-ssim-weight", type=float, default=FACE_SETTINGS.key_ssim_weight)
    parser.add_argument("--key-weight-growth", type=float, default=FACE_SETTINGS.key_weight_growth)
    parser.add_argument("--growth-lowpass-ceiling", type=float, default=FACE_SETTINGS.growth_lowpass_ceiling,
                        help="the key weight grows only while |low-pass correlation| is at most this; negative: no ceiling")
    parser.add_argument("--variance-weight", type=float, default=FACE_SETTINGS.variance_weight)
    parser.add_argument("--lowpass-weight", type=float, default=FACE_SETTINGS.lowpass_weight)
    parser.add_argument("--lowpass-bar", type=float, default=(FACE_SETTINGS.stop or StopCriteria()).max_lowpass_correlation,
                        help="stop bar on |low-pass correlation|; a negative value turns it off")
    parser.add_argument("--step-size", type=float, default=FACE_SETTINGS.step_size)
    parser.add_argument("--momentum", type=float, default=FACE_SETTINGS.momentum)
    parser.add_argument("--check-every", type=int, default=FACE_SETTINGS.check_every)
    parser.add_argument("--sheet", type=Path, help="write original | encrypted | blurred+stretched | decrypted here")
    parser.add_argument("--naive-iterations", type=int, default=AttackSettings().iterations,
                        help="the naive loop's fixed K (the research code's 800)")
    parser.add_argument("--naive-faces", type=int, default=3)
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                        help="model forwards of avp's engine, as avp encrypt's --precision (the naive loop is always fp32)")
    args = parser.parse_args()
    if not (data_folder() / "lfw.csv").is_file():
        print(f"skipped: no LFW data at {data_folder()} (set AVP_DATA)", file=sys.stderr)
        return
    torch.set_num_threads(args.threads)
    workspace = Path(tempfile.mkdtemp(prefix="avp-bench-"))

    key_path = args.key
    if key_path is None:
        print("training a default-preset key (seed 1)...", file=sys.stderr)
        trained = train_key("default", seed=1)
        key_path = workspace / "key.safetensors"
        save_key(trained, key_path)
        print(f"key training: {trained.seconds:.0f} s", file=sys.stderr)
    key = load_key(key_path)
    spec = get_spec(args.target)
    target = load_target(args.target, args.weights)
    lowpass_bar = args.lowpass_bar if args.lowpass_bar is not None and args.lowpass_bar >= 0 else None
    settings = dataclasses.replace(
        FACE_SETTINGS, iterations=args.iterations, key_weight=args.key_weight, key_ssim_weight=args.key_ssim_weight,
        key_weight_growth=args.key_weight_growth,
        growth_lowpass_ceiling=None if args.growth_lowpass_ceiling is None or args.growth_lowpass_ceiling < 0
        else args.growth_lowpass_ceiling,
        step_size=args.step_size, momentum=args.momentum, variance_weight=args.variance_weight, lowpass_weight=args.lowpass_weight,
        check_every=args.check_every, stop=StopCriteria(max_lowpass_correlation=lowpass_bar),
        autocast_dtype=autocast_dtype_for(args.precision, "cpu"))

    files = lfw_faces(args.faces)
    chips = [to_tensor(align_faces(load_rgb(path), spec.alignment)[0].image) for path in files]
    print(f"avp {__version__}; target {args.target}; key {key.metadata.get('preset')} preset "
          f"(ngf {key.metadata.get('ngf')}, {key.metadata.get('blocks')} blocks, {key.metadata.get('steps')} steps); "
          f"torch {torch.__version__}, {args.threads} threads, CPU; {len(files)} LFW faces aligned by avp; "
          f"batch {args.batch_size}; K={args.iterations}, step {args.step_size}, momentum {settings.momentum}, mu {args.key_weight}, "
          f"lambda {settings.variance_weight}, key SSIM weight {settings.key_ssim_weight}, low-pass weight "
          f"{settings.lowpass_weight} (sigma {settings.lowpass_sigma}), low-pass bar {lowpass_bar}, "
          f"check every {args.check_every}, key-weight growth {settings.key_weight_growth}, "
          f"forwards in {settings.autocast_dtype or torch.float32} ({args.precision}), NHWC")

    target_model, key_model = prepare_models(target, key.model, "cpu")
    rows = encrypt_and_measure(chips, [path.name for path in files], target_model, key_model, settings, spec.loss,
                               args.batch_size, workspace)
    seconds_per_face = [row["seconds"] for row in rows]

    if args.sheet:
        encrypted = torch.stack([read_png(row["png"]) for row in rows])
        decrypted = key.model(encrypted).clamp(0, 1)
        reveal = blur_reveal(encrypted)
        sheet_picture([[chip, cipher, shown, plain] for chip, cipher, shown, plain
                       in zip(chips, encrypted, reveal, decrypted)]).save(args.sheet)
        print(f"contact sheet (original | encrypted | encrypted blurred σ 3 and stretched | decrypted): {args.sheet}")

    dlib_distances = None
    if args.target == "dlib":
        to_uint8 = lambda tensor: (tensor.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # noqa: E731
        dlib_distances = real_dlib_distances([to_uint8(chip) for chip in chips],
                                             [to_uint8(read_png(row["png"])) for row in rows])

    print()
    print("| face | distance (avp) | distance (real dlib) | SSIM_e | SSIM_d | low-pass corr. | iterations | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for index, row in enumerate(rows):
        real = f"{dlib_distances[index]:.4f}" if dlib_distances else "n/a"
        print(f"| {row['file']} | {row['feature_distance']:.4f} | {real} | {row['ssim_encrypted']:.4f} | "
              f"{row['ssim_decrypted']:.4f} | {row['lowpass_correlation']:+.2f} | {row['iterations']} | "
              f"{row['seconds']:.1f} |")
    distances = [row["feature_distance"] for row in rows]
    print()
    print(f"feature distance on the PNGs: max {max(distances):.4f}, mean {statistics.mean(distances):.4f} "
          f"(bar: every face ≤ 0.10 → {'met' if max(distances) <= 0.10 else 'NOT met'})")
    cosines = [row["cosine"] for row in rows]
    print(f"cosine on the PNGs: min {min(cosines):.4f}, mean {statistics.mean(cosines):.4f} "
          "(meaningful for L2-normalized embeddings; the paper reports 0.994-0.998)")
    if dlib_distances:
        print(f"real dlib on the same PNGs: max {max(dlib_distances):.4f}, mean {statistics.mean(dlib_distances):.4f}")
    ssim_e = statistics.mean(row["ssim_encrypted"] for row in rows)
    ssim_d = statistics.mean(row["ssim_decrypted"] for row in rows)
    print(f"mean SSIM_e {ssim_e:.4f} (bar ≤ 0.05 → {'met' if ssim_e <= 0.05 else 'NOT met'}); "
          f"mean SSIM_d {ssim_d:.4f} (bar ≥ 0.90 → {'met' if ssim_d >= 0.90 else 'NOT met'}); "
          f"min SSIM_d {min(row['ssim_decrypted'] for row in rows):.4f}")
    leaks = [abs(row["lowpass_correlation"]) for row in rows]
    print(f"|low-pass correlation| (blurred brightness of x' vs x, docs/PRIVACY.md): mean {statistics.mean(leaks):.2f}, "
          f"max {max(leaks):.2f}")
    met_all = sum(1 for row in rows if StopCriteria().accepts(row["feature_distance"], row["ssim_encrypted"],
                                                              row["ssim_decrypted"]))
    print(f"faces meeting all three bars: {met_all}/{len(rows)}")
    median = statistics.median(seconds_per_face)
    print(f"avp: median {median:.1f} s per face, mean iterations "
          f"{statistics.mean(row['iterations'] for row in rows):.0f}, {len(rows) / sum(seconds_per_face):.3f} faces/s")

    if args.naive_faces:
        # A fresh target in the default memory format, as the research code has it.
        naive_target = load_target(args.target, args.weights)
        naive_seconds = time_naive_loop(chips[:args.naive_faces], naive_target, key_path, settings,
                                        args.naive_iterations)
        print_speedup(naive_seconds, args.naive_iterations, median)

if __name__ == "__main__":
    main()
