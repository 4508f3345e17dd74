"""Encrypt 112×112 faces on a CUDA GPU with a paper-size key and an iresnet50-sized target; time avp
against the naive research-style loop in the same run.

    # on any machine with ../shared/data: align LFW faces to ArcFace's 112×112 template, once
    python -m benchmarks.encrypt_gpu --save-chips CHIPS --faces 256
    # on the GPU machine (no facenet-pytorch or LFW needed there, only the chips)
    python -m benchmarks.encrypt_gpu --chips CHIPS [--batch-size 128] [--precision bf16] [--compile]
                                     [--key K | --key-steps 3000] [--naive-faces 2] [--iterations 800]

Target: the iresnet50 architecture of arcface_torch under avp's `arcface` spec (RGB, (x − 0.5)/0.5,
L2-normalized 512-d embedding). No iresnet50 weights exist offline here, so its weights are random
(seeded) with BatchNorm statistics taken from the chips: the time of a forward and backward does
not depend on the weights, but the feature-match figures are not claims about ArcFace.

Key: the `paper` preset's architecture (ngf 64, 9 blocks, 11.38 M parameters), loaded with --key or
trained here for --key-steps steps (printed with its time; far fewer than the preset's 50,000, so
its SSIM_d is lower than a fully trained key's, images that cannot meet SSIM_d ≥ 0.90 run all K
steps, and the speed-up is a lower bound).

avp: its Encryptor with the tuned face settings (attack_settings), per-sample early stopping, model
forwards under autocast (--precision), channels_last weights, cuDNN autotuning, optionally
torch.compile. Its time per batch covers Encryptor.encrypt: the engine's steps, the PNG round trip
and the measurement on the PNG; a warm-up batch of a few steps runs first and is not counted.
Naive: the research code's loop (batch 1, fp32, weight gradients on, fixed K, `.item()` every step,
cuDNN defaults) on the first --naive-faces faces, run before the Encryptor touches cuDNN. Speed-up: naive seconds per face ÷ avp's seconds per face (total time ÷ faces).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from avpcli import Encryptor, StopCriteria, __version__, attack_settings, get_spec, load_key
from avpcli.align import align_faces
from avpcli.images import load_rgb, read_png, save_png, to_tensor
from avpcli.targets import TargetModel
from avpcli.targets.iresnet import IResNet
from benchmarks.common import (add_settings_options, cached_key, data_folder, encrypt_and_measure, lfw_faces,
                               print_speedup, settings_overrides, time_naive_loop)

# The research code's settings: its fixed K is the naive loop's.
RESEARCH_DEFAULTS = attack_settings("embedding", "research")


def save_chips(folder: Path, count: int) -> None:
    """Align the first `count` LFW benchmark faces to the arcface template and save them as PNGs."""
    folder.mkdir(parents=True, exist_ok=True)
    template = get_spec("arcface").alignment
    faces = lfw_faces(data_folder(), count)
    for path in faces:
        save_png(to_tensor(align_faces(load_rgb(path), template)[0].image), folder / (path.stem + ".png"))
    print(f"{len(faces)} chips written to {folder}")


def iresnet50_target(chips: list[torch.Tensor], device: str, seed: int = 0) -> TargetModel:
    """arcface's spec around a seeded random iresnet50 whose BatchNorm statistics come from the chips."""
    spec = get_spec("arcface")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = IResNet(50).to(device)
    # Random weights with default running statistics blow activations up layer after layer; averaging
    # the statistics over real faces keeps them at a trained network's scale.
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for start in range(0, len(chips), 64):
            batch = torch.stack(chips[start:start + 64]).to(device)
            model((batch - 0.5) / 0.5)
    return TargetModel(spec, model).to(device)


def warm_up(encryptor: Encryptor, images: torch.Tensor, steps: int = 5) -> None:
    """Run the encryptor's models for a few steps of one batch (cuDNN autotuning, compilation): its
    settings with `steps` steps and no early stop, then back to its own."""
    own = encryptor.settings
    encryptor.settings = dataclasses.replace(own, iterations=steps, stop=None)
    try:
        encryptor.encrypt_tensors(images, list(range(len(images))))
    finally:
        encryptor.settings = own


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--save-chips", type=Path, help="align LFW faces into this folder and stop")
    parser.add_argument("--chips", type=Path, help="folder of 112×112 face PNGs")
    parser.add_argument("--faces", type=int, default=256)
    parser.add_argument("--key", type=Path)
    parser.add_argument("--key-steps", type=int, default=3000, help="without --key: train a paper-size key this long")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default="bf16")
    parser.add_argument("--compile", action="store_true")
    # avp's settings; each defaults to the target's recipe (the tuned one for faces, as `avp encrypt` has it).
    add_settings_options(parser)
    parser.add_argument("--naive-iterations", type=int, default=RESEARCH_DEFAULTS.iterations,
                        help="the naive loop's fixed K (the research code's 800)")
    parser.add_argument("--naive-faces", type=int, default=2)
    parser.add_argument("--device", default="cuda", help="cuda (cpu only to try the script on tiny settings)")
    args = parser.parse_args()
    if args.save_chips:
        save_chips(args.save_chips, args.faces)
        return
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("skipped: no CUDA GPU (this benchmark measures the GPU path)", file=sys.stderr)
        return
    if args.chips is None:
        parser.error("--chips is required (make them with --save-chips)")
    gpu = torch.cuda.get_device_name() if device.startswith("cuda") else "none (CPU trial)"
    workspace = Path(tempfile.mkdtemp(prefix="avp-gpu-bench-"))
    paths = sorted(args.chips.glob("*.png"))[:args.faces]
    chips = [read_png(path) for path in paths]
    names = [path.name for path in paths]

    key_path = args.key
    if key_path is None:
        began = time.perf_counter()
        key_path = workspace / "paper-key.safetensors"
        cached_key(key_path, "paper", seed=1, steps=args.key_steps, device=device)
        print(f"paper-size key trained for {args.key_steps} steps in {time.perf_counter() - began:.0f} s")
    target = iresnet50_target(chips, device)
    settings = attack_settings(target.spec.loss, stop_past_original=target.spec.stop_past_original,
                               **settings_overrides(args))
    key = load_key(key_path, device=device)
    print(f"avp {__version__}; torch {torch.__version__}; GPU {gpu}; {len(chips)} LFW faces "
          f"aligned to 112×112; target iresnet50 (random weights, arcface spec); key {key.metadata.get('preset')} "
          f"preset (ngf {key.metadata.get('ngf')}, {key.metadata.get('blocks')} blocks, "
          f"{key.metadata.get('steps')} steps); batch {args.batch_size}; precision {args.precision}; "
          f"compile {args.compile}; K={settings.iterations}; momentum {settings.momentum}; start {settings.initialization}; μ {settings.key_weight}, key SSIM weight "
          f"{settings.key_ssim_weight}, λ {settings.variance_weight}, leak weight {settings.leak_weight}; "
          f"check every {settings.check_every} (early checks {settings.early_checks})")

    # The naive loop first, with cuDNN's defaults, before the Encryptor (prepare_models) changes them.
    naive_seconds = time_naive_loop(chips[:args.naive_faces], target, key_path, settings, args.naive_iterations, device)

    # The target's modules are converted in place: NHWC weights, cuDNN autotuning, compilation on request.
    encryptor = Encryptor(target, key, settings, device=device, precision=args.precision, compile=args.compile,
                          batch_size=args.batch_size)
    began = time.perf_counter()
    warm_up(encryptor, torch.stack(chips[:args.batch_size]))
    print(f"warm-up batch (5 steps: cuDNN autotuning{', compilation' if args.compile else ''}): "
          f"{time.perf_counter() - began:.1f} s, not counted")

    rows = encrypt_and_measure(encryptor, chips, names, workspace)
    batch_seconds = [row["batch_seconds"] for index, row in enumerate(rows) if index % args.batch_size == 0]
    total = sum(batch_seconds)
    per_face = total / len(rows)
    distances = [row["feature_distance"] for row in rows]
    print()
    print(f"avp: {len(rows)} faces in {total:.1f} s → {len(rows) / total:.2f} faces/s, {per_face * 1000:.0f} ms "
          f"per face; batches of {args.batch_size}: "
          + ", ".join(f"{seconds:.1f} s" for seconds in batch_seconds))
    print(f"mean iterations {statistics.mean(row['iterations'] for row in rows):.0f} "
          f"(max {max(row['iterations'] for row in rows)})"
          + (f"; peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device.startswith("cuda") else ""))
    print(f"quality on the PNGs: distance max {max(distances):.4f} mean {statistics.mean(distances):.4f}; "
          f"cosine min {min(row['cosine'] for row in rows):.4f}; "
          f"mean SSIM_e {statistics.mean(row['ssim_encrypted'] for row in rows):.4f}; "
          f"mean SSIM_d {statistics.mean(row['ssim_decrypted'] for row in rows):.4f}; "
          f"mean |low-pass corr.| {statistics.mean(abs(row['lowpass_correlation']) for row in rows):.2f}; "
          f"meeting every bar: "
          f"{sum(1 for row in rows if StopCriteria().accepts(row['feature_distance'], row['ssim_encrypted'], row['ssim_decrypted']))}"
          f"/{len(rows)}")
    if naive_seconds:
        print_speedup(naive_seconds, args.naive_iterations, per_face)

if __name__ == "__main__":
    main()
