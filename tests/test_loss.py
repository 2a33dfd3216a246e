"""The chunked linear cross-entropy against the plain lm_head + F.cross_entropy: loss, gradients, training."""
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

import model as model_lib
import train
from model import ModelConfig, Transformer, chunked_cross_entropy
from conftest import read_log, run_args


def plain_loss(hidden, weight, targets):
    return F.cross_entropy((hidden @ weight.t()).float(), targets, ignore_index=-1, reduction="sum")


def relative(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 64 rows, so that a test batch spans several, the last one partial."""
    monkeypatch.setattr(model_lib, "LOSS_CHUNK_ROWS", 64)


def test_chunked_loss_and_gradients_equal_the_plain_ones(small_chunks):
    torch.manual_seed(0)
    hidden = torch.randn(300, 48, requires_grad=True)
    weight = (0.2 * torch.randn(500, 48)).requires_grad_()
    targets = torch.randint(0, 500, (300,))
    targets[::5] = -1  # ignored targets in every chunk
    targets[64:128] = -1  # and a chunk of nothing but ignored ones
    grads = []
    for loss_fn in (chunked_cross_entropy, plain_loss):
        loss = loss_fn(hidden, weight, targets)
        loss.backward()
        grads.append((loss.detach(), hidden.grad, weight.grad))
        hidden.grad = weight.grad = None
    (loss, grad_hidden, grad_weight), (ref, ref_hidden, ref_weight) = grads
    assert abs(loss.item() - ref.item()) <= 1e-6 * ref.item()
    assert relative(grad_hidden, ref_hidden) <= 1e-5 and relative(grad_weight, ref_weight) <= 1e-5
    assert grad_hidden[64:128].abs().max() == 0  # an ignored row has no gradient


@pytest.mark.parametrize("tied", [False, True])
def test_the_model_loss_and_every_gradient_match_the_plain_path(small_chunks, tied):
    config = ModelConfig(vocab_size=300, dim=32, n_layers=2, n_heads=4, ffn_dim=64, tie_embeddings=tied)
    torch.manual_seed(0)
    chunked = Transformer(config)
    plain = Transformer(replace(config, loss="plain"))
    plain.load_state_dict(chunked.state_dict())
    idx = torch.randint(0, 300, (3, 40))
    targets = torch.randint(0, 300, (3, 40))
    targets[:, :7] = -1
    losses = [m(idx, targets=targets) for m in (chunked, plain)]
    assert abs(losses[0].item() - losses[1].item()) <= 1e-6 * losses[1].item()
    for loss in losses:
        loss.backward()
    for (name, p), q in zip(chunked.named_parameters(), plain.parameters()):
        assert relative(p.grad, q.grad) <= 1e-5, name
    with torch.no_grad():  # eval: the same loop without gradients
        assert chunked(idx, targets=targets).item() == pytest.approx(losses[1].item(), rel=1e-6)


@pytest.mark.parametrize("dtype", ["bf16-mixed", "bf16"])
def test_chunked_loss_under_bf16(small_chunks, dtype):
    """Under autocast the matmuls run in bf16 and the softmax in fp32; in pure bf16 the gradients come back in bf16.
    Both stay within bf16's rounding of the fp32 reference."""
    torch.manual_seed(0)
    hidden = torch.randn(200, 32)
    weight = 0.2 * torch.randn(400, 32)
    targets = torch.randint(0, 400, (200,))
    targets[::3] = -1
    ref_h, ref_w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    plain_loss(ref_h, ref_w, targets).backward()
    if dtype == "bf16":
        hidden, weight = hidden.bfloat16(), weight.bfloat16()
    hidden.requires_grad_(), weight.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16-mixed"):
        loss = chunked_cross_entropy(hidden, weight, targets)
    loss.backward()
    assert loss.dtype == torch.float32
    assert weight.grad.dtype == weight.dtype and hidden.grad.dtype == hidden.dtype
    assert relative(hidden.grad.float(), ref_h.grad) < 0.03 and relative(weight.grad.float(), ref_w.grad) < 0.03


def test_training_with_the_chunked_loss_matches_the_plain_one(tiny_data, tmp_path, small_chunks):
    for loss in ("chunked", "plain"):
        assert train.main(run_args(tiny_data, tmp_path, f"run_name={loss}", "max_steps=20", f"loss={loss}")) == 0
    chunked, plain = read_log(tmp_path / "chunked")[0], read_log(tmp_path / "plain")[0]
    assert [r["step"] for r in chunked] == list(range(1, 21))
    for a, b in zip(chunked, plain):
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * b["loss"], (a["step"], a["loss"], b["loss"])


def test_the_logged_mfu_matches_an_independent_count(tiny_data, tmp_path, capsys):
    """mfu = (6 x matmul weights + attention) x tokens/s / peak, the count written out here from the shapes; the run
    prints both counts at its start, each labelled."""
    assert train.main(run_args(tiny_data, tmp_path, "run_name=m", "max_steps=6", "peak_flops=1e12")) == 0
    lines, _ = read_log(tmp_path / "m")
    vocab, dim, layers, ffn, seq_len = 257, 32, 2, 64, 32  # TINY in test_train.py; MHA, untied
    per_layer = 4 * dim * dim + 3 * dim * ffn  # q, k, v, o; gate, up, down
    six_n = 6 * (layers * per_layer + vocab * dim)
    count = six_n + 12 * layers * dim * seq_len
    for r in lines:
        assert r["mfu"] == pytest.approx(count * r["tok_per_s"] / 1e12, rel=0.02)
    out = capsys.readouterr().out
    assert f"| FLOPs/token (6N): {six_n:.2e} | FLOPs/token (with attention, seq_len {seq_len}): {count:.2e}" in out
    assert f"mfu counts {count:.3g} FLOPs/token (with attention) against a peak of 1e+12 FLOP/s a device" in out
