"""Shared fixtures. Tests never touch the network.

Markers: ``slow`` (compilation, installs; runs in CI), ``gpu`` (needs CUDA: skipped, and
reported as skipped, where there is none) and ``confined`` (each call may read and write only its
tmp_path and read only the named fixtures' folders: tests/confine.py, whose hook is imported here).
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest

from sigma_core.planning import load_tokenizer, make_tiny_tokenizer
from tests.confine import pytest_runtest_call  # noqa: F401  (the `confined` marker's hook)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory):
    return make_tiny_tokenizer(tmp_path_factory.mktemp("tiny_tokenizer"))


@pytest.fixture(scope="session")
def tokenizer(tiny_tokenizer_dir):
    """The tiny Qwen2-layout tokenizer, with SIGMA's tokens, loaded through transformers."""
    return load_tokenizer(tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory):
    """A tiny random BAGEL checkpoint in the official layout (2 layers)."""
    from sigma_core.runtime import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_ckpt"), seed=0)


@pytest.fixture(scope="session")
def pipe(tiny_checkpoint):
    from sigma_core import SigmaPipeline

    return SigmaPipeline.from_pretrained(tiny_checkpoint, device="cpu")


@pytest.fixture
def fresh(pipe, monkeypatch) -> tuple[object, list[str]]:
    """A pipeline of its own (an empty latent cache) on the tiny fp32 weights, and a log of
    each VAE encode and each prefill it makes."""
    import threading

    import sigma_core.runtime.pipeline as _pipeline

    # A studio run an earlier test left behind (its worker thread ends its run on its own)
    # shares these weights: let it finish, or its calls would be logged as this test's.
    for thread in threading.enumerate():
        if thread.name.startswith("sigma-run-"):
            thread.join(timeout=120)
    calls: list[str] = []
    encode, prefill = pipe.vae.encode, _pipeline.prefill_contexts
    monkeypatch.setattr(pipe.vae, "encode", lambda x: calls.append("encode") or encode(x))
    monkeypatch.setattr(
        _pipeline, "prefill_contexts",
        lambda *a, **k: calls.append("prefill") or prefill(*a, **k),
    )  # fmt: skip
    return _pipeline.SigmaPipeline(pipe.model, pipe.vae, pipe.tokenizer), calls


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory):
    """The tiny random evaluation models on disk, by kind (tests/evaluation_helpers.py)."""
    from tests.evaluation_helpers import eval_models

    return eval_models(tmp_path_factory.mktemp("eval_models"))


@pytest.fixture(scope="session")
def user_cache_tokenizer():
    """The tiny tokenizer the tool keeps in the user cache (what `inspect` plans with when given
    no checkpoint), written before any confined case: the case reads it and never writes it."""
    from sigma_core.planning.tokenizer import cached_folder

    return cached_folder("tiny-tokenizer", make_tiny_tokenizer)
