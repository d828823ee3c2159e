"""User input: attributes, images, compositions and their settings, presets, PNG metadata, and
the prompt syntaxes. Everything here checks what a user gave and names the field that is wrong."""

from sigma_core.inputs.attributes import (
    ALIASES,
    ATTRIBUTES,
    DESCRIPTIONS,
    find_attribute_tokens,
    normalize_attribute,
)
from sigma_core.inputs.composition import PROJECT_ASSETS, Composition, Reference
from sigma_core.inputs.images import ImageLimits, embeddable_bytes, load_image, vae_resize
from sigma_core.inputs.outfile import check_output_path, check_run_folder
from sigma_core.inputs.preset import (
    PRESET_FORMAT,
    PRESET_VERSION,
    dumps_preset,
    load_composition,
    load_preset,
    loads_preset,
    parse_json,
    read_png_composition,
    save_preset,
    write_png,
)
from sigma_core.inputs.prompt import (
    IMAGE_PLACEHOLDER,
    SLOT_REFERENCE,
    is_raw,
    placed_slots,
    renumber_slots,
    split_prompt,
)
from sigma_core.inputs.settings import RENORM_TYPES, Settings

__all__ = [
    "ALIASES",
    "ATTRIBUTES",
    "DESCRIPTIONS",
    "IMAGE_PLACEHOLDER",
    "PRESET_FORMAT",
    "PRESET_VERSION",
    "PROJECT_ASSETS",
    "RENORM_TYPES",
    "SLOT_REFERENCE",
    "Composition",
    "ImageLimits",
    "Reference",
    "Settings",
    "check_output_path",
    "check_run_folder",
    "dumps_preset",
    "embeddable_bytes",
    "find_attribute_tokens",
    "is_raw",
    "load_composition",
    "load_image",
    "load_preset",
    "loads_preset",
    "normalize_attribute",
    "parse_json",
    "placed_slots",
    "read_png_composition",
    "renumber_slots",
    "save_preset",
    "split_prompt",
    "vae_resize",
    "write_png",
]
