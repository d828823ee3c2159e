"""What a type checker sees of sigma_core's public API: each name of ``sigma_core`` and
``sigma_core.frontend`` with its real type, never Any.

Both packages load their names on first use through a module ``__getattr__`` (typed ``-> Any``,
see :mod:`sigma_core.lazy`), so type checkers see a name only through the package's
``if TYPE_CHECKING:`` block; a name missing there still imports, as Any, and nothing else would
notice. Here every public name meets an ``assert_type``: its class as the defining module gives
it, or what using it gives; an Any fails each one.

Checked, never run: ``mypy sigma_core tests/typecheck`` (CI; docs/testing.md). pytest does not
collect it (not a ``test_*.py`` file).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from typing_extensions import assert_type

import sigma_core
from sigma_core import errors, frontend
from sigma_core.inputs.composition import Composition, Reference
from sigma_core.inputs.face_crop import Face
from sigma_core.inputs.settings import Settings, SettingSpec
from sigma_core.planning.sequence import Plan
from sigma_core.runtime.memory import MemoryEstimate
from sigma_core.runtime.output import CancelToken, SigmaOutput
from sigma_core.runtime.pipeline import SigmaPipeline
from sigma_core.runtime.references import CacheStats


def engine(path: Path, out: Path) -> None:
    """The README's example: a preset through the preview engine, saved."""
    pipe = sigma_core.SigmaPipeline.preview_engine()
    assert_type(pipe, SigmaPipeline)
    assert_type(sigma_core.SigmaPipeline.from_pretrained("some/repo"), SigmaPipeline)
    comp = sigma_core.load_preset(path)
    assert_type(comp, Composition)
    result = pipe(comp, cancel=threading.Event())  # a CancelToken (a protocol)
    assert_type(result, SigmaOutput)
    assert_type(result.save(out), Path)
    several = pipe(comp, num_images_per_prompt=2, generator=[torch.Generator()] * 2)
    assert_type(several.split(), list[SigmaOutput])
    assert_type(several.seeds, list[int])
    assert_type(pipe.encode_references.stats(), CacheStats)
    assert_type(pipe.plan(comp), Plan)
    assert_type(pipe.live_preview({}, size="output"), Image.Image)


def inputs(path: Path, png: Path) -> None:
    """Compositions built in code and read from files."""
    ref = sigma_core.Reference(1, path, attributes=("<identity>",), entity="a cat")
    assert_type(ref, Reference)
    comp = sigma_core.Composition("[1] on a beach", (ref,), sigma_core.Settings(seed=1))
    assert_type(comp, Composition)
    assert_type(sigma_core.Settings().replace(num_timesteps=30), Settings)
    assert_type(sigma_core.load_composition(png), Composition)
    assert_type(sigma_core.read_png_composition(png), Composition)
    assert_type(sigma_core.save_preset(comp, path), Path)
    assert_type(sigma_core.ATTRIBUTES, tuple[str, ...])


def planning(comp: Composition, tokenizer: object) -> None:
    """A plan and a memory estimate, without an engine."""
    assert_type(sigma_core.Plan, type[Plan])
    assert_type(sigma_core.build_plan(comp, tokenizer), Plan)
    pipe = sigma_core.SigmaPipeline.preview_engine()
    need = sigma_core.estimate_memory(pipe.model.config, "bf16", (1024, 1024), 2)
    assert_type(need, MemoryEstimate)
    assert_type(sigma_core.MemoryEstimate, type[MemoryEstimate])
    assert_type(sigma_core.SigmaOutput, type[SigmaOutput])
    assert_type(sigma_core.CancelToken, type[CancelToken])


def error_classes() -> None:
    """What callers catch: the package's classes, not Any (an except clause of Any is silent)."""
    assert_type(sigma_core.SigmaError, type[errors.SigmaError])
    assert_type(sigma_core.SigmaInputError, type[errors.SigmaInputError])
    assert_type(sigma_core.PresetError, type[errors.PresetError])
    assert_type(sigma_core.ImageInputError, type[errors.ImageInputError])
    assert_type(sigma_core.PromptError, type[errors.PromptError])
    assert_type(sigma_core.CheckpointError, type[errors.CheckpointError])
    assert_type(sigma_core.SigmaResourceError, type[errors.SigmaResourceError])
    assert_type(sigma_core.SigmaOutOfMemoryError, type[errors.SigmaOutOfMemoryError])
    assert_type(sigma_core.GenerationCancelled, type[errors.GenerationCancelled])


def front_end_tables() -> None:
    """The vocabulary, settings table, limits and mode names a front end shows."""
    assert_type(frontend.SETTING_SPECS, tuple[SettingSpec, ...])
    assert_type(frontend.SettingSpec, type[SettingSpec])
    assert_type(frontend.SETTING_SPECS[0].bounds(), tuple[float, float])
    assert_type(frontend.describe_layout("training"), str)
    assert_type(frontend.LAYOUT_CHOICES, tuple[str, ...])
    assert_type(frontend.ATTRIBUTES, tuple[str, ...])
    assert_type(frontend.DESCRIPTIONS, dict[str, str])
    assert_type(frontend.MAX_ENTITY_CHARS, int)
    assert_type(frontend.MAX_NAME_CHARS, int)
    assert_type(frontend.MAX_PROMPT_CHARS, int)
    assert_type(frontend.MAX_REFERENCES, int)
    assert_type(frontend.MAX_SEED, int)
    assert_type(frontend.MAX_IMAGE_BYTES, int)
    # fixed-length tuples: an element's type, so that a new name does not change this file
    assert_type(frontend.PRECISIONS[0], str)
    assert_type(frontend.OFFLOAD_MODES[0], str)
    assert_type(frontend.VAE_DTYPES[0], str)
    assert_type(frontend.LIVE_PREVIEW_TENSORS[0], str)
    assert_type(frontend.PRECISION_HELP, str)
    assert_type(frontend.OFFLOAD_HELP, str)
    assert_type(frontend.FLAG_HELP, dict[str, str])
    assert_type(frontend.GROUP_COLORS, tuple[tuple[int, int, int], ...])
    assert_type(frontend.BAGEL_REPO, str)
    assert_type(frontend.PREVIEW_NOTICE, str)


def front_end_helpers(prompt: str, data: bytes, path: Path, plan: Plan, comp: Composition) -> None:
    """What a front end calls on what users type and drop."""
    assert_type(frontend.is_raw(prompt), bool)
    assert_type(frontend.placed_slots(prompt), list[int])
    assert_type(frontend.renumber_slots(prompt, {2: 1}), str)
    assert_type(frontend.find_attribute_tokens(prompt)[0].group(0), str)
    img = frontend.load_image(data)
    assert_type(img, Image.Image)
    assert_type(frontend.vae_resize(img), Image.Image)
    assert_type(frontend.embeddable_bytes(img), bytes)
    assert_type(frontend.image_format(data), str | None)
    assert_type(frontend.latent_grid((512, 512)), tuple[int, int])
    assert_type(frontend.loads_preset(frontend.dumps_preset(comp)), Composition)
    assert_type(frontend.mask_png(plan, path), Path)
    assert_type(frontend.plan_report(plan, comp), dict[str, Any])
    assert_type(frontend.available_memory(torch.device("cpu")), int | None)


def front_end_preprocessing(data: bytes) -> None:
    """The auto face crop and background removal a front end offers for a reference."""
    faces = frontend.detect_faces(data, name="references[slot 1].image")
    assert_type(faces, list[Face])
    assert_type(faces[0].box, tuple[int, int, int, int])
    assert_type(faces[0].score, float)
    assert_type(frontend.Face, type[Face])
    crop = frontend.face_crop(data)
    assert_type(crop, tuple[int, int, int, int] | None)
    assert_type(frontend.crop_around_face((0, 0, 8, 8), (64, 64)), tuple[int, int, int, int])
    assert_type(frontend.face_crop_note(1, crop), str)
    assert_type(frontend.face_detection_available(), tuple[bool, str])
    assert_type(frontend.background_removal_available(), tuple[bool, str])
    assert_type(frontend.remove_background(data, background=(0, 0, 0)), Image.Image)
