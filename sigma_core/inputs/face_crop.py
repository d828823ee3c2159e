"""Auto face crop for identity (``<id>``) references, as DreamO, PuLID and XVerse crop theirs,
with no network: OpenCV's frontal-face Haar cascade, whose model file ships inside the
``opencv-python-headless`` wheel (``cv2.data.haarcascades``; 4.x wheels only, 5.x ship none).

The crop it returns is a reference's ``crop`` exactly: ``(left, top, right, bottom)`` in whole
pixels of the upright image (after EXIF orientation, as :func:`load_image` reads it), inside the
image, so it goes straight into a slot's crop and through the checks every crop passes.

How the box is chosen:

* The image is read by :func:`load_image` (its byte and pixel limits first), turned grey and
  scaled so its long side is :data:`DETECT_SIDE` pixels (at most :data:`MAX_UPSCALE` times up):
  the work is the same for any image, and an image and its 2x enlargement are searched alike.
* Faces smaller than :data:`MIN_FACE` pixels there (about 4% of the long side) are not looked
  for: they are no identity reference.
* Of the faces found, the largest among the confident ones is taken: a face scoring
  :data:`SCORE_MARGIN` below the best is a likelier false find than a smaller confident face.
* The crop is the square that facexlib's FFHQ alignment (DreamO and PuLID) cuts for that face:
  :data:`CROP_SCALE` times the face box's side, its centre :data:`CROP_LIFT` box sides above
  the box's, then moved (and, in a small image, shrunk) to lie inside the image, keeping the
  face box whole whenever it fits.

No face is a normal answer (``None``); :func:`face_crop_note` words both answers for the user.
``cv2`` is imported on first use, so importing this module costs nothing.
"""

from __future__ import annotations

import functools
import numbers
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from sigma_core.errors import ImageInputError, SigmaInputError
from sigma_core.inputs.images import DEFAULT_LIMITS, ImageLimits, ImageSource, load_image

Box = tuple[int, int, int, int]  # left, top, right, bottom: a reference's crop

OPENCV_REQUIREMENT = "opencv-python-headless>=4.8,<5"  # as requirements.txt names it
CASCADE_FILE = "haarcascade_frontalface_default.xml"
DETECT_SIDE = 640  # the long side the search runs at
MAX_UPSCALE = 4.0  # a small image is enlarged at most this much for the search
MIN_FACE = 24  # pixels at DETECT_SIDE: the cascade's own window
SCALE_STEP = 1.1  # OpenCV's default pyramid step
MIN_NEIGHBORS = 6  # overlapping hits a face needs (OpenCV's default 3 finds faces in textures)
SCORE_MARGIN = 2.0  # faces scoring this far below the best are not picked
# facexlib's FFHQ template (512 px: eyes at (193, 240) and (319, 240), nose (257, 314), mouth
# corners (201, 371) and (313, 371)), fitted by cv2.estimateAffinePartial2D (LMEDS, as facexlib
# does) to the five points of the face in assets/astronaut.png, puts the 512 px square at 1.71
# times the cascade's box, centred 0.075 box sides above the box's centre.
CROP_SCALE = 1.7
CROP_LIFT = 0.075

_DETECT_LOCK = threading.Lock()  # one CascadeClassifier is not safe to share between threads


@dataclass(frozen=True)
class Face:
    """A face the detector found: its box in pixels of the upright image, and its score (the
    cascade's last-stage sum: higher is surer; compare scores within one image only)."""

    box: Box
    score: float

    @property
    def side(self) -> int:
        """The box's longer side in pixels (the cascade's boxes are square, up to rounding)."""
        return max(self.box[2] - self.box[0], self.box[3] - self.box[1])


def face_detection_available() -> tuple[bool, str]:
    """Whether :func:`face_crop` can run here, and why not (or which detector it uses)."""
    try:
        _cascade()
    except SigmaInputError as e:
        return False, str(e)
    return True, f"OpenCV's {CASCADE_FILE}, shipped in the opencv-python-headless wheel"


def detect_faces(
    image: ImageSource, *, limits: ImageLimits = DEFAULT_LIMITS, name: str = "image"
) -> list[Face]:
    """The frontal faces in ``image``, the one :func:`face_crop` picks first, then by score.

    ``image`` is any source :func:`load_image` reads; a bad one raises its ImageInputError
    (named ``name``), a machine without the detector a SigmaInputError saying what to install.
    """
    cascade = _cascade()  # a machine without the detector is told so before decoding
    return _detect(cascade, load_image(image, limits=limits, name=name), name)


def face_crop(
    image: ImageSource, *, limits: ImageLimits = DEFAULT_LIMITS, name: str = "image"
) -> Box | None:
    """The crop of an identity reference: a square around the face :func:`detect_faces` picks,
    as (left, top, right, bottom) pixels of the upright image; None when there is no face."""
    cascade = _cascade()
    img = load_image(image, limits=limits, name=name)
    faces = _detect(cascade, img, name)
    return crop_around_face(faces[0].box, img.size) if faces else None


def crop_around_face(face: Box, size: tuple[int, int]) -> Box:
    """The square crop for a face box in an image of ``size`` (width, height): side
    CROP_SCALE times the face's (at most the image's shorter side), centred CROP_LIFT face sides
    above the face's centre, moved inside the image; it holds the whole face box whenever the
    face box fits in a square of that side."""
    width, height = _check_size(size)
    left, top, right, bottom = _check_face(face, width, height)
    f = max(right - left, bottom - top)
    side = min(max(round(CROP_SCALE * f), f), width, height)
    x = _place((left + right) / 2 - side / 2, side, left, right, width)
    y = _place((top + bottom) / 2 - CROP_LIFT * f - side / 2, side, top, bottom, height)
    return (x, y, x + side, y + side)


def face_crop_note(slot: int, crop: Box | None) -> str:
    """What the user is told after an auto face crop of slot ``slot``."""
    if crop is None:
        return f"no face found in slot {slot}'s image: the whole image is used"
    left, top, right, bottom = crop
    return (
        f"slot {slot}: cropped to the face ({left}, {top}, {right}, {bottom}: "
        f"{right - left}×{bottom - top} pixels); clear the crop to use the whole image"
    )


# ----------------------------------------------------------------------------- helpers


@functools.cache
def _cascade() -> Any:
    """OpenCV's frontal-face cascade, loaded once; a SigmaInputError says what is missing."""
    install = f'install it with pip install "{OPENCV_REQUIREMENT}" (in requirements.txt)'
    try:
        import cv2
    except ImportError as exc:
        raise SigmaInputError(
            f"face detection needs OpenCV, which is not installed ({exc}); {install}"
        ) from None
    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    cascade = cv2.CascadeClassifier(folder + CASCADE_FILE) if folder else None
    if cascade is None or cascade.empty():
        raise SigmaInputError(
            f"face detection needs {CASCADE_FILE}, which this OpenCV ({cv2.__version__}) does "
            f"not ship (OpenCV 5 wheels ship no Haar cascades); {install}"
        )
    return cascade


def _detect(cascade: Any, img: Image.Image, name: str) -> list[Face]:
    """The faces in a loaded image, best first (see :func:`detect_faces`)."""
    grey, scale_x, scale_y = _search_image(img)
    if min(grey.shape) < MIN_FACE:
        return []
    with _DETECT_LOCK:
        try:
            rects, _, weights = cascade.detectMultiScale3(
                grey,
                scaleFactor=SCALE_STEP,
                minNeighbors=MIN_NEIGHBORS,
                minSize=(MIN_FACE, MIN_FACE),
                outputRejectLevels=True,
            )
        except Exception as exc:  # cv2.error: OpenCV refused the image
            raise ImageInputError(f"{name}: face detection failed ({exc})") from None
    faces = [
        Face(_image_box(rect, scale_x, scale_y, img.size), float(weight))
        for rect, weight in zip(rects, np.ravel(weights), strict=True)
    ]
    return _best_first(faces)


def _search_image(img: Image.Image) -> tuple[np.ndarray, float, float]:
    """The grey image the search runs on, long side DETECT_SIDE, and its scale per axis."""
    scale = min(DETECT_SIDE / max(img.size), MAX_UPSCALE)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    grey = img.convert("L")
    if size != grey.size:
        shrink = size[0] < grey.width
        method = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
        grey = grey.resize(size, method)
    return np.asarray(grey), size[0] / img.width, size[1] / img.height


def _image_box(rect: Any, scale_x: float, scale_y: float, size: tuple[int, int]) -> Box:
    """A cascade's (x, y, w, h) at the search scale, as a box of the image, inside it."""
    x, y, w, h = (float(v) for v in rect)
    left = min(max(round(x / scale_x), 0), size[0] - 1)
    top = min(max(round(y / scale_y), 0), size[1] - 1)
    right = min(max(round((x + w) / scale_x), left + 1), size[0])
    bottom = min(max(round((y + h) / scale_y), top + 1), size[1])
    return (left, top, right, bottom)


def _best_first(faces: list[Face]) -> list[Face]:
    """The largest confident face first (confident: within SCORE_MARGIN of the best score),
    then the rest by score; ties broken by position, so the order is the same on every run."""
    if not faces:
        return []
    best = max(face.score for face in faces)

    def key(face: Face) -> tuple[bool, int, float, int, int]:
        confident = face.score >= best - SCORE_MARGIN
        return (not confident, -face.side, -face.score, face.box[1], face.box[0])

    ranked = sorted(faces, key=key)
    return [ranked[0], *sorted(ranked[1:], key=lambda f: (-f.score, f.box[1], f.box[0]))]


def _place(start: float, side: int, low: int, high: int, limit: int) -> int:
    """Where an interval of ``side`` pixels starts: near ``start``, inside [0, limit], and
    holding [low, high] when it can."""
    first, last = max(high - side, 0), min(low, limit - side)
    if first > last:  # the face is longer than the side: stay inside the image
        first, last = 0, limit - side
    return min(max(round(start), first), last)


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _check_size(size: Any) -> tuple[int, int]:
    if not (isinstance(size, tuple | list) and len(size) == 2 and all(map(_is_int, size))):
        raise SigmaInputError(f"image size: expected (width, height) in pixels, got {size!r}")
    width, height = (int(v) for v in size)
    if width < 1 or height < 1:
        raise SigmaInputError(f"image size: {width}x{height} is empty")
    return width, height


def _check_face(face: Any, width: int, height: int) -> Box:
    if not (isinstance(face, tuple | list) and len(face) == 4 and all(map(_is_int, face))):
        raise SigmaInputError(
            f"face box: expected 4 integers (left, top, right, bottom), got {face!r}"
        )
    left, top, right, bottom = (int(v) for v in face)
    if not (0 <= left < right <= width and 0 <= top < bottom <= height):
        raise SigmaInputError(
            f"face box: ({left}, {top}, {right}, {bottom}) is empty or outside the image, "
            f"which is {width}x{height} pixels"
        )
    return (left, top, right, bottom)
