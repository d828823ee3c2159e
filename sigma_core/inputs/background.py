"""Optional background removal for ``<subject>`` references (DreamO and XVerse cut their subjects
out onto white), only where a model is already on this machine: ``rembg`` (not a dependency of
sigma-studio) with U²-Net's ONNX file in rembg's model folder. Nothing is ever downloaded: the
file is found first and handed to rembg as a custom model (``u2net_custom`` with its
``model_path``), a session rembg opens from that path without fetching anything.

:func:`background_removal_available` says whether it can run and, when not, what to install and
where the model file goes, for a front end to show beside a hidden button.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from pathlib import Path
from typing import Any

from PIL import Image

from sigma_core.errors import SigmaInputError
from sigma_core.inputs.images import DEFAULT_LIMITS, ImageLimits, ImageSource, load_image

REMBG_INSTALL = 'pip install "rembg[cpu]"'  # rembg's own line ("rembg[gpu]" with CUDA)
MODEL_FILES = ("u2net.onnx", "u2netp.onnx")  # U²-Net and its small version: one pre-processing
MODEL_URL = "https://github.com/danielgatis/rembg/releases/download/v0.0.0/u2net.onnx"
CUSTOM_SESSION = "u2net_custom"  # rembg's session for a model file it is given
WHITE = (255, 255, 255)


def model_folder() -> Path:
    """The folder rembg reads models from: ``$U2NET_HOME``, else ``$XDG_DATA_HOME/.u2net``,
    else ``~/.u2net``."""
    home = os.environ.get("U2NET_HOME") or os.path.join(
        os.environ.get("XDG_DATA_HOME", "~"), ".u2net"
    )
    return Path(os.path.expanduser(home))


def background_removal_available() -> tuple[bool, str]:
    """Whether :func:`remove_background` can run here without a network, and why not (what to
    install, where the model goes) or which model it uses."""
    model, reason = _status()
    return model is not None, reason


def remove_background(
    image: ImageSource,
    *,
    background: tuple[int, int, int] = WHITE,
    limits: ImageLimits = DEFAULT_LIMITS,
    name: str = "image",
) -> Image.Image:
    """``image`` (any source :func:`load_image` reads, its limits checked first) with its
    background replaced by ``background`` (white by default, as BAGEL composites alpha): RGB,
    the same size. Raises a SigmaInputError naming what to install when it cannot run."""
    fill = _check_colour(background)
    model, reason = _status()
    if model is None:
        raise SigmaInputError(reason)
    img = load_image(image, limits=limits, name=name)
    mask = _mask(_session(str(model)), img, name)
    out = Image.new("RGB", img.size, fill)
    out.paste(img, mask=mask)
    return out


# ----------------------------------------------------------------------------- helpers


def _status() -> tuple[Path | None, str]:
    """The model file when background removal can run, and what to tell the user either way."""
    missing = _missing_packages()
    model = _model_file()
    if not missing and model is not None:
        return model, f"rembg with the U²-Net model {model}"
    folder = model_folder()
    needs = []
    if missing:
        packages = " and ".join(missing)
        needs.append(f"{packages}, which sigma-studio does not install ({REMBG_INSTALL})")
    if model is None:
        needs.append(
            f"the model file {MODEL_FILES[0]} (176 MB, {MODEL_URL}) or {MODEL_FILES[1]} in "
            f"{folder} (rembg's model folder; set U2NET_HOME to use another)"
        )
    return None, (
        f"background removal is not available: it needs {'; and '.join(needs)}. sigma-studio "
        "never downloads a model while it runs"
    )


def _missing_packages() -> list[str]:
    """rembg and onnxruntime, those not installed (found without importing them)."""
    return [name for name in ("rembg", "onnxruntime") if importlib.util.find_spec(name) is None]


def _model_file() -> Path | None:
    """The first of MODEL_FILES present in rembg's model folder."""
    folder = model_folder()
    return next((folder / f for f in MODEL_FILES if (folder / f).is_file()), None)


@functools.cache
def _session(model_path: str) -> Any:
    """rembg's session for the U²-Net file at ``model_path``, opened once: a custom model, so
    rembg reads that file and never fetches one of its own. An older rembg without custom models
    would take the name for its default model and download it, so it is refused first."""
    try:
        known = importlib.import_module("rembg.sessions").sessions_class
        if not any(session_class.name() == CUSTOM_SESSION for session_class in known):
            raise SigmaInputError(
                f"background removal: this rembg has no {CUSTOM_SESSION!r} session, the one "
                "that reads a model file without downloading; upgrade it (pip install -U rembg)"
            )
        return importlib.import_module("rembg").new_session(CUSTOM_SESSION, model_path=model_path)
    except SigmaInputError:
        raise
    except Exception as exc:  # no rembg.sessions, a broken onnxruntime, a bad model file
        raise SigmaInputError(
            f"background removal: rembg cannot open {model_path} ({exc}); "
            f"reinstall rembg ({REMBG_INSTALL}) or replace the model file"
        ) from None


def _mask(session: Any, img: Image.Image, name: str) -> Image.Image:
    """The session's foreground mask for ``img``: grey, the image's size."""
    try:
        masks = session.predict(img)
    except Exception as exc:
        raise SigmaInputError(f"{name}: background removal failed ({exc})") from None
    if not masks or not isinstance(masks[0], Image.Image):
        raise SigmaInputError(f"{name}: background removal gave no mask")
    mask = masks[0].convert("L")
    return mask if mask.size == img.size else mask.resize(img.size, Image.Resampling.BILINEAR)


def _check_colour(colour: Any) -> tuple[int, int, int]:
    ok = (
        isinstance(colour, tuple | list)
        and len(colour) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in colour)
    )
    if not ok:
        raise SigmaInputError(
            f"background: expected an RGB colour of three integers 0 to 255, got {colour!r}"
        )
    return (int(colour[0]), int(colour[1]), int(colour[2]))
