"""Tests for the variants of model.py: ALiBi (fixed and trainable slopes), NoPE, QK-norm, DeepOne
(DeepNet post-norm, ReLU-GLU, trainable ALiBi) and Canon layers A/B/C/D. The attention back-ends agree
with each other, packed documents match documents alone, the ALiBi bias, DeepNet's alpha and init and
the Canon convolution are the ones docs/reference.md gives, Canon layers are causal, cached generation matches
full recomputation, the default config is unchanged, the variants train, and export refuses them.
CPU, fp32, tiny. (The flex back-end: test_flex.py.)"""

import math
from dataclasses import asdict, replace

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

import train
from config import run_main
from export import export_hf, main as export_main
from attention import alibi_slopes, document_mask, document_positions, key_minus_query
from model import PRESETS, Canon, KVCache, ModelConfig, Transformer, parameter_summary
from conftest import (CANON, DEEPONE, VOCAB, assert_packed_matches_alone, assert_sdpa_matches_eager, check_trunc_normal,
                      read_log, run_args, tiny, tiny_model)

# (position, alibi_trainable): every position variant; qk_norm is crossed with these
POSITIONS = [("rope", False), ("alibi", False), ("alibi", True), ("nope", False)]
POSITION_IDS = ["rope", "alibi", "alibi_trainable", "nope"]


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


def test_variant_names_and_shapes():
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
    deepone = Transformer(tiny(**DEEPONE))
    assert sorted(name for name, _ in deepone.named_parameters()) == expected_names(["self_attn.alibi_slopes"])
    canon = Transformer(tiny(canon="ABCD", n_kv_heads=2))
    assert sorted(name for name, _ in canon.named_parameters()) == \
        expected_names(["canon_a.weight", "self_attn.canon_b.weight", "canon_c.weight", "mlp.canon_d.weight"])
    # depthwise Conv1d layout (channels, 1, kernel 4); B covers q (64), k and v (2 heads of 16 each)
    shapes = {name: tuple(p.shape) for name, p in canon.layers[1].named_parameters() if "canon" in name}
    assert shapes == {"canon_a.weight": (64, 1, 4), "self_attn.canon_b.weight": (64 + 2 * 32, 1, 4),
                      "canon_c.weight": (64, 1, 4), "mlp.canon_d.weight": (2 * 160, 1, 4)}


@pytest.mark.parametrize("overrides, message", [
    ({"position": "learned"}, "position must be 'rope', 'alibi' or 'nope', got 'learned'"),
    ({"alibi_trainable": True}, "alibi_trainable needs position='alibi', got position='rope'"),
    ({"attn": "flash"}, "attn must be 'sdpa', 'eager' or 'flex', got 'flash'"),
    ({"norm_placement": "post"}, "norm_placement must be 'pre' or 'deepnet', got 'post'"),
    ({"ffn_act": "gelu"}, "ffn_act must be 'silu' or 'relu', got 'gelu'"),
    ({"canon": "AE"}, "canon must be letters from 'ABCD', got 'AE'"),
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


@pytest.mark.parametrize("overrides", [DEEPONE, {"canon": "ABCD", "n_kv_heads": 2}], ids=["deepone", "canon_abcd"])
def test_block_variants_sdpa_matches_eager(overrides):
    # every gradient, the ALiBi slopes' and each Canon weight's included, is checked non-zero and equal
    assert_sdpa_matches_eager(tiny_model(**overrides), packed=True, logits_atol=1e-5)


# -----------------------------------------------------------------------------------------------
# 4. Packed documents match documents alone


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("position, alibi_trainable", POSITIONS[1:], ids=POSITION_IDS[1:])
def test_packed_documents_match_documents_alone(position, alibi_trainable, attn):
    assert_packed_matches_alone(tiny_model(attn=attn, position=position, alibi_trainable=alibi_trainable, n_kv_heads=2))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("overrides", [DEEPONE, CANON, {"canon": "ABCD"}], ids=["deepone", "canon", "canon_abcd"])
def test_block_variants_packed_documents_match_documents_alone(overrides, attn):
    # Canon's convolution must not reach back across a document boundary. float64: DeepNet's post-norms
    # amplify fp32 rounding to ~2e-6 of the logits (1.6e-5), over the shared check's 1e-5 (float64: 4e-15)
    assert_packed_matches_alone(tiny_model(attn=attn, n_kv_heads=2, **overrides).double())


# -----------------------------------------------------------------------------------------------
# 5. Generation with the key/value cache


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("overrides", [
    {"position": "alibi"}, {"position": "alibi", "alibi_trainable": True, "qk_norm": True}, {"position": "nope"},
    {"position": "nope", "qk_norm": True}, DEEPONE, CANON, {"canon": "ABCD"}, {"canon": "BD"}],
    ids=["alibi", "alibi_trainable_qk_norm", "nope", "nope_qk_norm", "deepone", "canon", "canon_abcd", "canon_bd"])
def test_generate_greedy_matches_full_recompute(overrides, attn):
    """Canon layers take their last 3 inputs from the cache: a wrong carry-over changes the tokens."""
    model = tiny_model(attn=attn, n_kv_heads=2, **overrides)
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
    ({"norm_placement": "deepnet"}, "norm_placement='deepnet' has no Hugging Face Llama equivalent"),
    ({"ffn_act": "relu"}, "ffn_act='relu' has no Hugging Face Llama equivalent"),
    ({"canon": "A"}, "canon='A' has no Hugging Face Llama equivalent"),
    (DEEPONE, "position='alibi' has no Hugging Face Llama equivalent"),  # the first field that differs
    (CANON, "position='nope' has no Hugging Face Llama equivalent"),
])
def test_export_refuses_variants(tmp_path, capsys, overrides, reason):
    model = Transformer(tiny(**overrides))
    path = tmp_path / "run" / "ckpt_00000100.pt"
    path.parent.mkdir()
    torch.save({"model": model.state_dict(), "model_config": asdict(model.config), "step": 100}, path)
    assert run_main(export_main, [str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: cannot export to Hugging Face Llama: {reason}"]
    assert not (tmp_path / "run" / "hf").exists()
    with pytest.raises(ValueError, match=reason):
        export_hf({"model": {}, "model_config": asdict(model.config)}, tmp_path / "hf")


# -----------------------------------------------------------------------------------------------
# 7. DeepOne: DeepNet post-norm, its init, ReLU-GLU


def test_deepnet_block_is_post_norm_with_alpha():
    """A block computes h = norm1(alpha * x + attn(x)), out = norm2(alpha * h + mlp(h)), alpha = (2L)^(1/4):
    rebuilt here from the block's own sub-layers (norm weights random, so swapped norms would show)."""
    model = tiny_model(n_layers=3, **DEEPONE)
    block = model.layers[1]
    assert block.alpha == pytest.approx(6 ** 0.25)  # L = 3
    assert Transformer(tiny()).layers[0].alpha is None  # pre-norm: no alpha
    torch.manual_seed(1)
    x = torch.randn(2, 12, 64)
    doc_ids = torch.tensor([[0] * 5 + [1] * 7, [0] * 12])
    positions = document_positions(doc_ids)
    mask, distance = document_mask(doc_ids), key_minus_query(positions, positions)
    with torch.no_grad():
        def rms_norm(v, weight):  # by hand, not the model's RMSNorm
            return weight * v / (v.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()
        h = rms_norm(6 ** 0.25 * x + block.self_attn(x, None, None, mask, distance), block.input_layernorm.weight)
        expected = rms_norm(6 ** 0.25 * h + block.mlp(h), block.post_attention_layernorm.weight)
        assert_close(block(x, None, None, mask, distance), expected, atol=1e-5, rtol=1e-5)


def test_deepnet_block_outputs_have_unit_rms_at_init():
    model = Transformer(tiny(n_layers=4, dim=256, **DEEPONE))
    llama = Transformer(tiny(n_layers=4, dim=256))
    idx = torch.randint(1, VOCAB, (2, 16), generator=torch.Generator().manual_seed(3))
    for m, unit in ((model, True), (llama, False)):
        outputs = []
        hooks = [layer.register_forward_hook(lambda module, args, out: outputs.append(out)) for layer in m.layers]
        with torch.no_grad():
            m(idx)
        for hook in hooks:
            hook.remove()
        rms = torch.stack([out.pow(2).mean(-1).sqrt() for out in outputs])  # (layers, B, T)
        assert torch.allclose(rms, torch.ones_like(rms), atol=1e-4) == unit  # pre-norm: the stream drifts


def test_deepnet_init_is_xavier_with_beta():
    """Xavier normal: std = gain * sqrt(2 / (fan_in + fan_out)), gain beta = (8L)^(-1/4) on v, o and the
    MLP, 1 on q and k; a plain normal (not cut at 3 std). Embedding, lm_head and norms as for Llama."""
    config = ModelConfig(vocab_size=4096, dim=256, n_layers=6, n_heads=4, ffn_dim=704, **DEEPONE)
    torch.manual_seed(0)
    model = Transformer(config)
    beta = 48 ** -0.25
    for layer in model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        for linear, gain in ((attn.q_proj, 1.0), (attn.k_proj, 1.0), (attn.v_proj, beta), (attn.o_proj, beta),
                             (mlp.gate_proj, beta), (mlp.up_proj, beta), (mlp.down_proj, beta)):
            fan_out, fan_in = linear.weight.shape
            std = gain * math.sqrt(2 / (fan_in + fan_out))
            assert abs(linear.weight.mean().item()) < 0.05 * std
            assert linear.weight.std().item() == pytest.approx(std, rel=0.02)
            assert linear.weight.abs().max().item() > 3.5 * std  # not truncated
        # 1 / 2^linspace(1, 8, 4), the upper half of the heads 0
        assert_close(attn.alibi_slopes.detach(), torch.tensor([0.5, 2 ** (-10 / 3), 0.0, 0.0]))
        assert attn.alibi_slopes.requires_grad
        assert torch.equal(layer.input_layernorm.weight.detach(), torch.ones(256))
    check_trunc_normal(model.lm_head.weight, 256 ** -0.5)  # as Llama's


def test_relu_glu_mlp():
    mlp = tiny_model(ffn_act="relu").layers[0].mlp
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        gate, up = x @ mlp.gate_proj.weight.T, x @ mlp.up_proj.weight.T
        assert_close(mlp(x), (gate.clamp(min=0) * up) @ mlp.down_proj.weight.T)
        assert not torch.allclose(tiny_model().layers[0].mlp(x), mlp(x), atol=1e-3)  # SwiGLU differs


def test_variant_presets():
    medium = PRESETS["llama-medium"]
    assert PRESETS["deepone-medium"] == replace(medium, **DEEPONE)
    assert PRESETS["canon-medium"] == replace(medium, **CANON)
    llama_total = parameter_summary(medium)["total"]
    assert parameter_summary(PRESETS["deepone-medium"])["total"] == llama_total + 16 * 8  # + the slopes
    # + Canon-A's 768 x 4 taps per layer + the q and k norms' 96 + 96
    assert parameter_summary(PRESETS["canon-medium"])["total"] == llama_total + 16 * (768 * 4 + 2 * 96)


# -----------------------------------------------------------------------------------------------
# 8. Canon layers


def test_canon_layer_is_residual_causal_depthwise_conv():
    """Against torch's Conv1d (depthwise, padded by 3 on the left), plus the input; and, with documents, a
    hand loop in which a tap on another document's token counts zero."""
    torch.manual_seed(0)
    layer = Canon(6, "a")
    with torch.no_grad():
        layer.weight.normal_()
    h = torch.randn(2, 9, 6)
    one_document = torch.arange(9)[None]
    with torch.no_grad():
        conv = F.conv1d(F.pad(h.transpose(1, 2), (3, 0)), layer.weight, groups=6).transpose(1, 2)
        assert_close(layer(h, one_document), h + conv)
        doc_ids = torch.tensor([[0, 0, 0, 0, 1, 1, 2, 2, 2], [0] * 9])
        expected = h.clone()
        for b in range(2):
            for t in range(9):
                for k in range(4):  # w_k = weight[:, 0, 3 - k] scales h_{t-k}
                    if t - k >= 0 and doc_ids[b, t - k] == doc_ids[b, t]:
                        expected[b, t] += layer.weight[:, 0, 3 - k] * h[b, t - k]
        packed = layer(h, document_positions(doc_ids))
        assert_close(packed, expected)
        assert_close(packed[1], (h + conv)[1])  # one document: the plain convolution
        assert not torch.allclose(packed[0, 4:], (h + conv)[0, 4:])


def test_canon_cache_carries_the_last_three_inputs():
    torch.manual_seed(0)
    layer = Canon(5, "b")
    with torch.no_grad():
        layer.weight.normal_()
        h = torch.randn(1, 8, 5)
        cache = KVCache(8)
        pieces = [layer(h[:, :3], torch.arange(3)[None], cache)]
        pieces += [layer(h[:, t:t + 1], torch.tensor([[t]]), cache) for t in range(3, 8)]
    assert_close(torch.cat(pieces, dim=1), layer(h, torch.arange(8)[None]))
    assert torch.equal(cache.canon_inputs["b"], h[:, -3:])


@pytest.mark.parametrize("canon", ["A", "B", "C", "D", "ABCD"])
def test_canon_is_causal(canon):
    """Changing token t leaves the logits before t as they were and changes those at t and after; the
    Canon layers really act (zeroing them changes the logits)."""
    model = tiny_model(canon=canon, position="nope")
    idx = torch.randint(1, VOCAB, (1, 16), generator=torch.Generator().manual_seed(6))
    changed = idx.clone()
    changed[0, 7] = (idx[0, 7] + 1) % VOCAB
    with torch.no_grad():
        logits, changed_logits = model(idx), model(changed)
        assert_close(changed_logits[0, :7], logits[0, :7], atol=1e-6, rtol=0)
        assert ((changed_logits[0, 7:] - logits[0, 7:]).abs().amax(-1) > 1e-3).all()
        for name, p in model.named_parameters():
            if "canon" in name:
                p.zero_()
        assert not torch.allclose(model(idx), logits, atol=1e-3)


def test_canon_starts_as_the_identity_and_adds_only_its_taps():
    torch.manual_seed(0)
    llama = Transformer(tiny())
    torch.manual_seed(0)
    canon = Transformer(tiny(canon="A"))
    idx = torch.randint(1, VOCAB, (2, 12), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        assert torch.equal(canon(idx), llama(idx))  # zero taps: exactly the model without Canon
    for config in (tiny(canon="A"), tiny(canon="ABCD", n_kv_heads=2)):
        extra = sum(n_channels * 4 for letter, n_channels in
                    (("A", 64), ("B", 64 + 2 * 16 * config.kv_heads), ("C", 64), ("D", 2 * 160))
                    if letter in config.canon)
        llama = tiny(n_kv_heads=config.n_kv_heads)
        assert parameter_summary(config)["total"] == parameter_summary(llama)["total"] + 2 * extra  # 2 layers


# -----------------------------------------------------------------------------------------------
# 9. The variants train


@pytest.mark.parametrize("overrides", [
    ["norm_placement=deepnet", "ffn_act=relu", "position=alibi", "alibi_trainable=True"],
    ["canon=A", "position=nope", "qk_norm=True"],
    ["canon=ABCD"]], ids=["deepone", "canon", "canon_abcd"])
def test_variant_trains(tiny_data, tmp_path, overrides):
    assert train.main(run_args(tiny_data, tmp_path, "run_name=v", "eval_interval=100", "sample_tokens=0",
                               *overrides)) == 0
    train_lines, _ = read_log(tmp_path / "v")
    assert len(train_lines) == 31
    assert train_lines[-1]["loss"] < train_lines[0]["loss"] - 1.0  # from ~ln(257) towards byte statistics
