"""Planning and the report stay light: no torch, no transformers (about 1.5 s of imports) until
something needs tensors, the model or a transformers tokenizer. Checked in a fresh interpreter;
wall time is not asserted (shared machines are noisy), the modules loaded are."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PRESETS = sorted((ROOT / "presets").glob("*.json"))
HEAVY = ("torch", "transformers")


def run_fresh(code: str, tmp_path: Path) -> dict:
    """Run ``code`` in a new interpreter (cache in tmp_path); it prints a JSON object last."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


PLAN_EVERY_PRESET = """
    import json, sys
    import sigma_core.planning, sigma_core.report
    from sigma_core.inputs import load_composition
    from sigma_core.planning import TokenIds, build_plan, load_tiny_tokenizer
    from sigma_core.report import attributes_table, plan_report, render_report

    tok = load_tiny_tokenizer()
    TokenIds.from_tokenizer(tok)
    out = {"plans": []}
    for path in sys.argv[1:] or %r:
        comp = load_composition(path)
        plan = build_plan(comp, tok)
        text = render_report({"source": path, "tokenizer": "tiny", **plan_report(plan, comp)})
        out["plans"].append([path, plan.length, plan.num_references, len(text)])
    attributes_table()
    out["loaded"] = [m for m in %r if m in sys.modules]
    print(json.dumps(out))
"""


def test_planning_a_preset_imports_neither_torch_nor_transformers(tmp_path) -> None:
    presets = [str(p) for p in PRESETS]
    assert presets
    out = run_fresh(PLAN_EVERY_PRESET % (presets, HEAVY), tmp_path)
    assert out["loaded"] == [], f"planning imported {out['loaded']}"
    assert [p for p, *_ in out["plans"]] == presets
    assert all(length > 0 for _, length, _, _ in out["plans"])


def test_importing_the_packages_is_light(tmp_path) -> None:
    code = f"""
        import json, sys
        import sigma_core, sigma_core.planning, sigma_core.report, sigma_core.inputs
        import sigma_core.planning.sequence, sigma_core.planning.tokenizer
        import sigma_core.report.plan_report, sigma_core.report.mask_picture
        from sigma_core.planning import (Plan, Segment, TokenIds, TokenType, Expert, build_plan,
            load_fast_tokenizer, load_tiny_tokenizer, load_tokenizer, make_tiny_tokenizer,
            add_sigma_tokens, SigmaTokenizer, QWEN25_BASE_VOCAB)
        from sigma_core.report import mask_png, plan_report, render_report, escape_text
        print(json.dumps({{"loaded": [m for m in {HEAVY!r} if m in sys.modules]}}))
    """
    assert run_fresh(code, tmp_path)["loaded"] == []


def test_mask_picture_needs_no_torch(tmp_path) -> None:
    code = f"""
        import json, sys
        from sigma_core.inputs import load_composition
        from sigma_core.planning import build_plan, load_tiny_tokenizer
        from sigma_core.report import mask_png

        plan = build_plan(load_composition({str(PRESETS[0])!r}), load_tiny_tokenizer())
        path = mask_png(plan, {str(tmp_path / "m.png")!r}, max_px=600)
        print(json.dumps({{"loaded": [m for m in {HEAVY!r} if m in sys.modules],
                           "png": path.stat().st_size}}))
    """
    out = run_fresh(code, tmp_path)
    assert out["loaded"] == [] and out["png"] > 0


def test_tensors_and_masks_load_torch_on_first_use(tmp_path) -> None:
    code = f"""
        import json, sys
        from sigma_core.inputs import load_composition
        from sigma_core.planning import build_plan, load_tiny_tokenizer

        plan = build_plan(load_composition({str(PRESETS[0])!r}), load_tiny_tokenizer())
        before = "torch" in sys.modules
        n = int(plan.token_ids.shape[0])
        from sigma_core.planning import segment_masks
        masks = len(segment_masks(plan))
        print(json.dumps({{"before": before, "after": "torch" in sys.modules, "n": n,
                           "length": plan.length, "masks": masks,
                           "segments": len(plan.segments)}}))
    """
    out = run_fresh(code, tmp_path)
    assert out["before"] is False and out["after"] is True
    assert out["n"] == out["length"] and out["masks"] == out["segments"]


@pytest.mark.parametrize("preset", PRESETS[:1], ids=lambda p: p.name)
def test_fast_tiny_tokenizer_plans_like_transformers(preset, tokenizer, tmp_path) -> None:
    """The torch-free tiny tokenizer and the transformers one give the same plan."""
    import torch

    from sigma_core.inputs import load_composition
    from sigma_core.planning import build_plan, load_fast_tokenizer

    fast = load_fast_tokenizer(tokenizer.name_or_path)
    comp = load_composition(preset)
    a, b = build_plan(comp, fast), build_plan(comp, tokenizer)
    assert a.segments == b.segments
    for name in ("token_ids", "token_type", "group", "position_ids", "expert"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
