"""benchmarks/bench_gpu.py without a GPU: its FLOP count against hand computations and the
anchors, and its --dry-run (small sizes on CPU through the same code path) end to end."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from benchmarks.bench_gpu import (
    BAGEL_7B,
    COLUMNS,
    PEAK_FLOPS,
    expert_linear_params,
    image_flops,
    main,
    pass_flops,
    plan_shapes,
    prefill_flops,
    table,
)
from sigma_core.model import LLMConfig

SMALL = LLMConfig(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, vocab_size=256,
)  # fmt: skip


def test_flops_of_a_small_config_match_a_hand_computation() -> None:
    # q, k, v, o: 64x64 + 2 x 64x32 + 64x64; gate, up, down: 3 x 64x128
    assert expert_linear_params(SMALL) == 4096 + 4096 + 4096 + 24576 == 36864
    # 16 latent tokens + 2 markers over 100 cached keys + their own 18, two layers
    assert pass_flops(SMALL, 16, 100) == 2 * (2 * 36864 * 18 + 4 * 18 * 118 * 64) == 3_741_696
    # segments of 10 and 20 tokens, the second after the first
    per_layer = 2 * 36864 * 10 + 4 * 10 * 10 * 64 + 2 * 36864 * 20 + 4 * 20 * 30 * 64
    assert prefill_flops(SMALL, [(0, 10), (10, 20)]) == 2 * per_layer == 4_782_080
    rows = [pass_flops(SMALL, 16, c) for c in (100, 90, 10)]
    assert image_flops(SMALL, 16, [100, 90, 10], 4, [(0, 10)]) == 4 * sum(rows) + prefill_flops(
        SMALL, [(0, 10)]
    )


def test_the_full_size_count_agrees_with_the_anchors() -> None:
    # "One pass of the 7B generation expert over 4096 latent tokens costs about 60 TFLOP";
    # SIGMA's 147 passes (3 a step, 49 steps) "about 10 PFLOP, or about 13 s at 790 TFLOP/s".
    one = pass_flops(BAGEL_7B, 4096, 3100)
    assert 55e12 < one < 70e12
    floor_s = image_flops(BAGEL_7B, 4096, [3100, 3090, 30], 49, [(0, 3100)]) / PEAK_FLOPS
    assert 10 < floor_s < 14


def test_plan_shapes_follow_the_cfg_rows() -> None:
    seg = SimpleNamespace
    plan = SimpleNamespace(
        segments=[
            seg(kind="text", start=0, length=10),
            seg(kind="image", start=10, length=1026),
            seg(kind="text", start=1036, length=8),
            seg(kind="noise", start=1044, length=258),
        ]
    )
    m, contexts, prefill = plan_shapes(plan)
    assert m == 256
    assert contexts == [1044, 1036, 18]  # gen, gen before its last text, the text alone
    assert prefill == [(0, 10), (10, 1026), (1036, 8), (0, 10), (10, 8)]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> dict:
    """One dry run for the module's tests (about 15 s on 2 cores)."""
    path = tmp_path_factory.mktemp("bench") / "dry.json"
    report = main(["--dry-run", "--json", str(path)])
    assert json.loads(path.read_text()) == json.loads(json.dumps(report))
    return report


def test_the_dry_run_reports_every_row(dry_run) -> None:
    rows = {r["name"]: r for r in dry_run["rows"]}
    assert list(rows) == [
        "fp32", "fp32 sequential CFG", "fp8", "nf4", "nf4 offload=model", "int8", "fp32 compiled",
    ]  # fmt: skip
    assert rows["fp8"]["status"] == "skipped" and "fp8" in rows["fp8"]["note"]
    assert rows["fp32 compiled"]["status"] == "skipped"
    measured = [r for r in rows.values() if r["status"] == "ok"]
    assert len(measured) == 5, [r["note"] for r in rows.values() if r["status"] != "ok"]
    for r in measured:
        assert r["timesteps_run"] == 3 and r["s_per_image"] > 0 and r["peak_bytes"] > 0
        assert r["tflop_per_image"] == measured[0]["tflop_per_image"] > 0
    for name in ("fp32", "fp32 sequential CFG", "nf4", "int8"):  # CPU: no offload to model
        assert abs(rows[name]["error_pct"]) < 5, rows[name]
    assert dry_run["machine"]["torch"]


def test_the_dry_run_makes_one_table(dry_run) -> None:
    lines = table(dry_run["rows"], ("MiB", 2**20)).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == [c if c not in ("peak", "predicted") else f"{c} MiB" for c in COLUMNS]
    assert len(lines) == 2 + len(dry_run["rows"])
    assert all(line.count("|") == len(COLUMNS) + 1 for line in lines)
