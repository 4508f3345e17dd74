"""Fit avp's `dlib` and `facenet` face templates for MTCNN's landmarks, then check the dlib one on held-out photos.

Needs the reference dlib (pip install dlib-bin) and the LFW data (AVP_DATA or <repo>/../shared/data).

1. Fitting split: the first 400 `distractor` photos of lfw.csv (one photo each of 400 people).
   - dlib: dlib's own chip (HOG detector, 5-point predictor, get_face_chip 150, padding 0.25). Its exact
     image -> chip transform is measured by extracting chips from two coordinate-ramp images
     (bilinear sampling reproduces a linear ramp exactly). MTCNN's 5 landmarks of the same face are
     mapped into chip coordinates; their mean is the template.
   - facenet: the mean position of MTCNN's landmarks in facenet-pytorch's own crop (its box, margin 0,
     resized to 160x160).
2. Held-out split: every 8th `multi` photo (people not in the fitting split). For each, the dlib
   descriptor (avp's torch port) of avp's MTCNN-aligned chip vs of dlib's own chip; Euclidean distance.

3. On the same chips, the torch port vs dlib's own network (max abs descriptor difference).

Usage: python -m benchmarks.alignment_vs_dlib [--fit 400] [--every 8] [--skip-fit]
       python -m benchmarks.alignment_vs_dlib --timing      (the port's speed, 1 thread)
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from PIL import Image

from avpcli import align, load_target
from avpcli.targets.dlib import default_model_path
from benchmarks.common import LfwPhoto, data_folder, read_lfw

DATA = data_folder()
CHIP, PADDING = 150, 0.25


class DlibReference:
    """dlib's own detector, 5-point predictor and chip extraction."""

    def __init__(self):
        import dlib

        self.dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(default_model_path().parent / "shape_predictor_5_face_landmarks.dat"))

    def chip(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """dlib's 150x150 chip of the first face and the 2x3 image -> chip transform; None without a face."""
        faces = self.detector(pixels, 1)
        if not faces:
            return None
        shape = self.predictor(pixels, faces[0])
        details = self.dlib.get_face_chip_details(shape, CHIP, PADDING)
        height, width = pixels.shape[:2]
        ramps = np.mgrid[0:height, 0:width].astype(np.float32)  # (y, x)
        chip_y = self.dlib.extract_image_chip(np.ascontiguousarray(ramps[0]), details)
        chip_x = self.dlib.extract_image_chip(np.ascontiguousarray(ramps[1]), details)
        # Chip pixels that sample well inside the image carry their exact source coordinates.
        inside = (chip_x > 2) & (chip_x < width - 3) & (chip_y > 2) & (chip_y < height - 3)
        rows, cols = np.nonzero(inside)
        design = np.column_stack([cols, rows, np.ones_like(cols)]).astype(np.float64)
        to_image, *_ = np.linalg.lstsq(design, np.column_stack([chip_x[inside], chip_y[inside]]), rcond=None)
        to_image = to_image.T  # 2x3: chip (x, y, 1) -> image (x, y)
        to_chip = np.linalg.inv(np.vstack([to_image, [0, 0, 1]]))[:2]
        return self.dlib.get_face_chip(pixels, shape, CHIP, PADDING), to_chip


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def mtcnn_face_near(image: Image.Image, to_chip: np.ndarray | None):
    """MTCNN's face that dlib also chose (the nose nearest the chip centre), else the largest."""
    faces = align.detect_faces(image)
    if not faces or to_chip is None:
        return faces[0] if faces else None
    return min(faces, key=lambda face: np.linalg.norm(apply(to_chip, face[2][2:3]) - CHIP / 2))


GRID = np.stack(np.meshgrid(np.linspace(20, 130, 12), np.linspace(20, 130, 12)), -1).reshape(-1, 2)


def chip_error(landmarks: np.ndarray, to_chip: np.ndarray, points, weights) -> float:
    """RMS distance (chip pixels) between where avp's and dlib's chips sample a grid of chip points."""
    avp = align.similarity_transform(landmarks, np.array(points), np.array(weights))
    in_image = apply(np.linalg.inv(np.vstack([to_chip, [0, 0, 1]]))[:2], GRID)
    return float(np.sqrt(((apply(avp, in_image) - GRID) ** 2).sum(axis=1).mean()))


def fit(rows: list[LfwPhoto], reference: DlibReference) -> None:
    dlib_points, facenet_points, pairs = [], [], []
    for row in rows:
        image = Image.open(row.path).convert("RGB")
        result = reference.chip(np.asarray(image))
        face = mtcnn_face_near(image, result[1] if result else None)
        if face is None:
            continue
        box, _, landmarks = face
        # facenet-pytorch's crop: the box rounded to integers, then resized (PIL: pixel centres at +0.5).
        x0, y0, x1, y1 = (int(max(box[0], 0)), int(max(box[1], 0)), int(min(box[2], image.width)), int(min(box[3], image.height)))
        facenet_points.append((landmarks + 0.5 - [x0, y0]) * [160 / (x1 - x0), 160 / (y1 - y0)] - 0.5)
        if result is not None:
            dlib_points.append(apply(result[1], landmarks))
            pairs.append((landmarks, result[1]))
    for name, points in (("dlib", dlib_points), ("facenet", facenet_points)):
        stacked = np.array(points)
        mean, spread = stacked.mean(axis=0), stacked.std(axis=0)
        print(f"{name} template from {len(stacked)} photos (mean, std per point):")
        print("    (" + ", ".join(f"({x:.2f}, {y:.2f})" for x, y in mean) + ")")
        print("    std: " + ", ".join(f"({x:.2f}, {y:.2f})" for x, y in spread))
        if name == "dlib":
            for weights in ((1.0,) * 5, align.TEMPLATES["dlib"].weights):
                errors = [chip_error(landmarks, to_chip, mean, weights) for landmarks, to_chip in pairs]
                print(f"    weights {weights}: chip {np.mean(errors):.2f} px RMS from dlib's (mean over photos)")


def evaluate(rows: list[LfwPhoto], reference: DlibReference) -> None:
    target = load_target("dlib")
    dlib_chips, avp_chips, resampled_chips, used = [], [], [], []
    found_dlib = found_mtcnn = 0
    for row in rows:
        image = Image.open(row.path).convert("RGB")
        result = reference.chip(np.asarray(image))
        face = mtcnn_face_near(image, result[1] if result else None)
        found_dlib += result is not None
        found_mtcnn += face is not None
        if result is None or face is None:
            continue
        used.append(row.file)
        dlib_chips.append(result[0])
        avp_chips.append(np.asarray(align.warp_to_template(image, face[2], "dlib")))
        resampled_chips.append(np.asarray(align.warp_affine(image, result[1], (CHIP, CHIP), fill="black")))

    def descriptors(chips: list[np.ndarray]) -> torch.Tensor:
        with torch.no_grad():
            return target(torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2).float() / 255)

    reference_descriptors = descriptors(dlib_chips)
    resampling = (reference_descriptors - descriptors(resampled_chips)).norm(dim=1).numpy()
    distances = (reference_descriptors - descriptors(avp_chips)).norm(dim=1).numpy()
    print(f"held-out photos: {len(rows)}; dlib HOG found {found_dlib}, MTCNN found {found_mtcnn}, both {len(distances)}")
    print(
        f"descriptor distance, avp MTCNN chip vs dlib chip: mean {distances.mean():.4f}, median {np.median(distances):.4f}, "
        f"90th percentile {np.percentile(distances, 90):.4f}, max {distances.max():.4f}; "
        f"under 0.1: {(distances < 0.1).sum()}, over 0.2: {(distances > 0.2).sum()} (dlib's same-person threshold is 0.6)"
    )
    print(
        f"resampling only (avp's warp with dlib's own transform vs dlib's chip): mean {resampling.mean():.4f}, "
        f"max {resampling.max():.4f}"
    )
    # The port itself, on the same chips: avp's torch network vs dlib's own forward pass.
    dlib_network = reference.dlib.face_recognition_model_v1(str(default_model_path()))
    noise = list(np.random.default_rng(0).integers(0, 256, (8, CHIP, CHIP, 3), dtype=np.uint8))
    port_chips = dlib_chips + avp_chips[:20] + noise
    expected = np.array([dlib_network.compute_face_descriptor(chip) for chip in port_chips])
    port_error = np.abs(descriptors(port_chips).double().numpy() - expected).max()
    print(f"torch port vs dlib on {len(port_chips)} chips (dlib's, avp's and noise): max abs difference {port_error:.2e}")
    worst = np.argsort(distances)[-3:][::-1]
    print("worst: " + ", ".join(f"{used[i]} {distances[i]:.3f}" for i in worst))


def timing() -> None:
    """Seconds per chip of the torch port: forward at batch 16, forward+backward at batch 1 and 16."""
    target = load_target("dlib")
    for batch, backward in ((16, False), (1, True), (16, True)):
        chips = torch.rand(batch, 3, CHIP, CHIP, requires_grad=backward)
        runs = []
        for _ in range(4):
            started = time.perf_counter()
            with torch.set_grad_enabled(backward):
                output = target(chips)
                if backward:
                    output.square().sum().backward()
            runs.append((time.perf_counter() - started) / batch)
        label = "forward+backward" if backward else "forward"
        print(f"{label}, batch {batch}: {1000 * min(runs[1:]):.1f} ms per chip (best of 3 after a warm-up, 1 thread)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit", type=int, default=400, help="fitting photos (first N distractors)")
    parser.add_argument("--every", type=int, default=8, help="held-out: every Nth 'multi' photo")
    parser.add_argument("--skip-fit", action="store_true", help="only evaluate the hard-coded template")
    parser.add_argument("--timing", action="store_true", help="only time the torch port")
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    if arguments.timing:
        timing()
        return
    if not (DATA / "lfw.csv").is_file():
        sys.exit(f"LFW data not found at {DATA} (set AVP_DATA)")
    rows = read_lfw(DATA)
    reference = DlibReference()
    started = time.perf_counter()
    if not arguments.skip_fit:
        fit([row for row in rows if row.role == "distractor"][: arguments.fit], reference)
    evaluate([row for row in rows if row.role == "multi"][:: arguments.every], reference)
    print(f"({time.perf_counter() - started:.0f} s, 1 thread)")


if __name__ == "__main__":
    main()
