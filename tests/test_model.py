"""Tests for model.py: the parameter summary and its command line, packed documents, the two
attention back-ends, agreement with Hugging Face's LlamaForCausalLM, cached generation, the loss,
checkpoint loading and the initialisation. CPU, fp32, tiny models."""

import math
from dataclasses import asdict, replace

import pytest
import torch
import torch.nn.functional as F

import files
from config import UserError, run_main
from torch.testing import assert_close
from torch.utils._python_dispatch import TorchDispatchMode

from attention import document_ids, document_positions
from model import (PRESETS, ModelConfig, Transformer, flops_per_token, format_summary, human, load_model, main,
                   matmul_weights, meta_model, parameter_summary, sample_next)
from conftest import (CANON, DEEPONE, EOT, VOCAB, assert_packed_matches_alone, assert_sdpa_matches_eager,
                      check_trunc_normal, tiny, tiny_model)


# -----------------------------------------------------------------------------------------------
# 1. Parameter summary

LLAMA_MEDIUM_SUMMARY = """\
Total:             162M
Trainable:         162M
Embedding:         49.2M
Non-embedding:     113M
Tied embeddings:   False
Chinchilla tokens: 2.27G
FLOPs/token (6N):  8.27e+08"""


def test_llama_medium_summary_matches_reference_figures():
    config = PRESETS["llama-medium"]
    summary = parameter_summary(config)
    # counted by hand: q, k, v, o (dim x dim each), gate, up, down (dim x ffn each), two norms
    per_layer = 4 * 768 * 768 + 3 * 768 * 2048 + 2 * 768
    assert summary["embedding"] == 2 * 32000 * 768
    assert summary["non_embedding"] == 16 * per_layer + 768  # + the final norm
    assert summary["total"] == summary["trainable"] == summary["embedding"] + summary["non_embedding"]
    assert summary["chinchilla_tokens"] == 20 * summary["non_embedding"]
    # 6N counts every weight of a matmul: the blocks' projections and lm_head, not the embedding lookup or norms
    assert summary["flops_6n"] == 6 * matmul_weights(config) == 6 * (16 * (4 * 768**2 + 3 * 768 * 2048) + 32000 * 768)
    assert summary["flops_with_attention"] is None  # no sequence length, no attention
    assert summary["tied"] is False
    assert format_summary(config) == LLAMA_MEDIUM_SUMMARY

    tied = parameter_summary(replace(config, tie_embeddings=True))
    assert tied["embedding"] == 32000 * 768  # the shared matrix counts once
    assert tied["total"] == summary["total"] - 32000 * 768
    assert tied["non_embedding"] == summary["non_embedding"]


def test_summary_shows_both_flop_counts_labelled_where_a_sequence_length_is_given(capsys):
    config = PRESETS["llama-medium"]
    attention = 12 * 16 * 8 * 96 * 2048  # layers x heads x head_dim x seq_len: QK^T and AV, forward and backward
    assert flops_per_token(config, 2048) == flops_per_token(config) + attention
    assert parameter_summary(config, 2048)["flops_with_attention"] == flops_per_token(config, 2048)
    assert run_main(main, ["llama-medium", "seq_len=2048"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert [" ".join(row.split()) for row in rows[-2:]] == ["FLOPs/token (6N): 8.27e+08",
                                                            "FLOPs/token (with attention, seq_len 2048): 1.13e+09"]
    assert run_main(main, ["llama-medium", "seq_len=0"]) == 2
    assert capsys.readouterr().err.splitlines() == ["error: seq_len must be at least 1, got 0"]


def test_human_numbers():
    assert [human(n) for n in (512, 1234, 49_152_000, 999_999, 2_265_436_000)] == \
        ["512", "1.23K", "49.2M", "1M", "2.27G"]


@pytest.mark.integration  # a script in its own process
def test_command_line(capsys):
    """Through run_main, as the command runs (test_cli.py runs model.py in a process of its own)."""
    assert run_main(main, ["llama-medium"]) == 0
    assert capsys.readouterr().out.strip() == LLAMA_MEDIUM_SUMMARY
    assert run_main(main, ["llama-medium", "n_layer=4"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.strip().splitlines() == ["error: unknown config key 'n_layer' (did you mean 'n_layers'?)"]


@pytest.mark.parametrize("argv, message", [
    (["llama-medum"], "error: unknown preset 'llama-medum' (did you mean 'llama-medium'?)"),
    (["quickstart", "dim=abc"], "error: dim must be int, got 'abc'"),
    (["quickstart", "n_heads=5"], "error: dim (128) must be divisible by n_heads (5)"),
    (["quickstart", "tie_embeddings=1"], "error: tie_embeddings must be bool, got 1"),
    (["quickstart", "dim"], "error: expected key=value, got 'dim'"),
])
def test_command_line_errors(argv, message, capsys):
    assert run_main(main, argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [message]


def test_command_line_overrides(capsys):
    main(["quickstart", "vocab_size=50257", "tie_embeddings=True", "n_kv_heads=2", "rope_theta=500000"])
    printed = capsys.readouterr().out
    expected = replace(PRESETS["quickstart"], vocab_size=50257, tie_embeddings=True, n_kv_heads=2)
    assert printed.strip() == format_summary(expected)
    assert "Embedding:         6.43M" in printed  # 50257 * 128, counted once
    assert "Tied embeddings:   True" in printed



@pytest.mark.parametrize("overrides", [{}, {"tie_embeddings": True}, DEEPONE, CANON | {"canon": "ABCD"},
                                       {"n_kv_heads": 2}], ids=["llama", "tied", "deepone", "canon", "gqa"])
def test_the_meta_model_has_the_models_names_and_shapes_and_runs_no_initialiser(overrides):
    """meta_model (what the counts, the memory estimate and the checkpoint checks read) is the model, uninitialised:
    no initialiser reaches torch (the meta versions of normal_ and erfinv_ cost an import of torch._dynamo)."""
    config = tiny(**overrides)
    real, meta = Transformer(config), meta_model(config)
    assert {n: t.shape for n, t in meta.state_dict().items()} == {n: t.shape for n, t in real.state_dict().items()}
    assert all(t.is_meta for t in meta.state_dict().values())
    assert [p.requires_grad for p in meta.parameters()] == [p.requires_grad for p in real.parameters()]
    assert (meta.lm_head.weight is meta.embed_tokens.weight) == config.tie_embeddings

    class InPlaceOps(TorchDispatchMode):
        seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func._schema.name in ("aten::normal_", "aten::uniform_", "aten::erfinv_"):
                self.seen.append(func._schema.name)
            return func(*args, **(kwargs or {}))

    with InPlaceOps():
        meta_model(config)
    assert InPlaceOps.seen == []
    with InPlaceOps(), torch.device("meta"):  # what the check can see: the initialisers without SkipInitialisers
        Transformer(config)
    assert "aten::normal_" in InPlaceOps.seen

# -----------------------------------------------------------------------------------------------
# 2. Packed documents


def test_document_ids_and_positions():
    a, b, c = 5, 6, 7
    idx = torch.tensor([[a, a, EOT, b, b, EOT, c], [EOT, a, a, a, EOT, b, EOT]])
    doc_ids = document_ids(idx, EOT)
    assert doc_ids.tolist() == [[0, 0, 1, 1, 1, 2, 2], [1, 1, 1, 1, 2, 2, 3]]
    assert document_positions(doc_ids).tolist() == [[0, 1, 0, 1, 2, 0, 1], [0, 1, 2, 3, 0, 1, 0]]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("n_kv_heads", [None, 2])
def test_packed_documents_match_documents_alone(attn, n_kv_heads):
    assert_packed_matches_alone(tiny_model(attn=attn, n_kv_heads=n_kv_heads))


# -----------------------------------------------------------------------------------------------
# 3. The sdpa back-end against the eager one


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("n_kv_heads", [None, 2])
def test_sdpa_matches_eager_logits_and_gradients(packed, n_kv_heads):
    assert_sdpa_matches_eager(tiny_model(attn="sdpa", n_kv_heads=n_kv_heads), packed, logits_atol=3e-5)  # logits ~10


def test_eager_backend_runs_without_sdpa(monkeypatch):
    model = tiny_model(attn="eager")
    idx = torch.randint(1, VOCAB, (1, 8))
    expected = model(idx, document_ids(idx, EOT))

    def no_sdpa(*args, **kwargs):
        raise AssertionError("the eager back-end called scaled_dot_product_attention")

    monkeypatch.setattr(F, "scaled_dot_product_attention", no_sdpa)
    assert torch.equal(model(idx, document_ids(idx, EOT)), expected)
    model.generate(idx, 3)


# -----------------------------------------------------------------------------------------------
# 4. Hugging Face's LlamaForCausalLM as an independent reference


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("n_kv_heads, tied", [(None, False), (2, True)])
def test_matches_huggingface_llama(n_kv_heads, tied, attn):
    from transformers import LlamaConfig, LlamaForCausalLM

    model = tiny_model(n_kv_heads=n_kv_heads, tie_embeddings=tied, rope_theta=500.0, attn=attn)
    c = model.config
    hf_config = LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.dim, intermediate_size=c.ffn_dim,
        num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads, num_key_value_heads=c.kv_heads,
        rms_norm_eps=c.norm_eps, rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
        tie_word_embeddings=c.tie_embeddings, hidden_act="silu", attention_bias=False, mlp_bias=False,
        max_position_embeddings=64)
    hf = LlamaForCausalLM._from_config(hf_config, attn_implementation="eager").eval()
    assert hf.config._attn_implementation == "eager"
    # our names are HF's without the "model." prefix of the decoder stack
    state = {(name if name == "lm_head.weight" else "model." + name): tensor
             for name, tensor in model.state_dict().items()}
    hf.load_state_dict(state, strict=True)
    assert (hf.lm_head.weight is hf.model.embed_tokens.weight) == tied

    idx = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = hf(input_ids=idx).logits
        ours = model(idx)
    assert_close(ours, expected, atol=1e-4, rtol=1e-4)


# -----------------------------------------------------------------------------------------------
# 5. Generation with the key/value cache


def generate_without_cache(model, idx, max_new_tokens, pick):
    """The obvious loop: run the whole sequence again for every new token."""
    with torch.no_grad():
        for _ in range(max_new_tokens):
            idx = torch.cat([idx, pick(model(idx)[:, -1])], dim=1)
    return idx


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_generate_greedy_matches_full_recompute(attn):
    model = tiny_model(attn=attn, n_kv_heads=2)
    prompt = torch.randint(1, VOCAB, (2, 5), generator=torch.Generator().manual_seed(4))
    cached = model.generate(prompt, max_new_tokens=30, temperature=0)
    assert cached.shape == (2, 35)
    assert torch.equal(cached[:, :5], prompt)
    expected = generate_without_cache(model, prompt, 30, lambda logits: logits.argmax(-1, keepdim=True))
    assert torch.equal(cached, expected)
    # keeping only the single most likely token is greedy decoding, whatever the temperature
    assert torch.equal(model.generate(prompt, 30, temperature=1.0, top_k=1), cached)


def test_generate_sampling_is_reproducible_and_matches_full_recompute():
    model = tiny_model(n_kv_heads=2)
    prompt = torch.randint(1, VOCAB, (2, 5), generator=torch.Generator().manual_seed(5))

    def sample(seed):
        return model.generate(prompt, 20, temperature=0.8, top_k=10,
                              generator=torch.Generator().manual_seed(seed))

    first = sample(123)
    assert torch.equal(sample(123), first)
    assert not torch.equal(sample(124), first)  # the generator is really what draws the tokens
    generator = torch.Generator().manual_seed(123)
    expected = generate_without_cache(model, prompt, 20,
                                      lambda logits: sample_next(logits, 0.8, 10, generator))
    assert torch.equal(first, expected)


@pytest.mark.parametrize("attn, overrides", [("sdpa", {}), ("eager", {}), ("sdpa", DEEPONE), ("sdpa", CANON),
                                             ("sdpa", {"canon": "ABCD"})],
                         ids=["llama", "llama_eager", "deepone", "canon", "canon_abcd"])
@pytest.mark.parametrize("prompt_len", [5, 11])  # shorter and longer than the window
def test_windowed_generation_matches_recompute_over_the_window(attn, overrides, prompt_len):
    """With window=8, each token is the one a full forward over the last 8 tokens picks (nanoGPT's crop to
    block_size): the cache is refilled, not slid, once the window is full."""
    model = tiny_model(attn=attn, n_kv_heads=2, **overrides)
    prompt = torch.randint(1, VOCAB, (2, prompt_len), generator=torch.Generator().manual_seed(7))
    windowed = model.generate(prompt, max_new_tokens=24, temperature=0, window=8)
    assert windowed.shape == (2, prompt_len + 24) and torch.equal(windowed[:, :prompt_len], prompt)
    expected = prompt
    with torch.no_grad():
        for _ in range(24):
            expected = torch.cat([expected, model(expected[:, -8:])[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(windowed, expected)
    # the window changes what the model sees: without it the continuation differs (the check has teeth)
    assert not torch.equal(model.generate(prompt, max_new_tokens=24, temperature=0), windowed)
    # a window longer than the sample changes nothing
    assert torch.equal(model.generate(prompt, 24, temperature=0, window=prompt_len + 24),
                       model.generate(prompt, 24, temperature=0))


# -----------------------------------------------------------------------------------------------
# 6. The loss


def test_loss_is_summed_cross_entropy_ignoring_minus_one():
    model = tiny_model()
    generator = torch.Generator().manual_seed(6)
    idx = torch.randint(0, VOCAB, (3, 16), generator=generator)
    targets = torch.randint(0, VOCAB, (3, 16), generator=generator)
    targets[0, :4] = -1
    targets[2, 10] = -1
    loss = model(idx, targets=targets)
    assert loss.dim() == 0 and loss.dtype == torch.float32

    logits = model(idx)
    expected = F.cross_entropy(logits.view(-1, VOCAB), targets.view(-1), ignore_index=-1, reduction="sum")
    assert_close(loss, expected)
    # the same by hand: minus the log-probability of each real target, summed
    log_probs = logits.log_softmax(-1)
    valid = targets != -1
    by_hand = -log_probs[valid].gather(-1, targets[valid][:, None]).sum()
    assert_close(loss, by_hand, atol=1e-4, rtol=1e-5)


def test_loss_is_fp32_under_bf16_autocast():
    model = tiny_model()
    generator = torch.Generator().manual_seed(7)
    idx = torch.randint(0, VOCAB, (2, 16), generator=generator)
    targets = torch.randint(0, VOCAB, (2, 16), generator=generator)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(idx).dtype == torch.bfloat16
        loss = model(idx, targets=targets)
    assert loss.dtype == torch.float32
    assert_close(loss, model(idx, targets=targets), rtol=2e-2, atol=0)


# -----------------------------------------------------------------------------------------------
# 7. Checkpoints


def save_checkpoint(model, path):
    torch.save({"model": model.state_dict(), "model_config": asdict(model.config), "step": 0}, path)


def test_load_model_from_file_and_run_directory(tmp_path):
    config = tiny(n_kv_heads=2, tie_embeddings=True, rope_theta=500.0)
    torch.manual_seed(0)
    older, newer = Transformer(config), Transformer(config)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_checkpoint(older, run_dir / "ckpt_00000900.pt")
    save_checkpoint(newer, run_dir / "ckpt_00001000.pt")
    (run_dir / "ckpt_00002000.pt.tmp").write_bytes(b"an interrupted write")
    assert files.step_checkpoints(run_dir)[-1] == run_dir / "ckpt_00001000.pt"

    idx = torch.randint(0, VOCAB, (2, 12))
    with torch.no_grad():
        from_dir = load_model(run_dir)
        assert not from_dir.training
        assert from_dir.config == config
        assert from_dir.lm_head.weight is from_dir.embed_tokens.weight  # still tied after loading
        assert torch.equal(from_dir(idx), newer(idx))
        assert torch.equal(load_model(run_dir / "ckpt_00000900.pt")(idx), older(idx))
        assert not torch.equal(older(idx), newer(idx))


def test_load_model_missing(tmp_path):
    with pytest.raises(UserError, match="no such checkpoint file or run directory"):
        load_model(tmp_path / "missing")
    (tmp_path / "ckpt_00000001.pt.tmp").write_bytes(b"")
    assert files.step_checkpoints(tmp_path) == []
    with pytest.raises(UserError, match="no checkpoint"):
        load_model(tmp_path)


# -----------------------------------------------------------------------------------------------
# 8. Initialisation


def test_init_statistics():
    config = ModelConfig(vocab_size=4096, dim=256, n_layers=6, n_heads=4, ffn_dim=704)
    torch.manual_seed(0)
    model = Transformer(config)
    residual_std = 0.02 / math.sqrt(2 * 6)
    for layer in model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        for linear in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
            check_trunc_normal(linear.weight, 0.02)
        check_trunc_normal(attn.o_proj.weight, residual_std)
        check_trunc_normal(mlp.down_proj.weight, residual_std)
        assert torch.equal(layer.input_layernorm.weight, torch.ones(256))
        assert torch.equal(layer.post_attention_layernorm.weight, torch.ones(256))
    assert torch.equal(model.norm.weight, torch.ones(256))
    check_trunc_normal(model.lm_head.weight, 256**-0.5)
    embedding = model.embed_tokens.weight
    assert embedding.std().item() == pytest.approx(1.0, rel=0.01)
    assert embedding.abs().max().item() > 3.0  # a plain normal, not truncated

    tied = Transformer(replace(config, tie_embeddings=True))
    assert tied.embed_tokens.weight is tied.lm_head.weight
    check_trunc_normal(tied.embed_tokens.weight, 256**-0.5)
