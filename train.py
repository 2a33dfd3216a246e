"""Pretrain a small language model.

    python train.py configs/quickstart.py                          # one process
    python train.py configs/quickstart.py lr=1e-3 max_steps=100    # key=value overrides come last
    torchrun --standalone --nproc_per_node=4 train.py configs/X.py # DDP (nccl on CUDA, gloo on CPU)

Every key and its default is declared once, in TrainConfig below. A config file is plain Python
that assigns some of those names (it may start with `from configs.other import *`). The model
shape comes from a preset in model.PRESETS, and any ModelConfig field can be overridden the same
way (`n_layers=2`). The run lives in out/<run_name>/: config.json, log.jsonl, checkpoints and
samples.txt. Running the same command again resumes from the newest checkpoint.
"""
import ast
import dataclasses
import difflib
import json
import math
import os
import runpy
import signal
import sys
import time
import types
import typing
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import data
import model as model_lib
import optim
import prepare
import sched
from sample import sample_texts


@dataclass
class TrainConfig:
    # run
    run_name: str = "run"               # the run directory is <out_dir>/<run_name>
    out_dir: str = "out"
    seed: int = 1337                    # model init and data order
    # data
    data: str = "shakespeare"           # a directory under data_dir written by prepare.py; several: "a,b" (entries
                                        # mixed by `mixture`), "a+b" (one entry drawn as a balance_remaining group)
    data_dir: str = "data"
    mixture: str = "balance_remaining"  # "fixed" | "balance_remaining" | "soft_sequential" (data.py says how each draws)
    mixture_weights: tuple[float, ...] = ()  # "fixed": one weight per entry of `data`
    packing: str = "blocks"             # "blocks" (the stream cut every seq_len tokens) | "best_fit" (documents kept
                                        # whole where they fit; the rest of a block is padding)
    eval_data: str = ""                 # eval_loss/eval_bpb pool this data's val split ("a+b": several; "": the
                                        # training sources); each source is also logged as eval_loss/<name>
    tokenizer: str | None = None        # None: whatever the data was prepared with; set it to insist
    seq_len: int = 256                  # tokens per training sequence
    batch_size: int = 16                # sequences per process per micro-step
    grad_accum: int = 1                 # micro-steps per optimizer step
    total_tokens: float = 1.0           # training budget, in millions of tokens: sets the schedule
    max_steps: int | None = None        # optional cap on steps; the schedule still follows total_tokens
    # model: a preset; every ModelConfig field (dim, n_layers, ...) may also be set as a key
    model: str = "quickstart"
    attn: str = "sdpa"                  # "sdpa" (fast) | "eager" (plain math, the reference)
    # learning-rate schedule (sched.py): token amounts in millions, turned into steps at start-up
    schedule: str = "cosine"            # "cosine" | "constant" | "infinite" (Infinite-LR) | "wsd" (WSD-S)
    lr: float = 1e-3                    # peak learning rate (at base_batch_tokens, if that is set)
    base_batch_tokens: int | None = None  # tokens per step at which lr was tuned; None: lr is used as it is
    lr_alpha: float = 0.5               # lr scales as (tokens_per_step / base_batch_tokens) ** lr_alpha
    min_lr: float | None = None         # the end of every decay; None: lr / 10
    constant_lr: float | None = None    # infinite: the plateau after the cooldown; None: lr / 3
    warmup_tokens: float = 0.1          # linear warmup from 0
    cooldown_p: float = 0.3             # infinite: the cosine cooldown lasts this share of total_tokens...
    min_cooldown_tokens: float = 0.0    # ...or this many tokens, whichever is longer
    annealing_tokens: float = 0.0       # infinite/wsd: length of the final decay to min_lr, placed at the end of total_tokens
    decay_shape: str = "rsqrt"          # infinite/wsd: "rsqrt" (1/lr linear) | "linear" | "cosine"
    start_annealing: bool = False       # on resume, start the final decay now (the start is kept by later resumes);
                                        # `python train.py control out/RUN anneal` does the same to a running job
    # optimizer
    optimizer: str = "adamw"            # ours (optim.py): "adamw" | "adafactor" | "muon"; or "torch_adamw"
    optimizer_state: str = "fp32"       # "fp32" | "bf16" (moments kept in bf16 with stochastic rounding; ours only)
    weight_decay: float = 0.1           # decoupled; on matrices only, not on norms (optim.param_groups says why)
    beta1: float = 0.9                  # AdamW (and Muon's AdamW groups)
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0              # max global grad norm; 0 = no clipping (the norm is still logged)
    divergence_factor: float = 3.0      # stop when a step's loss exceeds this times its running mean (0: never);
                                        # a non-finite loss always stops the run, before anything is saved
    # precision and speed
    device: str = "auto"                # "auto" (cuda if available) | "cpu" | "cuda"
    dtype: str = "auto"                 # "fp32" | "bf16-mixed" (fp32 weights, bf16 autocast) | "bf16" (pure bf16
                                        # weights, stochastic rounding: ours only); auto: bf16-mixed on CUDA, else fp32
    compile: bool = False               # torch.compile the model (~20 s up front, ~10% faster on CPU)
    # eval, logging, checkpoints, samples
    eval_interval: int = 100            # steps between evals (and one before the first step and after the last)
    eval_iters: int = 10                # global batches of val.bin per eval (capped at the whole split)
    log_interval: int = 10              # steps between progress lines
    checkpoint_interval: int = 500      # steps between checkpoints (and one at the end)
    keep_checkpoints: int = 2           # newest checkpoints kept in the run directory (plus ckpt_best.pt: best eval loss)
    sample_interval: int = 0            # steps between samples into samples.txt; 0: only at the end
    sample_prompts: tuple[str, ...] = ("",)  # fixed texts the samples continue (each starts a fresh document)
    sample_tokens: int = 200
    sample_temperature: float = 0.8
    sample_top_k: int | None = 200


class UserError(Exception):
    """A mistake in the command, config or data: reported as one line, exit status 2."""


# ----------------------------------------------------------------------------- config

# ModelConfig fields double as keys; None means "as the preset says". attn is a TrainConfig key.
MODEL_KEYS = {k: v for k, v in typing.get_type_hints(model_lib.ModelConfig).items() if k != "attn"}
TRAIN_KEYS = typing.get_type_hints(TrainConfig)


def check_type(key, value, hint):
    """Return value (ints widened to float where a float is wanted) or raise UserError naming the key."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union else (hint,)
    if value is None and type(None) in allowed:
        return value
    if typing.get_origin(hint) is tuple:  # a list of texts (sample_prompts) or numbers (mixture_weights)
        item = typing.get_args(hint)[0]
        if isinstance(value, (int, float)) and item is float:
            value = (value,)
        if isinstance(value, (list, tuple)) and all(isinstance(v, item) or (item is float and isinstance(v, int) and
                                                                           not isinstance(v, bool)) for v in value):
            return tuple(float(v) for v in value) if item is float else tuple(value)
        raise UserError(f"{key} must be a list of {'strings' if item is str else 'numbers'}, got {value!r}")
    if isinstance(value, bool):  # bool is an int subclass; only a bool may stand for a bool
        if bool in allowed:
            return value
    elif float in allowed and isinstance(value, (int, float)):
        return float(value)
    elif any(t is not type(None) and isinstance(value, t) for t in allowed):
        return value
    names = " or ".join("None" if t is type(None) else t.__name__ for t in allowed)
    raise UserError(f"{key} must be {names}, got {value!r}")


def unknown_key(key):
    close = difflib.get_close_matches(key, list(TRAIN_KEYS) + list(MODEL_KEYS), n=1)
    return UserError(f"unknown config key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))


def parse_value(text):
    """key=value on the command line: a Python literal where it parses, true/false, else the text itself."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def load_config(argv):
    """Defaults, then each config file in order, then key=value pairs. Returns (TrainConfig, model overrides)."""
    overrides = {}
    for arg in argv:
        if "=" in arg:
            key, text = arg.split("=", 1)
            overrides[key] = parse_value(text)
        elif arg.endswith(".py"):
            if not os.path.isfile(arg):
                raise UserError(f"config file {arg} not found")
            try:
                namespace = runpy.run_path(arg)
            except Exception as e:
                raise UserError(f"config file {arg} failed: {type(e).__name__}: {e}")
            for key, value in namespace.items():
                # a config may import helpers or define _private names; only plain values are keys
                if key.startswith("_") or isinstance(value, (types.ModuleType, types.FunctionType, type)):
                    continue
                overrides[key] = value
        else:
            raise UserError(f"expected a config file (.py) or key=value, got {arg!r}")
    train_values, model_overrides = {}, {}
    for key, value in overrides.items():
        if key in TRAIN_KEYS:
            train_values[key] = check_type(key, value, TRAIN_KEYS[key])
        elif key in MODEL_KEYS:
            model_overrides[key] = check_type(key, value, MODEL_KEYS[key])
        else:
            raise unknown_key(key)
    cfg = TrainConfig(**train_values)
    choices = {"attn": ("sdpa", "eager", "flex"), "mixture": data.MIXTURES, "packing": data.PACKINGS, "optimizer": optim.OPTIMIZERS, "optimizer_state": ("fp32", "bf16"), "schedule": sched.SCHEDULES, "decay_shape": sched.DECAY_SHAPES,
               "device": ("auto", "cpu", "cuda"), "dtype": ("auto", "fp32", "bf16-mixed", "bf16"), "model": tuple(model_lib.PRESETS)}
    for key, allowed in choices.items():
        if getattr(cfg, key) not in allowed:
            raise UserError(f"{key}={getattr(cfg, key)!r} is not one of {', '.join(allowed)}")
    for key in ("seq_len", "batch_size", "grad_accum", "eval_interval", "eval_iters", "log_interval", "checkpoint_interval", "keep_checkpoints"):
        if getattr(cfg, key) < 1:
            raise UserError(f"{key} must be at least 1, got {getattr(cfg, key)}")
    if (cfg.dtype == "bf16" or cfg.optimizer_state == "bf16") and cfg.optimizer not in optim.SR_OPTIMIZERS:
        raise UserError(f"dtype='bf16' and optimizer_state='bf16' need an optimizer with stochastic rounding "
                        f"({', '.join(optim.SR_OPTIMIZERS)}), not {cfg.optimizer!r}: round-to-nearest loses small updates")
    if cfg.start_annealing and (cfg.schedule not in ("infinite", "wsd") or cfg.annealing_tokens <= 0):
        raise UserError("start_annealing needs schedule='infinite' or 'wsd' and annealing_tokens > 0 (the decay's length)")
    return cfg, model_overrides


def make_schedule(cfg, world_size, annealing_start=None):
    """The run's sched.Schedule; annealing_start is the step where an annealing was requested, if one was."""
    return sched.plan(cfg.schedule, sched.tokens_per_step(cfg.seq_len, cfg.batch_size, cfg.grad_accum, world_size),
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


def build_model_config(cfg, model_overrides, vocab_size):
    values = dataclasses.asdict(model_lib.PRESETS[cfg.model])
    values.update(model_overrides, attn=cfg.attn, vocab_size=vocab_size)
    try:
        return model_lib.ModelConfig(**values)
    except (ValueError, AssertionError) as e:
        raise UserError(f"model {cfg.model} with {model_overrides}: {e}")


# ----------------------------------------------------------------------------- checkpoints and logs

def save_checkpoint(run_dir, state, keep, best=False):
    """Write ckpt_<step>.pt (or ckpt_best.pt) atomically: a temp file, then a rename, so a crash mid-write
    leaves every earlier checkpoint whole. Then drop all but the newest `keep` step checkpoints."""
    path = run_dir / ("ckpt_best.pt" if best else f"ckpt_{state['step']:08d}.pt")
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    if not best:
        for old in sorted(run_dir.glob("ckpt_[0-9]*.pt"))[:-keep]:
            old.unlink()
    return path


# ----------------------------------------------------------------------------- run control
# `python train.py control out/RUN CMD` leaves CMD in out/RUN/control; rank 0 reads it after every
# step and all ranks act on it together. SIGTERM and SIGINT (preemption, Ctrl-C) act like "stop".

CONTROL_COMMANDS = ("save", "stop", "abort", "anneal")  # save and go on; save and exit; exit unsaved; start annealing


def send_control(run_dir, command):
    if command not in CONTROL_COMMANDS:
        raise UserError(f"unknown control command {command!r}; known: {', '.join(CONTROL_COMMANDS)}")
    if not (Path(run_dir) / "config.json").exists():
        raise UserError(f"{run_dir} is not a run directory (no config.json)")
    prepare.write_text_atomic(Path(run_dir) / "control", command + "\n")  # the trainer never reads half a command
    print(f"sent {command!r} to {run_dir}: the run acts on it after its current step")


def read_control(run_dir):
    """The pending command, consumed; "" when there is none."""
    path = run_dir / "control"
    try:
        command = path.read_text().strip()
    except FileNotFoundError:
        return ""
    path.unlink(missing_ok=True)
    if command not in CONTROL_COMMANDS:
        print(f"ignored unknown control command {command!r}", file=sys.stderr)
        return ""
    return command


def catch_stop_signals():
    """SIGTERM and SIGINT set a flag that the loop turns into "save and stop"; a second one stops at once."""
    received = [False]

    def on_signal(signum, frame):
        if received[0]:
            raise KeyboardInterrupt
        received[0] = True
        print(f"received {signal.Signals(signum).name}: saving after this step", file=sys.stderr)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    return received


def trim_log(log_path, step):
    """On resume, drop log lines past the checkpoint's step so curves never double back (and a line torn
    by a kill mid-write)."""
    if not log_path.exists():
        return

    def keep(line):
        try:
            return json.loads(line)["step"] <= step
        except (ValueError, KeyError, TypeError):
            return False

    kept = [line for line in log_path.read_text().splitlines() if keep(line)]
    prepare.write_text_atomic(log_path, "".join(line + "\n" for line in kept))


def tensorboard_writer(run_dir):
    """TensorBoard event files in <run dir>/tensorboard when the tensorboard package is installed; never required."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def format_duration(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


# ----------------------------------------------------------------------------- eval and samples

@torch.no_grad()
def evaluate(model, training_data, cfg, rank, world_size, device, autocast):
    """{name: (loss sum, target count)} over a fixed set of val blocks of every eval source, summed over ranks."""
    model.eval()
    n_rows = cfg.eval_iters * cfg.batch_size * cfg.grad_accum * world_size
    totals = torch.zeros(len(training_data.eval_names), 2, dtype=torch.float64, device=device)
    for i, name in enumerate(training_data.eval_names):
        for x, y, doc_ids in training_data.eval_batches(name, n_rows, rank, world_size, cfg.batch_size, device):
            with autocast:
                totals[i, 0] += model(x, doc_ids, y).double()
            totals[i, 1] += (y != -1).sum()
    if world_size > 1:
        dist.all_reduce(totals)
    model.train()
    return dict(zip(training_data.eval_names, totals.tolist()))


# ----------------------------------------------------------------------------- training

def train(cfg, model_overrides):
    rank, world_size, device = setup_distributed(cfg)
    if cfg.attn == "flex" and device.type != "cuda":
        raise UserError("attn='flex' trains on CUDA only (flex_attention has no backward on the CPU); use sdpa here")
    master = rank == 0
    say = print if master else (lambda *a, **k: None)
    training_data = open_data(cfg, model_overrides)
    model_config = build_model_config(cfg, model_overrides, training_data.vocab_size)
    run_dir = Path(cfg.out_dir) / cfg.run_name
    resolved = dataclasses.asdict(cfg) | dataclasses.asdict(model_config) | {"world_size": world_size}

    # the budget in steps; the schedule is laid out over total_tokens even when max_steps stops earlier
    tokens_per_step = sched.tokens_per_step(cfg.seq_len, cfg.batch_size, cfg.grad_accum, world_size)
    schedule = make_schedule(cfg, world_size)
    if schedule.total_steps < 1:
        raise UserError(f"total_tokens={cfg.total_tokens}M is less than one step of {tokens_per_step:,} tokens")

    dtype = cfg.dtype if cfg.dtype != "auto" else ("bf16-mixed" if device.type == "cuda" else "fp32")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16-mixed" else nullcontext()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    tokenizer = prepare.load_tokenizer(training_data.tokenizer)

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    raw_model = model_lib.Transformer(model_config).to(device, torch.bfloat16 if dtype == "bf16" else torch.float32)
    optimizer = optim.build_optimizer(cfg.optimizer, raw_model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), cfg.eps,
                                      seed=cfg.seed, state_dtype=torch.bfloat16 if cfg.optimizer_state == "bf16" else None)

    step, annealing_start, best_eval_loss = 0, None, float("inf")
    checkpoint_path = model_lib.newest_checkpoint(run_dir) if run_dir.exists() else None
    if checkpoint_path is not None:
        checkpoint = torch.load(checkpoint_path, map_location=device, weights_only=True)
        if checkpoint["model_config"] != dataclasses.asdict(model_config) | {"attn": checkpoint["model_config"].get("attn")}:
            raise UserError(f"{checkpoint_path} holds a different model from this config; use another run_name")
        if checkpoint["config"]["optimizer"] != cfg.optimizer:
            raise UserError(f"{checkpoint_path} was trained with optimizer={checkpoint['config']['optimizer']!r}, "
                            f"whose state does not carry over to {cfg.optimizer!r}; use another run_name")
        raw_model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        step, annealing_start, best_eval_loss = checkpoint["step"], checkpoint["annealing_start"], checkpoint["best_eval_loss"]
        torch.set_rng_state(checkpoint["rng"].cpu())
        if "data" in checkpoint:  # the mixture's counters; without them the draws are replayed from 0
            try:
                training_data.mixture.load_state_dict(checkpoint["data"])
            except ValueError as e:
                raise UserError(f"{checkpoint_path}: {e}; use another run_name")
        if cfg.start_annealing and annealing_start is None:
            annealing_start = step
            say(f"annealing starts at step {step} (start_annealing=True)")
        schedule = make_schedule(cfg, world_size, annealing_start)
        changed = {k: v for k, v in resolved.items() if checkpoint["config"].get(k) != v}
        say(f"resuming from {checkpoint_path} at step {step}" + (f" with changes {changed}" if changed else ""))
        del checkpoint
    if master:
        run_dir.mkdir(parents=True, exist_ok=True)
        prepare.write_json_atomic(run_dir / "config.json", resolved)
        trim_log(run_dir / "log.jsonl", step)
        say("config: " + json.dumps(resolved))
        say(model_lib.format_summary(model_config).replace("\n", " | "))
        say(f"{world_size} process(es) on {device.type}, {dtype}: {tokens_per_step:,} tokens/step, "
            f"{schedule.total_steps} steps for {cfg.total_tokens}M tokens, peak lr {schedule.lr:.3g}")

    model = torch.compile(raw_model) if cfg.compile else raw_model
    if world_size > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    log_file = open(run_dir / "log.jsonl", "a") if master else None
    tensorboard = tensorboard_writer(run_dir) if master else None

    def log(record):
        if master:
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
        if tensorboard:
            for key, value in record.items():
                if isinstance(value, float) and key != "time":
                    tensorboard.add_scalar(key, value, record["step"])

    def event(message):  # something that happened to the run: printed, and logged at its step
        say(f"step {step:>6} | {message}")
        log({"step": step, "tokens": step * tokens_per_step, "event": message})

    def run_eval():
        nonlocal best_eval_loss
        eval_loss, eval_bpb, per_source = training_data.eval_summary(evaluate(model, training_data, cfg, rank, world_size,
                                                                              device, autocast))
        if not math.isfinite(eval_loss):
            raise UserError(f"eval loss is {eval_loss} at step {step}; stopped, the checkpoints are left as they were")
        eval_ppl = math.exp(min(eval_loss, 50))
        say(f"step {step:>6} | eval loss {eval_loss:.4f} | ppl {eval_ppl:.2f} | {eval_bpb:.4f} bits/byte"
            + "".join(f" | {key[10:]} {value:.4f}" for key, value in per_source.items()))
        log({"step": step, "tokens": step * tokens_per_step, "eval_loss": eval_loss, "eval_bpb": eval_bpb, "eval_ppl": eval_ppl}
            | per_source)
        if eval_loss < best_eval_loss and step > 0:
            best_eval_loss = eval_loss
            checkpoint(best=True)

    def checkpoint(best=False):
        if master:
            state = {"model": raw_model.state_dict(), "model_config": dataclasses.asdict(model_config),
                     "optimizer": optimizer.state_dict(), "step": step, "tokens": step * tokens_per_step,
                     "annealing_start": annealing_start, "best_eval_loss": best_eval_loss, "rng": torch.get_rng_state(),
                     "data": training_data.mixture.state_dict(), "tokenizer": training_data.tokenizer, "config": resolved}
            save_checkpoint(run_dir, state, cfg.keep_checkpoints, best)

    def steps_to_run():  # the schedule's end (an annealing request moves it), capped by max_steps
        return min(schedule.end_step, cfg.max_steps) if cfg.max_steps else schedule.end_step

    run_steps = steps_to_run()
    if step >= run_steps:
        say(f"already trained to step {step} of {run_steps}; nothing to do")
    elif step == 0:
        run_eval()
    start_time = last_time = time.time()
    steps_timed, last_step, loss_mean, losses_seen = 0, step, None, 0
    stop_signal = catch_stop_signals()
    while step < run_steps:
        lr = sched.lr_at(step, schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr
        micro_batches = [training_data.micro_batch(step, m, rank, cfg.batch_size, cfg.grad_accum, world_size, device)
                         for m in range(cfg.grad_accum)]
        # Normalise by the number of target tokens in the whole global batch, so the gradient is
        # that of the mean loss over the step whatever the split into processes and micro-steps.
        target_count = torch.tensor(float(sum(int((y != -1).sum()) for _, y, _ in micro_batches)), device=device)
        if world_size > 1:
            dist.all_reduce(target_count)
        step_loss = torch.zeros((), device=device)
        for m, (x, y, doc_ids) in enumerate(micro_batches):
            last_micro = m == cfg.grad_accum - 1
            with model.no_sync() if world_size > 1 and not last_micro else nullcontext():
                with autocast:
                    loss_sum = model(x, doc_ids, y)
                # DDP averages gradients over ranks; scaling by world_size turns that into the sum.
                (loss_sum * (world_size / target_count)).backward()
            step_loss += loss_sum.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        # One small all-reduce a step carries what every rank must agree on: the step's loss (for the
        # divergence guard), a stop signal received by any rank, and the command rank 0 found.
        command = read_control(run_dir) if master else ""
        status = torch.stack([step_loss.float(), torch.tensor(float(stop_signal[0]), device=device),
                              torch.tensor(float(CONTROL_COMMANDS.index(command) + 1 if command else 0), device=device)])
        if world_size > 1:
            dist.all_reduce(status)
        loss = status[0].item() / target_count.item()
        signalled, command_number = status[1].item() > 0, int(status[2].item())  # 0: no command
        command = CONTROL_COMMANDS[command_number - 1] if command_number else ""

        if not math.isfinite(loss) or (cfg.divergence_factor and losses_seen >= 20 and loss > cfg.divergence_factor * loss_mean):
            raise UserError(f"loss diverged at step {step}: {loss:.4g}" + (f" against a running mean of {loss_mean:.4g}" if
                            math.isfinite(loss) else "") + "; stopped without saving, the checkpoints are left as they were")
        loss_mean = loss if loss_mean is None else 0.98 * loss_mean + 0.02 * loss  # over the last ~50 steps
        losses_seen += 1
        if step % cfg.log_interval == 0 or step == run_steps:
            now = time.time()
            tok_per_s = (step - last_step) * tokens_per_step / (now - last_time)
            steps_timed += step - last_step
            eta = (now - start_time) / steps_timed * (run_steps - step)
            last_time, last_step = now, step
            say(f"step {step:>6}/{run_steps} | loss {loss:.4f} | lr {lr:.2e} | grad norm {grad_norm.item():.3f} | "
                f"{tok_per_s:,.0f} tok/s | eta {format_duration(eta)}")
            drawn = training_data.drawn() if len(training_data.names) > 1 else {}  # a curriculum's progress
            log({"step": step, "tokens": step * tokens_per_step, "loss": loss, "lr": lr, "grad_norm": grad_norm.item(),
                 "tok_per_s": tok_per_s, "time": now} | {f"drawn/{name}": n for name, n in drawn.items()})
        pause_start = time.time()
        if command == "abort":
            event("aborted: exiting without saving")
            return 1
        if signalled or command == "stop":
            checkpoint()
            event(f"stopped by {'a signal' if signalled else 'the stop command'}: saved; the same command resumes")
            break
        if command == "save":
            checkpoint()
            event("saved on request")
        if command == "anneal":
            if annealing_start is not None or cfg.schedule not in ("infinite", "wsd") or cfg.annealing_tokens <= 0:
                event("anneal ignored: it needs schedule='infinite' or 'wsd', annealing_tokens > 0 and no annealing yet")
            else:
                annealing_start, schedule = step, make_schedule(cfg, world_size, step)
                run_steps = steps_to_run()
                event(f"annealing started on request; the run now ends at step {run_steps}")
                checkpoint()  # so that every later resume keeps this start
        if step % cfg.eval_interval == 0 or step == run_steps:
            run_eval()
        if step % cfg.checkpoint_interval == 0 or step == run_steps:
            checkpoint()
        if master and ((cfg.sample_interval and step % cfg.sample_interval == 0) or step == run_steps):
            raw_model.eval()  # the same texts whether or not the run was resumed: the generator is seeded by the step
            text = sample_texts(raw_model, tokenizer, cfg.sample_prompts, cfg.sample_tokens, cfg.sample_temperature,
                                cfg.sample_top_k, seed=cfg.seed + step, heading=f"sample at step {step}")
            raw_model.train()
            with open(run_dir / "samples.txt", "a") as f:
                f.write(text)
            say(text + "-----")
        paused = time.time() - pause_start  # eval, checkpoints and samples do not count against tokens/s
        start_time, last_time = start_time + paused, last_time + paused
    if log_file:
        log_file.close()
    if tensorboard:
        tensorboard.close()
    if world_size > 1:
        # Every rank reaches the barrier before any tears gloo down: a rank that leaves while another is
        # still writing the final checkpoint or sample could abort that rank's gloo threads at exit.
        dist.barrier()
        dist.destroy_process_group()
    return 0


def main(argv):
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        for name, value in dataclasses.asdict(TrainConfig()).items():
            print(f"  {name} = {value!r}")
        print("  and the ModelConfig fields: " + ", ".join(MODEL_KEYS))
        return 0
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        if argv[:1] == ["control"]:
            if len(argv) != 3:
                raise UserError(f"usage: python train.py control out/RUN {{{'|'.join(CONTROL_COMMANDS)}}}")
            send_control(argv[1], argv[2])
            return 0
        cfg, model_overrides = load_config(argv)
        return train(cfg, model_overrides)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:  # train() catches SIGTERM/SIGINT while it runs; a caller (a test, a notebook) gets its own back
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
