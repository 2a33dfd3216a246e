"""Tests for the flex_attention back-end (attn="flex") of model.py. On the CPU flex_attention runs forward
only (torch 2.13: "FlexAttention does not support backward on CPU"), uncompiled: logits against the eager
and sdpa back-ends, with and without packed documents, and generation (which decodes through sdpa).
Gradients, the slopes' included, are compared on a CUDA device only, where flex is compiled."""


import pytest
import torch
from torch.nn.attention.flex_attention import flex_attention
from torch.testing import assert_close

import attention
from attention import document_ids
from conftest import CANON, DEEPONE, EOT, VOCAB, assert_packed_matches_alone, same_model, tiny_model

# uncompiled flex (the CPU path) warns once that it materialises the scores: known, and what we want here
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")

VARIANTS = [{}, {"n_kv_heads": 2}, {"position": "alibi", "alibi_trainable": True}, {"position": "nope"},
            DEEPONE, CANON | {"canon": "ABCD"}]
VARIANT_IDS = ["rope", "rope_gqa", "alibi_trainable", "nope", "deepone", "canon_abcd_nope_qk_norm"]


def batch(generator_seed=2):
    """Two rows of 40 tokens with documents packed in them, one of them a single EOT."""
    idx = torch.randint(1, VOCAB, (2, 40), generator=torch.Generator().manual_seed(generator_seed))
    idx[0, [5, 17]] = EOT
    idx[1, [0, 11, 12]] = EOT
    return idx


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "one_document"])
@pytest.mark.parametrize("overrides", VARIANTS, ids=VARIANT_IDS)
def test_flex_matches_eager_and_sdpa_logits(overrides, packed, monkeypatch):
    flex = tiny_model(attn="flex", **overrides)
    idx = batch()
    doc_ids = document_ids(idx, EOT) if packed else None
    # DeepNet's post-norms amplify fp32 rounding: sdpa's differs from eager's by up to ~1.6e-5 there
    sdpa_atol = 3e-5 if overrides == DEEPONE else 1e-5
    calls = []
    monkeypatch.setattr(attention, "flex_attention", lambda *args, **kwargs: calls.append(kwargs) or
                        flex_attention(*args, **kwargs))
    with torch.no_grad():
        logits = flex(idx, doc_ids)
        assert len(calls) == 2  # one per layer: really flex's, no fallback
        assert (calls[0]["score_mod"] is not None) == (flex.config.position == "alibi")
        assert_close(logits, same_model(flex, "eager")(idx, doc_ids), atol=1e-5, rtol=1e-5)
        assert_close(logits, same_model(flex, "sdpa")(idx, doc_ids), atol=sdpa_atol, rtol=1e-5)
        if packed:  # the block mask has teeth: without it the logits differ
            assert not torch.allclose(logits, flex(idx), atol=1e-3)


@pytest.mark.parametrize("overrides", [{"position": "alibi", "alibi_trainable": True}, CANON],
                         ids=["alibi_trainable", "canon"])
def test_flex_packed_documents_match_documents_alone(overrides):
    assert_packed_matches_alone(tiny_model(attn="flex", n_kv_heads=2, **overrides))


@pytest.mark.parametrize("overrides", [{"position": "alibi", "alibi_trainable": True}, CANON],
                         ids=["alibi_trainable", "canon"])
def test_flex_generate_matches_full_recompute(overrides):
    """Cached decoding falls back to sdpa; the full recomputation runs flex over the whole sequence."""
    model = tiny_model(attn="flex", n_kv_heads=2, **overrides)
    prompt = torch.randint(1, VOCAB, (2, 5), generator=torch.Generator().manual_seed(4))
    cached = model.generate(prompt, max_new_tokens=12, temperature=0)
    expected = prompt
    with torch.no_grad():
        for _ in range(12):
            expected = torch.cat([expected, model(expected)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, expected)
    assert len(set(cached[0, 5:].tolist())) > 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flex_attention has no backward on the CPU")
@pytest.mark.parametrize("overrides", [{"position": "alibi", "alibi_trainable": True, "n_kv_heads": 2}, DEEPONE,
                                       {"position": "nope"}], ids=["alibi_trainable_gqa", "deepone", "nope"])
def test_flex_gradients_match_eager_on_cuda(overrides):
    """Compiled flex on the GPU: the summed loss and every gradient (the ALiBi slopes' included) as eager's."""
    flex = tiny_model(attn="flex", **overrides).cuda()
    eager = same_model(flex, "eager").cuda()
    idx = batch().cuda()
    targets = torch.randint(0, VOCAB, idx.shape, generator=torch.Generator().manual_seed(3)).cuda()
    doc_ids = document_ids(idx, EOT)
    losses = [model(idx, doc_ids, targets) for model in (flex, eager)]
    assert_close(losses[0], losses[1], rtol=1e-4, atol=1e-3)
    for loss in losses:
        loss.backward()
    for (name, p_flex), (_, p_eager) in zip(flex.named_parameters(), eager.named_parameters()):
        scale = p_eager.grad.abs().max().item()
        assert scale > 0, name
        assert (p_flex.grad - p_eager.grad).abs().max().item() <= 1e-3 * scale, name


def test_the_block_mask_is_built_by_compiled_code_in_every_layout(monkeypatch):
    """Where flex trains (attention.compiles_flex: CUDA), the block mask comes from compiled code even when the
    model is not compiled (compile=False, and fsdp and pp, which compile the blocks, not block_inputs): the eager
    build materialises (B, T, T) first. Here the CPU stands in for CUDA; flex_attention itself stays uncompiled."""
    import parallel
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    built, compiled = [], torch.compile(attention.block_mask)
    monkeypatch.setattr(attention, "compiles_flex", lambda device: True, raising=False)
    monkeypatch.setattr(attention, "compiled_block_mask", lambda: lambda *args: built.append(args) or compiled(*args),
                        raising=False)
    monkeypatch.setattr(attention, "compiled_flex_attention", lambda: flex_attention)
    model = tiny_model(attn="flex")
    stage = parallel.StageModel(same_model(model, "flex"), 0, 1)  # pp: one stage that is first and last
    graphs = []
    try:
        with torch.no_grad():
            for seed in (2, 3):  # other documents, the same shape: the compiled builder is reused
                idx = batch(seed)
                doc_ids = document_ids(idx, EOT)
                logits = model(idx, doc_ids)
                assert_close(logits, same_model(model, "eager")(idx, doc_ids), atol=1e-5, rtol=1e-5)
                assert_close(model.lm_head(stage(idx, doc_ids)), logits, atol=1e-6, rtol=1e-6)
                graphs.append(counters["stats"]["unique_graphs"])
        assert len(built) == 4  # each forward, the model's and the stage's, built its mask through compiled code
        assert graphs[0] >= 1 and graphs[1] == graphs[0], graphs  # compiled, and nothing compiled again
    finally:
        torch._dynamo.reset()
        counters.clear()
