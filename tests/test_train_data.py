"""The training data layer: SIGMA's parquet rows and the project's JSONL manifests read back
exactly, bad rows skipped and counted under their reason, and an order that is deterministic,
resumable and split between ranks without overlap."""

from __future__ import annotations

import base64
import io
import json
import os
import random
import shutil
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from sigma_core import Composition, Reference
from sigma_core.errors import SigmaInputError
from sigma_core.inputs.preset import preset_to_dict
from sigma_core.inputs.prompt import placed_slots
from sigma_core.training.data import DataPosition, TrainDataset
from sigma_core.training.rows import (
    BAD_PRESET,
    BAD_PROMPT,
    MISSING_PLACEHOLDER,
    NO_INSTRUCTION,
    NO_TARGET,
    UNDECODABLE,
    SkipCounter,
    TrainSample,
    sample_from_preset_line,
    sample_from_row,
)
from sigma_core.training.synthetic import (
    make_sample,
    png_bytes,
    write_manifest,
    write_parquet,
    write_shards,
)

SIZE = 32


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def same_image(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and np.array_equal(pixels(a), pixels(b))


def rows_of(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def write_rows(path: Path, rows: list[dict]) -> Path:
    schema = pa.schema(
        [
            ("instruction_list", pa.list_(pa.list_(pa.string()))),
            ("image_list", pa.list_(pa.binary())),
        ]
    )
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def good_row(rng: random.Random) -> dict:
    prompt, refs, target = make_sample(rng, SIZE)
    return {"instruction_list": [[prompt]], "image_list": [png_bytes(im) for im in [*refs, target]]}


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("shards")
    write_shards(folder, 17, size=SIZE, seed=3, rows_per_shard=6)  # 6 + 6 + 5 rows
    return folder


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_manifest(tmp_path_factory.mktemp("manifest"), 5, size=SIZE, seed=4)


def take(ds: TrainDataset, n: int, position: DataPosition | None = None, **kw):
    it = ds.iterate(position, **kw)
    return [next(it) for _ in range(n)]


# ----------------------------------------------------------------------------- round trips


def test_parquet_round_trip(shards: Path) -> None:
    ds = TrainDataset([shards], seed=0)
    assert len(ds) == 17 and [s.rows for s in ds.shards] == [6, 6, 5]
    for index in range(len(ds)):
        path, row = ds.locate(index)
        record = rows_of(path)[row]
        sample = ds.sample(index)
        assert isinstance(sample, TrainSample)
        assert sample.source == f"{path.name} row {row}"
        comp = sample.composition
        assert comp.prompt == record["instruction_list"][0][0]
        images = [Image.open(io.BytesIO(b)) for b in record["image_list"]]
        assert [r.slot for r in comp.references] == list(range(1, len(images)))
        for ref, original in zip(comp.references, images[:-1], strict=True):
            assert ref.image.mode == "RGB" and same_image(ref.image, original)
        assert sample.target.mode == "RGB" and same_image(sample.target, images[-1])
        assert set(placed_slots(comp.prompt)) == {r.slot for r in comp.references}
    assert ds.skipped.total == 0


def test_synthetic_rows_are_deterministic_and_composed(tmp_path: Path) -> None:
    a = write_parquet(tmp_path / "a.parquet", 4, size=SIZE, seed=9)
    b = write_parquet(tmp_path / "b.parquet", 4, size=SIZE, seed=9)
    assert rows_of(a) == rows_of(b)
    prompt, refs, target = make_sample(random.Random(1), 48)
    assert 2 <= len(refs) <= 3 and all(im.size == (48, 48) for im in [*refs, target])
    assert "<subject>" in prompt and "<background>" in prompt
    assert sorted(placed_slots(prompt)) == list(range(1, len(refs) + 1))
    with pytest.raises(SigmaInputError, match="multiple of 16"):
        make_sample(random.Random(1), 40)
    # The target is the backdrop with the subject's colour drawn in: some pixels of it differ.
    background = refs[_roles(prompt).index("<background>")]
    changed = np.any(pixels(target) != pixels(background), axis=-1)
    assert 0 < changed.mean() < 0.5


def _roles(prompt: str) -> list[str]:
    """The attribute token before each <image_k>, in slot order."""
    import re

    found = {int(k): attr for attr, k in re.findall(r"(<\w+>)[^<]*<image_(\d+)>", prompt)}
    return [found[k] for k in sorted(found)]


def test_manifest_round_trip(manifest: Path, tmp_path: Path) -> None:
    ds = TrainDataset([manifest])
    assert len(ds) == 5
    rng = random.Random(4)
    for index in range(5):
        prompt, refs, target = make_sample(rng, SIZE)
        sample = ds.sample(index)
        assert sample is not None and sample.source == f"train.jsonl line {index + 1}"
        assert sample.composition.prompt == prompt
        got = [r.image for r in sample.composition.references]
        assert all(same_image(g, r) for g, r in zip(got, refs, strict=True))
        assert same_image(sample.target, target)
    # Blank lines are ignored (and line numbers still name the right line); data URIs work.
    copy = tmp_path / "m"
    shutil.copytree(manifest.parent, copy)
    lines = (copy / "train.jsonl").read_text(encoding="utf-8").splitlines()
    entry = json.loads(lines[0])
    data = (copy / entry["target"]).read_bytes()
    entry["target"] = "data:image/png;base64," + base64.b64encode(data).decode()
    (copy / "train.jsonl").write_text(
        "\n\n" + json.dumps(entry) + "\n   \n" + lines[1] + "\n", encoding="utf-8"
    )
    ds = TrainDataset([copy / "train.jsonl"])
    assert len(ds) == 2 and [ds.source(i) for i in range(2)] == [
        "train.jsonl line 3",
        "train.jsonl line 5",
    ]
    assert all(ds.sample(i) is not None for i in range(2))


def test_sources_mix_and_are_read_once(shards: Path, manifest: Path) -> None:
    ds = TrainDataset([str(shards), str(manifest), str(shards / "train-0000[01].parquet")])
    assert len(ds) == 17 + 5
    assert len(TrainDataset(str(shards / "*.parquet"))) == 17
    assert len(TrainDataset(shards / "train-00002.parquet")) == 5


def test_missing_or_empty_data_is_fatal(tmp_path: Path) -> None:
    missing = tmp_path / "nope.parquet"
    with pytest.raises(SigmaInputError, match=r"nope.parquet"):
        TrainDataset([missing])
    with pytest.raises(SigmaInputError, match="matches no"):
        TrainDataset([str(tmp_path / "*.parquet")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SigmaInputError, match=r"no .parquet or .jsonl"):
        TrainDataset([tmp_path / "empty"])
    empty = write_rows(tmp_path / "zero.parquet", [])
    with pytest.raises(SigmaInputError, match=r"no rows in .*zero\.parquet"):
        TrainDataset([empty])
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"text": ["a"]}), other)
    with pytest.raises(SigmaInputError, match=r"image_list|instruction_list"):
        TrainDataset([other])
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(SigmaInputError, match=r"junk.parquet"):
        TrainDataset([tmp_path / "junk.parquet"])
    (tmp_path / "blank.jsonl").write_text("\n \n", encoding="utf-8")
    with pytest.raises(SigmaInputError, match="no rows"):
        TrainDataset([tmp_path / "blank.jsonl"])


# ----------------------------------------------------------------------------- bad rows


def test_bad_parquet_rows_are_skipped_and_counted(tmp_path: Path) -> None:
    rng = random.Random(0)
    good = [good_row(rng) for _ in range(3)]
    truncated = good_row(rng)
    truncated["image_list"][0] = truncated["image_list"][0][:60]
    bad_target = good_row(rng)
    bad_target["image_list"][-1] = b"\x89PNG\r\n\x1a\n" + b"\0" * 20
    two = good_row(rng)
    two["image_list"] = [*two["image_list"][:2], two["image_list"][-1]]
    two["instruction_list"] = [["<subject> a <image_1> on <background> <image_5>"]]
    rows = [
        good[0],
        truncated,
        {"instruction_list": [], "image_list": good[0]["image_list"]},
        {"instruction_list": [["   "]], "image_list": good[0]["image_list"]},
        good[1],
        two,
        {
            "instruction_list": [["<subject> a cat <image_1>"]],
            "image_list": [png_bytes(Image.new("RGB", (SIZE, SIZE)))],
        },
        {
            "instruction_list": [["<subject> a <image_1> <|im_end|>"]],
            "image_list": good[0]["image_list"],
        },
        bad_target,
        good[2],
    ]
    ds = TrainDataset([write_rows(tmp_path / "bad.parquet", rows)])
    samples = [ds.sample(i) for i in range(len(ds))]
    assert [i for i, s in enumerate(samples) if s is not None] == [0, 4, 9]
    counts = {reason: d["count"] for reason, d in ds.skipped.as_dict().items()}
    assert counts == {
        UNDECODABLE: 2,
        NO_INSTRUCTION: 2,
        MISSING_PLACEHOLDER: 1,
        NO_TARGET: 1,
        BAD_PROMPT: 1,
    }
    assert ds.skipped.total == 7
    first = ds.skipped.as_dict()[MISSING_PLACEHOLDER]["first"]
    assert first.startswith("bad.parquet row 5:") and "slot 5" in first
    assert "bad.parquet row 1" in ds.skipped.as_dict()[UNDECODABLE]["first"]
    summary = ds.skipped.summary()
    assert summary.startswith("7 rows skipped") and "\n" not in summary
    # Reading a row again (the trainer does after a resume) does not count it twice.
    ds.sample(1), ds.sample(2), ds.sample(1)
    assert ds.skipped.total == 7
    # The stream goes on past them: only good rows come out.
    got = {s.source for _, s in take(ds, 6)}
    assert got == {"bad.parquet row 0", "bad.parquet row 4", "bad.parquet row 9"}


def test_bad_manifest_lines_are_skipped_and_counted(manifest: Path, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    shutil.copytree(manifest.parent, folder)
    lines = (folder / "train.jsonl").read_text(encoding="utf-8").splitlines()
    entry = json.loads(lines[0])
    no_target = {k: v for k, v in entry.items() if k != "target"}
    extra = entry | {"prompt": entry["prompt"] + " and <image_5>"}
    bad_format = entry | {"format": "something-else"}
    gone = entry | {"target": "images/missing.png"}
    outside = entry | {"target": "../escape.png"}
    broken = folder / "images" / "broken.png"
    broken.write_bytes(png_bytes(Image.new("RGB", (SIZE, SIZE)))[:50])
    bad_ref = json.loads(lines[1])
    bad_ref["references"][0]["image"] = "images/broken.png"
    text = "\n".join(
        [
            lines[0],
            "{not json",
            json.dumps(no_target),
            json.dumps(extra),
            json.dumps(bad_format),
            json.dumps(gone),
            json.dumps(outside),
            json.dumps(bad_ref),
            "[1, 2]",
            lines[1],
        ]
    )
    (folder / "bad.jsonl").write_text(text + "\n", encoding="utf-8")
    ds = TrainDataset([folder / "bad.jsonl"])
    samples = [ds.sample(i) for i in range(len(ds))]
    assert [i for i, s in enumerate(samples) if s is not None] == [0, 9]
    counts = {reason: d["count"] for reason, d in ds.skipped.as_dict().items()}
    assert counts == {BAD_PRESET: 5, NO_TARGET: 1, MISSING_PLACEHOLDER: 1, UNDECODABLE: 1}
    assert ds.skipped.as_dict()[BAD_PRESET]["first"].startswith("bad.jsonl line 2:")


# ----------------------------------------------------------------------------- the target placed


def _colours(n: int) -> list[Image.Image]:
    return [Image.new("RGB", (SIZE, SIZE), (40 * k, 200 - 40 * k, 90)) for k in range(n)]


def test_a_row_that_places_the_target_is_trained(tmp_path: Path) -> None:
    """SIGMA's parse_row (SepPhotoTokenIterableDataset) reads a placeholder of the last image
    as the target, generated where it is placed: such a row is a sample, its target's slot
    recorded; a placeholder past the target still has no image."""
    images = _colours(3)  # references 1 and 2, the target
    placed = "<subject> the disc <image_1> turns into <image_3> on <background> the sea <image_2>"
    rows = [
        {"instruction_list": [[placed]], "image_list": [png_bytes(im) for im in images]},
        {
            "instruction_list": [[placed + " <image_4>"]],
            "image_list": [png_bytes(im) for im in images],
        },
    ]
    ds = TrainDataset([write_rows(tmp_path / "placed.parquet", rows)])
    sample = ds.sample(0)
    assert sample is not None and ds.skipped.total == 0
    assert sample.target_slot == 3 and [r.slot for r in sample.composition.references] == [1, 2]
    assert sample.composition.referenced_slots() == [1, 3, 2]
    assert same_image(sample.target, images[2])
    assert all(same_image(sample.images[k], images[k - 1]) for k in (1, 2))
    assert ds.sample(1) is None
    assert ds.skipped.as_dict() == {
        MISSING_PLACEHOLDER: {
            "count": 1,
            "first": "placed.parquet row 1: places slot 4; images: 1, 2, 3",
        }
    }
    assert [s.source for _, s in take(ds, 2)] == ["placed.parquet row 0"] * 2


def test_a_manifest_line_that_places_the_target_is_trained(tmp_path: Path) -> None:
    """A manifest line's target takes the slot after its highest reference slot (a gap in the
    slots stays a gap): placed there, it is generated there, as in a parquet row."""
    images = _colours(3)
    for name, im in zip(("a.png", "b.png", "t.png"), images, strict=True):
        (tmp_path / name).write_bytes(png_bytes(im))
    refs = (Reference(1, "a.png"), Reference(3, "b.png"))

    def line(prompt: str) -> str:
        return json.dumps(preset_to_dict(Composition(prompt, refs)) | {"target": "t.png"})

    lines = [
        line("<subject> the disc <image_1> becomes <image_4> by <background> the sea <image_3>"),
        line("<subject> the disc <image_1> and <image_2>"),  # slot 2: a gap, no image
        line("<subject> the disc <image_1> and <image_5>"),  # past the target
    ]
    (tmp_path / "placed.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    ds = TrainDataset([tmp_path / "placed.jsonl"])
    sample = ds.sample(0)
    assert sample is not None and sample.target_slot == 4
    assert sample.composition.referenced_slots() == [1, 4, 3]
    assert same_image(sample.target, images[2])
    assert ds.sample(1) is None and ds.sample(2) is None
    assert ds.skipped.count(MISSING_PLACEHOLDER) == 2 and ds.skipped.total == 2


def test_hugging_face_image_cells_and_loose_instructions_are_read() -> None:
    """Shards re-saved by the datasets library hold images as {"bytes", "path"} and may hold
    the instruction one level less deep."""
    row = good_row(random.Random(8))
    prompt = row["instruction_list"][0][0]
    loose = {
        "instruction_list": [["", prompt]],
        "image_list": [{"bytes": b, "path": None} for b in row["image_list"]],
    }
    flat = {"instruction_list": [prompt], "image_list": row["image_list"]}
    for variant in (loose, flat):
        skipped = SkipCounter()
        sample = sample_from_row(variant, "x row 0", skipped)
        assert sample is not None and sample.composition.prompt == prompt, skipped.summary()


def test_all_bad_data_stops_with_a_message(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "bad.parquet", [{"instruction_list": [], "image_list": []}] * 3)
    with pytest.raises(SigmaInputError, match=r"could not be used.*no instruction"):
        next(TrainDataset([path]).iterate())


# ----------------------------------------------------------------------------- order


def test_order_is_a_seeded_permutation_by_shard(shards: Path, manifest: Path) -> None:
    ds = TrainDataset([shards, manifest], seed=5)
    n = len(ds)
    orders = [ds.order(e) for e in range(4)]
    for order in orders:
        assert sorted(order) == list(range(n))
        # Rows of a file come together: each file is entered once per epoch.
        files = [ds.locate(i)[0] for i in order]
        runs = [f for k, f in enumerate(files) if k == 0 or files[k - 1] != f]
        assert len(runs) == len(set(files)) == 4
    assert len({tuple(o) for o in orders}) == 4
    assert TrainDataset([shards, manifest], seed=5).order(2) == orders[2]
    assert TrainDataset([shards, manifest], seed=6).order(2) != orders[2]
    assert ds.order(0) == orders[0]  # asking again (another epoch was cached) gives the same


def test_stream_follows_the_order_across_epochs(shards: Path) -> None:
    ds = TrainDataset([shards], seed=1)
    got = take(ds, 40)
    want = ds.order(0) + ds.order(1) + ds.order(2)
    assert [s.source for _, s in got] == [ds.source(i) for i in want[:40]]
    assert got[16][0] == DataPosition(1, 0) and got[17][0] == DataPosition(1, 1)


def _mixed(tmp_path: Path) -> TrainDataset:
    rng = random.Random(2)
    rows = [good_row(rng) for _ in range(14)]
    for i in (2, 7, 8):
        rows[i] = {"instruction_list": [], "image_list": rows[i]["image_list"]}
    write_rows(tmp_path / "a.parquet", rows[:9])
    write_rows(tmp_path / "b.parquet", rows[9:])
    return TrainDataset([tmp_path], seed=11)


def test_resume_continues_exactly(tmp_path: Path) -> None:
    ds = _mixed(tmp_path)
    stream = take(ds, 30)  # 11 good rows an epoch: nearly three epochs
    for k in (0, 3, 10, 11, 17, 29):
        position = stream[k][0]
        rest = take(_mixed(tmp_path), 30 - k - 1, position)
        assert [s.source for _, s in rest] == [s.source for _, s in stream[k + 1 :]]
        assert [p for p, _ in rest] == [p for p, _ in stream[k + 1 :]]
    # A position past the end (the data shrank since the checkpoint) starts the next epoch.
    late = take(_mixed(tmp_path), 3, DataPosition(1, 10**6))
    assert [s.source for _, s in late] == [
        s.source for p, s in stream if p.epoch == 2 and p.cursor
    ][:3]


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_split_the_order_without_overlap(shards: Path, world: int) -> None:
    ds = TrainDataset([shards], seed=7)
    order = ds.order(0)
    seen: list[str] = []
    for rank in range(world):
        mine = [s.source for p, s in take(ds, len(range(rank, 17, world)), rank=rank, world=world)]
        assert mine == [ds.source(i) for i in order[rank::world]]
        seen += mine
    assert sorted(seen) == sorted(ds.source(i) for i in range(17))
    # A rank resumes from its own position.
    stream = take(ds, 5, rank=1, world=world)
    again = take(ds, 2, stream[2][0], rank=1, world=world)
    assert [s.source for _, s in again] == [s.source for _, s in stream[3:]]
    with pytest.raises(SigmaInputError, match="rank"):
        next(ds.iterate(rank=world, world=world))


def test_positions_are_checked() -> None:
    with pytest.raises(SigmaInputError, match="cursor"):
        DataPosition(0, -1)
    assert DataPosition(**{"epoch": 2, "cursor": 5}) == DataPosition(2, 5)


def test_skip_counter() -> None:
    c = SkipCounter()
    assert c.total == 0 and c.summary() == "no rows skipped"
    c.skip("over the token budget", "a.parquet row 1", "31,000 tokens > 30,000")
    c.skip("over the token budget", "a.parquet row 2", "x")
    c.skip("over the token budget", "a.parquet row 1", "again")
    c.skip(UNDECODABLE, "b.parquet row 0", "line one\nline two " + "y" * 2000)
    d = c.as_dict()
    assert c.total == 3 and d["over the token budget"] == {
        "count": 2,
        "first": "a.parquet row 1: 31,000 tokens > 30,000",
    }
    assert len(d[UNDECODABLE]["first"]) < 600 and "\n" not in c.summary()
    assert json.loads(json.dumps(d)) == d


# ----------------------------------------------------------------------------- fuzzing

_IMAGES = [png_bytes(Image.new("RGB", (SIZE, SIZE), (k * 40, 90, 200 - k * 30))) for k in range(5)]
_PIECES = st.one_of(
    st.sampled_from(
        [
            "<subject>",
            "<style>",
            "<id>",
            "<layout>",
            "<identiy>",
            "<foo>",
            "[1]",
            "[2:style]",
            "<Image_1>",
            "<image 2>",
            "<image__3>",
            "<|im_end|>",
            "<image_>",
            " ",
            "\n",
            "a cat",
        ]
    ),
    st.integers(0, 5).map(lambda k: f"<image_{k}>"),
    st.integers(1, 3).map(lambda k: f"<subject> thing <image_{k}>"),
    st.text(max_size=12),
)
_WELL_FORMED = st.lists(_PIECES, min_size=1, max_size=12).map(lambda parts: [["".join(parts)]])
_INSTRUCTIONS = st.one_of(  # mostly SIGMA's [[text]], sometimes any shape at all
    _WELL_FORMED,
    _WELL_FORMED,
    _WELL_FORMED,
    st.lists(st.lists(st.text(max_size=6), max_size=2), max_size=2),
    st.none(),
    st.text(max_size=20),
)
_GOOD_IMAGES = st.lists(st.sampled_from(_IMAGES), min_size=2, max_size=5)
_IMAGE_LISTS = st.one_of(
    _GOOD_IMAGES,
    _GOOD_IMAGES,
    st.lists(
        st.one_of(
            st.sampled_from(_IMAGES),
            st.sampled_from(_IMAGES).map(lambda b: b[: len(b) // 2]),
            st.binary(max_size=40),
        ),
        max_size=5,
    ),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instruction=_INSTRUCTIONS, images=_IMAGE_LISTS)
def test_random_rows_only_skip_or_yield(instruction, images) -> None:
    skipped = SkipCounter()
    row = {"instruction_list": instruction, "image_list": images}
    sample = sample_from_row(row, "fuzz row 0", skipped)
    if sample is None:
        assert skipped.total == 1
        return
    assert skipped.total == 0
    refs = sample.composition.references
    assert [r.slot for r in refs] == list(range(1, len(images)))
    assert sample.target_slot == len(images)  # the prompt may place the target too
    assert set(sample.composition.referenced_slots()) <= {r.slot for r in refs} | {len(images)}
    assert all(r.image.mode == "RGB" for r in refs) and sample.target.mode == "RGB"


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("lines")
    (folder / "a.png").write_bytes(_IMAGES[0])
    (folder / "b.png").write_bytes(_IMAGES[1][:70])
    return folder


_REFS = st.lists(
    st.fixed_dictionaries(
        {"slot": st.integers(0, 4), "image": st.sampled_from(["a.png", "b.png", "c.png", None])}
    ),
    max_size=3,
)
_LINES = st.one_of(
    st.text(max_size=40),
    st.fixed_dictionaries(
        {
            "format": st.just("sigma-studio/preset"),
            "version": st.just(1),
            "prompt": _WELL_FORMED.map(lambda x: x[0][0]),
            "references": _REFS,
            "target": st.sampled_from(["a.png", "b.png", "../a.png", "/etc/passwd", ""]),
        }
    ).map(json.dumps),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(line=_LINES)
def test_random_manifest_lines_only_skip_or_yield(image_folder: Path, line: str) -> None:
    skipped = SkipCounter()
    sample = sample_from_preset_line(line, image_folder, "fuzz line 1", skipped)
    assert (sample is None) == (skipped.total == 1)
    if sample is not None:
        assert all(r.image.mode == "RGB" for r in sample.composition.references)
