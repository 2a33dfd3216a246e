"""Side-by-side speed and memory benchmarks: ours beside torch's, in one run, on this machine.

    python bench.py optim [--model llama-small] [--steps 20] [--muon-steps 1]
    python bench.py prepare [--mb 32] [--workers 2] [--tokenizer cl100k_32k]
    python bench.py loader [--data shakespeare] [--model quickstart] [--seq-len 256] [--batch-size 16]

One sub-command per benchmark (a function bench_<name> below, and its parser in main). Run them on
a quiet machine (check `uptime`): on a 2-core CPU any other work shows up in the timings.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

import model as model_lib
import optim
import prepare

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
    lines = "".join(f.read_bytes().decode("utf-8") for f in prepare.shakespeare_files()).splitlines(keepends=True)
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
    enc = prepare.load_tokenizer(tokenizer)  # built once per worker process (load_tokenizer is cached)
    return prepare.tokenize_batch(enc, batch, prepare.token_dtype(enc.n_vocab))


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
    enc = prepare.load_tokenizer(args.tokenizer)
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
                                 prepare.token_dtype(enc.n_vocab), args.workers, lambda *counts: None)

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
    for name, seconds in rows:
        print(f"{name:<42} {seconds:>8.2f} {n_tokens / seconds / 1e6:>11.2f} {n_bytes / seconds / 1e6:>6.1f} "
              f"{rows[0][1] / seconds:>6.0%}")
    print(f"tokens/s count the {n_tokens:,} text tokens (end-of-text tokens not included); "
          "vs raw = raw seconds / seconds (the target for prepare is >= 85%)")


# -----------------------------------------------------------------------------------------------
# loader: the time to build a micro-batch beside the time of the training step that consumes it


def bench_loader(args):
    import dataclasses
    import shutil

    import data
    torch.manual_seed(0)
    first = data.TrainingData(args.data_dir, args.data, args.seq_len)  # also checks the data before any timing
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
            x, y, doc_ids = training_data.micro_batch(step, 0, 0, args.batch_size, 1, 1)
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
# Command line


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv):
    parser = argparse.ArgumentParser(description="Side-by-side speed and memory benchmarks.")
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
    prepare_parser.add_argument("--tokenizer", default="cl100k_32k", choices=prepare.TOKENIZERS,
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
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except KeyboardInterrupt:
        raise SystemExit("error: interrupted")


if __name__ == "__main__":
    main(sys.argv[1:])
