"""The engine's numbers, pinned: seeded tiny runs must reproduce the latents stored in tests/data.

The stored file was written by the engine before the architecture step; it changes only on
purpose, with ``python -m tests.golden_cases --write`` (see tests/golden_cases.py).
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests.golden_cases import CASES, GOLDEN_FILE, REGENERATE, run_cases


@pytest.fixture(scope="module")
def stored() -> dict[str, torch.Tensor]:
    return load_file(str(GOLDEN_FILE))


@pytest.mark.parametrize("batch_cfg", [False, True], ids=["sequential", "batched"])
def test_seeded_runs_match_the_stored_latents(stored, tmp_path, batch_cfg: bool) -> None:
    assert set(stored) == set(CASES)
    latents = run_cases(tmp_path, batch_cfg=batch_cfg)
    for name, value in latents.items():
        assert value.shape == (1, 16, 8, 8)
        torch.testing.assert_close(
            value, stored[name], atol=1e-4, rtol=0, msg=lambda m, n=name: f"{n}: {m}\n{REGENERATE}"
        )


def test_stored_file_stays_small() -> None:
    assert GOLDEN_FILE.stat().st_size < 32 * 1024
