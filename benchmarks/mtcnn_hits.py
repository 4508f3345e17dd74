"""Where MTCNN finds "faces" in filtered ciphertexts, beside two controls that hold nothing of the face.

    python benchmarks/mtcnn_hits.py --key KEY [--target dlib] [--faces 50]

The faces of benchmarks/privacy.py (the first image of LFW's first N `multi` identities), encrypted
with avp's defaults; every filter of `avp evaluate privacy` (evaluate.REVEAL_FILTERS) is applied to
the ciphertexts (read back from their PNG bytes), to the key's preimages S⁻¹(x) of the same faces
(the attack's start: x's pixels in secret places) and to uniform noise. Prints, per filter, how many
images of each set MTCNN finds a face in, and for each hit on a ciphertext the box (x0, y0, x1, y1
on the target's chip), MTCNN's probability and the box MTCNN finds on the original chip, so that
one can see whether it lies on the face.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from avpcli import Encryptor, Key  # noqa: E402
from avpcli.align import detect_faces  # noqa: E402
from avpcli.engine import quantize  # noqa: E402
from avpcli.evaluate import REVEAL_FILTERS  # noqa: E402
from avpcli.images import to_pil  # noqa: E402
from benchmarks.common import data_folder, lfw_by_role  # noqa: E402


def _box(faces: list) -> list[int] | None:
    """The largest face's box, rounded to pixels (None: no face)."""
    return [round(value) for value in faces[0][0]] if faces else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--key", required=True)
    parser.add_argument("--target", default="dlib")
    parser.add_argument("--faces", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("AVP_THREADS", "2")))

    multi: dict[str, list[Path]] = defaultdict(list)
    for identity, path in lfw_by_role(data_folder())["multi"]:
        multi[identity].append(path)
    chosen = sorted(multi)[:args.faces]
    key = Key.load(args.key)
    ciphertexts = Encryptor(args.target, key, device="cpu").encrypt([sorted(multi[name])[0] for name in chosen])
    originals = torch.stack([ciphertext.original for ciphertext in ciphertexts])
    sets = {
        "ciphertexts": torch.stack([ciphertext.image for ciphertext in ciphertexts]),  # as read back from the PNG
        "preimages": quantize(key.model.preimage(originals)),
        "uniform noise": quantize(torch.rand(originals.shape, generator=torch.Generator().manual_seed(0))),
    }
    print(f"{args.target}; key {Path(args.key).name}; {len(chosen)} LFW faces; MTCNN (facenet-pytorch)\n")
    for reveal in REVEAL_FILTERS:
        counts, hits = [], []
        for name, images in sets.items():
            found = [detect_faces(to_pil(image)) for image in reveal.apply(images)]
            counts.append(f"{name} {sum(bool(faces) for faces in found)}/{len(found)}")
            if name == "ciphertexts":
                hits += [f"{chosen[index]}: box {_box(faces)}, p {faces[0][1]:.3f} "
                         f"(on the original chip: {_box(detect_faces(to_pil(originals[index])))})"
                         for index, faces in enumerate(found) if faces]
        print(f"{reveal.name}: " + ", ".join(counts) + "".join(f"\n    {hit}" for hit in hits))


if __name__ == "__main__":
    main()
