"""Train a key on CPU and measure how well it reproduces LFW faces (and CIFAR-10 test images, where
present): SSIM(G(x), x) and colour error.

    python -m benchmarks.key_quality [--steps N] [--threads N] [--preset default] [--seed 1]

Faces: the first image of every 50th identity in sorted order of ../shared/data/lfw (or $AVP_DATA/lfw),
centre 150×150 crop of the 250×250 deep-funneled JPEG; the 112×112 variant resizes that crop
(bilinear, antialiased). Sharp faces: the face avp aligns first (MTCNN to dlib's 150×150 template) in
each photo of faces_misc/face_recognition_knn (374×630 up to 970×2,204 pixels, so the chips are scaled
down and sharper than LFW's), where present. G(x) is rounded to 8 bits before it is measured. Skips (exit 0) when the data
folder is absent. Progress goes to stderr, the report to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from avpcli import KEY_PRESETS, __version__, load_key, save_key, train_key
from avpcli.images import IMAGE_SUFFIXES, load_rgb, to_tensor
from avpcli.metrics import colour_error, mean_absolute_error, ssim
from benchmarks.common import data_folder
from benchmarks.encrypt_cifar import cifar_images

FACES = 24
EVERY = 50


def face_files(lfw: Path) -> list[Path]:
    identities = sorted(p for p in lfw.iterdir() if p.is_dir())
    return [sorted(identity.glob("*.jpg"))[0] for identity in identities[::EVERY][:FACES]]


def load_faces(files: list[Path]) -> torch.Tensor:
    """(N,3,150,150) centre crops in [0,1]."""
    crops = []
    for path in files:
        array = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
        image = torch.from_numpy(array).permute(2, 0, 1)
        height, width = image.shape[-2:]
        top, left = (height - 150) // 2, (width - 150) // 2
        crops.append(image[:, top:top + 150, left:left + 150])
    return torch.stack(crops)


def sharp_face_chips(folder: Path) -> torch.Tensor:
    """(N,3,150,150): the first face avp aligns in each photo under `folder`, in sorted order."""
    from avpcli.align import align_faces
    from avpcli.targets import get_spec

    alignment = get_spec("dlib").alignment
    chips = []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            faces = align_faces(load_rgb(path), alignment)
            if faces:
                chips.append(to_tensor(faces[0].image))
    return torch.stack(chips)


def evaluate(generator: torch.nn.Module, faces: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        decoded = (generator(faces) * 255).round() / 255
    scores = ssim(decoded, faces)
    colour = colour_error(decoded, faces)
    absolute = mean_absolute_error(decoded, faces)
    return {
        "ssim_mean": float(scores.mean()), "below_0.95": int((scores < 0.95).sum()), "ssim_median": float(scores.median()), "ssim_min": float(scores.min()),
        "colour_cast_rgb": [round(float(v), 4) for v in colour.mean(0)],
        "mae_rgb": [round(float(v), 4) for v in absolute.mean(0)],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="default", choices=sorted(KEY_PRESETS))
    parser.add_argument("--steps", type=int, default=None, help="override the preset's steps")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--key", type=Path, default=None, help="evaluate this key file instead of training")
    parser.add_argument("--save", type=Path, default=None, help="also write the trained key here")
    # Experiment knobs (documented in docs/KEY.md); they turn the preset into a 'custom' one.
    for knob, kind in [("ngf", int), ("blocks", int), ("norm", str), ("batch_size", int), ("crop_size", int),
                       ("learning_rate", float), ("warmup_steps", int), ("ssim_weight", float)]:
        parser.add_argument(f"--{knob.replace('_', '-')}", type=kind, default=None)
    args = parser.parse_args()

    lfw = data_folder() / "lfw"
    if not lfw.is_dir():
        print(f"skipped: no LFW data at {lfw} (set AVP_DATA)", file=sys.stderr)
        return 0
    torch.set_num_threads(args.threads)
    faces = load_faces(face_files(lfw))
    faces_112 = F.interpolate(faces, size=(112, 112), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)

    if args.key is not None:
        loaded = load_key(args.key)
        generator, metadata, seconds, steps = loaded.generator, loaded.metadata, 0.0, int(loaded.metadata["steps"])
        preset_label = metadata["preset"]
    else:
        preset = KEY_PRESETS[args.preset]
        overrides = {knob: value for knob in ("ngf", "blocks", "norm", "batch_size", "crop_size", "learning_rate",
                                              "warmup_steps", "ssim_weight")
                     if (value := getattr(args, knob)) is not None}
        chosen = dataclasses.replace(preset, **overrides) if overrides else args.preset
        preset_label = args.preset if not overrides else f"{args.preset}+{overrides}"
        started = time.perf_counter()

        def progress(step: int, total: int, loss: float) -> None:
            if step % 50 == 0 or step == total:
                elapsed = time.perf_counter() - started
                print(f"step {step}/{total} loss {loss:.4f} {elapsed:.0f}s ({elapsed / step:.3f} s/step)",
                      file=sys.stderr, flush=True)

        trained = train_key(chosen, seed=args.seed, steps=args.steps, progress=progress)
        generator, metadata, seconds, steps = trained.generator, trained.metadata, trained.seconds, int(trained.metadata["steps"])
        if args.save is not None:
            save_key(trained, args.save, overwrite=True)

    result_150 = evaluate(generator, faces)
    result_112 = evaluate(generator, faces_112)
    print(f"avp {__version__} key quality, {time.strftime('%Y-%m-%d %H:%M')}, torch {torch.__version__}, "
          f"{args.threads} thread(s)")
    print(f"preset {preset_label}: ngf {metadata['ngf']}, blocks {metadata['blocks']}, norm {metadata['norm']}, "
          f"params {sum(parameter.numel() for parameter in generator.parameters()):,}, steps {steps}, seed {metadata['seed']}, "
          f"data {metadata['training_data']}")
    if args.key is None:
        print(f"training wall time {seconds:.0f} s ({seconds / steps:.3f} s/step)")
    else:
        print(f"key loaded from {args.key} (not trained here)")
    for label, result in (("150x150 centre crop", result_150), ("112x112 resized", result_112)):
        print(f"{label} ({len(faces)} LFW faces, G(x) at 8 bits): SSIM mean {result['ssim_mean']:.4f} "
              f"median {result['ssim_median']:.4f} min {result['ssim_min']:.4f}; "
              f"colour cast |mean diff| RGB {result['colour_cast_rgb']}; MAE RGB {result['mae_rgb']}")
    knn = data_folder() / "faces_misc" / "face_recognition_knn"
    if knn.is_dir():
        chips = sharp_face_chips(knn)
        result = evaluate(generator, chips)
        print(f"150x150 sharp face chips ({len(chips)} photos of faces_misc/face_recognition_knn, aligned by avp, G(x) "
              f"at 8 bits): SSIM mean {result['ssim_mean']:.4f} median {result['ssim_median']:.4f} min "
              f"{result['ssim_min']:.4f}; {result['below_0.95']} below 0.95")
    if (data_folder() / "cifar10").is_dir():
        # The images benchmarks/encrypt_cifar.py encrypts: what the key gives back of a plain image
        # bounds what the attack can reach through it.
        files, _, _ = cifar_images(200)
        result = evaluate(generator, torch.stack([to_tensor(load_rgb(path)) for path in files]))
        print(f"32x32 CIFAR-10 ({len(files)} test images, as encrypt_cifar.py, G(x) at 8 bits): SSIM mean "
              f"{result['ssim_mean']:.4f} median {result['ssim_median']:.4f} min {result['ssim_min']:.4f}")
    print(f"mean-SSIM {statistics.fmean([result_150['ssim_mean'], result_112['ssim_mean']]):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
