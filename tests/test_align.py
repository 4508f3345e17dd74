"""Face alignment: the similarity fit, the warp's coordinate convention, and MTCNN on real photos."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from avpcli import align
from avpcli.errors import NoFaceError

def _data(root: Path, relative: str) -> Path:
    path = root / relative
    if not path.exists():
        pytest.skip(f"{relative} not found under {root} (set AVP_DATA)")
    return path


def _similarity(scale: float, angle_degrees: float, tx: float, ty: float) -> np.ndarray:
    angle = math.radians(angle_degrees)
    rotation = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return np.hstack([rotation, [[tx], [ty]]])


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


@pytest.mark.parametrize("weights", [None, (1.0, 1.0, 0.3, 0.02, 0.02)])
def test_similarity_fit_recovers_a_known_transform(weights):
    source = np.random.default_rng(0).uniform(0, 200, (5, 2))
    known = _similarity(0.7, 23.0, -14.5, 40.25)
    found = align.similarity_transform(source, _apply(known, source), weights)
    assert np.allclose(found, known, atol=1e-10)


def test_similarity_fit_never_reflects():
    source = np.random.default_rng(1).uniform(0, 100, (5, 2))
    found = align.similarity_transform(source, source * [-1.0, 1.0])
    assert np.linalg.det(found[:, :2]) > 0


def test_warp_puts_landmarks_on_the_template():
    """A synthetic photo with a bright dot at each landmark: the dots land on the template's points."""
    size, points, _ = align.TEMPLATES["arcface"]
    to_photo = _similarity(2.5, -12.0, 180.0, 60.0)  # template -> photo, face 2.5x larger, tilted
    landmarks = _apply(to_photo, np.array(points))
    photo = np.zeros((500, 520, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:500, 0:520]
    for x, y in landmarks:
        photo[(xx - x) ** 2 + (yy - y) ** 2 <= 5**2] = 255
    chip = np.asarray(align.warp_to_template(Image.fromarray(photo), landmarks, "arcface"))[..., 0].astype(float)
    assert chip.shape == size
    cyy, cxx = np.mgrid[0 : size[0], 0 : size[1]]
    for x, y in points:
        near = ((cxx - x) ** 2 + (cyy - y) ** 2 <= 4**2) * chip
        centroid = np.array([(near * cxx).sum(), (near * cyy).sum()]) / near.sum()
        assert np.allclose(centroid, (x, y), atol=0.15)


def test_warp_outside_the_image_is_black_on_request():
    photo = Image.new("RGB", (40, 40), (200, 150, 100))
    chip = np.asarray(align.warp_affine(photo, _similarity(1.0, 0.0, 30.0, 0.0), (40, 80), fill="black"))
    # Photo columns 0..39 land on chip columns 30..69.
    assert (chip[:, :29] == 0).all() and (chip[:, 31:69] == (200, 150, 100)).all() and (chip[:, 71:] == 0).all()


def test_warp_outside_the_image_repeats_the_edge_by_default():
    rows = np.linspace(0, 255, 40).astype(np.uint8)
    photo = np.stack([np.tile(rows[:, None], (1, 40))] * 3, axis=-1)  # brightness grows downwards
    photo[:, 0] = (10, 20, 30)  # a distinct left column
    photo[:, -1] = (200, 210, 220)  # a distinct right column
    chip = np.asarray(align.warp_affine(Image.fromarray(photo), _similarity(1.0, 0.0, 30.0, 0.0), (40, 80)))
    # Photo columns 0..39 land on chip columns 30..69; outside, each row repeats its edge pixel.
    assert (chip[:, :30] == photo[:, :1]).all() and (chip[:, 70:] == photo[:, -1:]).all()
    assert (chip[:, 30:70] == photo).all()


def test_edge_fill_leaves_pixels_inside_the_photo_unchanged():
    photo = Image.fromarray(np.random.default_rng(2).integers(0, 256, (90, 70, 3), dtype=np.uint8))
    to_chip = _similarity(1.3, 17.0, -20.5, 9.25)  # rotated, scaled, shifted so part falls outside
    edge = np.asarray(align.warp_affine(photo, to_chip, (100, 100))).astype(int)
    black = np.asarray(align.warp_affine(photo, to_chip, (100, 100), fill="black")).astype(int)
    inside = (black.sum(axis=-1) > 0)
    assert 0.2 < inside.mean() < 0.9, "the test needs chip pixels both inside and outside the photo"
    # Bilinear sampling mixes in the fill only within a pixel of the border.
    inner = inside & np.roll(inside, 2, 0) & np.roll(inside, -2, 0) & np.roll(inside, 2, 1) & np.roll(inside, -2, 1)
    assert np.abs(edge - black)[inner].max() <= 1
    assert (edge[~inside].sum(axis=-1) > 0).mean() > 0.95, "outside the photo the edge fill is not black"


def test_unknown_fill_is_refused():
    with pytest.raises(ValueError, match="edge"):
        align.warp_affine(Image.new("RGB", (4, 4)), _similarity(1.0, 0.0, 0.0, 0.0), (4, 4), fill="mirror")


def test_large_downscale_is_antialiased():
    """A 1-pixel checkerboard shrunk 8x must come out mid-gray, not aliased stripes."""
    checker = ((np.indices((800, 800)).sum(axis=0) % 2) * 255).astype(np.uint8)
    photo = Image.fromarray(np.stack([checker] * 3, axis=-1))
    chip = np.asarray(align.warp_affine(photo, _similarity(1 / 8, 0.0, 0.0, 0.0), (100, 100))).astype(float)
    assert abs(chip[5:-5, 5:-5].mean() - 127.5) < 2 and chip[5:-5, 5:-5].std() < 2


@pytest.mark.parametrize("name", sorted(align.TEMPLATES))
def test_templates_are_well_formed(name):
    size, points, weights = align.TEMPLATES[name]
    assert align.template_size(name) == size
    assert len(points) == len(weights) == 5
    (left_eye, right_eye, nose, mouth_left, mouth_right) = points
    assert left_eye[0] < nose[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1]) < size[0]


def test_unknown_template_is_named():
    with pytest.raises(ValueError, match="arcface"):
        align.template_size("nope")


def test_astronaut_is_found_and_aligned(data_root):
    photo = Image.open(_data(data_root, "samples-public-domain/astronaut.png")).convert("RGB")
    faces = align.align_faces(photo, "dlib")
    assert len(faces) == 1
    face = faces[0]
    assert face.image.size == (150, 150) and face.image.mode == "RGB"
    assert face.probability > 0.99 and face.landmarks.shape == (5, 2)
    x0, y0, x1, y1 = face.box
    assert x0 < face.landmarks[:, 0].min() and face.landmarks[:, 0].max() < x1
    # The landmarks were put on the template: mapping them with the fitted transform lands near it.
    template = align.TEMPLATES["dlib"]
    to_chip = align.similarity_transform(face.landmarks, np.array(template.points), np.array(template.weights))
    assert np.abs(_apply(to_chip, face.landmarks)[:2] - np.array(template.points[:2])).max() < 3


def test_no_face_raises():
    with pytest.raises(NoFaceError, match="no face"):
        align.align_faces(Image.new("RGB", (200, 200), (128, 128, 128)), "arcface")


def test_largest_face_first(data_root):
    photo = Image.open(_data(data_root, "faces_misc/face_recognition_knn/test/obama_and_biden.jpg")).convert("RGB")
    photo = photo.reduce(2)  # the same faces at a quarter of the pixels: faster
    faces = align.align_faces(photo, "arcface", all_faces=True)
    assert len(faces) >= 2
    areas = [(x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in (face.box for face in faces)]
    assert areas == sorted(areas, reverse=True)
    assert all(face.image.size == (112, 112) for face in faces)
    only = align.align_faces(photo, "arcface")
    assert len(only) == 1 and only[0].box == faces[0].box


def test_chip_transform_between_templates_of_one_face():
    # arcface96 is arcface less 8 pixels on each side: the map is a shift by −8, whatever the face.
    template = np.array(align.TEMPLATES["arcface"].points)
    face = _apply(_similarity(2.3, 11.0, 40.0, -7.0), template)
    for landmarks in ([], [face], [face, face + 3.0]):
        assert np.allclose(align.chip_transform(landmarks, "arcface", "arcface96"), [[1, 0, -8], [0, 1, 0]], atol=1e-9)
    # Any face whose landmarks sit exactly on the dlib template is carried onto the arcface points.
    dlib_points = np.array(align.TEMPLATES["dlib"].points)
    to_arcface = align.chip_transform([_apply(_similarity(0.7, -5.0, 3.0, 9.0), dlib_points)], "dlib", "arcface")
    expected = align.similarity_transform(dlib_points, template, np.array(align.TEMPLATES["arcface"].weights))
    assert np.allclose(to_arcface, expected, atol=1e-9)


def test_resize_transform_keeps_pixel_centres():
    # Pixel centres 0 and 1 of a 2-wide image cover [−0.5, 1.5], which is [−0.5, 3.5] in a 4-wide one.
    matrix = align.resize_transform((2, 2), (4, 4))
    assert np.allclose(_apply(matrix, np.array([[0.0, 0.0], [1.0, 1.0], [-0.5, -0.5]])), [[0.5, 0.5], [2.5, 2.5], [-0.5, -0.5]])
