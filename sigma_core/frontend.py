"""What a front end needs beyond the engine (:mod:`sigma_core`): the words and tables it shows,
the bounds its controls offer, and the helpers that read what users give (and prepare it: the
auto face crop of an ``<id>`` reference, background removal where a model is installed).

The studio imports this module and :mod:`sigma_core` only (import-linter holds it to that), so
a control never offers what the core refuses and a message never differs from the CLI's. Names
load on first use, as in :mod:`sigma_core`: the flags of ``python app.py`` are checked without
torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sigma_core.lazy import lazy_package

if TYPE_CHECKING:  # the names; they load on first use (sigma_core.lazy)
    from sigma_core.geometry import latent_grid as latent_grid
    from sigma_core.inputs.attributes import (
        ATTRIBUTES as ATTRIBUTES,
        DESCRIPTIONS as DESCRIPTIONS,
        find_attribute_tokens as find_attribute_tokens,
    )
    from sigma_core.inputs.background import (
        background_removal_available as background_removal_available,
        remove_background as remove_background,
    )
    from sigma_core.inputs.face_crop import (
        Face as Face,
        crop_around_face as crop_around_face,
        detect_faces as detect_faces,
        face_crop as face_crop,
        face_crop_note as face_crop_note,
        face_detection_available as face_detection_available,
    )
    from sigma_core.inputs.images import (
        embeddable_bytes as embeddable_bytes,
        image_format as image_format,
        load_image as load_image,
        vae_resize as vae_resize,
    )
    from sigma_core.inputs.preset import (
        dumps_preset as dumps_preset,
        loads_preset as loads_preset,
    )
    from sigma_core.inputs.prompt import (
        is_raw as is_raw,
        placed_slots as placed_slots,
        renumber_slots as renumber_slots,
    )
    from sigma_core.inputs.settings import (
        LAYOUT_CHOICES as LAYOUT_CHOICES,
        SETTING_SPECS as SETTING_SPECS,
        SettingSpec as SettingSpec,
        describe_layout as describe_layout,
    )
    from sigma_core.limits import (
        MAX_ENTITY_CHARS as MAX_ENTITY_CHARS,
        MAX_IMAGE_BYTES as MAX_IMAGE_BYTES,
        MAX_NAME_CHARS as MAX_NAME_CHARS,
        MAX_PROMPT_CHARS as MAX_PROMPT_CHARS,
        MAX_REFERENCES as MAX_REFERENCES,
        MAX_SEED as MAX_SEED,
    )
    from sigma_core.model.modes import (
        FLAG_HELP as FLAG_HELP,
        OFFLOAD_HELP as OFFLOAD_HELP,
        OFFLOAD_MODES as OFFLOAD_MODES,
        PRECISION_HELP as PRECISION_HELP,
        PRECISIONS as PRECISIONS,
        VAE_DTYPES as VAE_DTYPES,
    )
    from sigma_core.report.mask_picture import (
        GROUP_COLORS as GROUP_COLORS,
        mask_png as mask_png,
    )
    from sigma_core.report.plan_report import plan_report as plan_report
    from sigma_core.runtime.device import available_memory as available_memory
    from sigma_core.runtime.live_preview import LIVE_PREVIEW_TENSORS as LIVE_PREVIEW_TENSORS
    from sigma_core.runtime.loader import BAGEL_REPO as BAGEL_REPO
    from sigma_core.runtime.output import PREVIEW_NOTICE as PREVIEW_NOTICE

if not TYPE_CHECKING:  # type checkers see the imports above; a misspelt name is an error
    __all__, __getattr__, __dir__ = lazy_package(__name__)
