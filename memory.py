"""Memory: what a training step and a generation need at their peak, and what the device has free, known before
anything is allocated, so that a run, a sample or an import that cannot fit is refused with one line.

    python memory.py llama-medium seq_len=4096 batch_size=4 dtype=bf16-mixed   # a step's peak, part by part

A training step is run on fake tensors (FakeTensorMode: shapes and dtypes, no data, no memory) while LiveBytes
counts the bytes its tensors would hold, so every variant, attention back-end and optimizer is counted as it
really runs: forward, backward and the optimizer's update, temporaries included. A generation is counted by formula:
its weights, the key/value cache of every token, and the prompt's forward pass.

Top to bottom: LiveBytes, fake_model, memory_estimate (a training step), step_bound (a quick upper bound); generation_estimate, tokens_that_fit;
available_memory, human_bytes, format_memory; the command line.
"""
import re
import sys
import typing
import weakref
from contextlib import nullcontext
from dataclasses import replace

import torch
import torch.nn as nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

import optim
from config import UserError, at_least, check_type, check_valid, one_of, read_overrides, run_main, unknown_key
from model import PRESETS, ModelConfig, meta_model, preset_and_pairs

DTYPES = ("fp32", "bf16-mixed", "bf16")  # train.py's dtype, "auto" resolved: fp32 weights, with bf16 autocast, bf16

# -----------------------------------------------------------------------------------------------
# A training step


class LiveBytes(TorchDispatchMode):
    """The bytes of tensor storage alive while ops run, and their peak. Each storage an op returns is counted once
    (a view shares its base's), and uncounted when it is freed. watch(), where set, is called at each new peak and
    its value kept as at_peak."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.watch = self.at_peak = None
        self.counted = WeakIdKeyDictionary()  # storage -> the finalizer that uncounts it

    def count(self, tensor):
        storage = tensor.untyped_storage()
        if storage not in self.counted:
            size = storage.nbytes()
            self.counted[storage] = weakref.finalize(storage, self.uncount, size)
            self.live += size
            if self.live > self.peak:
                self.peak = self.live
                self.at_peak = self.watch() if self.watch else None

    def uncount(self, size):
        self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in tree_leaves(out):
            if isinstance(value, torch.Tensor):
                self.count(value)
        return out


def fake_model(config, device, dtype):
    """A Transformer whose parameters and buffers are empty tensors of the current fake mode: built on the meta
    device (no initialisation maths, which reads values a fake tensor does not have), then each tensor replaced;
    a tied matrix stays one tensor."""
    model = meta_model(config)
    fakes = {}
    for module in model.modules():
        for tensors in (module._parameters, module._buffers):
            for name, t in tensors.items():
                if t is not None and id(t) not in fakes:
                    fake = torch.empty(t.shape, dtype=dtype if t.is_floating_point() else t.dtype, device=device)
                    fakes[id(t)] = nn.Parameter(fake, t.requires_grad) if isinstance(t, nn.Parameter) else fake
                if t is not None:
                    tensors[name] = fakes[id(t)]
    return model


def memory_estimate(config, batch_size, seq_len, dtype, optimizer, grad_accum, optimizer_state, device=None):
    """The peak bytes of a training step (forward, backward, optimizer update) of one process holding the whole
    model, on batch_size rows of seq_len tokens with document boundaries (attention under a mask), as train.py runs
    it: {"weights", "gradients", "optimizer_state", "activations", "peak"}. The first four are what is alive at the
    peak and sum to it: "gradients" those computed by then, "activations" everything else (what backward keeps, the
    loss's chunk, temporaries). It is the peak of every step after the first, with the optimizer state alive
    throughout (and with grad_accum > 1, the gradients too). dtype: one of DTYPES; optimizer, optimizer_state: as
    train.py's keys; device: whose kernels are counted (default: cuda if there is one)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    masked = True
    if config.attn == "flex":
        # Compiled flex_attention keeps what flash attention keeps (each layer's output and log-sum-exp), with the
        # document mask and ALiBi's bias inside the kernel (its block mask takes a few KB): measured as sdpa's flash
        # path, with neither, which runs on every device (flex has no backward on the CPU).
        position = "nope" if config.position == "alibi" else config.position
        config, masked = replace(config, attn="sdpa", position=position, alibi_trainable=False), False
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16-mixed" else nullcontext()
    with FakeTensorMode(), LiveBytes() as tracker:
        model = fake_model(config, device, torch.bfloat16 if dtype == "bf16" else torch.float32)
        weights = tracker.live
        step = optim.build_optimizer(optimizer, model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8,
                                     seed=0, state_dtype=torch.bfloat16 if optimizer_state == "bf16" else None)
        params = list(model.parameters())
        if grad_accum > 1:  # a later micro-batch runs with the gradients of the earlier ones
            for p in params:
                p.grad = torch.zeros_like(p)
        tracker.watch = lambda: sum(p.grad.nbytes for p in params if p.grad is not None)
        tracker.peak = 0  # the peak from here on
        x = torch.zeros(batch_size, seq_len, dtype=torch.long, device=device)
        with autocast:
            loss = model(x, x if masked else None, x)  # ids, document ids and targets alike: only shapes count
        loss.backward()
        del loss
        backward = tracker.peak, tracker.at_peak  # (peak, gradients alive at it) of forward and backward
        tracker.peak = 0
        step.step()  # this first update makes the state; the later ones change it in place, with the same temporaries
        state = sum(t.nbytes for s in step.state.values() for t in s.values() if torch.is_tensor(t))
        update = tracker.peak, tracker.at_peak
    # the later steps run forward and backward with the state alive
    peak, gradients = max((backward[0] + state, backward[1]), update)
    parts = {"weights": weights, "gradients": gradients, "optimizer_state": state}
    return parts | {"activations": peak - sum(parts.values()), "peak": peak}


def step_bound(config, batch_size, seq_len):
    """An upper bound of memory_estimate's peak (any dtype, optimizer and grad_accum), by formula and in no time:
    per parameter its fp32 weight, gradient, two moments and a DDP bucket; per token and layer more (dim, ffn_dim)
    vectors than any block keeps, plus materialised attention scores; the chunked loss's logits. A run whose bound
    fits needs no fake step to know it (tests/test_memory.py holds it above the estimate for every variant)."""
    params = sum(p.numel() for p in meta_model(config).parameters())
    tokens = batch_size * seq_len
    layer = tokens * (64 * config.dim + 16 * config.ffn_dim) * 4
    if config.attn != "flex":  # sdpa under a document mask and eager hold (B, H, T, T) scores: a few of them
        layer += 4 * batch_size * config.n_heads * seq_len * seq_len * 4
    ends = tokens * 16 * config.dim * 4 + 4 * min(tokens, 2048) * config.vocab_size * 4 + tokens * seq_len * 8
    return 20 * params + config.n_layers * layer + ends


# -----------------------------------------------------------------------------------------------
# A generation (Transformer.generate)


def generation_estimate(config, prompt_len, new_tokens, dtype=torch.float32, batch_size=1, window=None):
    """The peak bytes of Transformer.generate continuing batch_size prompts of prompt_len tokens by new_tokens, with
    weights of dtype and the model seeing at most `window` tokens (generate's; None: all of them):
    {"weights", "kv_cache", "positions", "prompt", "logits", "peak"}. The key/value cache (and
    RoPE's tables, or ALiBi's distances) hold prompt and new tokens alike; "prompt" is the no-grad forward pass that
    fills the cache: a few (tokens, dim) and (tokens, ffn_dim) tensors and, where attention is materialised, the
    scores; "logits" are the last position's in fp32, and the few copies that sampling makes of them."""
    if window is not None and prompt_len + new_tokens > window:
        prompt_len, new_tokens = window, 0  # past the window, each token runs the whole window again, cache and all
    total, size = prompt_len + new_tokens, torch.finfo(dtype).bits // 8
    model = meta_model(config)
    weights = sum(t.numel() for t in [*model.parameters(), *model.buffers()]) * size  # a tied matrix is listed once
    kv_cache = 2 * config.n_layers * batch_size * config.kv_heads * config.head_dim * total * size
    positions = 0
    if config.position == "rope":  # rope_tables: frequencies (half width), angles, then cos and sin (kept), in fp32
        positions = 14 * total * config.head_dim
    elif config.position == "alibi":  # at the last token: its distance to every key, and each head's bias
        positions = (1 + config.n_heads) * batch_size * total * 4
    scores = batch_size * config.n_heads * prompt_len * prompt_len * 4
    prompt = batch_size * prompt_len * (4 * config.dim + 3 * config.ffn_dim) * size + scores
    logits = 4 * batch_size * config.vocab_size * 4
    parts = {"weights": weights, "kv_cache": kv_cache, "positions": positions, "prompt": prompt, "logits": logits}
    return parts | {"peak": sum(parts.values())}


def tokens_that_fit(config, prompt_len, room, dtype=torch.float32):
    """The most new tokens whose generation_estimate fits in room bytes (every token adds the same bytes); -1 when
    not even the prompt does."""
    start = generation_estimate(config, prompt_len, 0, dtype)["peak"]
    per_token = generation_estimate(config, prompt_len, 1, dtype)["peak"] - start
    return int((room - start) // per_token) if room >= start else -1


# -----------------------------------------------------------------------------------------------
# What the device has, and how to say it


def available_memory(device):
    """Bytes this process may still allocate on device: CUDA's free memory, or the CPU's MemAvailable (Linux); None
    where it cannot be told."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            return 1024 * int(re.search(r"^MemAvailable:\s+(\d+) kB", f.read(), re.MULTILINE).group(1))
    except (OSError, AttributeError):
        return None


def human_bytes(n):
    """1_610_612_736 -> '1.5 GiB', 52_428_800 -> '50.0 MiB'."""
    for unit, suffix in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= unit:
            return f"{n / unit:.1f} {suffix}"
    return f"{n:.0f} B"


def format_memory(parts):
    """'weights 619.6 MiB, gradients 0 B, ...': an estimate's parts, without its peak."""
    return ", ".join(f"{name.replace('_', ' ')} {human_bytes(n)}" for name, n in parts.items() if name != "peak")


# -----------------------------------------------------------------------------------------------
# Command line: python memory.py PRESET seq_len=N batch_size=N [key=value ...]

# train.py's keys that the estimate reads, besides ModelConfig's: (type, default, rule); seq_len and batch_size have
# no default
KEYS = {"seq_len": (int, None, at_least(1)), "batch_size": (int, None, at_least(1)),
        "grad_accum": (int, 1, at_least(1)), "dtype": (str, "fp32", one_of(*DTYPES)),
        "optimizer": (str, "adamw", one_of(*optim.OPTIMIZERS)),
        "optimizer_state": (str, "fp32", one_of("fp32", "bf16"))}


def report(config, seq_len, batch_size, dtype, optimizer, grad_accum, optimizer_state):
    """The command's lines: a training step's peak part by part, a sample's of seq_len tokens, and what is free here."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    step = memory_estimate(config, batch_size, seq_len, dtype, optimizer, grad_accum, optimizer_state, device)
    sample = generation_estimate(config, 1, seq_len)
    available = available_memory(device)
    rows = [("Weights", step["weights"], ""), ("Gradients", step["gradients"], " (those alive at the peak)"),
            ("Optimizer state", step["optimizer_state"], ""),
            ("Activations", step["activations"], " (and temporaries)"), ("Step peak", step["peak"], ""),
            ("Sample peak", sample["peak"], f" (one sample of {seq_len:,} tokens: {format_memory(sample)})")]
    if available is not None:
        rows.append(("Available", available, f" ({device.type}, now)"))
    accumulating = f", grad_accum={grad_accum}" if grad_accum > 1 else ""
    return "\n".join([f"A training step of {batch_size} x {seq_len:,} tokens, {dtype}, {optimizer}{accumulating}, "
                      f"attn={config.attn} (one process, as {device.type} runs it):"]
                     + [f"{label + ':':<19}{human_bytes(n)}{note}" for label, n, note in rows])


def main(argv):
    usage = (f"usage: python memory.py PRESET seq_len=N batch_size=N [key=value ...]  (keys: any of ModelConfig's, "
             f"{', '.join(list(KEYS)[2:])}; presets: {', '.join(PRESETS)})")
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__.split("\n\n")[0].replace("\n", " "))
        print(usage)
        return 0
    model_keys = typing.get_type_hints(ModelConfig)
    name, args = preset_and_pairs(argv, usage)
    overrides, training = {}, {key: default for key, (_, default, _) in KEYS.items()}
    for key, value in read_overrides(args).items():
        if key in KEYS:
            training[key] = check_type(key, value, KEYS[key][0])
        elif key in model_keys:
            overrides[key] = check_type(key, value, model_keys[key])
        else:
            raise unknown_key(key, [*KEYS, *model_keys])
    check_valid(training, {key: rule for key, (_, _, rule) in KEYS.items()})
    if None in (training["seq_len"], training["batch_size"]):
        raise UserError("give seq_len=N and batch_size=N: the micro-batch of one process is batch_size x seq_len")
    try:
        model_config = replace(PRESETS[name], **overrides)
    except ValueError as e:  # an invalid shape, such as dim % n_heads != 0
        raise UserError(str(e))
    print(report(model_config, **training))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))
