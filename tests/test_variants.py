"""Tests for the position and attention variants of model.py: ALiBi (fixed and trainable slopes),
NoPE and QK-norm. The two attention back-ends agree with each other, packed documents match
documents alone, the ALiBi bias is the one REFERENCE.md gives, cached generation matches full
recomputation, the default config is unchanged, and export refuses the variants. CPU, fp32, tiny."""

import math
from dataclasses import asdict

import pytest
import torch
from torch.testing import assert_close

from export import export_hf, main as export_main
from model import (ModelConfig, Transformer, alibi_slopes, document_ids, document_mask, document_positions,
                   key_minus_query)
from test_model import EOT, VOCAB, assert_packed_matches_alone, assert_sdpa_matches_eager, tiny  # the Llama tests' shape and packing check

# (position, alibi_trainable): every position variant; qk_norm is crossed with these
POSITIONS = [("rope", False), ("alibi", False), ("alibi", True), ("nope", False)]
POSITION_IDS = ["rope", "alibi", "alibi_trainable", "nope"]





def tiny_model(seed=0, **overrides):
    """A tiny model with weights scaled up so attention is far from uniform. ALiBi slopes (parameter
    or buffer) are drawn in [0.1, 1): every head then has a bias that visibly changes the logits."""
    torch.manual_seed(seed)
    model = Transformer(tiny(**overrides)).eval()
    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=True).items():
            if name.endswith("norm.weight"):
                tensor.uniform_(0.5, 1.5)
            elif name.endswith("alibi_slopes"):
                tensor.uniform_(0.1, 1.0)
            elif name != "embed_tokens.weight":
                tensor.normal_(0.0, 0.25)
    return model


def tokens(n, generator):
    return torch.randint(1, VOCAB, (n,), generator=generator)


# -----------------------------------------------------------------------------------------------
# 1. The config and the parameter names

LLAMA_LAYER_NAMES = ["input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
                     "self_attn.v_proj.weight", "self_attn.o_proj.weight", "post_attention_layernorm.weight",
                     "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"]


def expected_names(extra_per_layer=()):
    layer_names = sorted(LLAMA_LAYER_NAMES + list(extra_per_layer))
    return sorted(["embed_tokens.weight", "norm.weight", "lm_head.weight"] +
                  [f"layers.{i}.{name}" for i in range(2) for name in layer_names])


def test_default_config_has_exactly_the_llama_names():
    model = Transformer(tiny())
    assert sorted(name for name, _ in model.named_parameters()) == expected_names()
    assert sorted(model.state_dict()) == expected_names()  # no buffers either
    config = tiny()
    assert (config.position, config.alibi_trainable, config.qk_norm) == ("rope", False, False)


def test_variant_names():
    qk = Transformer(tiny(qk_norm=True))
    assert sorted(name for name, _ in qk.named_parameters()) == \
        expected_names(["self_attn.q_norm.weight", "self_attn.k_norm.weight"])
    assert qk.layers[0].self_attn.q_norm.weight.shape == (16,)  # per head_dim channel
    fixed = Transformer(tiny(position="alibi"))
    assert sorted(name for name, _ in fixed.named_parameters()) == expected_names()  # a buffer, not trained
    assert sorted(fixed.state_dict()) == expected_names(["self_attn.alibi_slopes"])
    trainable = Transformer(tiny(position="alibi", alibi_trainable=True))
    assert sorted(name for name, _ in trainable.named_parameters()) == expected_names(["self_attn.alibi_slopes"])
    assert torch.equal(trainable.layers[1].self_attn.alibi_slopes.detach(), alibi_slopes(4))
    assert torch.equal(fixed.layers[1].self_attn.alibi_slopes, alibi_slopes(4))
    assert torch.equal(Transformer(tiny(qk_norm=True)).layers[0].self_attn.k_norm.weight.detach(), torch.ones(16))


@pytest.mark.parametrize("overrides, message", [
    ({"position": "learned"}, "position must be 'rope', 'alibi' or 'nope', got 'learned'"),
    ({"alibi_trainable": True}, "alibi_trainable needs position='alibi', got position='rope'"),
])
def test_config_errors(overrides, message):
    with pytest.raises(ValueError) as e:
        tiny(**overrides)
    assert str(e.value) == message


def test_odd_head_dim_is_fine_without_rope():
    with pytest.raises(ValueError, match="must be even for RoPE"):
        tiny(dim=60, n_heads=4)  # head_dim 15
    for position in ("alibi", "nope"):
        Transformer(tiny(dim=60, n_heads=4, position=position))(torch.randint(1, VOCAB, (1, 5)))


# -----------------------------------------------------------------------------------------------
# 2. ALiBi: the slopes and the bias


def test_alibi_slopes_follow_reference_formula():
    # 1 / 2^linspace(1, 8, 8) = 1/2, 1/4, ..., 1/256; the upper half (heads 4..7) set to 0
    assert torch.equal(alibi_slopes(8), torch.tensor([1 / 2, 1 / 4, 1 / 8, 1 / 16, 0.0, 0.0, 0.0, 0.0]))
    # linspace(1, 8, 4) = 1, 10/3, 17/3, 8
    assert_close(alibi_slopes(4), torch.tensor([0.5, 2 ** (-10 / 3), 0.0, 0.0]))
    # an odd count: the upper half is the last n // 2 heads
    assert_close(alibi_slopes(3), torch.tensor([0.5, 2 ** -4.5, 0.0]))


def test_key_minus_query():
    positions = torch.tensor([[0, 1, 2, 0, 1]])
    distance = key_minus_query(positions, positions)
    assert distance.shape == (1, 1, 5, 5) and distance.dtype == torch.float32
    assert distance[0, 0, 2, 0].item() == -2 and distance[0, 0, 4, 3].item() == -1
    assert distance[0, 0, 1, 2].item() == 1  # masked in attention, but still k - q


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_alibi_bias_is_slope_times_key_minus_query(attn):
    """With zero query and key projections every score is 0 and only the bias remains: each query
    then averages the values with weights exp(slope_h * (k - q)) over its document's earlier keys."""
    config = ModelConfig(vocab_size=VOCAB, dim=8, n_layers=1, n_heads=2, ffn_dim=8, position="alibi", attn=attn)
    layer = Transformer(config).layers[0].self_attn
    slopes = [0.7, 0.3]
    with torch.no_grad():
        layer.q_proj.weight.zero_()
        layer.k_proj.weight.zero_()
        layer.o_proj.weight.copy_(torch.eye(8))
        layer.alibi_slopes.copy_(torch.tensor(slopes))
    torch.manual_seed(0)
    x = torch.randn(1, 6, 8)
    doc_ids = torch.tensor([[0, 0, 0, 1, 1, 1]])
    positions = document_positions(doc_ids)
    with torch.no_grad():
        out = layer(x, None, None, document_mask(doc_ids), key_minus_query(positions, positions))
        values = layer.v_proj(x)[0]  # (T, dim); head h owns columns 4h .. 4h+3

    expected = torch.zeros(6, 8)
    for h, slope in enumerate(slopes):
        for q in range(6):
            keys = [k for k in range(6) if doc_ids[0, k] == doc_ids[0, q] and k <= q]
            weights = [math.exp(slope * (positions[0, k].item() - positions[0, q].item())) for k in keys]
            for k, w in zip(keys, weights):
                expected[q, 4 * h:4 * h + 4] += w / sum(weights) * values[k, 4 * h:4 * h + 4]
    assert_close(out[0], expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("position", ["alibi", "nope"])
def test_rope_is_not_applied(position):
    idx = torch.randint(1, VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))
    logits = tiny_model(position=position)(idx)
    assert torch.equal(tiny_model(position=position, rope_theta=3.0)(idx), logits)
    assert not torch.allclose(tiny_model()(idx), tiny_model(rope_theta=3.0)(idx), atol=1e-3)  # the check has teeth


# -----------------------------------------------------------------------------------------------
# 3. The sdpa back-end against the eager one, with document masking


@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("position, alibi_trainable", POSITIONS, ids=POSITION_IDS)
def test_sdpa_matches_eager_logits_and_gradients(position, alibi_trainable, qk_norm):
    sdpa = tiny_model(attn="sdpa", position=position, alibi_trainable=alibi_trainable, qk_norm=qk_norm)
    assert_sdpa_matches_eager(sdpa, packed=True, logits_atol=1e-5)
    names = [name for name, _ in sdpa.named_parameters()]
    if alibi_trainable:
        slope_grads = [p.grad for name, p in sdpa.named_parameters() if name.endswith("alibi_slopes")]
        assert len(slope_grads) == 2
        assert all((grad != 0).all() for grad in slope_grads)  # every head's slope learns
    assert any(name.endswith("q_norm.weight") for name in names) == qk_norm


# -----------------------------------------------------------------------------------------------
# 4. Packed documents match documents alone


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("position, alibi_trainable", POSITIONS[1:], ids=POSITION_IDS[1:])
def test_packed_documents_match_documents_alone(position, alibi_trainable, attn):
    assert_packed_matches_alone(tiny_model(attn=attn, position=position, alibi_trainable=alibi_trainable, n_kv_heads=2))


# -----------------------------------------------------------------------------------------------
# 5. Generation with the key/value cache


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("position, alibi_trainable, qk_norm",
                         [("alibi", False, False), ("alibi", True, True), ("nope", False, False),
                          ("nope", False, True)])
def test_generate_greedy_matches_full_recompute(position, alibi_trainable, qk_norm, attn):
    model = tiny_model(attn=attn, n_kv_heads=2, position=position, alibi_trainable=alibi_trainable,
                       qk_norm=qk_norm)
    prompt = torch.randint(1, VOCAB, (2, 5), generator=torch.Generator().manual_seed(4))
    cached = model.generate(prompt, max_new_tokens=20, temperature=0)
    assert cached.shape == (2, 25) and torch.equal(cached[:, :5], prompt)
    expected = prompt
    with torch.no_grad():  # the obvious loop: run the whole sequence again for every new token
        for _ in range(20):
            expected = torch.cat([expected, model(expected)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, expected)
    assert len(set(cached[0, 5:].tolist())) > 1  # not one token repeated: the check has teeth


# -----------------------------------------------------------------------------------------------
# 6. Export refuses the variants


@pytest.mark.parametrize("overrides, reason", [
    ({"position": "alibi"}, "position='alibi' has no Hugging Face Llama equivalent"),
    ({"qk_norm": True}, "qk_norm=True has no Hugging Face Llama equivalent"),
])
def test_export_refuses_variants(tmp_path, capsys, overrides, reason):
    model = Transformer(tiny(**overrides))
    path = tmp_path / "run" / "ckpt_00000100.pt"
    path.parent.mkdir()
    torch.save({"model": model.state_dict(), "model_config": asdict(model.config), "step": 100}, path)
    with pytest.raises(SystemExit) as e:
        export_main([str(tmp_path / "run")])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines() == [f"error: cannot export to Hugging Face Llama: {reason}"]
    assert not (tmp_path / "run" / "hf").exists()
    with pytest.raises(ValueError, match=reason):
        export_hf({"model": {}, "model_config": asdict(model.config)}, tmp_path / "hf")
