"""The GPU check: the CUDA paths of small-lm, run where CUDA is present; `pytest tests/test_gpu.py -s` prints figures.

1. flex attention against eager over rows of several 128-token blocks (forward; on CUDA also the loss and every
   gradient). test_flex.py covers flex's CUDA gradients for ALiBi, DeepOne and NoPE on 40-token rows (less than
   one block); this adds RoPE, the Llama default, and documents that cross block boundaries.
2. gpu_check.py (make gpu-check), the GPU check's one script: here its dry run on the CPU (tiny shapes, under a
   minute); on a CUDA machine run the script itself.
3. Fused AdamW (optimizer=torch_adamw on CUDA) against torch's single-tensor AdamW (on the CPU: torch's fused
   CPU kernel and the foreach one build_optimizer picks there).
4. Two GPUs under torchrun with nccl equal to one GPU with grad_accum=2 (two or more GPUs only; the CPU's gloo
   version is test_train.py's test_torchrun_two_processes_match_one_with_grad_accum).
5. bf16-mixed autocast training through train.py against fp32 (on CUDA with attn=flex), loosely.

Every part that needs CUDA (or two GPUs) is skipped with that reason where they are missing; the rest runs on the
CPU.
"""
import copy
import json

import pytest
import torch

import gpu_check
import optim
import runs
import train
from attention import document_ids
from conftest import EOT, VOCAB, read_log, run_args, run_torchrun, same_model, tiny_model

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]

# uncompiled flex (the CPU path) warns once that it materialises the scores: known, and what we want here; inductor's
# CPU back-end imports torch.utils.mkldnn, which uses torch.jit.script_method and warns (torch 2.13): not ours
pytestmark = [pytest.mark.integration,  # compiled training
              pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile"),
              pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")]


@pytest.fixture(autouse=True)
def fp32_matmul_flags():
    """train.py turns TF32 on for CUDA runs, for the whole process; each test here starts with it off (so fp32 is
    fp32) and leaves the flags as it found them."""
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


# ----------------------------------------------------------------------------- 1. flex over several blocks

def packed_rows(device):
    """Two rows of 300 tokens (three flex blocks of 128, the last one partial) whose documents cross the block
    boundaries: row 0 packs five, one a single EOT; row 1 two long ones, so its last query block and first key
    block share no document (a block the mask skips whole)."""
    idx = torch.randint(1, VOCAB, (2, 300), generator=torch.Generator().manual_seed(5))
    idx[0, [0, 90, 150, 151, 280]] = EOT
    idx[1, 130] = EOT
    targets = torch.randint(0, VOCAB, idx.shape, generator=torch.Generator().manual_seed(6))
    targets[0, 200:230] = -1  # ignored targets, as padding gives them
    return idx.to(device), targets.to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("overrides", [{}, {"n_kv_heads": 2}], ids=["rope", "rope_gqa"])
def test_flex_matches_eager_over_several_blocks(device, overrides):
    """The logits, and on CUDA (compiled flex) the summed loss and every gradient, as eager attention's."""
    flex = tiny_model(attn="flex", **overrides).to(device)
    eager = same_model(flex, "eager").to(device)
    idx, targets = packed_rows(device)
    doc_ids = document_ids(idx, EOT)
    with torch.no_grad():
        logits = flex(idx, doc_ids)
        expected = eager(idx, doc_ids)
        unmasked = flex(idx[:, :128])
    error = gpu_check.relative_error(logits, expected)
    print(f"\nflex vs eager on {device}, {overrides or 'rope'}: logits max error {error:.1e} of the largest")
    assert error <= 1e-5
    assert gpu_check.relative_error(unmasked, expected[:, :128]) > 1e-2  # without the mask: other logits
    if device == "cpu":
        return  # flex_attention has no backward on the CPU
    losses = [model(idx, doc_ids, targets) for model in (flex, eager)]
    assert abs(losses[0].item() - losses[1].item()) <= 1e-5 * losses[1].item()
    for loss in losses:
        loss.backward()
    for (name, p_flex), (_, p_eager) in zip(flex.named_parameters(), eager.named_parameters()):
        assert p_eager.grad.abs().max() > 0, name
        assert gpu_check.relative_error(p_flex.grad, p_eager.grad) <= 1e-4, name


# ----------------------------------------------------------------------------- 2. gpu_check.py, dry run

def test_the_gpu_check_dry_runs_on_the_cpu(tiny_data, capsys):
    """make gpu-check's script without CUDA: every part that the CPU can run, at tiny shapes, one RESULT line a part,
    each ok (ddp skipped for want of two GPUs). On a CUDA machine it runs at the reference's shapes instead."""
    if torch.cuda.is_available():
        pytest.skip("on CUDA, run make gpu-check: the full check, ~10 minutes")
    status = gpu_check.main(["--data-dir", str(tiny_data), "--data", "tiny"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("RESULT ")]
    assert [line.split()[1] for line in lines] == ["card", "flex", "flex", "step", "ddp", "train"], lines
    assert status == 0 and all(line.endswith(" ok") for line in lines), lines
    step = dict(word.split("=", 1) for word in lines[3].split()[2:-1])
    assert step["recompiles"] == "0" and 0 < float(step["mfu"]) < 1
    train_line = dict(word.split("=", 1) for word in lines[5].split()[2:-1])
    assert (train_line["attn"], train_line["dtype"], train_line["steps"]) == ("sdpa", "fp32", "20")


# ----------------------------------------------------------------------------- 3. fused AdamW

@pytest.mark.parametrize("device", DEVICES)
def test_fused_adamw_matches_single_tensor_adamw(device):
    """Five steps of a tiny model: the same weights (to rounding) from torch's single-tensor AdamW, train.py's
    optimizer=torch_adamw (fused on CUDA, foreach on the CPU) and torch's fused kernel for this device."""
    torch.manual_seed(0)
    models = [tiny_model(attn="sdpa").train().to(device)]
    models += [copy.deepcopy(models[0]) for _ in range(2)]
    hyper = {"lr": 1e-2, "betas": (0.9, 0.95), "eps": 1e-8}
    optimizers = [torch.optim.AdamW(optim.param_groups(models[0], 0.1), **hyper, foreach=False, fused=False),
                  optim.build_optimizer("torch_adamw", models[1], weight_decay=0.1, seed=0, **hyper),
                  torch.optim.AdamW(optim.param_groups(models[2], 0.1), **hyper, fused=True)]
    assert optimizers[1].defaults["fused"] == (device == "cuda")
    initial = [p.detach().clone() for p in models[0].parameters()]
    generator = torch.Generator().manual_seed(7)
    for _ in range(5):
        tokens = torch.randint(1, VOCAB, (4, 33), generator=generator).to(device)
        for model, optimizer in zip(models, optimizers):
            (model(tokens[:, :-1], targets=tokens[:, 1:]) / tokens[:, 1:].numel()).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    assert all(gpu_check.relative_error(p, p0) > 1e-3 for p, p0 in zip(models[0].parameters(), initial))  # all moved
    for name, reference in models[0].named_parameters():
        for model in models[1:]:
            other = dict(model.named_parameters())[name]
            # a real difference (weight decay, bias correction) is ~lr = 1e-2 of the weights after 5 steps
            assert gpu_check.relative_error(other, reference) <= 1e-4, name


# ----------------------------------------------------------------------------- 4. two GPUs, nccl

@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_gpus_with_nccl_match_one_with_grad_accum(tiny_data, tmp_path):
    """2 processes x batch 4 on two GPUs and 1 process x batch 4 x grad_accum 2 on one: the same losses (fp32)."""
    common = run_args(tiny_data, tmp_path, "max_steps=8", "eval_interval=4", "device=cuda", "dtype=fp32")
    assert train.main(common + ["run_name=single", "grad_accum=2"]) == 0
    result = run_torchrun(common + ["run_name=ddp"], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "ddp" / "config.json").read_text())["world_size"] == 2
    (single, single_evals), (ddp, ddp_evals) = read_log(tmp_path / "single"), read_log(tmp_path / "ddp")
    assert [r["step"] for r in ddp] == list(range(1, 9))
    for a, b in zip(single, ddp):
        assert abs(a["loss"] - b["loss"]) <= 1e-4, (a["step"], a["loss"], b["loss"])
        assert a["tokens"] == b["tokens"]
    for a, b in zip(single_evals, ddp_evals):
        assert abs(a["eval_loss"] - b["eval_loss"]) <= 1e-4


# ----------------------------------------------------------------------------- 5. bf16 autocast

@pytest.mark.parametrize("device", DEVICES)
def test_bf16_mixed_training_follows_fp32(tiny_data, tmp_path, device):
    """20 steps through train.py with dtype=bf16-mixed (fp32 weights, bf16 autocast) stay within 2% of the fp32
    run's loss at every step; on CUDA with attn=flex, the GPU's attention."""
    common = run_args(tiny_data, tmp_path, "max_steps=20", "eval_interval=20", "sample_tokens=0", f"device={device}",
                      f"attn={'flex' if device == 'cuda' else 'sdpa'}")
    for dtype in ("fp32", "bf16-mixed"):
        assert train.main(common + [f"run_name={dtype}", f"dtype={dtype}"]) == 0
    (fp32, fp32_evals), (bf16, bf16_evals) = read_log(tmp_path / "fp32"), read_log(tmp_path / "bf16-mixed")
    worst = max(abs(a["loss"] - b["loss"]) / a["loss"] for a, b in zip(fp32, bf16))
    print(f"\nbf16-mixed vs fp32 on {device}: losses {fp32[0]['loss']:.3f} -> {fp32[-1]['loss']:.3f} (fp32), "
          f"{bf16[0]['loss']:.3f} -> {bf16[-1]['loss']:.3f} (bf16-mixed); worst step {100 * worst:.2f}% apart")
    assert len(bf16) == 20 and worst <= 0.02
    assert bf16[-1]["loss"] < bf16[0]["loss"] - 1.0
    assert abs(fp32_evals[-1]["eval_loss"] - bf16_evals[-1]["eval_loss"]) <= 0.02 * fp32_evals[-1]["eval_loss"]


# ----------------------------------------------------------------------------- the card table, on any machine

@pytest.mark.parametrize("name, peak", [
    ("NVIDIA L40", 181e12), ("NVIDIA L40S", 362e12), ("NVIDIA L4", 121e12),  # not each other's
    ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H200", 989e12),
    ("NVIDIA GeForce RTX 3090 Ti", 80e12), ("NVIDIA GeForce RTX 3090", 71e12), ("NVIDIA GeForce RTX 4090", 165e12),
    ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA A10G", 70e12), ("NVIDIA A10", 125e12),
    ("Tesla V100-SXM2-16GB", None), ("Tesla T4", None),  # no bf16 tensor cores: no bf16 peak
    ("NVIDIA GeForce RTX 2080", None), ("NVIDIA H100", None),  # not a name torch gives: unknown, not guessed
])
def test_cards_are_matched_by_their_exact_name(monkeypatch, name, peak):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    got, source = runs.peak_flops(torch.device("cuda"))
    assert got == peak, source
    assert name in source and (peak is not None or "no mfu" in source or "peak_flops=" in source)


@pytest.mark.parametrize("capability, native", [((7, 0), False), ((7, 5), False), ((8, 0), True), ((8, 6), True),
                                                ((9, 0), True)])
def test_bf16_is_native_from_ampere_on(monkeypatch, capability, native):
    """dtype=auto picks bf16-mixed only where native_bf16: a V100 (7.0) or a T4 (7.5) would emulate it."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert runs.native_bf16(torch.device("cuda")) == native
