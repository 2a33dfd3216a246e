"""Memory: memory.memory_estimate against a real step's peak, and a run, a sample or an import that cannot fit refused
before anything is allocated, with the estimate and what fits."""
import os
import re
import subprocess
import sys
from dataclasses import asdict, replace

import pytest
import torch

import export
import llama
import memory
import model
import parallel
import runs
import sample
import train
from config import UserError, run_main
from conftest import ROOT, run_args
from model import ModelConfig, Transformer

# -----------------------------------------------------------------------------------------------
# The estimate

# Measured in a fresh process: the growth of the resident set's high-water mark (VmHWM, reset through clear_refs) over
# two steps, the second with the optimizer state alive, from a baseline taken after every kernel has run once at a
# tiny size. MALLOC_MMAP_THRESHOLD_ keeps each large tensor in its own mapping, returned to the system when freed:
# otherwise glibc raises its threshold after the first large free and keeps freed tensors' pages in its heap, and
# the resident set counts memory that malloc holds but no tensor does.
MEASURE = """
import ctypes, re, sys
import torch
torch.set_num_threads(1)
import model, optim
config, batch_size, seq_len = model.ModelConfig(**eval(sys.argv[1])), int(sys.argv[2]), int(sys.argv[3])
optimizer = sys.argv[4]

def kib(field):
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\\s+(\\d+) kB", f.read(), re.MULTILINE).group(1))

def train(config, rows, steps):
    net = model.Transformer(config)
    opt = optim.build_optimizer(optimizer, net, 1e-3, 0.1, (0.9, 0.95), 1e-8, seed=0)
    x = torch.randint(0, config.vocab_size, rows)
    for _ in range(steps):
        net(x, x, x).backward()  # x as document ids too: attention under a mask, as memory_estimate counts it
        opt.step()
        opt.zero_grad(set_to_none=True)

train(model.ModelConfig(vocab_size=config.vocab_size, dim=32, n_layers=1, n_heads=2, ffn_dim=64), (2, 16), 1)
ctypes.CDLL(None).malloc_trim(0)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
start = kib("VmRSS")
train(config, (batch_size, seq_len), 2)
print(1024 * (kib("VmHWM") - start))
"""


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's /proc to measure a peak")
def test_the_estimate_is_within_15_percent_of_a_real_steps_peak():
    config = dict(vocab_size=4096, dim=256, n_layers=4, n_heads=4, ffn_dim=704)
    batch_size, seq_len, optimizer = 4, 256, "adamw"
    result = subprocess.run([sys.executable, "-c", MEASURE, repr(config), str(batch_size), str(seq_len), optimizer],
                            cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_="65536"))
    assert result.returncode == 0, result.stderr
    measured = int(result.stdout)
    assert measured > 100 * 2**20  # big enough that the allocator's own overheads are noise
    estimate = memory.memory_estimate(ModelConfig(**config), batch_size, seq_len, "fp32", optimizer, 1, "fp32", "cpu")
    assert abs(estimate["peak"] - measured) <= 0.15 * measured, (estimate, measured)
    assert estimate["peak"] == sum(v for k, v in estimate.items() if k != "peak")


def test_the_parts_of_the_estimate():
    config = ModelConfig(vocab_size=257, dim=64, n_layers=2, n_heads=4, ffn_dim=160)
    n_params = sum(p.numel() for p in Transformer(config).parameters())
    adamw = memory.memory_estimate(config, 4, 64, "fp32", "adamw", 1, "fp32", "cpu")
    assert adamw["weights"] == 4 * n_params and adamw["optimizer_state"] >= 8 * n_params  # two fp32 moments
    pure_bf16 = memory.memory_estimate(config, 4, 64, "bf16", "adamw", 1, "bf16", "cpu")
    assert pure_bf16["weights"] == 2 * n_params and pure_bf16["optimizer_state"] < adamw["optimizer_state"]
    accumulating = memory.memory_estimate(config, 4, 64, "fp32", "adamw", 2, "fp32", "cpu")
    assert accumulating["gradients"] == 4 * n_params  # alive through the micro-batches
    # activations grow with the rows; the rest does not
    double = memory.memory_estimate(config, 8, 64, "fp32", "adamw", 1, "fp32", "cpu")
    assert double["activations"] > 1.8 * adamw["activations"]
    assert (double["weights"], double["optimizer_state"]) == (adamw["weights"], adamw["optimizer_state"])
    # flex (a GPU path) is counted as flash attention: no mask is kept
    flex = memory.memory_estimate(replace(config, attn="flex"), 4, 64, "fp32", "adamw", 1, "fp32", "cpu")
    assert flex["weights"] == adamw["weights"] and flex["activations"] < adamw["activations"]


def test_what_a_process_holds_under_each_layout():
    estimate = {"weights": 400, "gradients": 400, "optimizer_state": 800, "activations": 1000, "peak": 2600}
    assert parallel.memory_share(estimate, parallel.Layout("ddp"), 1, "1f1b") == estimate
    ddp = parallel.memory_share(estimate, parallel.Layout("ddp", world_size=2, dp_size=2), 1, "1f1b")
    assert ddp == estimate | {"gradients": 800, "peak": 3000}  # and DDP's buckets
    fsdp = parallel.memory_share(estimate, parallel.Layout("fsdp", world_size=4, dp_size=4), 1, "1f1b")
    assert fsdp == {"weights": 100, "gradients": 100, "optimizer_state": 200, "activations": 1000, "peak": 1400}
    pp = parallel.Layout("pp", world_size=2, n_stages=2)
    assert parallel.memory_share(estimate, pp, 4, "1f1b")["activations"] == 1000  # two micro-batches, half the layers
    assert parallel.memory_share(estimate, pp, 4, "gpipe")["activations"] == 2000  # all four


def test_the_generation_estimate_counts_the_cache_of_prompt_and_new_tokens():
    config = ModelConfig(vocab_size=257, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=160)
    short, long = memory.generation_estimate(config, 10, 100), memory.generation_estimate(config, 10, 1100)
    # keys and values: 2 x layers x kv heads x head_dim x fp32, a token
    assert long["kv_cache"] - short["kv_cache"] == 1000 * 2 * 2 * 2 * 16 * 4
    assert short["weights"] == 4 * sum(p.numel() for p in Transformer(config).parameters())
    fits = memory.tokens_that_fit(config, 10, long["peak"])
    assert fits >= 1100 and memory.generation_estimate(config, 10, fits)["peak"] <= long["peak"]


def test_memory_command_prints_the_breakdown(capsys):
    assert memory.main(["quickstart", "seq_len=64", "batch_size=2", "vocab_size=257", "dtype=bf16-mixed",
                        "optimizer=muon"]) == 0
    out = capsys.readouterr().out
    config = replace(model.PRESETS["quickstart"], vocab_size=257)
    estimate = memory.memory_estimate(config, 2, 64, "bf16-mixed", "muon", 1, "fp32")
    device = "cuda" if torch.cuda.is_available() else "cpu"  # whose kernels the command counts
    assert out.startswith(f"A training step of 2 x 64 tokens, bf16-mixed, muon, attn=sdpa (one process, as {device} "
                          f"runs it):")
    for label, key in (("Weights", "weights"), ("Gradients", "gradients"), ("Optimizer state", "optimizer_state"),
                       ("Activations", "activations"), ("Step peak", "peak")):
        assert re.search(rf"^{label}: +{re.escape(memory.human_bytes(estimate[key]))}", out, re.MULTILINE), label
    assert re.search(r"^Sample peak: .*kv cache", out, re.MULTILINE)
    assert run_main(memory.main, ["quickstart", "seq_len=64"]) == 2
    assert capsys.readouterr().err == "error: give seq_len=N and batch_size=N: the micro-batch of one process is " \
                                      "batch_size x seq_len\n"
    assert run_main(memory.main, ["quickstart", "seq_len=64", "batch_size=2", "dtype=fp16"]) == 2
    assert capsys.readouterr().err == "error: dtype='fp16' is not one of fp32, bf16-mixed, bf16\n"
    assert run_main(memory.main, ["quickstart", "seq_len=64", "batch_size=2", "dims=8"]) == 2
    assert capsys.readouterr().err == "error: unknown config key 'dims' (did you mean 'dim'?)\n"


# -----------------------------------------------------------------------------------------------
# Refused before anything is allocated


@pytest.fixture
def nothing_built_on_a_device(monkeypatch):
    """Fails the test if a model is moved to a device (as runs.start_run and model_from_checkpoint do): the estimates
    build theirs on the meta device and in fake tensors."""
    def to(self, *args, **kwargs):
        raise AssertionError("a model was put on a device")
    monkeypatch.setattr(Transformer, "to", to)


def one_error_line(capsys):
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


TINY_CONFIG = ModelConfig(vocab_size=257, dim=32, n_layers=2, n_heads=2, ffn_dim=64)  # conftest.TINY's, on bytes


def test_a_batch_that_cannot_fit_is_refused_with_what_fits(tiny_data, tmp_path, capsys, monkeypatch,
                                                           nothing_built_on_a_device):
    def step(batch_size):
        return memory.memory_estimate(TINY_CONFIG, batch_size, 32, "fp32", "adamw", 1, "fp32", "cpu")["peak"]
    available = (step(3) + step(4)) // 2
    monkeypatch.setattr(memory, "available_memory", lambda device: available)
    assert run_main(train.main, run_args(tiny_data, tmp_path, "batch_size=64")) == 2
    error = one_error_line(capsys)
    assert error.startswith(f"error: a training step of batch_size=64 x seq_len=32 needs about "
                            f"{memory.human_bytes(step(64))} (weights ")
    assert f"but cpu has {memory.human_bytes(available)} available" in error
    fits, accum = map(int, re.search(r"batch_size=(\d+) fits at seq_len=32 \(grad_accum=(\d+) keeps", error).groups())
    assert 1 <= fits <= 3 and step(fits) <= available and fits * accum >= 64
    assert not (tmp_path / "run").exists()  # no run directory, no config.json


def test_samples_that_cannot_fit_are_refused_before_training(tiny_data, tmp_path, monkeypatch):
    """Samples keep to the trained context (the window), so on one process they never hold more than a step does;
    under fsdp rank 0 gathers a whole copy of the model to sample it, beside its 1/N share of the training state:
    that can be more than the step, and is refused before anything is built, saying which sample_tokens fits."""
    cfg, overrides = train.load_config(run_args(tiny_data, tmp_path, "sample_tokens=1000000", "sample_prompts=['ab']",
                                                "parallel=fsdp", "dim=256", "ffn_dim=512"))
    config = runs.build_model_config(runs.for_device(cfg, torch.device("cpu")), overrides, 257)
    step = memory.memory_estimate(config, cfg.batch_size, cfg.seq_len, "fp32", "adamw", 1, "fp32", "cpu")
    device = torch.device("cpu")
    monkeypatch.setattr(memory, "available_memory", lambda device: step["peak"] + 2**20)
    runs.check_memory(cfg, config, parallel.Layout("ddp"), device, "fp32")  # one process: a million tokens fit
    window = memory.generation_estimate(config, 3, 10**6, window=cfg.seq_len)
    assert window == memory.generation_estimate(config, cfg.seq_len, 0) != memory.generation_estimate(config, 3, 10**6)

    fsdp = parallel.Layout("fsdp", rank=0, world_size=16, dp_size=16)
    share = parallel.memory_share(step, fsdp, 1, cfg.pp_schedule)
    held = share["weights"] + share["optimizer_state"]  # and a whole gathered copy of the model to sample
    available = share["peak"] + (held + window["peak"] - share["peak"]) // 2  # the step fits, the samples do not
    assert share["peak"] <= available < held + window["peak"]
    monkeypatch.setattr(memory, "available_memory", lambda device: available)
    with pytest.raises(UserError) as refused:
        runs.check_memory(cfg, config, fsdp, device, "fp32")
    message = str(refused.value)
    assert message.startswith("the samples (sample_tokens=1000000 after a 3-token prompt) need about "), message
    fits = int(re.search(r"; sample_tokens=(\d+) fits$", message).group(1))
    assert held + memory.generation_estimate(config, 3, fits)["peak"] <= available
    assert held + memory.generation_estimate(config, 3, fits + 1)["peak"] > available


def save_checkpoint(path):
    """A checkpoint of a tiny model, with the fields sample.py and export.py read."""
    torch.manual_seed(0)
    torch.save({"model": Transformer(TINY_CONFIG).state_dict(), "model_config": asdict(TINY_CONFIG),
                "tokenizer": "bytes", "step": 1, "config": {"seq_len": 32}}, path)
    return path


def test_sample_py_refuses_tokens_that_cannot_fit(tmp_path, capsys, monkeypatch):
    save_checkpoint(tmp_path / "ckpt.pt")
    available = 64 * 2**20
    monkeypatch.setattr(memory, "available_memory", lambda device: available)
    monkeypatch.setattr(model, "model_from_checkpoint", lambda *a, **k: pytest.fail("the weights were loaded"))
    # past the trained context (--extrapolate): within it the model never holds more than its 32 tokens
    assert run_main(sample.main, [str(tmp_path / "ckpt.pt"), "--prompt", "Hi", "--tokens", "100000000", "--extrapolate",
                                  "--device", "cpu"]) == 2
    error = one_error_line(capsys)
    assert error.startswith("error: --tokens 100000000 after a 3-token prompt needs about ")
    assert "kv cache" in error and f"but cpu has {memory.human_bytes(available)} available" in error
    fits = int(re.search(r"; --tokens (\d+) fits$", error).group(1))
    assert memory.generation_estimate(TINY_CONFIG, 3, fits)["peak"] <= available


def test_import_of_weights_that_cannot_fit_is_refused_before_loading(tmp_path, capsys, monkeypatch):
    export.export_hf(torch.load(save_checkpoint(tmp_path / "ckpt.pt"), weights_only=True), tmp_path / "hf")
    monkeypatch.setattr(memory, "available_memory", lambda device: 1000)  # bytes: less than the weights
    monkeypatch.setattr(llama, "load_file", lambda *a, **k: pytest.fail("the weights were read"))
    assert run_main(export.main, ["--import", str(tmp_path / "hf"), "--output", str(tmp_path / "back")]) == 2
    assert one_error_line(capsys).startswith(f"error: importing {tmp_path / 'hf' / 'model.safetensors'} needs about ")
    assert not (tmp_path / "back").exists()


VARIANTS = [{}, {"n_kv_heads": 2}, {"position": "alibi", "alibi_trainable": True}, {"position": "nope", "qk_norm": True},
            {"norm_placement": "deepnet", "ffn_act": "relu", "position": "alibi", "alibi_trainable": True},
            {"canon": "ABCD", "position": "nope", "qk_norm": True}, {"tie_embeddings": True}]


@pytest.mark.slow  # ~10 s for the 7 variants, each a few fake steps: out of the quick half
@pytest.mark.parametrize("overrides", VARIANTS, ids=["llama", "gqa", "alibi", "nope_qk_norm", "deepone", "canon",
                                                     "tied"])
def test_the_quick_bound_is_above_every_estimate(overrides):
    """runs.check_memory skips the fake step when step_bound fits: the bound must never be below the estimate, for
    any variant, back-end, precision, optimizer or shape (each back-end with each precision, across the variants:
    every combination of the three was checked once by hand, the largest estimate 0.73 of its bound)."""
    attns = ["sdpa", "eager", "flex"][VARIANTS.index(overrides) % 3:] + ["sdpa", "eager", "flex"]
    config = replace(TINY_CONFIG, **overrides)
    for dtype, optimizer, (batch_size, seq_len, grad_accum) in [("fp32", "adamw", (1, 16, 1)),
                                                                ("bf16-mixed", "muon", (4, 64, 1)),
                                                                ("bf16", "adafactor", (2, 256, 2))]:
        config = replace(config, attn=attns.pop(0))
        estimate = memory.memory_estimate(config, batch_size, seq_len, dtype, optimizer, grad_accum, "fp32", "cpu")
        assert estimate["peak"] <= memory.step_bound(config, batch_size, seq_len), (config.attn, dtype, optimizer)


def test_a_run_whose_bound_fits_runs_no_fake_step(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "memory_estimate", lambda *a, **k: pytest.fail("a fake step ran"))
    assert train.main(run_args(tiny_data, tmp_path, "max_steps=1", "sample_tokens=5")) == 0
