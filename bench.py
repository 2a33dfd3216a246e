"""Side-by-side speed and memory benchmarks: ours beside a reference, in one run, on this machine.

    python bench.py optim [--model llama-small] [--steps 20] [--muon-steps 1]
    python bench.py prepare [--mb 32] [--workers 2] [--tokenizer cl100k_32k]
    python bench.py loader [--data shakespeare] [--model quickstart] [--seq-len 256] [--batch-size 16]
    python bench.py loss [--tokens 16384] [--dim 768] [--vocab 32000] [--repeats 3]
    python bench.py train [--shapes quickstart llama-small] [--compile] [--no-loop] [--peak-flops F]

One sub-command per benchmark (a function bench_<name> below, and its parser in main). Run them on
a quiet machine (check `uptime`): on a 2-core CPU any other work shows up in the timings, which is
why ours and the reference take turns within one run and the tables report medians.
"""

import argparse
import contextlib
import ctypes
import dataclasses
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F

import data
import export
import model as model_lib
import optim
import parallel
import prepare
import runs
import sources
import tokenizer as tokenizer_lib
from config import ArgumentParser, UserError, run_main

# -----------------------------------------------------------------------------------------------
# optim: step time and state memory of each optimizer of optim.py beside its torch counterpart


def state_bytes(optimizers):
    """Bytes of the tensors the optimizers keep per parameter (moments, factored statistics, buffers)."""
    return sum(t.numel() * t.element_size() for opt in optimizers for s in opt.state.values()
               for t in s.values() if torch.is_tensor(t))


def median_step_ms(optimizers, steps, warmup):
    """Median wall time in ms of one step of all the optimizers together, after `warmup` untimed steps
    (the first step allocates the state)."""
    for _ in range(warmup):
        for opt in optimizers:
            opt.step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        for opt in optimizers:
            opt.step()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def bench_optim(args):
    config = model_lib.PRESETS[args.model]
    torch.manual_seed(0)
    model = model_lib.Transformer(config)  # fp32 on the CPU
    n_params = sum(p.numel() for p in model.parameters())
    for p in model.parameters():
        p.grad = torch.randn_like(p)  # random gradients, the same at every step: only the time matters
    lr, weight_decay = 1e-4, 0.1

    def groups():
        return optim.param_groups(model, weight_decay)

    def torch_muon():
        # Muon on the same hidden matrices as ours; the rest under torch's AdamW, with the betas and eps
        # of our Muon's AdamW groups: like for like.
        muon_groups = optim.muon_param_groups(model, lr, lr, weight_decay)
        rest = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in muon_groups if not g["use_muon"]]
        return [torch.optim.Muon(muon_groups[0]["params"], lr=lr, weight_decay=weight_decay,
                                 adjust_lr_fn="match_rms_adamw"),
                torch.optim.AdamW(rest, lr=lr, betas=(0.9, 0.95), eps=1e-8, foreach=True)]

    # (name, what torch's side is, ours, torch's, timed steps, warm-up steps). Muon gets no warm-up: on
    # the CPU a step takes minutes, of which allocating the state is a few milliseconds.
    comparisons = [
        ("AdamW", "torch.optim.AdamW(foreach=True)",
         lambda: [optim.AdamW(groups(), lr=lr)],
         lambda: [torch.optim.AdamW(groups(), lr=lr, foreach=True)], args.steps, 1),
        ("Adafactor", "torch.optim.Adafactor (its default, a per-tensor loop on CPU; foreach=True is slower here)",
         lambda: [optim.Adafactor(groups(), lr=lr)],
         lambda: [torch.optim.Adafactor(groups(), lr=lr)], args.steps, 1),
        ("Muon", "torch.optim.Muon on the block matrices + torch.optim.AdamW(foreach=True, betas (0.9, 0.95)) "
                 "on embeddings, lm_head, norms; ours: one optim.Muon with the same split, Newton-Schulz in bf16 as "
                 "torch's",
         lambda: [optim.Muon(optim.muon_param_groups(model, lr, lr, weight_decay), adjust_lr_fn="match_rms_adamw",
                             ns_dtype=torch.bfloat16)],
         torch_muon, args.muon_steps, 0),
    ]
    print(f"{args.model}: {n_params / 1e6:.1f}M fp32 parameters ({4 * n_params / 2**20:.0f} MiB), CPU, "
          f"{torch.get_num_threads()} threads; median step time")
    rows = []
    for name, torch_side, make_ours, make_torch, steps, warmup in comparisons:
        print(f"  {name}: ours vs {torch_side}; {steps} timed step(s) after {warmup} warm-up", flush=True)
        figures = []
        for make in (make_ours, make_torch):
            optimizers = make()
            figures += [median_step_ms(optimizers, steps, warmup), state_bytes(optimizers)]
            del optimizers  # free the state before the next one
        rows.append((name, *figures))
    print(f"\n{'optimizer':<11} {'ours ms':>9} {'torch ms':>9} {'ratio':>6} {'ours state':>11} {'torch state':>12}")
    for name, ours_ms, ours_bytes, torch_ms, torch_bytes in rows:
        print(f"{name:<11} {ours_ms:>9.1f} {torch_ms:>9.1f} {ours_ms / torch_ms:>6.2f} "
              f"{ours_bytes / 2**20:>7.1f} MiB {torch_bytes / 2**20:>8.1f} MiB")
    bf16_state = optim.AdamW(groups(), lr=lr, state_dtype=torch.bfloat16)
    bf16_state.step()
    print(f"AdamW(state_dtype=torch.bfloat16) state: {state_bytes([bf16_state]) / 2**20:.1f} MiB")
    fp32_muon = [optim.Muon(optim.muon_param_groups(model, lr, lr, weight_decay), adjust_lr_fn="match_rms_adamw")]
    fp32_ms = median_step_ms(fp32_muon, 3, 1)
    print(f"Muon with Newton-Schulz in fp32 (our default on CPU): {fp32_ms:.1f} ms, "
          f"{rows[2][3] / fp32_ms:.0f}x faster than torch.optim.Muon's bf16 here")
    print("ratio = ours / torch (below 1: ours is faster)")


# -----------------------------------------------------------------------------------------------
# prepare: tokens per second of prepare.py beside raw tiktoken on the same text and thread count


def bench_documents(megabytes, doc_chars=4000):
    """The embedded corpus cut at line ends into documents of about doc_chars characters (web-page sized),
    repeated to `megabytes` MB of text."""
    lines = "".join(f.read_bytes().decode("utf-8") for f in sources.shakespeare_files()).splitlines(keepends=True)
    docs, current = [], []
    for line in lines:
        current.append(line)
        if sum(map(len, current)) >= doc_chars:  # lines are short: this sum stays small
            docs.append("".join(current))
            current = []
    corpus, size = [], 0
    while size < megabytes * 1e6:
        corpus += docs
        size += sum(len(d.encode("utf-8")) for d in docs)
    return corpus


def tokenize_in_process(tokenizer, batch):
    enc = tokenizer_lib.load_tokenizer(tokenizer)  # built once per worker process (load_tokenizer is cached)
    return prepare.tokenize_batch(enc, batch, tokenizer_lib.token_dtype(enc.n_vocab))


def tokenize_with_processes(docs, tokenizer, workers):
    """prepare's tokenize loop with processes instead of threads: every batch and its tokens are pickled across.
    The pool is started and each worker's tokenizer built before the clock starts (the best case for processes)."""
    pool = ProcessPoolExecutor(workers)
    list(pool.map(tokenize_in_process, [tokenizer] * workers, [[(False, "warm up")]] * workers))
    start = time.perf_counter()
    with open(os.devnull, "wb") as sink:
        for tokens, _ in pool.map(tokenize_in_process, [tokenizer] * len(docs),
                                  prepare.batches(((str(i), d) for i, d in enumerate(docs)), lambda key: False)):
            sink.write(tokens[False])
    seconds = time.perf_counter() - start
    pool.shutdown()
    return seconds


def bench_prepare(args):
    with tempfile.TemporaryDirectory(prefix="bench_prepare_") as work:
        run_prepare_bench(args, Path(work))


def run_prepare_bench(args, work):
    enc = tokenizer_lib.load_tokenizer(args.tokenizer)
    docs = bench_documents(args.mb)
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    # the same documents as a local .jsonl file and as a Hub mirror of parquet files (about 8 MB each)
    with open(work / "corpus.jsonl", "w") as f:
        f.writelines(json.dumps({"text": d}) + "\n" for d in docs)
    import pyarrow as pa
    import pyarrow.parquet as pq
    (work / "mirror/fineweb-edu-dedup").mkdir(parents=True)
    per_file = max(1, len(docs) * 8_000_000 // n_bytes)
    for i in range(0, len(docs), per_file):
        pq.write_table(pa.table({"text": docs[i:i + per_file]}), work / f"mirror/fineweb-edu-dedup/{i:08d}.parquet")
    n_files = len(range(0, len(docs), per_file))
    print(f"{n_bytes / 1e6:.1f} MB of text in {len(docs):,} documents (the embedded corpus, repeated), "
          f"{args.tokenizer}, {args.workers} thread(s), best of {args.repeats} rounds", flush=True)

    def raw():
        enc.encode_ordinary_batch(docs, num_threads=args.workers)

    def tokenize_loop():  # prepare.write_tokens alone: batching, tokenizing, counting, writing
        with tempfile.TemporaryDirectory(dir=work) as out:
            prepare.write_tokens(prepare.batches(((str(i), d) for i, d in enumerate(docs)), lambda key: False),
                                 {"train": Path(out) / "train.bin", "val": Path(out) / "val.bin"}, enc,
                                 tokenizer_lib.token_dtype(enc.n_vocab), args.workers, lambda *counts: None)

    def local_file():  # prepare(corpus.jsonl): reading, a pass to plan the split, tokenizing, writing, meta.json
        with tempfile.TemporaryDirectory(dir=work) as out:
            prepare.prepare(work / "corpus.jsonl", "bench", args.tokenizer, workers=args.workers, out_dir=out)

    def hub_mirror():  # prepare("smollm-fineweb-edu", mirror=...): parquet reading, shards, markers, meta.json
        with tempfile.TemporaryDirectory(dir=work) as out:
            prepare.prepare("smollm-fineweb-edu", None, args.tokenizer, workers=args.workers, out_dir=out,
                            mirror=work / "mirror")

    def seconds(run):
        start = time.perf_counter()
        run()
        return time.perf_counter() - start

    n_tokens = sum(len(t) for t in enc.encode_ordinary_batch(docs, num_threads=args.workers))
    runs = {"raw tiktoken encode_ordinary_batch": lambda: seconds(raw),
            "ours: tokenize loop (write_tokens)": lambda: seconds(tokenize_loop),
            "ours: prepare, local .jsonl": lambda: seconds(local_file),
            f"ours: prepare, Hub mirror ({n_files} parquet)": lambda: seconds(hub_mirror),
            "tokenize loop with processes": lambda: tokenize_with_processes(docs, args.tokenizer, args.workers)}
    # round after round of each, so that a burst of other work on the machine does not land on one alone
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            times[name].append(run())
    rows = [(name, min(t)) for name, t in times.items()]
    print(f"\n{'':<42} {'seconds':>8} {'M tokens/s':>11} {'MB/s':>6} {'vs raw':>7}")
    for name, elapsed in rows:
        print(f"{name:<42} {elapsed:>8.2f} {n_tokens / elapsed / 1e6:>11.2f} {n_bytes / elapsed / 1e6:>6.1f} "
              f"{rows[0][1] / elapsed:>6.0%}")
    print(f"tokens/s count the {n_tokens:,} text tokens (end-of-text tokens not included); "
          "vs raw = raw seconds / seconds (the target for prepare is >= 85%)")


# -----------------------------------------------------------------------------------------------
# loader: the time to build a micro-batch beside the time of the training step that consumes it


def bench_loader(args):
    import shutil
    torch.manual_seed(0)
    try:
        first = data.TrainingData(args.data_dir, args.data, args.seq_len)  # also checks the data before any timing
    except ValueError as e:  # a missing, unprepared or too short data directory
        raise UserError(str(e)) from None
    config = dataclasses.replace(model_lib.PRESETS[args.model], vocab_size=first.vocab_size)
    model = model_lib.Transformer(config)
    optimizer = optim.AdamW(model.parameters(), lr=1e-4)
    tokens = sum(first.meta[name]["train"]["tokens"] for name in first.names)
    print(f"data {args.data} ({tokens:,} train tokens), {args.model}, batch {args.batch_size} x {args.seq_len}, "
          f"{torch.get_num_threads()} threads, median of {args.steps} steps")
    print(f"{'packing':<10} {'set-up s':>9} {'batch ms':>9} {'step ms':>9} {'batch/step':>11}")
    for packing in ("blocks", "best_fit"):
        for name in first.names:  # time the best-fit plan itself, not a cached one
            shutil.rmtree(Path(args.data_dir) / name / "packing", ignore_errors=True)
        start = time.perf_counter()
        training_data = data.TrainingData(args.data_dir, args.data, args.seq_len, packing=packing)
        setup = time.perf_counter() - start
        batch_times, step_times = [], []
        for step in range(args.steps + 2):
            start = time.perf_counter()
            x, y, doc_ids, _ = training_data.micro_batch(step, 0, 0, args.batch_size, 1, 1)
            loaded = time.perf_counter()
            (model(x, doc_ids, y) / (y != -1).sum()).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step >= 2:  # the first steps allocate
                batch_times.append(loaded - start)
                step_times.append(time.perf_counter() - loaded)
        batch_ms, step_ms = 1e3 * statistics.median(batch_times), 1e3 * statistics.median(step_times)
        print(f"{packing:<10} {setup:>9.2f} {batch_ms:>9.2f} {step_ms:>9.1f} {batch_ms / step_ms:>11.2%}")


# -----------------------------------------------------------------------------------------------
# Measuring: a clock that waits for the device, a region's peak memory, and what else the machine was doing


def timed(run, device):
    """(run()'s result, its seconds), the device's queued work included."""
    synchronize = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    synchronize()
    start = time.perf_counter()
    result = run()
    synchronize()
    return result, time.perf_counter() - start


def peak_memory(run, device):
    """(run()'s result, its peak memory in bytes above that in use when it started): on CUDA the allocator's; on the
    CPU the resident set's, whose high-water mark (VmHWM) Linux resets when "5" is written to /proc/self/clear_refs,
    after malloc_trim has handed glibc's free pages back (so that pages run() reuses count). None off Linux/glibc."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        return timed(run, device)[0], torch.cuda.max_memory_allocated() - start

    def kib(field):  # a figure of /proc/self/status: VmRSS (resident now), VmHWM (its high-water mark)
        with open("/proc/self/status") as f:
            return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE).group(1))
    try:
        ctypes.CDLL(None).malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        start = kib("VmRSS")
    except (OSError, AttributeError):
        return run(), None
    return run(), 1024 * (kib("VmHWM") - start)


def take_turns(runs, rounds, device):
    """{name: [(result, seconds) of each round]} of runs {name: run()} taking turns, the order reversed every other
    round, so that the machine's drift and other work hit them alike."""
    out = {name: [] for name in runs}
    for i in range(rounds):
        for name in list(runs)[::1 if i % 2 == 0 else -1]:
            out[name].append(timed(runs[name], device))
    return out


@contextlib.contextmanager
def other_work_reported(threads):
    """Prints how the run is set up, and after it the share of the machine's CPU that other processes took: it slows
    ours and the reference alike, as they take turns, but on 2 cores it slows a 2-thread step many times over."""
    def busy_seconds():  # the whole machine's CPU time (steal included) less this process's and its children's
        with open("/proc/stat") as f:
            ticks = [int(n) for n in f.readline().split()[1:]]
        return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK") - sum(os.times()[:4])
    torch.set_num_threads(threads)
    print(f"torch {torch.__version__}, {threads} threads (torch.set_num_threads) on {os.cpu_count()} cores, "
          f"1-minute load average {os.getloadavg()[0]:.1f} before the run", flush=True)
    start, busy = time.perf_counter(), busy_seconds()
    yield
    share = max(0.0, busy_seconds() - busy) / ((time.perf_counter() - start) * os.cpu_count())
    print(f"other processes took {share:.0%} of the machine's CPU time during the run"
          + (": the figures are not to be trusted, run again on a quiet machine" if share > 0.05 else ""))


def mib(n_bytes):
    return "-" if n_bytes is None else f"{n_bytes / 2**20:,.0f} MiB"


def rate(flop_s):
    return f"{flop_s / 1e12:.1f} T" if flop_s >= 1e12 else f"{flop_s / 1e9:.1f} G"


def pick_device(name):
    name = ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device here")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as train.py does on CUDA
    return torch.device(name)


# -----------------------------------------------------------------------------------------------
# loss: the chunked linear cross-entropy's forward and backward beside the plain one's (full logits)


def plain_cross_entropy(hidden, weight, targets):
    """The loss from the whole (rows, vocab) fp32 logits: the readable reference, and what the chunks avoid."""
    return F.cross_entropy((hidden @ weight.t()).float(), targets, ignore_index=-1, reduction="sum")


def loss_pass(loss_fn, hidden, weight, targets):
    """Forward and backward from fresh leaves (no gradient is added to an earlier one); the loss."""
    hidden, weight = hidden.detach().requires_grad_(), weight.detach().requires_grad_()
    loss = loss_fn(hidden, weight, targets)
    loss.backward()
    return loss.item()  # the gradients go with the leaves, after their memory has been counted


def bench_loss(args):
    device, generator = pick_device(args.device), torch.Generator().manual_seed(0)
    hidden = torch.randn(args.tokens, args.dim, generator=generator).to(device)
    weight = (torch.randn(args.vocab, args.dim, generator=generator) * args.dim**-0.5).to(device)
    targets = torch.randint(0, args.vocab, (args.tokens,), generator=generator).to(device)
    losses = {"chunked": model_lib.chunked_cross_entropy, "plain": plain_cross_entropy}
    print(f"loss forward + backward, fp32 on {device.type}: {args.tokens:,} tokens, dim {args.dim}, vocab "
          f"{args.vocab:,}; chunked = model.chunked_cross_entropy ({model_lib.LOSS_CHUNK_ROWS} rows a chunk), plain "
          f"= F.cross_entropy of hidden @ weight.T; memory = peak above the inputs, gradients included", flush=True)
    for loss_fn in losses.values():  # warm-up on one chunk of rows: thread pool, kernels
        loss_pass(loss_fn, hidden[:model_lib.LOSS_CHUNK_ROWS], weight, targets[:model_lib.LOSS_CHUNK_ROWS])
    runs = take_turns({name: lambda f=f: peak_memory(lambda: loss_pass(f, hidden, weight, targets), device)
                       for name, f in losses.items()}, args.repeats, device)
    for name in losses:  # each run: ((loss, extra memory), seconds)
        print(f"  {name:<8} " + "; ".join(f"{s:.2f} s, {mib(m)}, loss {loss:.8g}" for (loss, m), s in runs[name]))
    c_time, p_time = (statistics.median(s for _, s in runs[name]) for name in losses)
    c_memory, p_memory = (statistics.median(m or 0 for (_, m), _ in runs[name]) for name in losses)
    print(f"\n| loss | seconds (median of {args.repeats}) | extra memory (median) |\n| --- | ---: | ---: |\n"
          f"| chunked | {c_time:.2f} | {mib(c_memory)} |\n| plain | {p_time:.2f} | {mib(p_memory)} |\n"
          f"| chunked / plain | {c_time / p_time:.2f}x (target <= 1.1x) | "
          + (f"{c_memory / p_memory:.1%} (target <= 15%) |" if p_memory else "- |"))


# -----------------------------------------------------------------------------------------------
# train: a training step of ours beside transformers' LlamaForCausalLM of the same shape, and train.py's
# loop beside the raw step

# shape: (preset, vocab_size, seq_len, rows on the CPU, rows on CUDA, timed steps on the CPU). Rows on the CPU are
# cut so that a step takes seconds on 2 cores; on CUDA llama-medium takes the reference's 16,384 tokens a step.
TRAIN_SHAPES = {
    "quickstart": ("quickstart", 257, 256, 16, 16, 20),  # configs/quickstart.py: bytes, 16 x 256
    "llama-small": ("llama-small", 32000, 1024, 2, 16, 5),
    "llama-medium": ("llama-medium", 32000, 4096, 1, 4, 3),
}
CPU_SKIPPED = {"llama-medium": "a step of 4,096 tokens takes ~40 s on 2 cores; --shapes llama-medium runs it"}
WARMUP_STEPS = 1  # untimed steps first (allocation); a compiled model gets one more (its backward may recompile)
LOOP_STEPS, LOOP_ROUNDS = 40, 2  # train.py steps a round, logged every 5; rounds of train.py, then the raw step


def training_pair(config, device):
    """{name: (model, loss_fn)}: ours and transformers' LlamaForCausalLM of config's shape, the same initial weights;
    loss_fn(model, x, y, count) is each one's own training loss, summed and divided by count."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    ours = model_lib.Transformer(config).to(device)
    theirs = LlamaForCausalLM._from_config(LlamaConfig.from_dict(export.hf_config(config)),
                                           attn_implementation="sdpa").to(device)
    # our parameter names are LlamaForCausalLM's without the decoder's "model." (export.py)
    theirs.load_state_dict({name if name == "lm_head.weight" else "model." + name: tensor
                            for name, tensor in ours.state_dict().items()})
    # theirs: transformers' own loss as its Trainer calls it: shift_labels as they are (y is already shifted), the
    # sum divided by num_items_in_batch; use_cache=False, or training keeps a key/value cache
    return {"ours": (ours, lambda model, x, y, count: model(x, None, y) / count),  # as train.py: the chunked loss
            "transformers": (theirs, lambda model, x, y, count: model(
                input_ids=x, labels=y, shift_labels=y, num_items_in_batch=count, use_cache=False).loss)}


def step_function(model, loss_fn, optimizer, device, batch, clip=None):
    """One training step on the same batch every time: loss (under bf16 autocast on CUDA, as train.py), backward,
    gradient clipping if asked, the optimizer's step, gradients freed."""
    autocast = torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()

    def step():
        with autocast:
            loss = loss_fn(model, *batch)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip or float("inf"))  # 0: the norm, no clipping
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()
    return step


def bench_shape(shape, args, device):
    """[(shape, rows, seq_len, model name, median seconds a step, flops per token, step peak memory)], a row a model."""
    preset, vocab, seq_len, cpu_rows, cuda_rows, cpu_steps = TRAIN_SHAPES[shape]
    config = dataclasses.replace(model_lib.PRESETS[preset], vocab_size=vocab)
    rows, n_steps = (cuda_rows, args.steps or 20) if device.type == "cuda" else (cpu_rows, args.steps or cpu_steps)
    generator = torch.Generator().manual_seed(1)
    x, y = (torch.randint(0, vocab, (rows, seq_len), generator=generator).to(device) for _ in range(2))
    batch, pair, steps = (x, y, torch.tensor(float(y.numel()), device=device)), training_pair(config, device), {}
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
                  for name, (model, _) in pair.items()}
    for suffix in ("", ", compiled")[:1 + args.compile]:  # compiled: the same model, weights and optimizer
        for name, (model, loss_fn) in pair.items():
            whole = parallel.compile_model(model, parallel.Layout("ddp")) if suffix else model
            steps[name + suffix] = step_function(whole, loss_fn, optimizers[name], device, batch)
    warmup = WARMUP_STEPS + args.compile
    print(f"\n{shape}: {sum(p.numel() for p in pair['ours'][0].parameters()) / 1e6:.1f}M parameters, {rows} x "
          f"{seq_len} tokens a step, {'bf16 autocast' if device.type == 'cuda' else 'fp32'}; {warmup} warm-up + "
          f"{n_steps} timed steps of each, taking turns", flush=True)
    runs = take_turns(steps, warmup + n_steps, device)  # step by step
    print(f"  first step's loss: ours {runs['ours'][0][0]:.6f}, transformers {runs['transformers'][0][0]:.6f}"
          + "".join(f"; {name}: first step (compiling) {runs[name][0][1]:.0f} s" for name in steps if "," in name))
    return [(shape, rows, seq_len, name, statistics.median(s for _, s in runs[name][warmup:]),
             model_lib.flops_per_token(config, seq_len), peak_memory(step, device)[1]) for name, step in steps.items()]


def print_train_table(rows, peak, source):
    print("\n| shape | tokens | model | ms a step | tokens/s | FLOP/s | of peak | step peak memory |\n"
          "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    figures = {(shape, name): (seconds, memory) for shape, _, _, name, seconds, _, memory in rows}
    for shape, n_rows, seq_len, name, seconds, flops_per_token, memory in rows:
        flop_s = flops_per_token * n_rows * seq_len / seconds
        print(f"| {shape} | {n_rows} x {seq_len} | {name} | {1e3 * seconds:,.0f} | {n_rows * seq_len / seconds:,.0f} | "
              f"{rate(flop_s)} | {f'{flop_s / peak:.1%}' if peak else '-'} | {mib(memory)} |")
        if name.startswith("transformers"):  # ours / theirs under each pair
            ours, theirs = figures[shape, name.replace("transformers", "ours")], figures[shape, name]
            print(f"| | | **ours / transformers** | {ours[0] / theirs[0]:.2f} | **{theirs[0] / ours[0]:.2f}** | | | "
                  + (f"{ours[1] / theirs[1]:.2f} |" if ours[1] and theirs[1] else "- |"))
    print(f"FLOP/s = model.flops_per_token (with attention) x tokens/s, the same model FLOPs for both; of peak = of {rate(peak or 0)}"
          f"FLOP/s ({source}); step peak memory = above the weights and AdamW state, which both hold alike. Target: "
          "ours / transformers >= 1.0 in tokens/s at every shape, compile off")


def loop_and_raw_step(args, device):
    """train.py's logged tok_per_s beside the raw step's tokens/s at the quickstart config, rounds of one then the
    other. The raw step is train.py's train_step without the loop, for the config train.py resolved: the model and
    optimizer built alike, a batch of its data read beforehand; forward, backward, clip, our AdamW. What train.py
    adds is the data loading, the loss's syncs, logging and run control."""
    data_dir = Path(args.data_dir).resolve()
    if not (data_dir / "shakespeare" / "meta.json").exists():
        print(f"preparing {data_dir / 'shakespeare'} (bytes) for the loop", flush=True)
        try:
            prepare.prepare("shakespeare", "shakespeare", "bytes", out_dir=data_dir)
        except (ValueError, OSError) as e:
            raise UserError(f"preparing {data_dir / 'shakespeare'}: {e}")
    logged, raw = [], []
    with tempfile.TemporaryDirectory(prefix="bench_loop_") as out:
        for round_ in range(LOOP_ROUNDS):
            command = [sys.executable, "train.py", "configs/quickstart.py", f"max_steps={LOOP_STEPS}", f"out_dir={out}",
                       f"run_name=loop{round_}", f"data_dir={data_dir}", "log_interval=5", "eval_iters=1",
                       "sample_tokens=0", f"device={device.type}"]
            done = subprocess.run(command, cwd=Path(__file__).resolve().parent, capture_output=True, text=True,
                                  env=os.environ | {"OMP_NUM_THREADS": str(args.threads)})  # torch's threads there
            if done.returncode:
                raise UserError(f"train.py failed: {(done.stderr.strip() or 'no message').splitlines()[-1]}")
            with open(Path(out) / f"loop{round_}" / "log.jsonl") as f:
                logged += [line["tok_per_s"] for line in map(json.loads, f) if "tok_per_s" in line]
            if round_ == 0:
                with open(Path(out) / "loop0" / "config.json") as f:
                    cfg = json.load(f)
                torch.manual_seed(cfg["seed"])
                model = model_lib.Transformer(model_lib.ModelConfig(**{
                    f.name: cfg[f.name] for f in dataclasses.fields(model_lib.ModelConfig)})).to(device)
                optimizer = optim.build_optimizer(cfg["optimizer"], model, cfg["lr"], cfg["weight_decay"],
                                                  (cfg["beta1"], cfg["beta2"]), cfg["eps"], seed=cfg["seed"])
                batch = data.TrainingData(data_dir, cfg["data"], cfg["seq_len"]).micro_batch(
                    0, 0, 0, cfg["batch_size"], 1, 1, device)
                raw_step = step_function(model, lambda model, x, y, doc_ids: model(x, doc_ids, y) / (y != -1).sum(),
                                         optimizer, device, batch, clip=cfg["grad_clip"])
            times = [timed(raw_step, device)[1] for _ in range(WARMUP_STEPS + LOOP_STEPS // 2)]
            raw += [batch[0].numel() / seconds for seconds in times[WARMUP_STEPS:]]
    logged, raw = statistics.median(logged), statistics.median(raw)
    print(f"\ntrain.py's loop at the quickstart config ({cfg['batch_size']} x {cfg['seq_len']}, {cfg['optimizer']}, clip "
          f"{cfg['grad_clip']}, document masks) beside its raw step, {LOOP_ROUNDS} rounds of each:\n\n| | tokens/s (median) | of raw |\n| --- | ---: | ---: |\n"
          f"| raw step | {raw:,.0f} | |\n| train.py's log lines (5 steps each) | {logged:,.0f} | {logged / raw:.1%} "
          "(target >= 97%) |")


def bench_train(args):
    try:
        from transformers import __version__ as transformers_version
    except ImportError:
        raise UserError("bench.py train compares against transformers: pip install -r requirements-test.txt")
    device = pick_device(args.device)
    default = ("quickstart",) if args.compile else tuple(s for s in TRAIN_SHAPES if s not in CPU_SKIPPED)
    peak, source = (args.peak_flops, "--peak-flops") if args.peak_flops else runs.peak_flops(device)
    print(f"training step on {device.type}, ours vs transformers {transformers_version} LlamaForCausalLM (sdpa): the "
          "same weights, batch and torch.optim.AdamW; ours with its chunked loss, theirs with its own loss", flush=True)
    for shape, reason in CPU_SKIPPED.items() if device.type == "cpu" and not args.shapes else ():
        print(f"{shape} skipped: {reason}")
    rows = []
    for shape in args.shapes or (default if device.type == "cpu" else TRAIN_SHAPES):
        try:
            rows += bench_shape(shape, args, device)
        except torch.OutOfMemoryError:
            print(f"{shape}: does not fit in this device's memory")
            torch.cuda.empty_cache()
    if not args.peak_flops and device.type == "cpu":  # the best of before and after: the machine drifts
        peak = max(peak, runs.measured_cpu_peak())
    print_train_table(rows, peak, source)
    if not args.no_loop:
        loop_and_raw_step(args, device)


# -----------------------------------------------------------------------------------------------
# Command line


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text):
    value = float(text)
    if not value > 0:  # NaN too
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {value}")
    return value


def main(argv):
    parser = ArgumentParser(description="Side-by-side speed and memory benchmarks.")
    commands = parser.add_subparsers(dest="command", required=True)
    optim_parser = commands.add_parser("optim", help="optimizer step time and state memory, ours vs torch")
    optim_parser.set_defaults(run=bench_optim)
    optim_parser.add_argument("--model", default="llama-small", choices=model_lib.PRESETS,
                              help="model preset whose parameters are optimized (default: llama-small)")
    optim_parser.add_argument("--steps", type=positive_int, default=20, help="timed steps per optimizer (default: 20)")
    # torch.optim.Muon's Newton-Schulz runs in bf16, which has no fast path on CPUs without bf16 matrix
    # units: about 2 minutes a step for llama-small on 2 cores. Ours is timed doing the same matmuls.
    optim_parser.add_argument("--muon-steps", type=positive_int, default=1,
                              help="timed steps for Muon (default: 1)")
    prepare_parser = commands.add_parser("prepare", help="prepare.py tokens/s beside raw tiktoken on the same text")
    prepare_parser.set_defaults(run=bench_prepare)
    prepare_parser.add_argument("--mb", type=float, default=32, help="megabytes of text (default: 32)")
    prepare_parser.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1,
                                help="tokenizer threads, ours and tiktoken's (default: all cores)")
    prepare_parser.add_argument("--tokenizer", default="cl100k_32k", choices=tokenizer_lib.TOKENIZERS,
                                help="tokenizer (default: cl100k_32k, the reference's vocabulary size)")
    prepare_parser.add_argument("--repeats", type=positive_int, default=3, help="runs of each, best kept (default: 3)")
    loader_parser = commands.add_parser("loader", help="data.py batch time beside a training step's")
    loader_parser.set_defaults(run=bench_loader)
    loader_parser.add_argument("--data", default="shakespeare",
                               help="prepared data, as train.py's data key (default: shakespeare)")
    loader_parser.add_argument("--data-dir", default="data", help="parent of the data directories (default: data)")
    loader_parser.add_argument("--model", default="quickstart", choices=model_lib.PRESETS,
                               help="model preset (default: quickstart)")
    loader_parser.add_argument("--seq-len", type=positive_int, default=256, help="tokens per row (default: 256)")
    loader_parser.add_argument("--batch-size", type=positive_int, default=16, help="rows per batch (default: 16)")
    loader_parser.add_argument("--steps", type=positive_int, default=10, help="timed steps (default: 10)")
    loss_parser = commands.add_parser("loss", help="chunked vs plain cross-entropy: time and peak memory")
    loss_parser.set_defaults(run=bench_loss)
    for flag, default, what in (("--tokens", 16384, "rows of the loss"), ("--dim", 768, "hidden size"),
                                ("--vocab", 32000, "vocabulary size"), ("--repeats", 3, "timed runs of each")):
        loss_parser.add_argument(flag, type=positive_int, default=default, help=f"{what} (default: {default})")
    train_parser = commands.add_parser("train", help="a training step, ours vs transformers' Llama; train.py's loop")
    train_parser.set_defaults(run=bench_train)
    train_parser.add_argument("--shapes", nargs="+", choices=TRAIN_SHAPES, metavar="SHAPE",
                              help=f"of {', '.join(TRAIN_SHAPES)} (default: all on CUDA; on the CPU all but "
                                   f"{', '.join(CPU_SKIPPED)}, and with --compile quickstart only)")
    train_parser.add_argument("--compile", action="store_true",
                              help="also torch.compile both models (on the CPU ~20-60 s a model to compile)")
    train_parser.add_argument("--steps", type=positive_int, help="timed steps of each model (default: 20 on CUDA; "
                              + ", ".join(f"{s} {v[5]}" for s, v in TRAIN_SHAPES.items()) + " on the CPU)")
    train_parser.add_argument("--peak-flops", type=positive_float,
                              help="one device's peak FLOP/s (default: the card's bf16 peak; on the CPU measured)")
    train_parser.add_argument("--no-loop", action="store_true", help="skip train.py's loop beside the raw step")
    train_parser.add_argument("--data-dir", default="data", help="holds shakespeare, for the loop (default: data)")
    for sub in (loss_parser, train_parser):
        sub.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: cuda if there is one")
        sub.add_argument("--threads", type=positive_int, default=os.cpu_count() or 1,
                         help="torch's CPU threads, ours and the reference's (default: all cores)")
    args = parser.parse_args(argv)  # a bad option: a UserError, one line
    with other_work_reported(args.threads) if "threads" in args else contextlib.nullcontext():
        args.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))
