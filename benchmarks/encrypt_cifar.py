"""Encrypt CIFAR-10 test images against a real CIFAR-10 classifier and report whether the class survives.

    python -m benchmarks.encrypt_cifar --key K.safetensors [--images 200] [--target cifar-resnet20]
                                       [--weights PATH] [--threads 2] [--batch-size 50]

Images: the first images/10 PNGs (sorted) of each class folder of ../shared/data/cifar10 (or
$AVP_DATA). Each is encrypted by avp's Encryptor on the CPU with the settings `avp encrypt` takes for
classifiers (attack_settings: CLASSIFIER_SETTINGS, this script's options as overrides) and avp's
per-image early stopping, written as PNG, read back and measured: top-1 of the target on the PNG
versus on the original, SSIM_e and SSIM_d. Also the target's top-1 accuracy against the true labels
on originals and on ciphertexts (paper Table 4).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from avpcli import Encryptor, __version__, load_key
from avpcli.images import load_rgb, to_tensor
from avpcli.metrics import bandpass_correlation, colour_mean_correlation, edge_correlation, lowpass_correlation
from benchmarks.common import add_settings_options, data_folder, encrypt_and_measure, settings_overrides


def cifar_images(count: int) -> tuple[list[Path], list[int], list[str]]:
    classes = sorted(path.name for path in (data_folder() / "cifar10").iterdir() if path.is_dir())
    files, labels = [], []
    for label, name in enumerate(classes):
        chosen = sorted((data_folder() / "cifar10" / name).glob("*.png"))[: count // len(classes)]
        files += chosen
        labels += [label] * len(chosen)
    return files, labels, classes


def default_weights(target: str) -> Path | None:
    depth = target.removeprefix("cifar-resnet")
    found = sorted((data_folder() / "weights" / "cifar10_resnet_akamaster").glob(f"resnet{depth}-*.th"))
    return found[0] if found else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--target", default="cifar-resnet20")
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=50)
    # avp's settings; each defaults to the target's recipe (CLASSIFIER_SETTINGS, as `avp encrypt` has it).
    add_settings_options(parser)
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                        help="model forwards, as avp encrypt's --precision")
    args = parser.parse_args()
    if not (data_folder() / "cifar10").is_dir():
        print(f"skipped: no CIFAR-10 data at {data_folder()} (set AVP_DATA)", file=sys.stderr)
        return
    torch.set_num_threads(args.threads)
    workspace = Path(tempfile.mkdtemp(prefix="avp-bench-cifar-"))
    key = load_key(args.key)
    encryptor = Encryptor(args.target, key, weights=args.weights or default_weights(args.target), device="cpu",
                          precision=args.precision, batch_size=args.batch_size, **settings_overrides(args))
    settings, target = encryptor.settings, encryptor.target
    files, labels, classes = cifar_images(args.images)
    images = [to_tensor(load_rgb(path)) for path in files]
    print(f"avp {__version__}; target {args.target}; key {key.metadata.get('preset')} preset "
          f"(ngf {key.metadata.get('ngf')}, {key.metadata.get('blocks')} blocks); torch {torch.__version__}, "
          f"{args.threads} threads, CPU; {len(files)} CIFAR-10 test images ({len(files) // len(classes)} per class); "
          f"batch {args.batch_size}; K={settings.iterations}, step {settings.step_size}, momentum {settings.momentum}, mu {settings.key_weight}, "
          f"lambda {settings.variance_weight}, key SSIM weight {settings.key_ssim_weight}, classifier scale {settings.classifier_scale}, "
          f"leak weight {settings.leak_weight}, start {settings.initialization}, bars SSIM_e ≤ "
          f"{settings.stop.max_ssim_encrypted} and SSIM_d ≥ {settings.stop.min_ssim_decrypted} per image, forwards in {settings.autocast_dtype or torch.float32}, NHWC")
    rows = encrypt_and_measure(encryptor, images, [path.name for path in files], workspace)
    encrypted = torch.stack([row["image"] for row in rows])  # the PNGs as written, read back
    with torch.no_grad():
        original_top1 = target(torch.stack(images)).argmax(1)
        encrypted_top1 = target(encrypted).argmax(1)
    truth = torch.tensor(labels)
    unchanged = (original_top1 == encrypted_top1).float().mean().item()
    ssim_e = statistics.mean(row["ssim_encrypted"] for row in rows)
    ssim_d = statistics.mean(row["ssim_decrypted"] for row in rows)
    seconds = [row["seconds"] for row in rows]
    print()
    print("| measure | value | bar |")
    print("|---|---|---|")
    print(f"| top-1 unchanged (PNG vs original) | {unchanged:.1%} | ≥ 99.5% |")
    print(f"| accuracy on originals | {(original_top1 == truth).float().mean().item():.1%} | |")
    print(f"| accuracy on ciphertexts | {(encrypted_top1 == truth).float().mean().item():.1%} | drop ≤ 0.25 pt (paper) |")
    print(f"| mean SSIM_e | {ssim_e:.4f} | ≤ 0.10 (paper 0.17–0.20) |")
    print(f"| max SSIM_e | {max(row['ssim_encrypted'] for row in rows):.4f} | |")
    print(f"| mean SSIM_d | {ssim_d:.4f} | ≥ 0.95 |")
    print(f"| min SSIM_d | {min(row['ssim_decrypted'] for row in rows):.4f} | |")
    originals = torch.stack(images)
    print(f"| mean low-pass \\|r\\| (σ 3, luma) | {lowpass_correlation(encrypted, originals).abs().mean():.3f} | ≤ 0.1 |")
    print(f"| mean band-pass \\|r\\| (σ 1 − σ 4) | {bandpass_correlation(encrypted, originals).abs().mean():.3f} | ≤ 0.05 |")
    print(f"| mean edge r (Sobel of σ 2) | {edge_correlation(encrypted, originals).mean():+.3f} | |")
    print(f"| colour-mean r across images | {colour_mean_correlation(encrypted, originals):+.3f} | |")
    print(f"| mean iterations | {statistics.mean(row['iterations'] for row in rows):.0f} | |")
    print(f"| seconds per image (batch {args.batch_size}) | {statistics.median(seconds):.2f} | |")


if __name__ == "__main__":
    main()
