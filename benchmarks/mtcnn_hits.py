"""Where MTCNN finds "faces" in filtered ciphertexts, beside two controls that hold nothing of the face.

    python -m benchmarks.mtcnn_hits --key KEY [--target dlib] [--faces 50]

The faces of benchmarks/privacy.py (the first image of LFW's first N `multi` identities), encrypted
with avp's defaults; every filter of `avp evaluate privacy` (evaluate.REVEAL_FILTERS) is applied to
the ciphertexts (read back from their PNG bytes), to the key's preimages S⁻¹(x) of the same faces
(the attack's start: x's pixels in secret places) and to uniform noise. Prints, per filter, how many
images of each set MTCNN finds a face in, how many of those a box lies on the face itself (IoU ≥ 0.5
with MTCNN's box on the same face's original chip, PASCAL VOC's criterion of a correct detection),
and for each hit on a ciphertext the box (x0, y0, x1, y1 on the target's chip), MTCNN's probability,
the box MTCNN finds on the original chip and their IoU.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch

from avpcli import Encryptor, Key
from avpcli.align import detect_faces
from avpcli.engine import quantize
from avpcli.evaluate import AT_FACE_IOU, REVEAL_FILTERS, box_iou
from avpcli.images import to_pil
from benchmarks.common import data_folder, lfw_identities

if TYPE_CHECKING:
    from avpcli.key import KeyModel

# The three sets each filter is applied to, in the order they are printed.
SETS = ("ciphertexts", "preimages", "uniform noise")


@dataclass
class Hit:
    """A face MTCNN found in a filtered ciphertext; boxes are (x0, y0, x1, y1) on the target's chip."""

    name: str
    box: list[int]
    probability: float
    original_box: list[int] | None  # where MTCNN finds the face on the original chip
    iou: float = 0.0  # the best IoU of any of the image's boxes with original_box

    def __str__(self) -> str:
        return (f"{self.name}: box {self.box}, p {self.probability:.3f} (on the original chip: {self.original_box}; "
                f"IoU {self.iou:.2f})")


@dataclass
class FilterHits:
    """One filter: how many images of each set MTCNN finds a face in, how many at the face's place, and
    the hits on ciphertexts."""

    filter: str
    found: dict[str, int]  # set name (SETS) → images with a face
    images: int  # per set
    hits: list[Hit]
    # set name → images with a box on the face (IoU ≥ AT_FACE_IOU with MTCNN's box on the original chip)
    at_face: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        counts = ", ".join(f"{name} {count}/{self.images}" + (f" ({self.at_face[name]} at the face)"
                                                               if name in self.at_face else "")
                           for name, count in self.found.items())
        return f"{self.filter}: {counts}" + "".join(f"\n    {hit}" for hit in self.hits)


def _box(faces: list) -> list[int] | None:
    """The largest face's box, rounded to pixels (None: no face)."""
    return [round(value) for value in faces[0][0]] if faces else None


def best_iou(faces: list, reference: list[int] | None) -> float:
    """The largest IoU of any detected box with the reference box (0 without either)."""
    if reference is None:
        return 0.0
    return max((box_iou(face[0], reference) for face in faces), default=0.0)


def mtcnn_hits(names: list[str], originals: torch.Tensor, ciphertexts: torch.Tensor,
               key: KeyModel) -> Iterator[FilterHits]:
    """Per filter of REVEAL_FILTERS, in order: MTCNN on the filtered ciphertexts (8-bit, as read back), the
    key's preimages of the originals and uniform noise of the same size (seed 0, as `avp evaluate privacy`'s).

    A box is "at the face" when it overlaps MTCNN's box on the original chip of the same face (for the
    controls: of the face whose place they take) by IoU ≥ AT_FACE_IOU: a detector's hit elsewhere, or of
    another size, finds noise, not the face.
    """
    original_boxes = [_box(detect_faces(to_pil(original))) for original in originals]
    sets = dict(zip(SETS, (
        ciphertexts,
        quantize(key.preimage(originals)),
        quantize(torch.rand(originals.shape, generator=torch.Generator().manual_seed(0))),
    )))
    for reveal in REVEAL_FILTERS:
        found, at_face, hits = {}, {}, []
        for name, images in sets.items():
            faces_per_image = [detect_faces(to_pil(image)) for image in reveal.apply(images)]
            overlaps = [best_iou(faces, original_boxes[index]) for index, faces in enumerate(faces_per_image)]
            found[name] = sum(bool(faces) for faces in faces_per_image)
            at_face[name] = sum(overlap >= AT_FACE_IOU for overlap in overlaps)
            if name == "ciphertexts":
                hits += [Hit(names[index], _box(faces), float(faces[0][1]), original_boxes[index], overlaps[index])
                         for index, faces in enumerate(faces_per_image) if faces]
        yield FilterHits(reveal.name, found, len(originals), hits, at_face)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--key", required=True)
    parser.add_argument("--target", default="dlib")
    parser.add_argument("--faces", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("AVP_THREADS", "2")))

    multi = lfw_identities(data_folder(), "multi")
    chosen = list(multi)[:args.faces]
    key = Key.load(args.key)
    ciphertexts = Encryptor(args.target, key, device="cpu").encrypt([multi[name][0] for name in chosen])
    originals = torch.stack([ciphertext.original for ciphertext in ciphertexts])
    encrypted = torch.stack([ciphertext.image for ciphertext in ciphertexts])  # as read back from the PNG
    print(f"{args.target}; key {Path(args.key).name}; {len(chosen)} LFW faces; MTCNN (facenet-pytorch)\n")
    for result in mtcnn_hits(chosen, originals, encrypted, key.model):
        print(result)


if __name__ == "__main__":
    main()
