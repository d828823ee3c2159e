"""The auto face crop of ``<id>`` references, with the detector's real model: OpenCV's
frontal-face Haar cascade from the opencv-python-headless wheel, on the faces the project ships
(assets/astronaut.png, Eileen Collins) and on images with none (the cat, the coffee, the rocket,
the drawn assets, blank and noise images). Only the "detector missing" tests fake OpenCV.

Drawn faces are not tested: the cascade does not find a face drawn from ellipses (tried: a
skin-coloured oval with eyes, brows, nose and mouth), so a drawn face would test nothing."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image, ImageOps

from sigma_core import Composition, Reference, SigmaInputError, frontend
from sigma_core.errors import ImageInputError
from sigma_core.inputs import face_crop as fc
from sigma_core.inputs.images import ImageLimits, crop_image
from sigma_core.inputs.preset import dumps_preset, loads_preset
from sigma_core.limits import MAX_IMAGE_PIXELS
from studio.forms import parse_crop
from tests.image_helpers import encode, noise_png

ASSETS = Path(__file__).resolve().parent.parent / "assets"
ASTRONAUT = ASSETS / "astronaut.png"
EYES = (224, 102)  # the midpoint of Eileen Collins' eyes in astronaut.png (OpenCV's eye cascade)
NO_FACES = [
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "style_brushstrokes.png",
    "layout_sketch.png",
]
TOLERANCE = 8  # pixels: the cascade's boxes move a little with the pixels it is shown


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.open(ASTRONAUT).convert("RGB")


@pytest.fixture(scope="module")
def astronaut_crop() -> tuple[int, int, int, int]:
    crop = frontend.face_crop(ASTRONAUT)
    assert crop is not None
    return crop


def _inside(box: tuple[int, int, int, int], outer: tuple[int, int, int, int]) -> bool:
    return outer[0] <= box[0] and outer[1] <= box[1] and box[2] <= outer[2] and box[3] <= outer[3]


def _near(a: tuple[int, ...], b: tuple[int, ...], tol: int = TOLERANCE) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


def _holds(box: tuple[int, int, int, int], point: tuple[float, float]) -> bool:
    return box[0] <= point[0] < box[2] and box[1] <= point[1] < box[3]


# --- the real detector on the shipped images ----------------------------------------------------


def test_the_detector_ships_in_the_wheel_and_is_available_here():
    ok, detail = frontend.face_detection_available()
    assert ok, detail
    assert fc.CASCADE_FILE in detail


def test_the_astronaut_has_one_face_and_the_crop_holds_it_inside_the_image(astronaut_crop):
    faces = frontend.detect_faces(ASTRONAUT)
    assert len(faces) == 1
    face = faces[0]
    assert isinstance(face, frontend.Face) and face.score > 0
    assert _holds(face.box, EYES)
    assert 80 <= face.side <= 120  # her face, not her head and shoulders
    left, top, right, bottom = astronaut_crop
    assert all(type(v) is int for v in astronaut_crop)  # plain ints: a preset's JSON holds them
    assert right - left == bottom - top == round(fc.CROP_SCALE * face.side)
    assert _inside(face.box, astronaut_crop)
    assert _inside(astronaut_crop, (0, 0, 512, 512))
    assert astronaut_crop == frontend.crop_around_face(face.box, (512, 512))


@pytest.mark.parametrize("name", NO_FACES)
def test_the_shipped_images_without_people_have_no_face(name):
    assert frontend.face_crop(ASSETS / name) is None
    assert frontend.detect_faces(ASSETS / name) == []


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGB", (512, 512), (128, 128, 128)),
        Image.new("RGB", (1, 1), (255, 255, 255)),
        Image.new("RGB", (16, 300), (0, 0, 0)),
        Image.open(io.BytesIO(noise_png((400, 300)))),
    ],
    ids=["grey", "1x1", "16x300", "noise"],
)
def test_drawn_images_without_a_face_have_none(image):
    assert frontend.face_crop(image) is None


def test_the_crop_is_the_same_on_every_call_and_in_parallel(astronaut_crop):
    results: list[object] = []

    def crop() -> None:
        results.append(frontend.face_crop(ASTRONAUT))

    threads = [threading.Thread(target=crop) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [astronaut_crop] * 4


# --- invariance: the crop follows the face --------------------------------------------------


def test_an_image_twice_the_size_gives_the_crop_twice_the_size(astronaut, astronaut_crop):
    bigger = astronaut.resize((1024, 1024), Image.Resampling.LANCZOS)
    crop = frontend.face_crop(bigger)
    assert crop is not None
    assert _near(crop, tuple(2 * v for v in astronaut_crop))


def test_a_mirrored_image_gives_the_mirrored_crop(astronaut, astronaut_crop):
    crop = frontend.face_crop(ImageOps.mirror(astronaut))
    assert crop is not None
    left, top, right, bottom = astronaut_crop
    assert _near(crop, (512 - right, top, 512 - left, bottom))


@pytest.mark.parametrize("angle", [-10, 10])
def test_a_slightly_tilted_face_is_found(astronaut, angle):
    tilted = astronaut.rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=(128, 128, 128))
    crop = frontend.face_crop(tilted)
    assert crop is not None
    turn = np.deg2rad(angle)  # PIL turns counter-clockwise about the centre
    dx, dy = EYES[0] - 256, EYES[1] - 256
    eyes = (
        256 + dx * np.cos(turn) + dy * np.sin(turn),
        256 - dx * np.sin(turn) + dy * np.cos(turn),
    )
    assert _holds(crop, eyes)


def test_a_face_placed_in_a_larger_picture_gives_the_crop_moved_with_it(astronaut, astronaut_crop):
    canvas = Image.new("RGB", (1500, 1000), (200, 200, 200))
    canvas.paste(astronaut, (700, 300))
    crop = frontend.face_crop(canvas)
    assert crop is not None
    left, top, right, bottom = astronaut_crop
    assert _near(crop, (left + 700, top + 300, right + 700, bottom + 300))


# --- every source and mode load_image reads; the limits and the errors ----------------------


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "I;16", "LA"])
def test_every_colour_mode_gives_the_same_crop(astronaut, astronaut_crop, mode):
    converted = astronaut.convert(mode) if mode != "I;16" else _wide_grey(astronaut)
    crop = frontend.face_crop(converted)
    assert crop is not None and _near(crop, astronaut_crop)


def _wide_grey(img: Image.Image) -> Image.Image:
    grey = np.asarray(img.convert("L"), dtype=np.uint16) * 257
    wide = Image.fromarray(grey)
    assert wide.mode == "I;16"
    return wide


def test_every_kind_of_source_gives_the_same_crop(astronaut, astronaut_crop, tmp_path):
    jpeg = encode(astronaut, "JPEG", quality=95)
    png = ASTRONAUT.read_bytes()
    uri = "data:image/png;base64," + base64.b64encode(png).decode()
    for source in (str(ASTRONAUT), png, uri, np.asarray(astronaut), jpeg):
        crop = frontend.face_crop(source)
        assert crop is not None and _near(crop, astronaut_crop), type(source)


def test_the_crop_is_in_pixels_of_the_upright_image(astronaut, astronaut_crop):
    # Stored on its side with EXIF orientation 6 ("turn 90 degrees clockwise to view"): the
    # crop is in the upright image's pixels, as every crop is.
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = encode(astronaut.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif)
    crop = frontend.face_crop(stored)
    assert crop is not None and _near(crop, astronaut_crop)


def test_an_image_at_the_pixel_limit_is_searched_at_the_detection_size(astronaut):
    side = 8000  # 8000 x 8000 = MAX_IMAGE_PIXELS, the largest image load_image takes
    assert side * side == MAX_IMAGE_PIXELS
    big = Image.new("RGB", (side, side), (90, 90, 90))
    big.paste(astronaut.resize((3000, 3000), Image.Resampling.BILINEAR), (4500, 500))
    crop = frontend.face_crop(big)
    assert crop is not None
    eyes = (4500 + EYES[0] * 3000 / 512, 500 + EYES[1] * 3000 / 512)
    assert _holds(crop, eyes) and _inside(crop, (0, 0, side, side))
    assert crop[2] - crop[0] > 900  # the face's crop at this size, not a speck's


def test_an_image_over_the_pixel_limit_is_refused_before_detection():
    with pytest.raises(ImageInputError, match=r"^references\[slot 2\]\.image: .* over the limit"):
        frontend.face_crop(
            ASTRONAUT, limits=ImageLimits(max_pixels=100_000), name="references[slot 2].image"
        )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not an image at all", "is not an image PIL can read"),
        (noise_png()[:200], "truncated or corrupt"),
        (b"", "empty"),
    ],
    ids=["text", "truncated", "empty"],
)
def test_an_unreadable_image_is_a_clear_image_error(data, message):
    with pytest.raises(ImageInputError, match=rf"^references\[slot 1\]\.image: .*{message}"):
        frontend.face_crop(data, name="references[slot 1].image")


def test_a_missing_file_is_a_clear_image_error(tmp_path):
    with pytest.raises(ImageInputError, match="file not found"):
        frontend.detect_faces(tmp_path / "nobody.png")


# --- the crop goes through the existing crop code -------------------------------------------


def test_the_crop_applied_by_the_composition_shows_the_face_again(astronaut_crop):
    ref = Reference(slot=1, image="astronaut.png", attributes=("<id>",), crop=astronaut_crop)
    comp = Composition(prompt="[1] on the moon", references=(ref,))
    comp.check_images()
    cropped = comp.load_image(ref)
    side = astronaut_crop[2] - astronaut_crop[0]
    assert cropped.size == (side, side)
    faces = frontend.detect_faces(cropped)
    assert faces and faces[0].side > side / 2  # the face fills the crop
    assert loads_preset(dumps_preset(comp)).references[0].crop == astronaut_crop


def test_the_crop_as_the_studio_writes_it_reads_back(astronaut_crop):
    text = ", ".join(map(str, astronaut_crop))  # studio/forms.py's form of a crop
    assert parse_crop(text, 1) == astronaut_crop


def test_the_notes_say_what_was_done():
    assert frontend.face_crop_note(3, None) == (
        "no face found in slot 3's image: the whole image is used"
    )
    note = frontend.face_crop_note(1, (140, 24, 307, 191))
    assert note.startswith("slot 1: cropped to the face (140, 24, 307, 191: 167×167 pixels)")


# --- the geometry, for any face in any image ------------------------------------------------


@st.composite
def faces_in_images(draw: st.DrawFn) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
    width = draw(st.integers(1, 5000))
    height = draw(st.integers(1, 5000))
    left = draw(st.integers(0, width - 1))
    top = draw(st.integers(0, height - 1))
    right = draw(st.integers(left + 1, width))
    bottom = draw(st.integers(top + 1, height))
    return (left, top, right, bottom), (width, height)


@settings(max_examples=400, deadline=None)
@given(faces_in_images())
def test_the_crop_is_a_square_inside_the_image_that_holds_the_face(case):
    face, (width, height) = case
    crop = fc.crop_around_face(face, (width, height))
    left, top, right, bottom = crop
    f = max(face[2] - face[0], face[3] - face[1])
    assert right - left == bottom - top == min(max(round(fc.CROP_SCALE * f), f), width, height)
    assert _inside(crop, (0, 0, width, height))
    if f <= min(width, height):
        assert _inside(face, crop)
    # what every crop passes: the preset's check, the studio's text form, the crop itself
    assert parse_crop(", ".join(map(str, crop)), 1) == crop
    assert crop_image(Image.new("L", (width, height)), crop).size == (right - left, bottom - top)
    assert fc.crop_around_face(face, (width, height)) == crop


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.tuples(*[st.integers(-50, 600)] * 4),
        st.tuples(st.just(0), st.just(0), st.just(10.0), st.just(10)),
        st.tuples(st.booleans(), st.just(0), st.just(10), st.just(10)),
        st.lists(st.integers(0, 10), max_size=6),
        st.none(),
    ),
    st.one_of(
        st.tuples(st.integers(-2, 600), st.integers(-2, 600)),
        st.tuples(st.just(512.0), st.just(512)),
    ),
)
def test_a_face_box_or_size_that_does_not_fit_is_a_clear_input_error(face, size):
    try:
        crop = fc.crop_around_face(face, size)
    except SigmaInputError as e:
        assert str(e).startswith(("face box:", "image size:"))
    else:
        width, height = size
        assert _inside(face, (0, 0, width, height)) and face[0] < face[2] and face[1] < face[3]
        assert _inside(crop, (0, 0, width, height))


# --- without the detector ------------------------------------------------------------------


@pytest.fixture
def fresh_cascade():
    fc._cascade.cache_clear()
    yield
    fc._cascade.cache_clear()


def test_without_opencv_the_message_says_what_to_install(monkeypatch, fresh_cascade):
    monkeypatch.setitem(sys.modules, "cv2", None)  # `import cv2` raises ImportError
    ok, reason = frontend.face_detection_available()
    assert not ok
    assert 'pip install "opencv-python-headless>=4.8,<5"' in reason
    with pytest.raises(SigmaInputError, match="face detection needs OpenCV"):
        frontend.face_crop(b"not even read: the detector is checked first")


def test_an_opencv_without_the_cascade_is_named(monkeypatch, fresh_cascade, tmp_path):
    class Empty:  # a faked OpenCV 5: cv2.data.haarcascades is a folder without the file
        def __init__(self, path: str) -> None:
            self.path = path

        def empty(self) -> bool:
            return True

    fake = type(sys)("cv2")
    fake.__version__ = "5.1.0"
    fake.data = type(sys)("cv2.data")
    fake.data.haarcascades = f"{tmp_path}/"
    fake.CascadeClassifier = Empty
    monkeypatch.setitem(sys.modules, "cv2", fake)
    ok, reason = frontend.face_detection_available()
    assert not ok
    assert "haarcascade_frontalface_default.xml" in reason and "OpenCV (5.1.0)" in reason
    assert "opencv-python-headless>=4.8,<5" in reason


def test_importing_the_front_end_and_the_module_loads_no_opencv():
    code = (
        "import sys, sigma_core.frontend as f, sigma_core.inputs.face_crop, "
        "sigma_core.inputs.background; f.face_crop; f.remove_background; "
        "print(sorted(m for m in ('cv2', 'rembg', 'onnxruntime') if m in sys.modules))"
    )
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]" and done.stderr == ""
