"""The face path (enhancer/faces.py): detector, alignment, blending, the option and its header."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from enhancer import faces
from enhancer.contract import FACES_DEFAULT
from enhancer.errors import OptionError
from enhancer.options import parse_options
from tests.helpers.faces import DRAWN_LANDMARKS, drawn_face
from tests.helpers.tiny_models import TinySR, save_model

needs_detector = pytest.mark.skipif(
    faces.weights_dir() is None,
    reason="MTCNN weights absent: pip install --no-deps facenet-pytorch (scripts/setup.sh does)",
)


def _tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


@pytest.fixture(scope="module")
def detector():
    return faces.FaceDetector.load()


@needs_detector
@pytest.mark.parametrize("side", [120, 160, 240])
def test_detector_finds_the_drawn_face_and_its_five_landmarks(detector, side):
    found = detector.detect(np.asarray(drawn_face(side)))
    assert len(found) == 1
    expected = np.array(DRAWN_LANDMARKS, dtype=np.float64) * side / 160
    error = np.abs(found[0].landmarks - expected).max()
    assert error < 0.06 * side, (found[0].landmarks, expected)
    assert found[0].score > 0.9


@needs_detector
def test_detector_finds_nothing_in_a_plain_or_noisy_image(detector):
    rng = np.random.default_rng(0)
    assert detector.detect(np.full((120, 160, 3), 128, np.uint8)) == []
    assert detector.detect(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)) == []


@needs_detector
def test_faces_smaller_than_the_minimum_are_skipped(detector):
    small = np.asarray(drawn_face(160).resize((40, 40), Image.Resampling.LANCZOS))
    assert detector.detect(small, min_face=60) == []


def test_similarity_recovers_a_known_transform():
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -5.0])
    r = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = np.array(DRAWN_LANDMARKS, dtype=np.float64)
    m = faces.similarity(src, src @ r.T + shift)
    assert np.allclose(m[:, :2], r) and np.allclose(m[:, 2], shift)
    assert np.allclose(faces.invert(m) @ np.append(m[:, 2], 1.0), [0, 0] @ np.eye(2))


def test_alignment_round_trip_keeps_the_face_within_one_level():
    """Warp to the aligned crop and back: inside the face the image is within 1/255 of the
    original. The crop here samples the face at about 4x (its output at scale 4); at 2x the
    drawn face's hard edges come back within 2/255 (bicubic resampling twice)."""
    image = _tensor(drawn_face(160))
    landmarks = np.array(DRAWN_LANDMARKS, dtype=np.float64) + [[3, -2]] * 5  # not centred
    side = 512
    m = faces.similarity(landmarks, faces.TEMPLATE * side)
    crop = faces.warp(image, m, (side, side))
    back = faces.warp(crop, faces.invert(m), (160, 160))
    mask = faces.warp(faces.face_mask(side), faces.invert(m), (160, 160)) >= 1.0
    assert mask.sum() > 1500  # the face's inside, not a few pixels
    diff = (back - image).abs()[mask.expand_as(image)]
    assert diff.max() <= 1 / 255, diff.max()


def test_blending_leaves_pixels_outside_the_mask_untouched():
    base = torch.rand(1, 3, 50, 60)
    face = torch.rand(1, 3, 50, 60)
    mask = torch.zeros(1, 1, 50, 60)
    mask[..., 10:30, 20:40] = torch.linspace(0, 1, 20)[None, None, :, None]
    out = faces.blend(base, face, mask)
    outside = (mask == 0).expand_as(base)
    assert torch.equal(out[outside], base[outside])
    full = (mask == 1).expand_as(base)
    assert torch.allclose(out[full], face[full])


def test_the_face_path_changes_only_pixels_under_the_face_mask():
    source = _tensor(drawn_face(160))
    enhanced = torch.nn.functional.interpolate(source, scale_factor=2, mode="bicubic").clamp(0, 1)
    face = faces.Face(np.array([38.0, 25, 122, 140]), 1.0, np.array(DRAWN_LANDMARKS, np.float64))

    def garbage(x):  # a face model answering noise: only the masked face may change
        return torch.rand(x.shape[0], 3, 2 * x.shape[2], 2 * x.shape[3])

    out, report = faces.restore_faces(garbage, source, enhanced, [face], 2.0)
    assert report.found == report.restored == 1
    m = faces.similarity(face.landmarks * 2 + 0.5, faces.TEMPLATE * faces.crop_side(face, 2.0))
    side = faces.crop_side(face, 2.0)
    mask = faces.warp(faces.face_mask(side), faces.invert(m), (320, 320))
    outside = (mask == 0).expand_as(out)
    assert torch.equal(out[outside], enhanced[outside])
    assert not torch.equal(out, enhanced)
    assert out[:, :, :40].equal(enhanced[:, :, :40])  # the hair line and above: far from the mask


def test_colour_lock_matches_the_reference_statistics_inside_the_mask():
    mask = faces.face_mask(64)
    ref = torch.rand(1, 3, 64, 64) * 0.5 + 0.2
    face = ref * 0.6 + 0.3  # a colour and contrast shift
    locked = faces.colour_lock(face, ref, mask)
    w = mask / mask.sum()
    assert torch.allclose((locked * w).sum((2, 3)), (ref * w).sum((2, 3)), atol=1e-3)


def test_the_face_cap_and_budget_bound_the_work():
    source = _tensor(drawn_face(160))
    enhanced = torch.nn.functional.interpolate(source, scale_factor=2, mode="bicubic")
    face = faces.Face(np.array([38.0, 25, 122, 140]), 1.0, np.array(DRAWN_LANDMARKS, np.float64))
    calls = []

    def model(x):
        calls.append(1)
        return torch.nn.functional.interpolate(x, scale_factor=2, mode="bicubic")

    _, report = faces.restore_faces(model, source, enhanced, [face] * 20, 2.0, budget=1e9)
    assert report.found == 20 and report.restored == len(calls) == faces.MAX_FACES
    calls.clear()
    _, report = faces.restore_faces(model, source, enhanced, [face] * 20, 2.0, budget=0.0)
    assert report.restored == len(calls) == 1  # the first face always; none after the budget


def test_the_faces_option(sr_model):
    from enhancer.card import ModelCard
    from enhancer.settings import EnhancerSettings

    card, settings = ModelCard.load(sr_model.with_suffix(".json")), EnhancerSettings()
    assert parse_options({}, card, settings).faces == FACES_DEFAULT == "off"  # by measurement
    assert parse_options({"faces": "auto"}, card, settings).faces == "auto"
    assert parse_options({"faces": b"OFF"}, card, settings).faces == "off"
    with pytest.raises(OptionError, match="faces"):
        parse_options({"faces": "maybe"}, card, settings)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_without_a_face_model_faces_are_reported_unavailable(enhancer):
    data = _png(drawn_face(64))
    assert enhancer.enhance(data, {"faces": "auto"}).headers["X-Enhance-Faces"] == "unavailable"
    assert "X-Enhance-Faces" not in enhancer.enhance(data).headers  # the default is off
    assert "X-Enhance-Faces" not in enhancer.enhance(data, {"faces": "off"}).headers


@needs_detector
def test_the_engine_restores_the_faces_it_finds(sr_model, tmp_path):
    from enhancer.engine import Enhancer

    face_pt = save_model(tmp_path, TinySR(), name="face", multiple=4)
    engine = Enhancer.load(sr_model, face_path=face_pt)
    assert engine.faces is not None
    data = _png(drawn_face(160))
    with_faces = engine.enhance(data, {"format": "png", "faces": "auto"})
    assert with_faces.headers["X-Enhance-Faces"] == "1"
    without = engine.enhance(data, {"format": "png", "faces": "off"})
    assert "X-Enhance-Faces" not in without.headers
    assert with_faces.data != without.data
    assert (
        engine.enhance(_png(Image.new("RGB", (64, 48), "gray")), {"faces": "auto"}).headers[
            "X-Enhance-Faces"
        ]
        == "0"
    )


def test_the_archive_ships_a_face_model_found_beside_the_model(tmp_path):
    from scripts.ops.archive import face_beside

    model = tmp_path / "enhancer.pt"
    model.write_bytes(b"x")
    assert face_beside(model) == []
    save_model(tmp_path, TinySR(), name="face")
    assert face_beside(model) == [tmp_path / "face.pt", tmp_path / "face.json"]
    assert face_beside(tmp_path / "face.pt") == []  # a face model is never its own face model
