"""The MoT decoder against implementations this project did not write.

Goldens made by ``Qwen2MoT`` itself cannot catch a mistake it already had when they were made.
These copy the weights of a random ``transformers`` model into our decoder and ask for the same
hidden states, so such a mistake (RoPE layout or theta, the qk-norm order, GQA head grouping,
RMSNorm, the SwiGLU, the expert gather/scatter, the cache offsets) fails here:

* qk-norm off against ``transformers.Qwen2Model`` (Qwen2 proper: q/k/v biases, no o_proj bias).
* qk-norm on against ``transformers.Qwen3Model``, whose attention normalises each q/k head with
  its own RMSNorm and only then applies RoPE (``q_norm(q_proj(x).view(...))`` before
  ``apply_rotary_pos_emb`` in modeling_qwen3.py), the order BAGEL's ``PackedAttentionMoT`` uses.
  With ``attention_bias=True`` Qwen3 has q/k/v biases as BAGEL does, plus an o_proj bias that
  BAGEL lacks, which is set to zero.

Both experts get the reference weights, so any routing must give the reference output: that pins
the order in which per-expert outputs are put back. A gen-only copy, with the understanding
expert left random, checks that generation tokens really take every ``_moe_gen`` module.
"""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config, Qwen2Model, Qwen3Config, Qwen3Model

from sigma_core.model import KVCache, LLMConfig, Routing, Span
from sigma_core.model.mot import GEN, UND, Qwen2MoT

SIZES = dict(
    vocab_size=100,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    rms_norm_eps=1e-6,
)
THETA = 1e6
N = 12
MIXED = [UND, UND, GEN, GEN, GEN, UND, GEN, UND, UND, GEN, GEN, UND]
ROUTINGS = {
    "und": Routing.uniform(N),
    "gen": Routing.uniform(N, GEN),
    "block": Routing.block(N),
    "mixed": Routing.from_experts(MIXED),
}


def _reference(qk_norm: bool, seed: int = 0) -> torch.nn.Module:
    """A random Qwen2Model (qk_norm False) or Qwen3Model (True) with BAGEL's layout, in eval.
    Norm weights are 1 + noise and biases nonzero, so a misplaced norm or bias shows."""
    rope = {"rope_type": "default", "rope_theta": THETA}
    # eager: transformers' own repeat_kv and softmax, not the SDPA kernel our decoder uses
    common = dict(SIZES, rope_parameters=rope, attn_implementation="eager")
    if qk_norm:
        head_dim = SIZES["hidden_size"] // SIZES["num_attention_heads"]
        cfg = Qwen3Config(**common, head_dim=head_dim, attention_bias=True)
        model = Qwen3Model(cfg)
    else:
        model = Qwen2Model(Qwen2Config(**common))
    assert model.config.sliding_window is None
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("o_proj.bias"):
                p.zero_()  # BAGEL's o_proj has no bias
            elif name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            elif name == "embed_tokens.weight":
                p.copy_(noise)
            else:
                p.copy_(noise / p.shape[-1] ** 0.5)
    return model.eval()


def _ours(ref: torch.nn.Module, experts: tuple[str, ...] = ("", "_moe_gen")) -> Qwen2MoT:
    """Our decoder with ``ref``'s weights in the given experts ("" und, "_moe_gen" gen)."""
    qk_norm = isinstance(ref, Qwen3Model)
    with torch.random.fork_rng():  # experts that do not get the reference weights stay random
        torch.manual_seed(1)
        llm = Qwen2MoT(LLMConfig(**SIZES, rope_theta=THETA, qk_norm=qk_norm)).eval()
    state = llm.state_dict()
    copied = set()
    for name, tensor in ref.state_dict().items():
        if name.endswith("o_proj.bias"):
            assert not tensor.any()
            continue
        parts = name.split(".")
        owner = parts.index("mlp") if "mlp" in parts else len(parts) - 2
        for suffix in ("",) if name == "embed_tokens.weight" else experts:
            ours = ".".join([*parts[:owner], parts[owner] + suffix, *parts[owner + 1 :]])
            assert state[ours].shape == tensor.shape, ours
            state[ours] = tensor.clone()
            copied.add(ours)
    if len(experts) == 2:
        assert copied == set(state), sorted(set(state) - copied)  # every parameter mapped
    llm.load_state_dict(state, strict=True)
    return llm


def _run(llm: Qwen2MoT, ids: torch.Tensor, chunks: list[tuple[int, Routing]]) -> torch.Tensor:
    """Run ``ids`` [1, n] through our decoder as consecutive cached blocks, each causal."""
    n = ids.shape[1]
    cache = KVCache.empty(llm.config, batch=1, capacity=n, dtype=torch.float32, device="cpu")
    outs, start = [], 0
    for size, route in chunks:
        end = start + size
        rope = llm.rotary_emb(torch.arange(start, end), torch.float32)
        mask = torch.ones(size, end, dtype=torch.bool).tril(start)  # bottom-right causal
        x = llm.embed_tokens(ids[:, start:end])
        outs.append(llm(x, rope, route, cache, Span(start, end, mask)))
        start = end
    return torch.cat(outs, dim=1)


def _ids(n: int = N, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, SIZES["vocab_size"], (1, n), generator=g)


@pytest.mark.parametrize("routing", list(ROUTINGS))
@pytest.mark.parametrize("qk_norm", [False, True], ids=["qwen2", "qwen3"])
@torch.no_grad()
def test_matches_transformers(qk_norm: bool, routing: str) -> None:
    ref = _reference(qk_norm)
    ids = _ids()
    expected = ref(input_ids=ids).last_hidden_state
    got = _run(_ours(ref), ids, [(N, ROUTINGS[routing])])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("qk_norm", [False, True], ids=["qwen2", "qwen3"])
@torch.no_grad()
def test_generation_expert_alone_matches_transformers(qk_norm: bool) -> None:
    """Reference weights in the gen expert only: all-gen routing must match, all-und must not."""
    ref = _reference(qk_norm)
    ids = _ids()
    expected = ref(input_ids=ids).last_hidden_state
    llm = _ours(ref, experts=("_moe_gen",))
    torch.testing.assert_close(
        _run(llm, ids, [(N, Routing.uniform(N, GEN))]), expected, atol=1e-5, rtol=1e-5
    )
    assert not torch.allclose(_run(llm, ids, [(N, Routing.uniform(N))]), expected, atol=1e-2)


@pytest.mark.parametrize("qk_norm", [False, True], ids=["qwen2", "qwen3"])
@torch.no_grad()
def test_cached_blocks_match_one_transformers_pass(qk_norm: bool) -> None:
    """Prefill 5 tokens, then 7 more (mixed routing) against the cache: the same hidden states as
    transformers' single causal pass over all 12, so cache writes, the rope offset and the
    bottom-right causal mask line up."""
    ref = _reference(qk_norm)
    ids = _ids()
    expected = ref(input_ids=ids).last_hidden_state
    chunks = [(5, Routing.uniform(5)), (7, Routing.from_experts(MIXED[5:]))]
    got = _run(_ours(ref), ids, chunks)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
