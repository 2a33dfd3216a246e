"""A training run: what train.py's loop works on, and the run directory it lives in.

Top to bottom:
- make_schedule, setup_distributed, open_data, build_model_config: the config (train.TrainConfig) made into
  objects: the learning-rate schedule, the process group, the data, the model's shape.
- GPU_PEAK_FLOPS, card_peak, native_bf16, measured_cpu_peak, peak_flops: what a device can do, beside the model's
  FLOP count for MFU.
- Run: the run's state, set up once by start_run (the model spread over processes by parallel.py, the optimizer,
  resumed from the newest checkpoint that loads with the same global batch, or from scratch only where nothing
  would be lost: a random init, or the weights of init_from); the run directory is locked first, so that one process
  at a time writes it; check_memory refuses first, before anything is allocated, a step or samples that would not
  fit (memory.py).
- Weights, starting_weights, read_weights, recorded_shape, weights_model_config: init_from, a run started from the
  weights of one of our runs or a Hugging Face Llama folder (llama.py reads it), checked against the config and data.
- save, write_samples: what the run leaves in its directory (trackers.py: TensorBoard and W&B beside the log). Only
  rank 0 reads and writes it.
"""
import dataclasses
import functools
import json
import math
import os
import sys
import time
import typing
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import control
import data
import files
import llama
import memory
import model as model_lib
import optim
import parallel
import sched
import tokenizer as tokenizer_lib
import trackers as trackers_lib
from config import UserError, one_line

def make_schedule(cfg, dp_size, annealing_start=None):
    """The run's sched.Schedule (dp_size: data-parallel replicas); annealing_start is the step where an annealing
    was requested, if one was."""
    return sched.plan(cfg.schedule, sched.tokens_per_step(cfg.seq_len, cfg.batch_size, cfg.grad_accum, dp_size),
                      cfg.total_tokens, cfg.lr, warmup_tokens=cfg.warmup_tokens, base_batch_tokens=cfg.base_batch_tokens,
                      lr_alpha=cfg.lr_alpha, min_lr=cfg.min_lr, constant_lr=cfg.constant_lr, cooldown_p=cfg.cooldown_p,
                      min_cooldown_tokens=cfg.min_cooldown_tokens, decay_tokens=cfg.annealing_tokens,
                      decay_start=annealing_start, decay_shape=cfg.decay_shape)


# ----------------------------------------------------------------------------- set-up

def setup_distributed(cfg):
    """(rank, world_size, device). Under torchrun: one process per device, nccl on CUDA, gloo on CPU."""
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise UserError("device=cuda but no CUDA device is available")
    if "RANK" not in os.environ:
        return 0, 1, torch.device("cuda" if use_cuda else "cpu")
    rank, world_size, local_rank = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return rank, world_size, torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")


def open_data(cfg, model_overrides):
    """The run's data.TrainingData, checked against what the config asks of it."""
    try:
        training_data = data.TrainingData(cfg.data_dir, cfg.data, cfg.seq_len, cfg.seed, cfg.packing, cfg.mixture,
                                          cfg.mixture_weights, cfg.eval_data, cfg.tokenizer)
    except (ValueError, OSError) as e:  # missing, truncated or too short for one block; mismatched tokenizers
        raise UserError(str(e))
    vocab = model_overrides.get("vocab_size")
    if vocab is not None and vocab != training_data.vocab_size:
        raise UserError(f"vocab_size={vocab} but data {training_data.names[0]!r} was prepared with "
                        f"{training_data.tokenizer!r}, a {training_data.vocab_size}-token vocabulary")
    return training_data


def for_device(cfg, device):
    """cfg with its "auto" keys resolved for the device it trains on (config.json records what ran). On CUDA, the
    reference's run: flex attention (a block mask that skips the blocks a document mask hides, where sdpa would
    compute every score under a dense mask), torch.compile's max-autotune without CUDA graphs when compile=True
    (CUDA graphs fight DDP's and FSDP's hooks and hold a memory pool of their own; compile_mode=max-autotune adds
    them, compile_mode=default compiles in a fraction of the time), and bf16 autocast where the card computes bf16
    natively. Elsewhere (the CPU): sdpa (flex has no backward there), the default mode, fp32."""
    cuda = device.type == "cuda"
    resolved = {"attn": "flex" if cuda else "sdpa",
                "compile_mode": "max-autotune-no-cudagraphs" if cuda else "default",
                "dtype": "bf16-mixed" if cuda and native_bf16(device) else "fp32"}
    return dataclasses.replace(cfg, **{key: value for key, value in resolved.items() if getattr(cfg, key) == "auto"})


def build_model_config(cfg, model_overrides, vocab_size):
    values = dataclasses.asdict(model_lib.PRESETS[cfg.model])
    values.update(model_overrides, vocab_size=vocab_size, **{k: getattr(cfg, k) for k in model_lib.BACKEND_FIELDS})
    try:
        return model_lib.ModelConfig(**values)
    except (ValueError, AssertionError) as e:
        raise UserError(f"model {cfg.model} with {model_overrides}: {e}")


# ----------------------------------------------------------------------------- the devices' peaks, for MFU
# MFU (model FLOPs utilisation) = model.flops_per_token(config, seq_len) * tokens per second / (peak_flops(device) *
# processes): the model's FLOPs (model.py says how they are counted) over what the devices could do.

# bf16 dense tensor-core peaks (FLOP/s, no sparsity, fp32 accumulation) from the vendors' data sheets, keyed by the
# exact name torch.cuda.get_device_name gives: a substring would read "NVIDIA L40" as an L4, every H100 as the SXM
# and a 3090 Ti as a 3090. None: the card has no bf16 tensor cores (V100, T4 emulate bf16), so no bf16 peak and no
# MFU. A card not listed needs peak_flops=...
GPU_PEAK_FLOPS = {
    "NVIDIA H200": 989e12, "NVIDIA H200 NVL": 835e12,
    "NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H100 NVL": 835e12, "NVIDIA H100 PCIe": 756e12,
    "NVIDIA A100-SXM4-40GB": 312e12, "NVIDIA A100-SXM4-80GB": 312e12, "NVIDIA A100-PCIE-40GB": 312e12,
    "NVIDIA A100 80GB PCIe": 312e12,
    "NVIDIA L40S": 362e12, "NVIDIA L40": 181e12, "NVIDIA L4": 121e12, "NVIDIA A10": 125e12, "NVIDIA A10G": 70e12,
    "NVIDIA GeForce RTX 4090": 165e12, "NVIDIA GeForce RTX 3090 Ti": 80e12, "NVIDIA GeForce RTX 3090": 71e12,
    "Tesla V100-SXM2-16GB": None, "Tesla V100-SXM2-32GB": None, "Tesla V100-PCIE-16GB": None,
    "Tesla V100-PCIE-32GB": None, "Tesla T4": None,
}


def card_peak(name):
    """(bf16 FLOP/s or None, where the figure comes from) of the card torch names `name`."""
    if name not in GPU_PEAK_FLOPS:
        return None, f"unknown card {name!r}: give its peak as peak_flops=... for an mfu"
    peak = GPU_PEAK_FLOPS[name]
    return peak, f"{name} bf16 dense peak" if peak else f"{name} has no bf16 tensor cores: no mfu"


def native_bf16(device):
    """Whether this CUDA device computes bf16 natively (compute capability 8.0, Ampere, or later); before that
    torch emulates it, slower than fp32."""
    return torch.cuda.get_device_capability(device) >= (8, 0)


def measured_cpu_peak(size=1024, seconds=0.3):
    """The fp32 matmul rate of this CPU with torch's current threads: the best of repeated size^3 matmuls."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up: thread pool and caches
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


@functools.cache
def cpu_peak():
    """measured_cpu_peak(), once per process, when a run starts: before its model, compiling or batches load the
    machine. Measured again later, on a loaded machine, it would come out low and every mfu after it high."""
    return measured_cpu_peak()


def peak_flops(device):
    """(FLOP/s, where the figure comes from) of one device: a CUDA card's bf16 peak from GPU_PEAK_FLOPS, or this
    CPU's measured fp32 matmul rate. None for an unknown card."""
    if device.type == "cuda":
        return card_peak(torch.cuda.get_device_name(device))
    return cpu_peak(), "fp32 matmul, measured at start"


# ----------------------------------------------------------------------------- the run

@dataclass
class Run:
    """What the loop works on. Set up once by start_run; the loop changes only the fields below the line."""
    cfg: typing.Any                     # train.TrainConfig
    rank: int
    world_size: int
    device: torch.device
    layout: parallel.Layout             # what this process holds and which rows it reads (parallel.py)
    run_dir: Path
    init_from: str                      # the weights this run started from (absolute path); "": random or resumed
    resolved: dict                      # the config as written to config.json
    training_data: data.TrainingData
    model_config: model_lib.ModelConfig
    raw_model: torch.nn.Module          # this process's part of the model (all of it, but under fsdp and pp)
    model: torch.nn.Module              # what the loop calls: raw_model, compiled and/or wrapped in DDP
    optimizer: torch.optim.Optimizer
    autocast: typing.Any
    tokenizer: typing.Any
    tokens_per_step: int
    flops_per_token: float              # training FLOPs of the model per token, with attention (model.py)
    peak_flops: float | None            # one device's peak FLOP/s; None: unknown, no mfu
    log_file: typing.Any = None
    trackers: trackers_lib.Trackers = dataclasses.field(default_factory=trackers_lib.Trackers)  # rank 0's
    pipeline: parallel.Pipeline = None  # pp: the stage and its schedule
    # ---
    schedule: sched.Schedule = None
    step: int = 0
    saved_step: int = 0                 # the step of the newest step checkpoint (0: none)
    annealing_start: int | None = None  # the step where the final decay was requested, if it was
    best_eval_loss: float = float("inf")

    @property
    def master(self):
        return self.rank == 0

    def say(self, message):
        if self.master:
            print(message, flush=True)

    def log(self, record):
        if self.master:
            try:
                self.log_file.write(json.dumps(record) + "\n")
                self.log_file.flush()
            except OSError as e:  # a full disk: one line (the log is trimmed back to the checkpoint on resume)
                raise files.write_error(self.run_dir / "log.jsonl", e,
                                        "the checkpoints are left as they were") from None
        self.trackers.log(record)

    def event(self, message):  # something that happened to the run: printed, and logged at its step
        self.say(f"step {self.step:>6} | {message}")
        self.log({"step": self.step, "tokens": self.step * self.tokens_per_step, "event": message})

    def steps_to_run(self):  # the schedule's end (an annealing request moves it), capped by max_steps
        return last_step(self.schedule, self.cfg.max_steps)


def last_step(schedule, max_steps):
    """The step a run ends at: its schedule's end, capped by max_steps (None: no cap)."""
    return min(schedule.end_step, max_steps) if max_steps else schedule.end_step


def start_run(cfg, model_overrides, rank, world_size, device):
    """Everything the loop needs, from the newest checkpoint that loads or from scratch; config.json written."""
    cfg = for_device(cfg, device)
    if cfg.attn == "flex" and device.type != "cuda":
        raise UserError("attn='flex' trains on CUDA only (flex_attention has no backward on the CPU); use sdpa here")
    training_data = open_data(cfg, model_overrides)
    run_dir = Path(cfg.out_dir) / cfg.run_name
    weights = starting_weights(cfg, run_dir)  # init_from, before the run's first checkpoint; None: random or resumed
    shape = weights.config if weights else recorded_shape(run_dir)  # the weights, not the preset, set the shape
    if shape:
        model_config = weights_model_config(cfg, model_overrides, shape, training_data,
                                            weights or Weights(str(run_dir), shape))
    else:
        model_config = build_model_config(cfg, model_overrides, training_data.vocab_size)
    parallel.check(cfg, model_config, world_size)
    layout = parallel.plan(cfg, rank, world_size, device)
    tokens_per_step = sched.tokens_per_step(cfg.seq_len, cfg.batch_size, cfg.grad_accum, layout.dp_size)
    schedule = make_schedule(cfg, layout.dp_size)  # laid out over total_tokens even when max_steps stops earlier
    if schedule.total_steps < 1:
        raise UserError(f"total_tokens={cfg.total_tokens}M is less than one step of {tokens_per_step:,} tokens")
    # A CPU's peak, measured once the command is known to be good and before the model, its compiling or the data
    # loader load the machine (every rank at once, as they train)
    peak = (cfg.peak_flops, "peak_flops") if cfg.peak_flops else peak_flops(device)

    dtype = cfg.dtype
    check_memory(cfg, model_config, layout, device, dtype)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16-mixed" else nullcontext()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    raw_model = model_lib.Transformer(model_config).to(device, torch.bfloat16 if dtype == "bf16" else torch.float32)
    if weights:
        raw_model.load_state_dict(weights.state)  # before sharding: every rank holds the whole model here
    # fsdp: 1/N of each weight; pp: this stage's blocks; and compiled as the layout wants (parallel.compile_model)
    raw_model, model = parallel.shard(raw_model, layout, cfg, dtype)
    optimizer = optim.build_optimizer(cfg.optimizer, raw_model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), cfg.eps,
                                      seed=cfg.seed, state_dtype=torch.bfloat16 if cfg.optimizer_state == "bf16" else None)
    run = Run(cfg=cfg, rank=rank, world_size=world_size, device=device, layout=layout,
              run_dir=run_dir, init_from=weights.source if weights else "",
              resolved=dataclasses.asdict(cfg) | dataclasses.asdict(model_config) | {"world_size": world_size}
              | {"init_from": weights.source if weights else ""},  # where the weights came from, resolved
              training_data=training_data, model_config=model_config, raw_model=raw_model, model=model,
              optimizer=optimizer, autocast=autocast, tokenizer=training_data.encoding,
              tokens_per_step=tokens_per_step, flops_per_token=model_lib.flops_per_token(model_config, cfg.seq_len),
              peak_flops=None, schedule=schedule)
    resume(run)
    if weights:
        run.say(f"starting from the weights of {weights.source}" + (f" ({weights.name})" if weights.name else "")
                + " with a fresh optimizer and schedule")
    run.schedule = make_schedule(cfg, layout.dp_size, run.annealing_start)
    if run.master:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        files.remove_stale_temps(run.run_dir)  # a write that a kill -9 cut short
        files.write_json_atomic(run.run_dir / "config.json", run.resolved)
        files.trim_log(run.run_dir / "log.jsonl", run.step)
        stale = control.read(run.run_dir)
        if stale:
            print(f"ignored the control command {stale!r} left from an earlier run", file=sys.stderr)
        run.say("config: " + json.dumps(run.resolved))
        summary = model_lib.format_summary(model_config, cfg.seq_len)  # both FLOP counts, labelled
        run.say(" | ".join(" ".join(row.split()) for row in summary.splitlines()))  # one line, single spaces
        layout_words = (f" ({layout.mode}" + (f": {layout.n_stages} stages x {layout.dp_size} replicas, "
                                              f"{cfg.pp_schedule}" if layout.pipelined else "") + ")") if world_size > 1 else ""
        run.say(f"{world_size} process(es){layout_words} on {device.type}, {dtype}: {tokens_per_step:,} tokens/step, "
                f"{run.schedule.total_steps} steps for {cfg.total_tokens}M tokens, peak lr {run.schedule.lr:.3g}")
        run.peak_flops, source = peak
        run.say(f"mfu counts {run.flops_per_token:.3g} FLOPs/token (with attention) against a peak of "
                f"{run.peak_flops or 0:.3g} FLOP/s a device ({source})")
        # the trackers before the log: a W&B that cannot start (one line) leaves no file open
        run.trackers = trackers_lib.start(cfg.log_to, run.run_dir, cfg.run_name, cfg.wandb_project, run.resolved)
        run.log_file = open(run.run_dir / "log.jsonl", "a")
    if layout.pipelined:
        run.pipeline = parallel.build_pipeline(raw_model, layout, cfg, device)
    elif world_size > 1 and layout.mode == "ddp":
        run.model = DistributedDataParallel(run.model, device_ids=[device.index] if device.type == "cuda" else None)
    return run


def check_memory(cfg, model_config, layout, device, dtype):
    """Refuse, before anything is built on the device, a run whose training step or end-of-run samples would not
    fit in the memory this process has (memory.memory_estimate and generation_estimate, scaled to the layout by
    parallel.memory_share), with the estimate, what is available and what would fit instead."""
    available = memory.available_memory(device)
    if available is None:
        return
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", 1)) if device.type == "cpu" else 1
    available //= local_processes  # processes on one machine share its memory; each CUDA one has its own device
    where = f"{device.type} has {memory.human_bytes(available)} available" + (
        f" for each of {local_processes} processes" if local_processes > 1 else "")

    if memory.step_bound(model_config, cfg.batch_size, cfg.seq_len) * 2 <= available:
        return  # even the generous bound fits twice over (the samples, within seq_len, hold less than a step)

    def step_memory(batch_size):
        estimate = memory.memory_estimate(model_config, batch_size, cfg.seq_len, dtype, cfg.optimizer,
                                          cfg.grad_accum, cfg.optimizer_state, device)
        return parallel.memory_share(estimate, layout, cfg.grad_accum, cfg.pp_schedule)
    step = step_memory(cfg.batch_size)
    if step["peak"] > available:
        raise UserError(f"a training step of batch_size={cfg.batch_size} x seq_len={cfg.seq_len} needs about "
                        f"{memory.human_bytes(step['peak'])} ({memory.format_memory(step)}) but {where}; "
                        + batch_that_fits(cfg, step, step_memory, available))

    # The samples: rank 0 generates them beside the weights and optimizer state (the gradients are freed by then),
    # with the model's own weights, or a whole copy gathered where the model is sharded or cut into stages.
    prompt_len = 1 + max(len(prompt.encode()) for prompt in cfg.sample_prompts)  # end-of-text, at most a token a byte
    weight_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    generation = memory.generation_estimate(model_config, prompt_len, cfg.sample_tokens, weight_dtype,
                                            window=cfg.seq_len)  # samples keep to the trained context
    whole_copy = layout.sharded or layout.pipelined
    held = step["weights"] + step["optimizer_state"] - (0 if whole_copy else generation["weights"])
    if layout.rank == 0 and held + generation["peak"] > available:
        fits = memory.tokens_that_fit(model_config, prompt_len, available - held, weight_dtype)
        raise UserError(f"the samples (sample_tokens={cfg.sample_tokens} after a {prompt_len}-token prompt) "
                        f"need about {memory.human_bytes(held + generation['peak'])} with the training state "
                        f"({memory.format_memory(generation)}) but {where}; "
                        + (f"sample_tokens={fits} fits" if fits >= 0 else "no sample fits beside the training state"))


def batch_that_fits(cfg, step, step_memory, available):
    """What to say when a batch does not fit: a batch_size that does at this seq_len (the largest, or nearly), or
    that none does."""
    one = step_memory(1)["peak"] if cfg.batch_size > 1 else step["peak"]
    if one > available:
        return (f"even batch_size=1 does not fit at seq_len={cfg.seq_len}: use a shorter seq_len or a smaller model "
                f"(on CUDA, dtype='bf16-mixed'; over several processes, parallel='fsdp')")
    # The peak grows with the batch as the largest of a few straight lines (a step that peaks in the optimizer does
    # not grow at all), so the chord from batch 1 to batch_size lies above it: any batch under the chord fits.
    fits = 1 + int((available - one) // ((step["peak"] - one) / (cfg.batch_size - 1)))
    return (f"batch_size={fits} fits at seq_len={cfg.seq_len} (grad_accum="
            f"{math.ceil(cfg.batch_size * cfg.grad_accum / fits)} keeps about the same tokens per step)")


def resume(run):
    """Load the newest step checkpoint that loads into run; from scratch only where nothing would be lost."""
    cfg, run_dir = run.cfg, run.run_dir
    parallel.check_rank0_holds_the_run(run.layout, run_dir)

    def read():  # on rank 0 only: out/ need not be shared between nodes
        files.lock_directory(run_dir)  # before anything here changes; train.py unlocks it when the run ends
        steps = files.step_checkpoints(run_dir)
        if not steps:
            files.check_fresh_start(run_dir)
        if not steps or run.init_from == str(steps[-1].resolve()):  # nothing to resume, or the import started from
            return None, None
        return files.load_checkpoint(run_dir, map_location="cpu")
    checkpoint_path, checkpoint = parallel.from_rank0(run.layout, read)
    if checkpoint is None:
        return
    if "optimizer" not in checkpoint:  # weights only (export.py --import at a later step, or a hand-made file)
        raise UserError(f"{checkpoint_path} holds weights without an optimizer state, nothing to resume: start a new "
                        f"run from them with init_from={checkpoint_path} and another run_name")
    model_config = dataclasses.asdict(run.model_config)
    if {k: v for k, v in checkpoint["model_config"].items() if k not in model_lib.BACKEND_FIELDS} != \
            {k: v for k, v in model_config.items() if k not in model_lib.BACKEND_FIELDS}:
        raise UserError(f"{checkpoint_path} holds a different model from this config; use another run_name")
    model_lib.checkpoint_config(checkpoint, checkpoint_path)  # its weights are a model of its config
    if checkpoint["config"]["optimizer"] != cfg.optimizer:
        raise UserError(f"{checkpoint_path} was trained with optimizer={checkpoint['config']['optimizer']!r}, "
                        f"whose state does not carry over to {cfg.optimizer!r}; use another run_name")
    check_same_batch(run, checkpoint_path, checkpoint)
    parallel.load_state(run.raw_model, run.optimizer, checkpoint["model"], checkpoint["optimizer"], run.layout)
    run.step, run.annealing_start = checkpoint["step"], checkpoint["annealing_start"]
    run.saved_step = run.step
    run.best_eval_loss = checkpoint["best_eval_loss"]
    torch.set_rng_state(checkpoint["rng"].cpu())
    if "data" in checkpoint:  # the mixture's counters; without them the draws are replayed from 0
        try:
            run.training_data.mixture.load_state_dict(checkpoint["data"])
        except ValueError as e:
            raise UserError(f"{checkpoint_path}: {e}; use another run_name")
    if cfg.start_annealing and run.annealing_start is None:
        run.annealing_start = run.step
        run.say(f"annealing starts at step {run.step} (start_annealing=True)")
    # init_from applied when the run started; a resume goes on from the run's own weights and keeps the record
    run.resolved["init_from"] = checkpoint["config"].get("init_from", "")
    if cfg.init_from:
        run.say(f"init_from={cfg.init_from} is not applied: {run_dir} goes on from its own checkpoint")
    changed = {k: v for k, v in run.resolved.items() if checkpoint["config"].get(k) != v}
    run.say(f"resuming from {checkpoint_path} at step {run.step}" + (f" with changes {changed}" if changed else ""))


# the keys that make a step's tokens: seq_len x batch_size x grad_accum x data-parallel processes
BATCH_KEYS = ("seq_len", "batch_size", "grad_accum", "world_size", "parallel", "pp_stages")


def check_same_batch(run, checkpoint_path, checkpoint):
    """Refuse to go on with another global batch: the schedule and the data order count steps, so the lr would
    jump and the tokens count run backwards or skip, and data would be trained twice or never."""
    step, old_config = checkpoint["step"], checkpoint["config"]
    if step == 0:  # nothing trained yet: nothing to re-lay
        return
    old_tokens_per_step = checkpoint["tokens"] // step
    if old_tokens_per_step == run.tokens_per_step:
        return
    changed = ", ".join(f"{key} {old_config.get(key)} -> {run.resolved.get(key)}" for key in BATCH_KEYS
                        if old_config.get(key) != run.resolved.get(key))
    raise UserError(f"{checkpoint_path} was trained with {old_tokens_per_step:,} tokens per step, this config makes "
                    f"{run.tokens_per_step:,} ({changed}); going on would re-lay its schedule and data order: set "
                    f"batch_size or grad_accum so that a step is {old_tokens_per_step:,} tokens again (seq_len x "
                    f"batch_size x grad_accum x data-parallel processes), or use another run_name")


# ----------------------------------------------------------------------------- starting from existing weights

@dataclass
class Weights:
    """A model's weights to start a run from (init_from), and what they say about the data they were trained on."""
    source: str                  # the checkpoint file or Hugging Face folder read, as an absolute path
    config: model_lib.ModelConfig
    state: dict = None           # the state dict (None: only the shape is known, from a run's config.json)
    tokenizer: str | None = None  # the tokenizer they were trained with, where known
    context: int | None = None   # the most tokens they were trained on at once, where known
    name: str | None = None      # a Hugging Face folder's _name_or_path


def starting_weights(cfg, run_dir):
    """The Weights a new run starts from, or None: a random init, or a run directory with a step checkpoint of its
    own to resume (init_from applies only before a run's first checkpoint, so a resume never goes back to it). A run
    directory holding only export.py --import's ckpt_00000000.pt (weights, no optimizer) starts from those."""
    steps = files.step_checkpoints(run_dir)
    if steps == [files.checkpoint_path(run_dir, 0)]:
        path, checkpoint = files.load_checkpoint(steps[0])
        if "optimizer" not in checkpoint:
            return our_weights(path, checkpoint)
    if steps or not cfg.init_from:
        return None
    return read_weights(cfg.init_from)


def read_weights(source):
    """The Weights of init_from: a Hugging Face Llama folder (it holds *.safetensors or *.bin weights), or a run
    directory (its newest step checkpoint that loads) or checkpoint file of ours. Every mistake is one line."""
    path = Path(source).expanduser()
    if path.is_dir() and (any(path.glob("*.safetensors")) or any(path.glob("*.bin"))):
        try:
            config, state = llama.import_hf(path)
            tokenizer = llama.imported_tokenizer(path)
            hf = json.loads((path / "config.json").read_text())
        except (ValueError, KeyError, OSError) as e:  # a KeyError: config.json lacks a field
            raise UserError(f"init_from={source}: " + (f"config.json has no {e}" if isinstance(e, KeyError) else
                                                      one_line(e))) from None
        return Weights(str(path.resolve()), config, state, tokenizer, hf.get("max_position_embeddings"),
                       hf.get("_name_or_path") or None)
    try:
        checkpoint_path, checkpoint = files.load_checkpoint(path)
    except UserError as e:
        raise UserError(f"init_from={source}: {e}") from None
    return our_weights(checkpoint_path, checkpoint)


def our_weights(checkpoint_path, checkpoint):
    config = model_lib.checkpoint_config(checkpoint, checkpoint_path)  # its weights are a model of its config
    return Weights(str(Path(checkpoint_path).resolve()), config, checkpoint["model"], checkpoint.get("tokenizer"),
                   model_lib.trained_context(checkpoint))


def recorded_shape(run_dir):
    """The model a run started from existing weights was built as (its config.json), for a resume: the weights, not
    the preset, set its shape. None for a run that started from a random init, or has nothing to resume."""
    path = run_dir / "config.json"
    if not files.step_checkpoints(run_dir) or not path.is_file():
        return None
    try:
        recorded = json.loads(path.read_text())
        if not recorded.get("init_from"):
            return None
        return model_lib.ModelConfig(**{f.name: recorded[f.name] for f in dataclasses.fields(model_lib.ModelConfig)})
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path} does not describe the model this run started from ({e!r}); use another run_name")


def weights_model_config(cfg, model_overrides, shape, training_data, weights):
    """The ModelConfig of a run from existing weights: their shape, with this config's back-ends. A model key set
    explicitly that contradicts them, data of another vocabulary or tokenizer, and a seq_len past the context they
    were trained for are each one line; the keys the weights do not fix (lr, schedule, ...) stay the config's."""
    contradicted = {key: value for key, value in model_overrides.items() if getattr(shape, key) != value}
    if contradicted:
        raise UserError(f"{', '.join(f'{k}={v!r}' for k, v in contradicted.items())} contradicts the weights of "
                        f"{weights.source} ({', '.join(f'{k}={getattr(shape, k)!r}' for k in contradicted)}): "
                        f"leave the model's shape to them")
    if shape.vocab_size != training_data.vocab_size:
        raise UserError(f"the weights of {weights.source} have a {shape.vocab_size}-token vocabulary but data "
                        f"{training_data.names[0]!r} was prepared with {training_data.tokenizer!r}, a "
                        f"{training_data.vocab_size}-token vocabulary: prepare the data with the weights' tokenizer")
    if weights.tokenizer and weights.tokenizer != training_data.tokenizer:
        raise UserError(f"the weights of {weights.source} were trained with tokenizer {weights.tokenizer!r} but data "
                        f"{training_data.names[0]!r} was prepared with {training_data.tokenizer!r}")
    if weights.context and cfg.seq_len > weights.context:
        raise UserError(f"seq_len={cfg.seq_len} is longer than the {weights.context} tokens the weights of "
                        f"{weights.source} were trained on at once")
    return dataclasses.replace(shape, **{key: getattr(cfg, key) for key in model_lib.BACKEND_FIELDS})


# ----------------------------------------------------------------------------- checkpoints, logs, samples

def save(run, best=False):
    """A checkpoint of everything the run needs to go on exactly: whole tensors, whatever the layout (every rank
    calls this; rank 0 writes it; non-finite weights refused)."""
    model_state, optimizer_state = parallel.gather_state(run.raw_model, run.optimizer, run.layout)
    if run.master:
        state = {"model": model_state, "model_config": dataclasses.asdict(run.model_config),
                 "optimizer": optimizer_state, "step": run.step, "tokens": run.step * run.tokens_per_step,
                 "annealing_start": run.annealing_start, "best_eval_loss": run.best_eval_loss,
                 "rng": torch.get_rng_state(), "data": run.training_data.mixture.state_dict(),
                 "tokenizer": run.training_data.tokenizer, "config": run.resolved,
                 **tokenizer_lib.checkpoint_fields(run.training_data.encoding)}  # a tokenizer.json: its text too
        files.save_checkpoint(run.run_dir, state, run.cfg.keep_checkpoints, best)
    if not best:
        run.saved_step = run.step


def write_samples(run):
    """The run's samples at this step into samples.txt (once: a rerun after a kill before they were written
    writes them, one that finds them there does not). Every rank calls this: a sharded model is gathered."""
    heading = f"sample at step {run.step}"
    path = run.run_dir / "samples.txt"
    before = path.read_text(errors="replace") if run.master and path.exists() else ""
    if parallel.from_rank0(run.layout, lambda: f"----- {heading} 1/" in before):
        return
    model = parallel.whole_model(run.raw_model, run.layout, run.model_config, run.device)
    if not run.master:
        return
    model.eval()  # the same texts whether or not the run was resumed: the generator is seeded by the step
    try:
        with control.interruptible():  # a stop signal abandons the samples (control.Stopped): nothing is written
            # within the trained context: the model is asked nothing about positions it has not seen
            text = model_lib.sample_texts(model, run.tokenizer, run.cfg.sample_prompts, run.cfg.sample_tokens,
                                          run.cfg.sample_temperature, run.cfg.sample_top_k,
                                          seed=run.cfg.seed + run.step, heading=heading, window=run.cfg.seq_len)
    finally:
        model.train()
    files.write_text_atomic(path, before + text)
    run.trackers.samples(run.step, text)
    run.say(text + "-----")
