"""Table 2's AVP-ONE against the start-side term and bar (engine.stopping_past_the_original).

    python benchmarks/start_side.py --work RESULTS_WORK [--target dlib] [--turns 10] [--key KEY]
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from avpcli import Encryptor, Key, evaluate  # noqa: E402
from avpcli.engine import FACE_SETTINGS  # noqa: E402
from avpcli.images import png_bytes, png_tensor, read_png  # noqa: E402
from benchmarks.common import data_folder  # noqa: E402
from benchmarks.results import FACE_WEIGHTS  # noqa: E402


def variant_settings(variant: str):
    if variant == "off":
        return FACE_SETTINGS
    weight, bar = (float(part) for part in variant.split(":"))
    return dataclasses.replace(FACE_SETTINGS, start_side_weight=weight,
                               stop=dataclasses.replace(FACE_SETTINGS.stop, max_start_side=bar))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="benchmarks/results.py's --work")
    parser.add_argument("--target", default="dlib", choices=sorted(FACE_WEIGHTS))
    parser.add_argument("--key", default="/tmp/keys/default-1.safetensors")
    parser.add_argument("--turns", type=int, default=10, help="inserted-image turns per probe identity")
    parser.add_argument("--variants", default="off,30:0", help="comma-separated: off, or WEIGHT:BAR")
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

    for variant in args.variants.split(","):
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
