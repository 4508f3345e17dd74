"""Table 2's AVP-ONE against the feature bar: how far an encrypted gallery image may sit from its
original in the target's feature space, and what that does to nearest-neighbour identification.

    python -m benchmarks.feature_bar --key KEY [--target dlib] [--bars 0.10,0.03] [--gallery 1000]
                                     [--turns 30] [--work DIR]

The protocol of `avp evaluate identification` (report.identification_report) with a plain gallery:
LFW's probe identities (every image a query), the first --turns images of each taking turns as the
inserted gallery image, encrypted (AVP-ONE), among --gallery distractors. For each bar the inserted
images are encrypted with avp's defaults but for `max_feature_distance` (`avp encrypt
--max-feature-distance`), in a work folder of the bar's own (a rerun resumes). Prints one markdown
row per bar: Original, AVP-ONE, their difference, and the steps the encryption took.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from avpcli import Encryptor, Key, report
from benchmarks.common import FACE_WEIGHTS, data_folder, events, lfw_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--key", required=True)
    parser.add_argument("--target", default="dlib", choices=sorted(FACE_WEIGHTS))
    parser.add_argument("--bars", default="0.10,0.03", help="feature distance bars, comma-separated")
    parser.add_argument("--gallery", type=int, default=1000, help="distractor images in the gallery")
    parser.add_argument("--turns", type=int, default=30, help="inserted-image turns per probe identity")
    parser.add_argument("--work", default="/tmp/avp-feature-bar")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("AVP_THREADS", "2")))

    data = data_folder()
    if not (data / "lfw.csv").is_file():
        sys.exit(f"shared data not found at {data} (set AVP_DATA)")
    probes, gallery = lfw_split(data, args.gallery)
    key = Key.load(args.key)
    weights = FACE_WEIGHTS[args.target] and data / FACE_WEIGHTS[args.target]
    print(f"{args.target}; key {Path(args.key).name}; gallery {len(gallery)} distractors; {args.turns} turns per "
          f"probe identity; fp32; {torch.get_num_threads()} threads\n")
    print("| feature bar | turns | Original % | AVP-ONE % | AVP-ONE − Original | median steps | max steps | "
          "mean distance | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for bar in (float(value) for value in args.bars.split(",")):
        # fp32, as results.py's Table 2: the comparison is of the bar alone.
        encryptor = Encryptor(args.target, key, weights=weights, device="cpu", precision="fp32",
                              max_feature_distance=bar)
        work = Path(args.work) / args.target / f"bar-{bar:g}"
        began = time.perf_counter()
        table = report.identification_report(probes, gallery, encryptor, work, args.turns, encrypt_gallery=False,
                                             on_event=events(f"bar {bar:g}"))
        seconds = time.perf_counter() - began
        manifest = json.loads((work / "encrypted" / "avp-manifest.json").read_text())
        done = [entry for entry in manifest["files"] if entry.get("status") == "ok"]
        steps = [entry["iterations"] for entry in done]
        distances = [entry["feature_distance"] for entry in done]
        accuracy = table.data["accuracy"]
        original, one = 100 * accuracy["original"]["accuracy"], 100 * accuracy["avp_one"]["accuracy"]
        print(f"| {bar:g} | {accuracy['avp_one']['turns']} | {original:.1f} | {one:.1f} | {one - original:+.1f} | "
              f"{statistics.median(steps):g} | {max(steps)} | {statistics.mean(distances):.3f} | {seconds:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
