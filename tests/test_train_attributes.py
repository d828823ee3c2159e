"""W_tau, one module for inference and training: a multi-hot times the weight equals the
embedding rows it stands for (exactly for one and two attributes), keeps the checkpoint key
``attribute_embed.weight`` [A, d], and is what both the prefill and the packed forward use."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from sigma_core.inputs.attributes import ATTRIBUTES
from sigma_core.model.attribute_projection import AttributeProjection, attribute_multi_hot
from sigma_core.model.bagel import ATTRIBUTE_EMBED_KEY, BagelGenerator
from sigma_core.runtime.tiny import tiny_llm_config

A = len(ATTRIBUTES)
D = 64


def projection(dtype: torch.dtype, seed: int = 0) -> AttributeProjection:
    torch.manual_seed(seed)
    w = AttributeProjection(D)
    with torch.no_grad():
        w.weight.copy_(torch.randn(A, D) * 3.0)  # varied exponents, so rounding would show
    return w.to(dtype)


def embedding_sum(w: AttributeProjection, attributes: tuple[str, ...]) -> torch.Tensor:
    """The former inference formulation: nn.Embedding rows looked up and summed."""
    rows = torch.tensor([ATTRIBUTES.index(a) for a in attributes])
    return nn.functional.embedding(rows, w.weight).sum(0)


def test_multi_hot_marks_each_attribute_once() -> None:
    hot = attribute_multi_hot(("<id>", "<style>", "<id>"))
    assert hot.shape == (A,) and hot.dtype == torch.float32
    assert hot.nonzero().flatten().tolist() == [0, 2]
    assert hot.sum().item() == 2.0
    assert not attribute_multi_hot(()).any()
    with pytest.raises(ValueError):
        attribute_multi_hot(("<nope>",))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_one_and_two_attributes_equal_the_embedding_rows_exactly(dtype: torch.dtype) -> None:
    w = projection(dtype)
    with torch.no_grad():
        for a in ATTRIBUTES:
            out = w(attribute_multi_hot((a,)))
            assert out.dtype == dtype
            assert torch.equal(out, w.weight[ATTRIBUTES.index(a)])
        for pair in itertools.combinations(ATTRIBUTES, 2):
            assert torch.equal(w(attribute_multi_hot(pair)), embedding_sum(w, pair)), pair


def test_many_attributes_are_the_sum_of_their_rows() -> None:
    w = projection(torch.float64, seed=1)
    with torch.no_grad():
        for k in (3, 5, A):
            for subset in itertools.islice(itertools.combinations(ATTRIBUTES, k), 40):
                torch.testing.assert_close(
                    w(attribute_multi_hot(subset)), embedding_sum(w, subset), rtol=1e-12, atol=0
                )


def test_packed_rows_equal_the_per_reference_vector() -> None:
    """[n, A] (training, one row per latent token) gives per row what [A] (inference) gives."""
    w = projection(torch.float32, seed=2)
    sets = [(), ("<style>",), ("<subject>", "<id>"), ("<pose>", "<layout>", "<lighting>")]
    hot = torch.cat([attribute_multi_hot(s).expand(3, -1) for s in sets])
    with torch.no_grad():
        rows = w(hot)
        assert rows.shape == (3 * len(sets), D)
        assert not rows[:3].any()  # no attribute: W_tau adds exactly zero
        for i, s in enumerate(sets[1:], start=1):
            single = w(attribute_multi_hot(s))
            for r in rows[3 * i : 3 * i + 3]:
                if len(s) <= 2:
                    assert torch.equal(r, single)
                else:
                    torch.testing.assert_close(r, single, rtol=1e-6, atol=1e-6)


def test_checkpoint_key_and_shape_are_kept() -> None:
    with torch.device("meta"):
        model = BagelGenerator(tiny_llm_config(vocab_size=256, layers=1), attribute_embed=True)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ATTRIBUTE_EMBED_KEY == "attribute_embed.weight"
    assert shapes[ATTRIBUTE_EMBED_KEY] == (A, model.config.hidden_size)
    assert [k for k in shapes if k.startswith("attribute_embed")] == [ATTRIBUTE_EMBED_KEY]
    assert list(shapes)[-1] == ATTRIBUTE_EMBED_KEY  # registered last: tiny checkpoints' draws
    # not a Linear, so the quantized modes (which swap Linears) leave it in the compute dtype
    assert not any(isinstance(m, nn.Linear) for m in model.attribute_embed.modules())
    with torch.device("meta"):
        plain = BagelGenerator(tiny_llm_config(vocab_size=256, layers=1))
    assert plain.attribute_embed is None and ATTRIBUTE_EMBED_KEY not in plain.state_dict()


def test_latent_block_adds_w_tau_to_every_latent_token_only() -> None:
    torch.manual_seed(0)
    cfg = tiny_llm_config(vocab_size=256, layers=1)
    model = BagelGenerator(cfg, attribute_embed=True).eval()
    tokens, t = torch.randn(6, 64), torch.zeros(1)
    pos = model.latent_pos_embed(model.latent_position_ids((2, 3)))
    markers = torch.randn(2, cfg.hidden_size)
    attrs = ("<subject>", "<id>")
    with torch.no_grad():
        bare = model.embed_latent_block(tokens, t, pos, markers)
        with_tau = model.embed_latent_block(tokens, t, pos, markers, model.attribute_hot(attrs))
        added = embedding_sum(model.attribute_embed, attrs)
    assert torch.equal(with_tau[0, [0, -1]], bare[0, [0, -1]])  # the markers carry none
    assert torch.equal(with_tau[0, 1:-1], bare[0, 1:-1] + added)
    assert model.attribute_hot(()) is None
