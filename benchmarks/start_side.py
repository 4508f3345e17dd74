"""Table 2's AVP-ONE against the start-side term and bar (engine.stopping_past_the_original).

    python -m benchmarks.start_side --work RESULTS_WORK [--target dlib] [--turns 10] [--key KEY]
                                    [--variants off,30:0,10:0]

A quick form of `avp evaluate identification`'s AVP-ONE column for trying stop rules: it reuses the
aligned chips that benchmarks/results.py left under RESULTS_WORK/<target>/identification/aligned
(the gallery's distractors and the probe identities' turn images), so no face is aligned again. The
queries are those probe chips (the first --turns of each identity take turns as the inserted
image), which is fewer queries than results.py's Table 2: compare a variant with this script's own
Original row, not with RESULTS.md. Each variant encrypts the inserted images with avp's tuned
settings in fp32 and reads them back from PNG:

- `off`: the plain stop (FACE_SETTINGS);
- `W:B`: the start-side term of weight W and the bar f(x′)'s start side ≤ B.

Prints one line per variant: Original, AVP-ONE, their difference, steps, distance and SSIM_d.

--residuals first looks at the ciphertexts results.py wrote (RESULTS_WORK/<target>/identification/
encrypted/probe) with the key they were made with: the cosine of each residual f(x′) − f(x) with the
direction toward the start's features and toward the gallery's mean, and AVP-ONE with each residual
replaced by its part orthogonal to the start direction (plus at most --keep along it).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from avpcli import FACE_SETTINGS, Encryptor, Key, evaluate
from avpcli.images import png_bytes, png_tensor, read_png
from benchmarks.common import FACE_WEIGHTS, data_folder


def variant_settings(variant: str):
    if variant == "off":
        return FACE_SETTINGS
    weight, bar = (float(part) for part in variant.split(":"))
    return dataclasses.replace(FACE_SETTINGS, start_side_weight=weight,
                               stop=dataclasses.replace(FACE_SETTINGS.stop, max_start_side=bar))


def residuals(args, aligned: Path, target, key: Key, chips, probes, gallery, labels, turns) -> None:
    """Where results.py's ciphertexts stopped relative to their originals and their starts."""
    encrypted_folder = aligned.parent / "encrypted" / "probe"
    model = key.model.eval()
    cosine = torch.nn.functional.cosine_similarity
    start_cos, mean_cos, along, inserted, parts = [], [], [], {}, {}
    centre = gallery.mean(dim=0)
    for identity, images in chips.items():
        names = sorted(path.name for path in (aligned / "probe" / identity).glob("*.png"))
        present = [index for index, name in enumerate(names) if (encrypted_folder / identity / name).is_file()]
        ciphertexts = torch.stack([read_png(encrypted_folder / identity / names[index]) for index in present])
        with torch.no_grad():
            starts = evaluate.features(target, model.preimage(images[present]))
        plain = probes[identity][present]
        residual = evaluate.features(target, ciphertexts) - plain
        toward = torch.nn.functional.normalize(starts - plain, dim=1)
        start_cos += cosine(residual, starts - plain).tolist()
        mean_cos += cosine(residual, centre - plain).tolist()
        along_start = (residual * toward).sum(dim=1, keepdim=True)
        along += along_start.squeeze(1).tolist()
        parts[identity] = (present, plain, residual, toward, along_start)
    print(f"results.py's ciphertexts: {len(along)}; residual's cosine with the start direction "
          f"{statistics.mean(start_cos):.2f} ({min(start_cos):.2f}–{max(start_cos):.2f}), with the direction to "
          f"the gallery's mean {statistics.mean(mean_cos):.2f}; along the start direction {statistics.mean(along):.3f}")

    def avp_one(kept_along: float | None) -> float:
        for identity, (present, plain, residual, toward, along_start) in parts.items():
            moved = residual if kept_along is None else (
                residual - along_start * toward + along_start.clamp(-kept_along, kept_along) * toward)
            rows = probes[identity].clone()
            rows[present] = plain + moved
            inserted[identity] = rows
        return 100 * evaluate.identify_turns(probes, inserted, gallery, labels, turns).accuracy

    original = 100 * evaluate.identify_turns(probes, probes, gallery, labels, turns).accuracy
    print(f"AVP-ONE − Original ({original:.2f} %): as encrypted {avp_one(None) - original:+.2f} pt; orthogonal part "
          f"only {avp_one(0.0) - original:+.2f} pt; "
          + "; ".join(f"at most {keep:g} along {avp_one(keep) - original:+.2f} pt"
                      for keep in (float(value) for value in args.keep.split(","))) + "\n", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="benchmarks/results.py's --work")
    parser.add_argument("--target", default="dlib", choices=sorted(FACE_WEIGHTS))
    parser.add_argument("--key", default="/tmp/keys/default-1.safetensors")
    parser.add_argument("--turns", type=int, default=10, help="inserted-image turns per probe identity")
    parser.add_argument("--variants", default="off,30:0", help="comma-separated: off, or WEIGHT:BAR ('' for none)")
    parser.add_argument("--residuals", action="store_true", help="first analyse results.py's own ciphertexts")
    parser.add_argument("--keep", default="0.005,0.01", help="with --residuals: along-start parts to keep")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("AVP_THREADS", "2")))

    aligned = args.work / args.target / "identification" / "aligned"
    if not aligned.is_dir():
        sys.exit(f"no aligned chips under {aligned}: run benchmarks/results.py with --work {args.work} first")
    weights = FACE_WEIGHTS[args.target] and data_folder() / FACE_WEIGHTS[args.target]
    key = Key.load(args.key)
    gallery_paths = sorted((aligned / "gallery").rglob("*.png"))
    chips = {folder.name: torch.stack([read_png(path) for path in sorted(folder.glob("*.png"))])
             for folder in sorted((aligned / "probe").iterdir()) if folder.is_dir()}
    turns = {identity: list(range(min(args.turns, len(images)))) for identity, images in chips.items()}
    print(f"{args.target}; key {Path(args.key).name}; {len(gallery_paths)} distractors; {len(chips)} probe identities "
          f"({sum(len(images) for images in chips.values())} chips), {sum(map(len, turns.values()))} turns; fp32; "
          f"{torch.get_num_threads()} threads\n")

    target = Encryptor(args.target, key, FACE_SETTINGS, weights=weights, device="cpu", precision="fp32").target
    gallery = evaluate.features(target, torch.stack([read_png(path) for path in gallery_paths]))
    labels = [path.parent.name for path in gallery_paths]
    probes = {identity: evaluate.features(target, images) for identity, images in chips.items()}
    original = 100 * evaluate.identify_turns(probes, probes, gallery, labels, turns).accuracy

    if args.residuals:
        residuals(args, aligned, target, key, chips, probes, gallery, labels, turns)
    for variant in filter(None, args.variants.split(",")):
        encryptor = Encryptor(args.target, key, variant_settings(variant), weights=weights, device="cpu",
                              precision="fp32", batch_size=8)
        began, inserted, rows = time.perf_counter(), {}, []
        for identity, images in chips.items():
            chosen = images[:len(turns[identity])]
            ciphertexts = []
            for start in range(0, len(chosen), 8):
                encrypted, metrics = encryptor.encrypt_tensors(chosen[start:start + 8])
                ciphertexts.append(torch.stack([png_tensor(png_bytes(image.cpu())) for image in encrypted]))
                rows += metrics
            inserted[identity] = torch.cat([evaluate.features(target, torch.cat(ciphertexts)), probes[identity][len(chosen):]])
        one = 100 * evaluate.identify_turns(probes, inserted, gallery, labels, turns).accuracy
        steps = [row.iterations for row in rows]
        print(f"{variant}: Original {original:.2f}, AVP-ONE {one:.2f} ({one - original:+.2f} pt); steps median "
              f"{statistics.median(steps):g}, max {max(steps)}; {sum(row.met_targets for row in rows)}/{len(rows)} met; "
              f"mean distance {statistics.mean(row.feature_distance for row in rows):.3f}; SSIM_d mean "
              f"{statistics.mean(row.ssim_decrypted for row in rows):.3f}; {time.perf_counter() - began:.0f} s",
              flush=True)


if __name__ == "__main__":
    main()
