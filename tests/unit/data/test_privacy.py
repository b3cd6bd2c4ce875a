"""Face redaction with OpenCV's bundled Haar cascade, on a drawn face the cascade really detects."""

from __future__ import annotations

import numpy as np

from cvplatform.data.privacy import blur_regions, detect_faces, redact_faces
from tests.fixtures.corpus import draw_face, random_rgb


def test_detector_fires_on_a_drawn_face_and_not_on_noise():
    face = np.asarray(draw_face(96))
    boxes = detect_faces(face, min_face_size=24)
    assert len(boxes) == 1
    x, y, w, h = boxes[0]
    assert x < 48 < x + w and y < 48 < y + h and w >= 48  # the box covers the face centre
    assert detect_faces(np.asarray(random_rgb(1, (96, 96))), 24) == []
    assert detect_faces(np.full((96, 96, 3), 200, np.uint8), 24) == []


def test_min_face_size_is_honoured():
    face = np.asarray(draw_face(96))
    assert detect_faces(face, min_face_size=90) == []  # the face is ~66 px
    assert detect_faces(face[:20, :20], min_face_size=24) == []  # image smaller than a face


def test_redaction_removes_the_face_and_keeps_the_rest():
    face = np.asarray(draw_face(128))
    canvas = np.full((128, 256, 3), 120, np.uint8)
    canvas[:, :128] = face
    canvas[:, 128:] = np.asarray(random_rgb(5, (128, 128)))
    out, n = redact_faces(canvas, min_face_size=24)
    assert n == 1
    assert detect_faces(out, 24) == []  # no longer detectable
    assert np.array_equal(out[:, 200:], canvas[:, 200:])  # far from the face: untouched
    assert out[40:90, 35:95].std() < face[40:90, 35:95].std() * 0.6  # features smeared


def test_no_face_returns_the_input_unchanged():
    img = np.asarray(random_rgb(3, (64, 64)))
    out, n = redact_faces(img, 24)
    assert n == 0 and out is img


def test_blur_regions_with_a_given_box():
    img = np.asarray(random_rgb(9, (64, 64)))
    out = blur_regions(img, [(16, 16, 32, 32)], margin=0.0)
    assert np.array_equal(out[:16], img[:16]) and np.array_equal(out[:, 48:], img[:, 48:])
    assert out[16:48, 16:48].std() < img[16:48, 16:48].std() * 0.5
    # a box running off the image (grown by 25 px each side) is clipped, not an error
    edge = blur_regions(img, [(60, 60, 50, 50)], margin=0.5)
    assert np.array_equal(edge[:35], img[:35]) and np.array_equal(edge[:, :35], img[:, :35])
    assert not np.array_equal(edge[35:, 35:], img[35:, 35:])
    assert out.dtype == np.uint8 and out.shape == img.shape
