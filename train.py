"""Pretrain a small language model.

    python train.py configs/quickstart.py                          # one process
    python train.py configs/quickstart.py lr=1e-3 max_steps=100    # key=value overrides come last
    python train.py --nproc-per-node=4 configs/X.py                # DDP (nccl on CUDA, gloo on CPU)
    python train.py --nproc-per-node=4 configs/X.py parallel=fsdp  # or pp (parallel.py)
    torchrun --standalone --nproc_per_node=4 train.py configs/X.py # the same through torchrun itself

Given torchrun's options first (--nproc-per-node, --nnodes, --node-rank, --master-addr, --master-port,
--rdzv-endpoint, --rdzv-backend, --rdzv-id, --standalone), train.py starts its processes itself with torchrun's
own code: an error is then the failed process's one line (exit 2), without torchrun's traceback, and Ctrl-C or
SIGTERM saves and exits 0, as in one process. A second Ctrl-C stops at once, unsaved.

Every key and its default is declared once, in TrainConfig below. A config file is plain Python
that assigns some of those names (it may start with `from configs.other import *`). The model
shape comes from a preset in model.PRESETS, and any ModelConfig field can be overridden the same
way (`n_layers=2`). The run lives in out/<run_name>/: config.json, log.jsonl, checkpoints and
samples.txt. Running the same command again resumes from the newest checkpoint. runs.py sets a run up
(and saves it); parallel.py spreads it over processes; this file holds the keys and the loop.
"""
import dataclasses
import math
import os
import signal
import sys
import time
import typing
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import config
import control
import data
import files
import model as model_lib
import optim
import parallel
import sched
import tokenizer as tokenizer_lib
import trackers
from config import UserError, at_least, between, one_of, positive
from runs import build_model_config, for_device, make_schedule, save, setup_distributed, start_run, write_samples


@dataclass
class TrainConfig:
    # run
    run_name: str = "run"               # the run directory is <out_dir>/<run_name>
    out_dir: str = "out"                # where run directories live
    seed: int = 1337                    # model init and data order
    init_from: str = ""                 # "": random init; a run directory, checkpoint file (.pt) or Hugging Face
                                        # Llama folder: start from its weights (they set the model's shape) with a
                                        # fresh optimizer and schedule, until this run has a checkpoint of its own
    # data
    data: str = "shakespeare"           # a directory under data_dir written by prepare.py; several: "a,b" (entries
                                        # mixed by `mixture`), "a+b" (one entry drawn as a balance_remaining group)
    data_dir: str = "data"              # where prepare.py wrote the data directories
    mixture: str = "balance_remaining"  # "fixed" | "balance_remaining" | "soft_sequential" (data.py says how each draws)
    mixture_weights: tuple[float, ...] = ()  # "fixed": one weight per entry of `data`
    packing: str = "blocks"             # "blocks" (the stream cut every seq_len tokens) | "best_fit" (documents kept
                                        # whole where they fit; the rest of a block is padding)
    eval_data: str = ""                 # eval_loss/eval_bpb pool this data's val split ("a+b": several; "": the
                                        # training sources); each source is also logged as eval_loss/<name>
    tokenizer: str | None = None        # None: whatever the data was prepared with; set it to insist (a
                                        # tokenizer.json: its name in meta.json, sha256:...)
    seq_len: int = 256                  # tokens per training sequence
    batch_size: int = 16                # sequences per process per micro-step
    grad_accum: int = 1                 # micro-steps per optimizer step
    total_tokens: float = 1.0           # training budget, in millions of tokens: sets the schedule
    max_steps: int | None = None        # optional cap on steps; the schedule still follows total_tokens
    # model: a preset; every ModelConfig field (dim, n_layers, ...) may also be set as a key
    model: str = "quickstart"           # a preset of model.PRESETS: quickstart, llama-small, llama-medium, ...
    attn: str = "auto"                  # model.ATTENTION: "sdpa" (fast) | "eager" (plain maths, the reference) |
                                        # "flex" (flex_attention, CUDA only); auto: flex on CUDA, else sdpa
    loss: str = "chunked"               # model.LOSSES: "chunked" (no (tokens, vocab) logits) | "plain" (the reference)
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
    beta2: float = 0.95                 # second-moment decay (AdamW; Adafactor has its own)
    eps: float = 1e-8                   # added to the denominator of AdamW's update
    grad_clip: float = 1.0              # max global grad norm; 0 = no clipping (the norm is still logged)
    divergence_factor: float = 3.0      # stop when a step's loss exceeds this times its running mean (0: never);
                                        # a non-finite loss always stops the run, before anything is saved
    # precision and speed
    device: str = "auto"                # "auto" (cuda if available) | "cpu" | "cuda"
    dtype: str = "auto"                 # "fp32" | "bf16-mixed" (fp32 weights, bf16 autocast) | "bf16" (pure bf16
                                        # weights, stochastic rounding: ours only); auto: bf16-mixed on CUDA cards with
                                        # native bf16 (Ampere and later), else fp32
    compile: bool = False               # torch.compile the model (~20 s up front, ~10% faster on CPU)
    compile_mode: str = "auto"          # torch.compile's mode: "default" | "reduce-overhead" | "max-autotune" (the
                                        # reference's; slow to compile) | "max-autotune-no-cudagraphs"; auto: that
                                        # last on CUDA, default elsewhere (runs.for_device says why)
    peak_flops: float | None = None     # one device's peak FLOP/s, for mfu; None: the card's bf16 peak from
                                        # runs.GPU_PEAK_FLOPS, or on the CPU its fp32 matmul rate, measured at start
    # several processes (torchrun; parallel.py says what each mode does and what it refuses)
    parallel: str = "ddp"               # "ddp" (each process holds everything) | "fsdp" (FSDP2: each holds 1/N) |
                                        # "pp" (the blocks cut into pipeline stages)
    pp_stages: int | None = None        # pp: stages per pipeline; None: one per process (more: DDP across pipelines)
    pp_schedule: str = "1f1b"           # pp: "1f1b" | "gpipe"; a step's grad_accum micro-batches fill the pipeline
    # eval, logging, checkpoints, samples
    eval_interval: int = 100            # steps between evals (and one before the first step and after the last)
    eval_iters: int = 10                # global batches of val.bin per eval (capped at the whole split)
    log_interval: int = 10              # steps between progress lines
    log_to: str = "tensorboard"         # where the logged numbers also go, comma-separated (trackers.py): "tensorboard"
                                        # (when the package is installed), "wandb" (Weights & Biases: pip install -r
                                        # requirements-wandb.txt); "" for log.jsonl alone
    wandb_project: str = "small-lm"     # the W&B project of a log_to=wandb run
    checkpoint_interval: int = 500      # steps between checkpoints (and one at the end)
    keep_checkpoints: int = 2           # newest checkpoints kept in the run directory (plus ckpt_best.pt: best eval loss)
    sample_interval: int = 0            # steps between samples into samples.txt; 0: only at the end
    sample_prompts: tuple[str, ...] = ("",)  # fixed texts the samples continue (each starts a fresh document)
    sample_tokens: int = 200            # new tokens per sample
    sample_temperature: float = 0.8     # 0: greedy
    sample_top_k: int | None = 200      # sample among the k likeliest tokens; None: all


# ----------------------------------------------------------------------------- config

def data_names(names):
    """What is wrong with a `data` value ("a", "a,b", "a,b+c"); "" when nothing is."""
    try:
        data.parse_entries(names)
    except ValueError as e:
        return f"is not valid: {e}"
    return ""


def weights_path(value):
    """What is wrong with an init_from value, as text: whether the path exists is checked when a run starts from it,
    not here, since a resume no longer needs it."""
    return "has spaces at an end (a pasted path?)" if value != value.strip() else ""


def tokenizer_name(value):
    """One of ours, or a tokenizer.json's name as meta.json gives it (sha256:...)."""
    if value in tokenizer_lib.TOKENIZERS or tokenizer_lib.is_file_name(value):
        return ""
    return f"is not one of {', '.join(tokenizer_lib.TOKENIZERS)}, nor a tokenizer.json's name (sha256:... in meta.json)"


# The valid values of every key, checked before anything is built (config.check_valid); None, where a key allows
# it, is always valid, and a bool needs no range. Lists of choices are declared beside the code that implements them.
DTYPES = ("auto", "fp32", "bf16-mixed", "bf16")

VALID = {
    # run
    "run_name": config.plain_name, "out_dir": config.directory_or_new, "seed": at_least(0), "init_from": weights_path,
    # data
    "data": data_names, "data_dir": config.directory_or_new, "mixture": one_of(*data.MIXTURES),
    "mixture_weights": config.all_at_least(0), "packing": one_of(*data.PACKINGS),
    "eval_data": lambda names: data_names(names) if names else "", "tokenizer": tokenizer_name,
    "seq_len": at_least(1), "batch_size": at_least(1), "grad_accum": at_least(1), "total_tokens": positive,
    "max_steps": at_least(1),
    # model
    "model": one_of(*model_lib.PRESETS), "attn": one_of("auto", *model_lib.ATTENTION), "loss": one_of(*model_lib.LOSSES),
    # learning-rate schedule
    "schedule": one_of(*sched.SCHEDULES), "lr": positive, "base_batch_tokens": at_least(1), "lr_alpha": at_least(0),
    "min_lr": at_least(0), "constant_lr": positive, "warmup_tokens": at_least(0), "cooldown_p": between(0, 1),
    "min_cooldown_tokens": at_least(0), "annealing_tokens": at_least(0), "decay_shape": one_of(*sched.DECAY_SHAPES),
    # optimizer
    "optimizer": one_of(*optim.OPTIMIZERS), "optimizer_state": one_of("fp32", "bf16"), "weight_decay": at_least(0),
    "beta1": between(0, 1, high_included=False), "beta2": between(0, 1, high_included=False), "eps": positive,
    "grad_clip": at_least(0), "divergence_factor": at_least(0),
    # precision and speed
    "device": one_of("auto", "cpu", "cuda"), "dtype": one_of(*DTYPES),
    "compile_mode": one_of("auto", *parallel.COMPILE_MODES), "peak_flops": positive, "parallel": one_of(*parallel.PARALLEL),
    "pp_stages": at_least(1), "pp_schedule": one_of(*parallel.PP_SCHEDULES),
    # eval, logging, checkpoints, samples
    "eval_interval": at_least(1), "eval_iters": at_least(1), "log_interval": at_least(1),
    "log_to": trackers.tracker_names, "wandb_project": trackers.project_name,
    "checkpoint_interval": at_least(1), "keep_checkpoints": at_least(1), "sample_interval": at_least(0),
    "sample_prompts": config.not_empty, "sample_tokens": at_least(0), "sample_temperature": at_least(0),
    "sample_top_k": at_least(1),
}

# ModelConfig fields double as keys; None means "as the preset says". The back-end fields are TrainConfig keys.
MODEL_KEYS = {k: v for k, v in typing.get_type_hints(model_lib.ModelConfig).items()
              if k not in model_lib.BACKEND_FIELDS}
TRAIN_KEYS = typing.get_type_hints(TrainConfig)


def load_config(argv):
    """Defaults, then each config file in order, then key=value pairs, every value checked (types, ranges, the
    model's shape) before anything is built. Returns (TrainConfig, model overrides)."""
    train_values, model_overrides = {}, {}
    for key, value in config.read_overrides(argv).items():
        if key in TRAIN_KEYS:
            train_values[key] = config.check_type(key, value, TRAIN_KEYS[key])
        elif key in MODEL_KEYS:
            model_overrides[key] = config.check_type(key, value, MODEL_KEYS[key])
        else:
            raise config.unknown_key(key, list(TRAIN_KEYS) + list(MODEL_KEYS))
    cfg = TrainConfig(**train_values)
    config.check_valid(dataclasses.asdict(cfg), VALID)
    if (cfg.dtype == "bf16" or cfg.optimizer_state == "bf16") and cfg.optimizer not in optim.SR_OPTIMIZERS:
        raise UserError(f"dtype='bf16' and optimizer_state='bf16' need an optimizer with stochastic rounding "
                        f"({', '.join(optim.SR_OPTIMIZERS)}), not {cfg.optimizer!r}: round-to-nearest loses small updates")
    if cfg.start_annealing and (cfg.schedule not in ("infinite", "wsd") or cfg.annealing_tokens <= 0):
        raise UserError("start_annealing needs schedule='infinite' or 'wsd' and annealing_tokens > 0 (the decay's length)")
    if cfg.schedule in ("infinite", "wsd") and cfg.annealing_tokens >= cfg.total_tokens:
        raise UserError(f"annealing_tokens={cfg.annealing_tokens} must be less than total_tokens={cfg.total_tokens}: "
                        f"the final decay is placed at the end of the budget")
    if cfg.min_lr == 0 and cfg.decay_shape == "rsqrt" and cfg.schedule in ("infinite", "wsd"):
        raise UserError("min_lr=0 needs decay_shape='linear' or 'cosine': the rsqrt decay divides by min_lr")
    # the model's shape, checked now (the data sets vocab_size later, unless a config insists on one)
    preset_vocab = model_lib.PRESETS[cfg.model].vocab_size
    build_model_config(for_device(cfg, torch.device("cpu")), model_overrides, model_overrides.get("vocab_size", preset_vocab))
    return cfg, model_overrides


def format_duration(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


# ----------------------------------------------------------------------------- run control (control.py)

def to_host(values):
    """A device tensor's values as Python floats: the training step's one host synchronisation (train_step). Every
    other read of the device in a step (.item(), float(t), `if t:`) would be another wait; tests count them."""
    return values.tolist()


def agree(run, step_loss, target_count, grad_norm):
    """(loss, grad norm, signalled, command) that every rank agrees on: the step's mean loss, the gradient norm (the
    same on every rank), a stop signal received by any rank and the command rank 0 found; one small all-reduce,
    then one read of the device (to_host)."""
    command = control.read(run.run_dir) if run.master else ""
    command_number = control.COMMANDS.index(command) + 1 if command else 0  # 0: no command
    flags = torch.tensor([float(control.stop_requested()), float(command_number)], device=run.device)
    status = torch.cat([step_loss.reshape(1).float(), flags])
    if run.world_size > 1:
        dist.all_reduce(status)
    loss_sum, stops, command_number, count, norm = to_host(torch.cat([status, target_count.reshape(1),
                                                                      grad_norm.reshape(1).float()]))
    return (loss_sum / count, norm, stops > 0,
            control.COMMANDS[int(command_number) - 1] if command_number else "")


def stop_agreed(run, group=None):
    """Whether a stop signal has reached any process of the group (None: all of them); every rank of the group
    calls this and gets the same answer."""
    flag = torch.tensor([float(control.stop_requested())], device=run.device)
    if run.world_size > 1:
        dist.all_reduce(flag, group=group)
    return flag.item() > 0


def stop(run, cause):
    """End the loop saved (every rank calls this): a checkpoint of this step unless there is one already."""
    if run.step > run.saved_step:
        save(run)
        run.event(f"stopped by {cause}: saved; the same command resumes")
    else:
        run.event(f"stopped by {cause}: " + (f"step {run.step} is saved already" if run.step else "nothing trained yet")
                  + "; the same command resumes")


def act_on(run, command):
    """A control command (not abort or stop, which end the loop) taken after a step."""
    if command == "save":
        save(run)
        run.event("saved on request")
    elif command == "anneal":
        cfg = run.cfg
        if run.annealing_start is not None or cfg.schedule not in ("infinite", "wsd") or cfg.annealing_tokens <= 0:
            run.event("anneal ignored: it needs schedule='infinite' or 'wsd', annealing_tokens > 0 and no annealing "
                      "yet")
        else:
            run.annealing_start, run.schedule = run.step, make_schedule(cfg, run.layout.dp_size, run.step)
            run.event(f"annealing started on request; the run now ends at step {run.steps_to_run()}")
            save(run)  # so that every later resume keeps this start


# ----------------------------------------------------------------------------- the step and eval

def document_ids_for(run, x, doc_ids):
    """What the model is given for doc_ids: a compiled model, and flex attention, always get document ids (zeros
    where a batch has no boundary: one document a row, the same causal mask), so that one graph and one kind of
    block mask serve every batch; a compiled graph with doc_ids=None would be a second compile. Eager sdpa gets
    None, which keeps its causal fast path."""
    always = run.cfg.compile or run.cfg.attn == "flex"
    return data.document_ids_or_zeros(x, doc_ids) if always else doc_ids


def train_step(run, lr):
    """One optimizer step: micro-batches, loss, backward, clip, update. Returns (mean loss, grad norm, signalled,
    command) as agree() gives them, after the step's one host synchronisation. A non-finite gradient norm stops
    the run before the update, so the weights stay as they were."""
    cfg, layout = run.cfg, run.layout
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    micro_batches = [run.training_data.micro_batch(run.step, m, layout.dp_rank, cfg.batch_size, cfg.grad_accum,
                                                   layout.dp_size, run.device) for m in range(cfg.grad_accum)]
    # Normalise by the number of target tokens in the whole global batch, so the gradient is
    # that of the mean loss over the step whatever the split into processes and micro-steps.
    target_count = torch.tensor(float(sum(batch.targets for batch in micro_batches)), device=run.device)
    if layout.dp_size > 1:
        dist.all_reduce(target_count, group=layout.dp_group)
    # DDP and FSDP average gradients over the replicas; scaling by dp_size turns that into the sum (pipelines'
    # replicas sum them: parallel.pipeline_step).
    scale = (1 if layout.pipelined else layout.dp_size) / target_count
    if layout.pipelined:
        with run.autocast:
            step_loss = parallel.pipeline_step(run.pipeline, layout, micro_batches, scale)
    else:
        step_loss = torch.zeros((), device=run.device)
        for m, (x, y, doc_ids, _) in enumerate(micro_batches):
            last_micro = m == cfg.grad_accum - 1
            if layout.sharded:  # reduce-scatter the gradients once, after the last micro-batch
                run.model.set_requires_gradient_sync(last_micro)
            with run.model.no_sync() if isinstance(run.model, DistributedDataParallel) and not last_micro else nullcontext():
                with run.autocast:
                    loss_sum = run.model(x, document_ids_for(run, x, doc_ids), y)
                (loss_sum * scale).backward()
            step_loss += loss_sum.detach()
    max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
    grad_norm = parallel.gradient_norm(run.raw_model.parameters(), max_norm, layout)
    loss, grad_norm, signalled, command = agree(run, step_loss, target_count, grad_norm)
    if not math.isfinite(grad_norm):  # the same on every rank: the gradients were all-reduced
        newest = files.step_checkpoints(run.run_dir)
        raise UserError(f"loss diverged at step {run.step + 1}: the gradient norm is {grad_norm} (loss {loss:.4g}); "
                        f"stopped before the update, nothing saved; the newest checkpoint is "
                        f"{newest[-1] if newest else 'none'}")
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return loss, grad_norm, signalled, command


@torch.no_grad()
def evaluate(run):
    """{name: (loss sum, target count)} over a fixed set of val blocks of every eval source, summed over ranks.
    A stop signal abandons it between batches, on every rank together (control.Stopped)."""
    cfg, training_data, layout = run.cfg, run.training_data, run.layout

    # fsdp and pp run collectives in every batch, so the ranks that run them together agree on stopping each time;
    # under ddp a rank's batches are its own, and the ranks agree once, in the all-reduce of the totals
    def stop_now():
        if layout.sharded or layout.pipelined:
            return stop_agreed(run, layout.pp_group if layout.pipelined else layout.dp_group)
        return control.stop_requested()

    run.model.eval()
    n_rows = cfg.eval_iters * cfg.batch_size * cfg.grad_accum * layout.dp_size
    # a row per eval source, and one more whose first column counts the ranks that were stopped
    totals = torch.zeros(len(training_data.eval_names) + 1, 2, dtype=torch.float64, device=run.device)
    try:
        for i, name in enumerate(training_data.eval_names):
            for x, y, doc_ids, targets in training_data.eval_batches(name, n_rows, layout.dp_rank, layout.dp_size,
                                                            cfg.batch_size, run.device):
                if stop_now():
                    raise control.Stopped
                with run.autocast:
                    if layout.pipelined:
                        totals[i, 0] += parallel.pipeline_eval_loss(run.pipeline, layout, x, y, doc_ids).double()
                    else:
                        totals[i, 0] += run.model(x, document_ids_for(run, x, doc_ids), y).double()
                if layout.last_stage:  # one count per replica
                    totals[i, 1] += targets
    except control.Stopped:
        totals[-1, 0] = 1
    finally:
        run.model.train()
    if run.world_size > 1:
        dist.all_reduce(totals)
    if totals[-1, 0] > 0:
        raise control.Stopped
    return dict(zip(training_data.eval_names, totals[:-1].tolist()))


def run_eval(run):
    """Evaluate, print and log; a new best eval loss is saved as ckpt_best.pt."""
    eval_loss, eval_bpb, per_source = run.training_data.eval_summary(evaluate(run))
    if not math.isfinite(eval_loss):
        raise UserError(f"eval loss is {eval_loss} at step {run.step}; stopped, the checkpoints are left as they were")
    eval_ppl = math.exp(min(eval_loss, 50))
    run.say(f"step {run.step:>6} | eval loss {eval_loss:.4f} | ppl {eval_ppl:.2f} | {eval_bpb:.4f} bits/byte"
            + "".join(f" | {key[10:]} {value:.4f}" for key, value in per_source.items()))
    run.log({"step": run.step, "tokens": run.step * run.tokens_per_step, "eval_loss": eval_loss, "eval_bpb": eval_bpb,
             "eval_ppl": eval_ppl} | per_source)
    if eval_loss < run.best_eval_loss and run.step > 0:
        run.best_eval_loss = eval_loss
        save(run, best=True)


# ----------------------------------------------------------------------------- training

def train(cfg, model_overrides):
    """Train (or resume) the run of cfg; returns the exit status. The log, the trackers and the process group are
    closed on every exit, an error's too."""
    control.catch_stop_signals()  # from the start: a signal while the run is set up is honoured at its first chance
    rank, world_size, device = setup_distributed(cfg)
    run, finished, status = None, False, 1  # status stays 1 when an error ends the run
    try:
        run = start_run(cfg, model_overrides, rank, world_size, device)
        status = training_loop(run)
        finished = True
        return status
    except RuntimeError as e:  # gloo's (or a DistError): a collective that another process left, most often by failing
        if world_size > 1 and (isinstance(e, dist.DistError) or "gloo" in str(e)):
            reason = (str(e).strip() or type(e).__name__).splitlines()[0].split(". ")[0]
            raise UserError(f"rank {rank}: a collective failed: {reason} (when another process stopped first, its "
                            f"own line says why)") from None
        raise
    finally:
        if run and run.log_file:
            try:
                run.log_file.close()
            except OSError:  # what a full disk would not take: the error that ended the run is already on its way
                pass
        if run:
            run.trackers.close(status)
        files.unlock_directory(Path(cfg.out_dir) / cfg.run_name)  # locked by runs.resume on rank 0; elsewhere a no-op
        if world_size > 1:
            if finished:
                # Every rank reaches the barrier before any tears gloo down: a rank that leaves while another is
                # still writing the final checkpoint or sample could abort that rank's gloo threads at exit.
                dist.barrier()
            dist.destroy_process_group()


def training_loop(run):
    cfg = run.cfg
    run_steps = run.steps_to_run()
    if run.step >= run_steps:
        run.say(f"already trained to step {run.step} of {run_steps}; nothing to do")
        try:
            write_samples(run)  # the final samples, if a kill came between the last checkpoint and them
        except control.Stopped:  # on rank 0, the one that samples
            run.say("stopped by a signal before the samples were written; the same command writes them")
        return 0
    if run.step == 0:
        try:
            run_eval(run)
        except control.Stopped:
            stop(run, "a signal")
            return 0
    start_time = last_time = time.time()
    steps_timed, last_step, loss_mean, losses_seen = 0, run.step, None, 0
    while run.step < run_steps:
        # ---- the step
        lr = sched.lr_at(run.step, run.schedule)
        loss, grad_norm, signalled, command = train_step(run, lr)
        run.step += 1
        if losses_seen == 0:  # the optimizer state exists now
            run.say(parallel.memory_line(run.raw_model, run.optimizer, run.layout, run.device))

        # ---- the divergence guard: nothing is saved after a bad step
        if not math.isfinite(loss) or (cfg.divergence_factor and losses_seen >= 20 and
                                       loss > cfg.divergence_factor * loss_mean):
            raise UserError(f"loss diverged at step {run.step}: {loss:.4g}" + (
                f" against a running mean of {loss_mean:.4g}" if math.isfinite(loss) else "")
                + "; stopped without saving, the checkpoints are left as they were")
        loss_mean = loss if loss_mean is None else 0.98 * loss_mean + 0.02 * loss  # over the last ~50 steps
        losses_seen += 1

        # ---- progress line and log
        if run.step % cfg.log_interval == 0 or run.step == run_steps:
            now = time.time()
            tok_per_s = (run.step - last_step) * run.tokens_per_step / (now - last_time)
            steps_timed += run.step - last_step
            eta = (now - start_time) / steps_timed * (run_steps - run.step)
            last_time, last_step = now, run.step
            # model FLOPs per second (model.flops_per_token) over what the devices could do (runs.peak_flops)
            mfu = run.flops_per_token * tok_per_s / (run.peak_flops * run.world_size) if run.peak_flops else None
            if mfu is not None and mfu > 1:  # the devices did more than the peak says they can: the peak is wrong
                run.event(f"mfu {mfu:.0%} is above 100%: {run.peak_flops:.3g} FLOP/s is too low a peak for this "
                          f"device; no mfu from here (peak_flops=... gives the right one)")
                run.peak_flops = mfu = None
            run.say(f"step {run.step:>6}/{run_steps} | loss {loss:.4f} | lr {lr:.2e} | grad norm {grad_norm:.3f}"
                    f" | {tok_per_s:,.0f} tok/s" + (f" | mfu {100 * mfu:.1f}%" if mfu is not None else "")
                    + f" | eta {format_duration(eta)}")
            drawn = run.training_data.drawn() if len(run.training_data.names) > 1 else {}  # a curriculum's progress
            run.log({"step": run.step, "tokens": run.step * run.tokens_per_step, "loss": loss, "lr": lr,
                     "grad_norm": grad_norm, "tok_per_s": tok_per_s, "time": now}
                    | ({"mfu": mfu} if mfu is not None else {}) | {f"drawn/{name}": n for name, n in drawn.items()})

        # ---- run control
        pause_start = time.time()
        if command == "abort":
            run.event("aborted: exiting without saving")
            return 1
        if signalled or command == "stop":
            stop(run, "a signal" if signalled else "the stop command")
            break
        act_on(run, command)
        run_steps = run.steps_to_run()

        # ---- once in a while: evaluate, save, sample. A stop signal abandons an eval or a sample (they change
        # nothing) and lets a checkpoint write finish; then the run saves what is new and stops.
        eval_due = run.step % cfg.eval_interval == 0 or run.step == run_steps
        save_due = run.step % cfg.checkpoint_interval == 0 or run.step == run_steps
        sample_due = (cfg.sample_interval and run.step % cfg.sample_interval == 0) or run.step == run_steps
        if eval_due or save_due or sample_due:
            try:
                if eval_due:
                    run_eval(run)
                if save_due:
                    save(run)
                if sample_due:
                    write_samples(run)
            except control.Stopped:  # on every rank from an eval, on rank 0 alone from a sample
                pass
            if stop_agreed(run):
                stop(run, "a signal")
                break
        paused = time.time() - pause_start  # eval, checkpoints and samples do not count against tokens/s
        start_time, last_time = start_time + paused, last_time + paused
    return 0


# ----------------------------------------------------------------------------- command line

def main(argv):
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        print("Keys (key = default  # what it is):")
        print(config.describe(TrainConfig))
        print(f"Model keys (key = value of the default preset, {TrainConfig.model!r}  # what it is; another preset "
              f"sets its own):")
        print(config.describe(model_lib.ModelConfig, skip=model_lib.BACKEND_FIELDS,
                              values=model_lib.PRESETS[TrainConfig.model]))
        return 0
    if argv[:1] == ["--list"]:
        for path, doc in config.config_docstrings(Path(__file__).resolve().parent / "configs"):
            print(f"configs/{path.name:<22} {doc}")
        return 0
    if argv[:1] == ["control"]:
        if len(argv) != 3:
            raise UserError(f"usage: python train.py control out/RUN {{{'|'.join(control.COMMANDS)}}}")
        control.send(argv[1], argv[2])
        return 0
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        launch_options, argv = parallel.split_launch_options(argv)
        cfg, model_overrides = load_config(argv)  # checked once here, before any process is started
        if launch_options:
            if "RANK" in os.environ:
                raise UserError("train.py is already running under torchrun: give the launch options to torchrun "
                                "or to train.py, not to both")
            return parallel.launch(launch_options, Path(__file__).resolve(), argv)
        return train(cfg, model_overrides)
    finally:  # train() catches SIGTERM/SIGINT while it runs; a caller (a test, a notebook) gets its own back
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    # Under torchrun, leave without the interpreter's teardown: everything is written, fsynced and closed by now, and
    # once torch.distributed.tensor is imported (FSDP imports it) a finished process is now and then aborted there
    # ("terminate called without an active exception", 1 run in ~10 on this machine).
    sys.exit(config.run_main(main, sys.argv[1:], exit_at_once="RANK" in os.environ))
