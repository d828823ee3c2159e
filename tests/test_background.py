"""Background removal for ``<subject>`` references, which runs only where rembg and a U²-Net
model file are already installed. The "not available" answers are real (rembg is not a
dependency, and the model folder is pointed at an empty one). Where a model would run, it is
faked: a stand-in session returns a known mask, so the compositing is tested exactly; a stand-in
rembg module checks that only the no-download session is ever asked for. No test downloads."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from sigma_core import SigmaInputError, frontend
from sigma_core.errors import ImageInputError
from sigma_core.inputs import background as bg
from tests.image_helpers import encode

RED, GREEN, WHITE = (255, 0, 0), (0, 128, 0), (255, 255, 255)
REMBG_INSTALLED = importlib.util.find_spec("rembg") is not None


@pytest.fixture
def empty_model_folder(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "u2net"
    folder.mkdir()
    monkeypatch.setenv("U2NET_HOME", str(folder))
    return folder


@pytest.fixture
def fresh_sessions():
    bg._session.cache_clear()
    yield
    bg._session.cache_clear()


# --- not available: the real answers -------------------------------------------------------


def test_without_a_model_file_it_is_unavailable_and_says_what_to_install(empty_model_folder):
    ok, reason = frontend.background_removal_available()
    assert not ok
    assert reason.startswith("background removal is not available: it needs ")
    assert f"u2net.onnx (176 MB, {bg.MODEL_URL})" in reason
    assert str(empty_model_folder) in reason and "U2NET_HOME" in reason
    assert "never downloads" in reason
    if not REMBG_INSTALLED:
        assert "rembg" in reason
        assert 'which sigma-studio does not install (pip install "rembg[cpu]")' in reason
    with pytest.raises(SigmaInputError) as caught:
        frontend.remove_background(b"never read: availability is checked first")
    assert str(caught.value) == reason


@pytest.mark.skipif(REMBG_INSTALLED, reason="rembg is installed here")
def test_with_the_model_file_but_no_rembg_it_names_only_the_package(empty_model_folder):
    (empty_model_folder / "u2net.onnx").write_bytes(b"a model file")
    ok, reason = frontend.background_removal_available()
    assert not ok
    assert 'pip install "rembg[cpu]"' in reason and "u2net.onnx (176 MB" not in reason


def test_the_model_folder_is_rembgs(monkeypatch, tmp_path):
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "models"))
    assert bg.model_folder() == tmp_path / "models"
    monkeypatch.delenv("U2NET_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert bg.model_folder() == tmp_path / "data" / ".u2net"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert bg.model_folder() == tmp_path / "home" / ".u2net"


# --- a faked session: the compositing -------------------------------------------------------


class HalfMask:
    """A stand-in for rembg's session (no model runs): the left half is the subject (255), the
    right half background (0), and column 3 half and half (128)."""

    def __init__(self, size: tuple[int, int] | None = None) -> None:
        self.size = size
        self.seen: list[Image.Image] = []

    def predict(self, img: Image.Image) -> list[Image.Image]:
        self.seen.append(img)
        width, height = self.size or img.size
        mask = Image.new("L", (width, height), 0)
        mask.paste(255, (0, 0, width // 2, height))
        if self.size is None:
            mask.paste(128, (3, 0, 4, height))
        return [mask]


@pytest.fixture
def faked_session(empty_model_folder, monkeypatch) -> HalfMask:
    """A model file in the folder, the packages taken as installed, and the faked session."""
    (empty_model_folder / "u2net.onnx").write_bytes(b"a model file")
    session = HalfMask()
    monkeypatch.setattr(bg, "_missing_packages", lambda: [])
    monkeypatch.setattr(bg, "_session", lambda path: session)
    return session


def test_with_a_faked_session_the_subject_is_kept_and_the_rest_is_white(faked_session):
    ok, reason = frontend.background_removal_available()
    assert ok and "u2net.onnx" in reason
    out = frontend.remove_background(Image.new("RGB", (8, 4), RED))
    assert out.mode == "RGB" and out.size == (8, 4)
    assert out.getpixel((0, 0)) == RED and out.getpixel((2, 3)) == RED
    assert out.getpixel((4, 0)) == WHITE and out.getpixel((7, 3)) == WHITE
    assert out.getpixel((3, 1)) == (255, 127, 127)  # 128/255 of red over white
    assert faked_session.seen[0].mode == "RGB" and faked_session.seen[0].size == (8, 4)


def test_with_a_faked_session_a_chosen_background_colour_is_used(faked_session):
    out = frontend.remove_background(encode(Image.new("RGB", (8, 4), RED)), background=GREEN)
    assert out.getpixel((0, 0)) == RED and out.getpixel((6, 2)) == GREEN


def test_with_a_faked_session_the_image_is_read_with_its_limits_and_transparency(faked_session):
    rgba = Image.new("RGBA", (8, 4), (0, 0, 255, 0))  # transparent: composited on white first
    out = frontend.remove_background(rgba, background=GREEN)
    assert out.getpixel((0, 0)) == WHITE and out.getpixel((6, 0)) == GREEN
    with pytest.raises(ImageInputError, match=r"^references\[slot 2\]\.image: .*not an image"):
        frontend.remove_background(b"text, not a picture", name="references[slot 2].image")


def test_a_mask_of_another_size_is_scaled_to_the_image(empty_model_folder, monkeypatch):
    (empty_model_folder / "u2netp.onnx").write_bytes(b"the small model")
    monkeypatch.setattr(bg, "_missing_packages", lambda: [])
    monkeypatch.setattr(bg, "_session", lambda path: HalfMask(size=(4, 2)))
    out = frontend.remove_background(Image.new("RGB", (40, 20), RED))
    assert out.size == (40, 20)
    assert out.getpixel((2, 10)) == RED and out.getpixel((37, 10)) == WHITE


@pytest.mark.parametrize("colour", [(0, 0), (0, 0, 256), (0.0, 0, 0), (True, 0, 0), "white"])
def test_a_background_that_is_no_colour_is_refused(colour):
    with pytest.raises(SigmaInputError, match=r"^background: expected an RGB colour"):
        frontend.remove_background(b"", background=colour)


def test_a_session_that_fails_is_a_clear_error(faked_session, monkeypatch):
    class Broken:
        def predict(self, img: Image.Image) -> list[Any]:
            raise RuntimeError("onnxruntime: bad input")

    monkeypatch.setattr(bg, "_session", lambda path: Broken())
    with pytest.raises(SigmaInputError, match=r"^image: background removal failed \(onnxruntime"):
        frontend.remove_background(Image.new("RGB", (8, 4), RED))


# --- a faked rembg module: only the no-download session is asked for -----------------------


def _fake_rembg(monkeypatch: pytest.MonkeyPatch, session_names: list[str]) -> list[tuple]:
    """Stand-in ``rembg`` and ``rembg.sessions`` modules; returns the new_session calls."""
    calls: list[tuple] = []

    def session_class(name: str) -> type:
        return type(name, (), {"name": classmethod(lambda cls: name)})

    sessions = type(sys)("rembg.sessions")
    sessions.sessions_class = [session_class(n) for n in session_names]
    rembg = type(sys)("rembg")
    rembg.sessions = sessions
    rembg.new_session = lambda *a, **k: calls.append((a, k)) or "session"
    monkeypatch.setitem(sys.modules, "rembg", rembg)
    monkeypatch.setitem(sys.modules, "rembg.sessions", sessions)
    return calls


def test_the_session_is_rembgs_custom_model_at_the_found_file(monkeypatch, fresh_sessions):
    calls = _fake_rembg(monkeypatch, ["u2net", "u2net_custom"])
    assert bg._session("/models/u2net.onnx") == "session"
    assert calls == [(("u2net_custom",), {"model_path": "/models/u2net.onnx"})]


def test_an_old_rembg_without_custom_models_is_refused_before_it_could_download(
    monkeypatch, fresh_sessions
):
    # rembg before custom models read an unknown name as its default model and fetched it
    calls = _fake_rembg(monkeypatch, ["u2net", "u2netp"])
    with pytest.raises(
        SigmaInputError, match=r"has no 'u2net_custom' session.*pip install -U rembg"
    ):
        bg._session("/models/u2net.onnx")
    assert calls == []
