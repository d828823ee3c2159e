"""Import an XVerseBench folder, already on disk, as a benchmark (nothing is downloaded).

``python -m sigma_core.evaluation.xverse SRC OUT``. XVerseBench (bytedance/XVerse) lists its
items in ``eval/tools/XVerseBench_single.json`` and ``XVerseBench_multi.json``: each a
``prompt`` and, under ``modulation[].src_inputs``, the reference images (``image_path``,
relative to the checkout, in ``assets/XVerseBench/{human,object,animal}/``) with a caption,
and ``use_words`` ``[reference index, word, word]``: the word of the prompt that names each
reference. Each item becomes a "combine" line: the word is replaced by the slot (``[k]``, its
entity the word), a human by ``<id>``, anything else ``<subject>``; every reference is
"wanted". Images are copied into OUT/images/, so OUT is a self-contained benchmark. An item
whose word is not in its prompt is left out, and said so.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from sigma_core.errors import SigmaError, SigmaInputError
from sigma_core.evaluation.benchmark import MANIFEST, load_benchmark
from sigma_core.inputs.bounded import read_bounded
from sigma_core.inputs.composition import resolve_image_path
from sigma_core.inputs.images import read_image_bytes
from sigma_core.inputs.outfile import (
    check_output_folder,
    staged_folder,
    write_atomic,
    write_text_atomic,
)
from sigma_core.inputs.preset import PRESET_FORMAT, PRESET_VERSION, parse_json
from sigma_core.inputs.records import (
    Anything,
    Fixed,
    Int,
    Obj,
    Seq,
    Str,
    check_record,
)
from sigma_core.limits import MAX_BENCHMARK_BYTES

LISTS = ("XVerseBench_single.json", "XVerseBench_multi.json")
_SOURCE = Obj({"image_path": Str(), "caption": Str()})
_ITEM = Obj(
    {
        "index": Int(),
        "prompt": Str(),
        "modulation": Seq(
            Obj(
                {
                    "type": Str(),
                    "src_inputs": Seq(_SOURCE),
                    "use_words": Seq(Fixed((Int(), Str(), Str()))),
                }
            )
        ),
        "input_images": Anything(),
        "position_delta": Anything(),
    },
    optional=("input_images", "position_delta"),
)


def _lists(src: Path) -> list[Path]:
    found = [
        d / name for d in (src / "eval" / "tools", src) for name in LISTS if (d / name).is_file()
    ]
    if not found:
        raise SigmaInputError(
            f"SRC {str(src)!r}: no {' or '.join(LISTS)} in it or in its eval/tools/ (an XVerse "
            "checkout)"
        )
    return found


def _read_list(path: Path) -> list[Any]:
    data = read_bounded(path, MAX_BENCHMARK_BYTES, what="XVerseBench list", error=SigmaInputError)
    items = parse_json(
        data.decode("utf-8", "replace"),
        str(path),
        error=SigmaInputError,
        needs="XVerseBench nests 6",
    )
    check_record(items, Seq(_ITEM), str(path), error=SigmaInputError)
    return items


def _line(raw: dict[str, Any], prefix: str, src: Path, out: Path) -> dict[str, Any] | None:
    """The benchmark line of one XVerseBench item (None when a word is not in its prompt)."""
    prompt, refs = raw["prompt"], list[dict[str, Any]]()
    for mod in raw["modulation"]:
        for index, word, _ in mod["use_words"]:
            if not 0 <= index < len(mod["src_inputs"]):
                raise SigmaInputError(f"{prefix}-{raw['index']}: use_words names input {index}")
            slot = len(refs) + 1
            prompt, found = re.subn(
                rf"\b{re.escape(word)}\b", f"[{slot}]", prompt, count=1, flags=re.IGNORECASE
            )
            if not found:
                return None
            refs.append(_reference(slot, mod["src_inputs"][index]["image_path"], word, src, out))
    preset = {
        "format": PRESET_FORMAT,
        "version": PRESET_VERSION,
        "name": raw["prompt"][:200],
        "prompt": prompt,
        "references": refs,
    }
    return {
        "id": f"{prefix}-{raw['index']:03d}",
        "family": "combine",
        "preset": preset,
        "references": {str(r["slot"]): {"role": "wanted"} for r in refs},
    }


def _reference(slot: int, image_path: str, word: str, src: Path, out: Path) -> dict[str, Any]:
    """The slot's preset reference, its image copied under OUT/images/<category>/."""
    real = resolve_image_path(image_path, [src], field_name="image_path")
    data = read_image_bytes(real, name="image_path")
    rel = f"images/{real.parent.name}/{real.name}"
    if not (out / rel).is_file():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out / rel, lambda f: f.write(data), overwrite=True)
    attribute = "<id>" if real.parent.name == "human" else "<subject>"
    return {"slot": slot, "image": rel, "attributes": [attribute], "entity": word, "crop": None}


def import_xverse(src: str | Path, out: str | Path) -> tuple[Path, list[str]]:
    """Write XVerseBench at ``src`` as the benchmark ``out`` (a new or empty folder); returns
    the manifest and the ids of the items left out. Written into a private folder and moved in
    place once it reads back as a benchmark: a failed import leaves nothing."""
    src = Path(src)
    # needed_bytes 0: the copy's size is known only as it is read; a disk that fills up
    # while copying is a SigmaResourceError, and the private folder goes
    out = check_output_folder(out, overwrite=False, needed_bytes=0, what="OUT")
    lists = _lists(src)
    lines, left_out = [], []
    with staged_folder(out) as staging:
        for path in lists:
            prefix = path.stem.removeprefix("XVerseBench_")
            for raw in _read_list(path):
                line = _line(raw, prefix, src, staging)
                if line is None:
                    left_out.append(f"{prefix}-{raw['index']:03d}")
                else:
                    lines.append(line)
        text = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
        write_text_atomic(staging / MANIFEST, text)
        load_benchmark(staging)  # what was written reads back as a benchmark
    return out / MANIFEST, left_out


def main(argv: list[str] | None = None) -> int:
    """``python -m sigma_core.evaluation.xverse SRC OUT``: exit 0, or 2 with the reason."""
    parser = argparse.ArgumentParser(
        prog="python -m sigma_core.evaluation.xverse",
        description="import XVerseBench as a benchmark",
    )
    parser.add_argument("src", metavar="SRC", help="an XVerse checkout with XVerseBench's images")
    parser.add_argument("out", metavar="OUT", help="the benchmark folder to write (new or empty)")
    args = parser.parse_args(argv)
    try:
        manifest, left_out = import_xverse(args.src, args.out)
    except SigmaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if left_out:
        print(f"left out (a word not in the prompt): {', '.join(left_out)}", file=sys.stderr)
    print(f"wrote {manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
