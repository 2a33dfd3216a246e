"""The GPU check: what only a CUDA card runs, in one command and one RESULT line a part (make gpu-check).

    python gpu_check.py                         # every part (meant to fit 10 minutes on one GPU; not yet timed on one)
    python gpu_check.py --compile-mode default  # compiles in a fraction of max-autotune's time

1. card: its name, compute capability, SMs and memory, and the peak MFU is counted against (runs.peak_flops).
2. flex: compiled flex attention against eager sdpa over document-packed rows, 2 x 4,096 tokens, in fp32 and under
   bf16 autocast: the loss and every gradient.
3. step: llama-medium, 4 x 4,096 tokens, bf16 autocast, fused AdamW, compiled training steps with flex and with
   sdpa: tokens/s, MFU, peak memory, dynamo's graphs and its recompiles after the first step.
4. ddp: train.py on 2 GPUs (torchrun, nccl) against one process with grad_accum=2, where 2 GPUs are present.
5. train: train.py for 20 steps with compile=True and the auto keys (flex, bf16 autocast on CUDA): a checkpoint
   at step 10, a resume from it, an eval and a sample, on the embedded Shakespeare (bytes).

Without CUDA it is a dry run of the same code on the CPU at tiny shapes, in under a minute: flex forward only (it
has no backward on the CPU), sdpa steps, no ddp. A part that fails prints "RESULT part FAIL: why" and the check goes
on; the exit status is 1 if any part failed.
"""
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import torch
from torch._dynamo.utils import counters

import config
import model as model_lib
import optim
import parallel
import prepare
import runs
import train
from attention import document_ids

ROOT = Path(__file__).resolve().parent


def result(part, ok, **figures):
    """One RESULT line: the part, its figures as key=value, and ok or FAIL."""
    words = " ".join(f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}"
                     for key, value in figures.items())
    print(f"RESULT {part} {words} {'ok' if ok else 'FAIL'}".replace("  ", " "), flush=True)
    return ok


def relative_error(actual, expected):
    """The largest difference over the largest value of the reference (in fp32)."""
    return ((actual.float() - expected.float()).abs().max() / expected.float().abs().max()).item()


def packed_batch(vocab_size, rows, seq_len, device, generator_seed=0):
    """(x, y, doc_ids): random tokens with an end-of-text (the last id) every ~seq_len/4 tokens."""
    generator = torch.Generator().manual_seed(generator_seed)
    tokens = torch.randint(0, vocab_size - 1, (rows, seq_len + 1), generator=generator)
    tokens[torch.rand(tokens.shape, generator=generator) < 4 / seq_len] = vocab_size - 1
    # x a view and y a copy, as data.py's loader makes them: on the CPU the compiled graph's inputs then have the
    # strides of train.py's, and inductor's cache (warm from the tests' compiled runs) serves this graph too
    x, y = tokens[:, :-1].to(device), tokens[:, 1:].clone().to(device)
    return x, y, document_ids(x, vocab_size - 1)


def same_weights(model, attn):
    """A copy of model with another attention back-end."""
    other = model_lib.Transformer(replace(model.config, attn=attn)).to(next(model.parameters()).device)
    other.load_state_dict(model.state_dict())
    return other


# ----------------------------------------------------------------------------- the parts

def check_card(device):
    peak, source = runs.peak_flops(device)
    if device.type != "cuda":
        return result("card", True, device="cpu", threads=torch.get_num_threads(), peak=peak, source=f'"{source}"')
    properties = torch.cuda.get_device_properties(device)
    return result("card", peak is not None, name=f'"{properties.name}"', capability="%d.%d" % (properties.major, properties.minor),
                  sms=properties.multi_processor_count, memory_gib=properties.total_memory / 2**30,
                  native_bf16=runs.native_bf16(device), peak=peak or 0.0, source=f'"{source}"')


def check_flex(device, compile_mode):
    """Compiled flex against eager sdpa: the loss and every gradient (on the CPU: uncompiled flex, the loss only)."""
    cuda = device.type == "cuda"
    shape = (replace(model_lib.PRESETS["llama-medium"], n_layers=2), 2, 4096) if cuda else \
        (model_lib.ModelConfig(vocab_size=257, dim=64, n_layers=2, n_heads=4, ffn_dim=160), 2, 300)
    config_, rows, seq_len = shape
    torch.manual_seed(0)
    flex = model_lib.Transformer(replace(config_, attn="flex")).to(device)
    sdpa = same_weights(flex, "sdpa")
    x, y, doc_ids = packed_batch(config_.vocab_size, rows, seq_len, device)
    ok = True
    for dtype in ("fp32", "bf16"):
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()
        compiled = parallel.compile_model(flex, parallel.Layout("ddp"), compile_mode) if cuda else flex
        with autocast, torch.set_grad_enabled(cuda):
            losses = [compiled(x, doc_ids, y), sdpa(x, doc_ids, y)]
        loss_error = abs(losses[0].item() - losses[1].item()) / losses[1].item()
        grad_error = 0.0
        if cuda:
            for loss in losses:
                loss.backward()
            grad_error = max(relative_error(a.grad, b.grad) for a, b in zip(flex.parameters(), sdpa.parameters()))
            flex.zero_grad(set_to_none=True)
            sdpa.zero_grad(set_to_none=True)
        loss_limit, grad_limit = (1e-5, 1e-3) if dtype == "fp32" else (1e-2, 5e-2)  # bf16: other kernels' rounding
        ok &= result("flex", loss_error <= loss_limit and grad_error <= grad_limit, dtype=dtype,
                     rows=f"{rows}x{seq_len}", loss_error=loss_error,
                     grad_error=grad_error if cuda else "none(no flex backward on the cpu)")
    return ok


def check_step(device, compile_mode):
    """Compiled training steps, flex and sdpa on CUDA (sdpa on the CPU): speed, MFU, memory, graphs, recompiles."""
    cuda = device.type == "cuda"
    if cuda:
        config_, rows, seq_len, lr = model_lib.PRESETS["llama-medium"], 4, 4096, 3e-4
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as train.py runs on CUDA
    else:  # the CPU tests' tiny shape (tests/conftest.py TINY), whose kernels inductor has cached by then
        config_, rows, seq_len, lr = model_lib.ModelConfig(vocab_size=257, dim=32, n_layers=2, n_heads=2, ffn_dim=64), 4, 32, 3e-3
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    peak, _ = runs.peak_flops(device)
    ok = True
    for attn in ("flex", "sdpa") if cuda else ("sdpa",):
        torch._dynamo.reset()
        counters.clear()
        torch.manual_seed(0)
        raw_model = model_lib.Transformer(replace(config_, attn=attn)).to(device)
        optimizer = optim.build_optimizer("torch_adamw", raw_model, lr=lr, weight_decay=0.1, betas=(0.9, 0.95),
                                          eps=1e-8, seed=0)  # fused on CUDA
        compiled = parallel.compile_model(raw_model, parallel.Layout("ddp"), compile_mode if cuda else "default")
        batch = packed_batch(config_.vocab_size, rows, seq_len, device)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        losses, _ = timed_steps(compiled, raw_model, optimizer, batch, autocast, 1)  # compiles
        compile_seconds = time.perf_counter() - start
        recompiles_before = sum(len(reasons) for reasons in torch._dynamo.guard_failures.values())
        more_losses, seconds = timed_steps(compiled, raw_model, optimizer, batch, autocast, 12 if cuda else 5)
        recompiles = sum(len(reasons) for reasons in torch._dynamo.guard_failures.values()) - recompiles_before
        losses += more_losses
        tokens_per_s = rows * seq_len / statistics.median(seconds[2:])
        mfu = model_lib.flops_per_token(config_, seq_len) * tokens_per_s / peak if peak else None
        ok &= result("step", all(map(math.isfinite, losses)) and losses[-1] < losses[0] - 0.1 and recompiles == 0
                     and (mfu is None or 0 < mfu < 1), attn=attn, shape=f"{config_.dim}x{config_.n_layers}",
                     rows=f"{rows}x{seq_len}", tokens_per_s=tokens_per_s, mfu=mfu if mfu is not None else "unknown",
                     peak_memory_gib=torch.cuda.max_memory_allocated() / 2**30 if cuda else "n/a",
                     graphs=counters["stats"]["unique_graphs"], recompiles=recompiles,
                     first_step_s=compile_seconds, loss_first=losses[0], loss_last=losses[-1])
        torch._dynamo.reset()
    return ok


def timed_steps(model, raw_model, optimizer, batch, autocast, n_steps):
    """n_steps optimizer steps on one batch as train.py takes them (the summed loss over the target count, clip at 1);
    returns (losses, seconds a step), the device synchronised."""
    x, y, doc_ids = batch
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    losses, seconds = [], []
    for _ in range(n_steps):
        sync()
        start = time.perf_counter()
        with autocast:
            loss = model(x, doc_ids, y) / (y != -1).sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(raw_model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        sync()
        seconds.append(time.perf_counter() - start)
    return losses, seconds


def run_args(data_dir, data_name, out_dir, device, *extra):
    """train.py's keys for a small run of the check's (on CUDA rows of 128 tokens, flex's block size)."""
    shape = ["dim=64", "n_layers=2", "n_heads=2", "ffn_dim=176", "seq_len=128", "batch_size=8"] if device.type == "cuda" \
        else ["dim=32", "n_layers=2", "n_heads=2", "ffn_dim=64", "seq_len=32", "batch_size=4"]
    return ["model=quickstart", *shape, f"data={data_name}", f"data_dir={data_dir}", f"out_dir={out_dir}",
            f"device={device.type}", "total_tokens=0.5", "warmup_tokens=0.001", "lr=3e-3", "log_interval=1",
            "eval_interval=10", "eval_iters=2", "checkpoint_interval=10", "sample_tokens=40", *extra]


def read_log(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def check_ddp(device, data_dir, data_name, out_dir):
    if device.type != "cuda" or torch.cuda.device_count() < 2:
        return result("ddp", True, skipped="needs-2-cuda-devices")
    common = run_args(data_dir, data_name, out_dir, device, "max_steps=10", "dtype=fp32", "compile=False")
    if train.main(common + ["run_name=one", "grad_accum=2"]) != 0:
        return result("ddp", False, why="the one-process run failed")
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                               str(ROOT / "train.py"), *common, "run_name=two"], capture_output=True, text=True)
    if launched.returncode != 0:
        return result("ddp", False, why=f'"{config.one_line(RuntimeError(launched.stderr.strip()[-300:]))}"')
    one, two = [[r["loss"] for r in read_log(out_dir / name) if "loss" in r] for name in ("one", "two")]
    worst = max(abs(a - b) for a, b in zip(one, two))
    return result("ddp", len(one) == len(two) == 10 and worst <= 1e-4, steps=len(two), worst_loss_difference=worst)


def check_train(device, data_dir, data_name, out_dir):
    """train.py as a user runs it: 10 steps and a checkpoint, then the same command to step 20 resumes from it."""
    args = run_args(data_dir, data_name, out_dir, device, "compile=True", "run_name=train")
    start = time.perf_counter()
    statuses = [train.main(args + ["max_steps=10"]), train.main(args + ["max_steps=20"])]
    records = read_log(out_dir / "train")
    steps = [r["step"] for r in records if "loss" in r]
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    samples = out_dir / "train" / "samples.txt"
    resolved = json.loads((out_dir / "train" / "config.json").read_text())
    return result("train", statuses == [0, 0] and steps == list(range(1, 21)) and samples.exists() and len(evals) >= 3
                  and evals[-1] < evals[0], attn=resolved["attn"], dtype=resolved["dtype"],
                  compile_mode=resolved["compile_mode"], steps=len(steps), eval_first=evals[0], eval_last=evals[-1],
                  checkpoints=len(list((out_dir / "train").glob("ckpt_*.pt"))), seconds=time.perf_counter() - start)


# ----------------------------------------------------------------------------- command line

def main(argv):
    parser = config.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--compile-mode", default="max-autotune-no-cudagraphs", choices=parallel.COMPILE_MODES,
                        help="torch.compile's mode on CUDA (default max-autotune-no-cudagraphs, as train.py's auto)")
    parser.add_argument("--data-dir", help="a prepared data directory to train on (default: the embedded Shakespeare, "
                                           "prepared with --tokenizer bytes into a temporary directory)")
    parser.add_argument("--data", default="shakespeare", help="the data's name in --data-dir (default shakespeare)")
    args = parser.parse_args(argv)
    if args.data_dir and not (Path(args.data_dir) / args.data / "meta.json").is_file():
        raise config.UserError(f"{Path(args.data_dir) / args.data / 'meta.json'} not found: prepare the data first")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"the GPU check on {device.type}" + ("" if device.type == "cuda" else ": a dry run at tiny shapes"),
          flush=True)
    ok = True
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        data_dir = args.data_dir
        if data_dir is None:
            data_dir = scratch / "data"
            prepare.prepare("shakespeare", tokenizer="bytes", out_dir=str(data_dir))
        parts = [lambda: check_card(device), lambda: check_flex(device, args.compile_mode),
                 lambda: check_step(device, args.compile_mode),
                 lambda: check_ddp(device, data_dir, args.data, scratch / "ddp"),
                 lambda: check_train(device, data_dir, args.data, scratch / "train")]
        for name, part in zip(("card", "flex", "step", "ddp", "train"), parts):
            try:
                ok &= part()
            except Exception as e:  # a part that breaks is a result too; the others still run
                traceback.print_exc()
                ok &= result(name, False, why=f'"{config.one_line(e)}"')
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(config.run_main(main, sys.argv[1:]))
