"""The dlib target: the torch port reproduces dlib's own descriptors and gradients, and bad files fail cleanly."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from target_checks import check_target

from avpcli.errors import TargetError
from avpcli.targets import get_spec, load_target
from avpcli.targets.dlib import INPUT_MEANS_255, build_dlib_network, default_model_path, read_dlib_model

CHIP_PHOTOS = 12  # LFW photos compared with dlib itself


@pytest.fixture(scope="module")
def model_path() -> Path:
    try:
        return default_model_path()
    except TargetError as missing:
        pytest.skip(f"dlib model file unavailable: {missing}")


@pytest.fixture(scope="module")
def target(model_path):
    return load_target("dlib")


def _to_tensor(chips: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2).float() / 255


@pytest.fixture
def dlib_chips(model_path, data_root) -> list[np.ndarray]:
    """150x150 uint8 chips cut by dlib itself (HOG detector, 5-point predictor, padding 0.25)."""
    dlib = pytest.importorskip("dlib", reason="the reference dlib (pip install dlib-bin) is not installed")
    if not (data_root / "lfw.csv").is_file():
        pytest.skip(f"LFW data not found at {data_root} (set AVP_DATA)")
    from PIL import Image

    with open(data_root / "lfw.csv", newline="") as handle:
        paths = [row["path"] for row in csv.DictReader(handle)]
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(model_path.parent / "shape_predictor_5_face_landmarks.dat"))
    chips = []
    for relative in paths[:: len(paths) // (2 * CHIP_PHOTOS)]:
        photo = np.asarray(Image.open(data_root / relative).convert("RGB"))
        faces = detector(photo, 1)
        if faces:
            chips.append(dlib.get_face_chip(photo, predictor(photo, faces[0]), 150, 0.25))
        if len(chips) == CHIP_PHOTOS:
            break
    assert len(chips) == CHIP_PHOTOS, "dlib found too few faces in LFW"
    noise = np.random.default_rng(0).integers(0, 256, (150, 150, 3), dtype=np.uint8)
    return chips + [noise]


def test_spec_matches_the_file(model_path):
    spec = get_spec("dlib")
    parameters = read_dlib_model(model_path)
    assert parameters.input_means_255 == pytest.approx(INPUT_MEANS_255, abs=1e-4)
    assert parameters.distance_threshold == pytest.approx(spec.match_threshold)
    assert spec.input_size == (150, 150) and not spec.normalize_embedding
    # The registry's (x - mean) / std on [0, 1] is dlib's (pixel - mean) / 256 on 0..255.
    pixels = torch.arange(256.0).view(1, 1, -1).expand(3, 1, -1)
    registry = (pixels / 255 - torch.tensor(spec.mean).view(3, 1, 1)) / torch.tensor(spec.std).view(3, 1, 1)
    dlib_way = (pixels - torch.tensor(INPUT_MEANS_255).view(3, 1, 1)) / 256
    assert torch.allclose(registry, dlib_way, atol=1e-6)


def test_shape_and_input_gradient(target):
    check_target(target, 128)


def test_port_matches_dlib(target, model_path, dlib_chips):
    import dlib

    reference = dlib.face_recognition_model_v1(str(model_path))
    expected = np.array([reference.compute_face_descriptor(chip) for chip in dlib_chips])
    with torch.no_grad():
        found = target(_to_tensor(dlib_chips)).double().numpy()
    assert np.abs(found - expected).max() <= 1e-4
    # Not normalized: dlib's descriptors have norms well away from 1.
    assert np.linalg.norm(found[:-1], axis=1).min() > 1.1


def test_gradient_matches_finite_differences(model_path):
    """float64 autograd vs central differences, for a few pixels of a face-like chip."""
    network = build_dlib_network(model_path).double().eval()
    generator = torch.Generator().manual_seed(0)
    # Smooth random image plus a little noise so no max-pool window has an exact tie (a true kink).
    base = torch.nn.functional.interpolate(torch.rand(1, 3, 10, 10, generator=generator, dtype=torch.float64), size=150)
    base = (base - 0.45) / 0.5 + 0.01 * torch.rand(1, 3, 150, 150, generator=generator, dtype=torch.float64)
    direction = torch.randn(128, generator=generator, dtype=torch.float64)
    rows, cols = torch.tensor([20, 75, 75, 130]), torch.tensor([30, 75, 40, 100])

    def projected(patch: torch.Tensor) -> torch.Tensor:
        image = base.clone()
        image[0, :, rows, cols] = patch
        return network(image)[0] @ direction

    assert torch.autograd.gradcheck(projected, (base[0, :, rows, cols].clone().requires_grad_(),), eps=1e-6, atol=1e-7, rtol=1e-4)


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00" * 100, b"not a dlib model at all", "truncated"],
    ids=["empty", "zeros", "text", "truncated"],
)
def test_bad_files_raise_target_error(tmp_path, model_path, content):
    if content == "truncated":
        content = model_path.read_bytes()[:20_000]
    bad = tmp_path / "bad.dat"
    bad.write_bytes(content)
    with pytest.raises(TargetError, match="bad.dat"):
        load_target("dlib", bad)


def test_other_dlib_network_is_rejected(tmp_path, model_path):
    """The 5-point shape predictor is a real dlib file but not this network."""
    with pytest.raises(TargetError, match="not dlib's face-recognition ResNet"):
        load_target("dlib", model_path.parent / "shape_predictor_5_face_landmarks.dat")


def test_missing_file_names_it(tmp_path):
    with pytest.raises(TargetError, match="nowhere.dat"):
        load_target("dlib", tmp_path / "nowhere.dat")
