"""How a training step is spread over the processes of torchrun: the `parallel` key of train.py.

- "ddp": every process holds the whole model and optimizer and trains on its own rows; DDP all-reduces the
  gradients. The default, and the fastest while the model, its gradients and AdamW's two moments fit a device.
- "fsdp": FSDP2 (`fully_shard` on each block and on the root): each process holds 1/N of every weight,
  gradient and AdamW moment; a block's weights are gathered just before it runs and freed after. With
  dtype=bf16-mixed on CUDA, the gathered weights are bf16 and gradients are reduced in fp32.
- "pp": the blocks cut into `pp_stages` consecutive stages (the embedding goes with the first, the final norm,
  lm_head and the loss with the last), run by torch.distributed.pipelining with a "1f1b" or "gpipe" schedule over
  grad_accum micro-batches. With more processes than stages, the pipelines' replicas of a stage sum their
  gradients after each step, as DDP would.

Every mode trains on the same rows in the same order (data.py deals a step's rows to data-parallel replicas, and
a pipeline's stages read the same rows), so a run's losses do not depend on the mode or the number of processes.
Checkpoints hold whole tensors keyed by parameter name, whatever the mode, so a run resumes under any other mode
and `load_model`, `sample.py` and `export.py` read it. Only rank 0 reads and writes the run directory.

`python train.py --nproc-per-node=N configs/X.py` starts the processes itself (launch: torchrun's own code, run
in-process), so that an error is the failed rank's one line and Ctrl-C or SIGTERM saves and exits 0; plain
`torchrun ... train.py` works as well.

Top to bottom: Layout and plan (who does what), check (the combinations refused, and why), shard (a rank's
part of the model) and compile_model (torch.compile, for every layout), the pipeline (StageModel, Pipeline, its step
and eval), gradient_norm, the whole state (gather for checkpoints, load into any layout), from_rank0, memory_line,
memory_share (what a process holds of a step), the launcher.
"""
import logging
import os
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

import data
import files
import model as model_lib
import optim
from config import UserError

PARALLEL = ("ddp", "fsdp", "pp")
PP_SCHEDULES = ("1f1b", "gpipe")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's
WHOLE_MATRIX_OPTIMIZERS = ("adafactor", "muon")  # their update needs each weight matrix whole


@dataclass
class Layout:
    """Who does what. Processes are laid out replica by replica: rank = dp_rank * n_stages + stage."""
    mode: str                # one of PARALLEL
    rank: int = 0
    world_size: int = 1
    dp_rank: int = 0         # which data-parallel replica: replicas train on different rows of each step
    dp_size: int = 1
    stage: int = 0           # pipeline stage (pp); 0 otherwise
    n_stages: int = 1
    dp_group: object = None  # the processes that hold this one's part of the model (pp: this stage's replicas)
    pp_group: object = None  # the stages of this process's pipeline (pp)

    @property
    def pipelined(self):
        return self.n_stages > 1

    @property
    def sharded(self):
        return self.mode == "fsdp" and self.world_size > 1

    @property
    def first_stage(self):
        return self.stage == 0

    @property
    def last_stage(self):
        return self.stage == self.n_stages - 1


def check(cfg, model_config, world_size):
    """The combinations this project does not train, each refused with one line that says why."""
    if cfg.pp_stages is not None and cfg.parallel != "pp":
        raise UserError(f"pp_stages is for parallel='pp', not parallel={cfg.parallel!r}")
    if cfg.parallel == "fsdp" and cfg.optimizer in WHOLE_MATRIX_OPTIMIZERS:
        why = "Newton-Schulz orthogonalises" if cfg.optimizer == "muon" else "row and column statistics need"
        raise UserError(f"optimizer={cfg.optimizer!r} does not train with parallel='fsdp': its {why} whole weight "
                        f"matrices, and FSDP holds a slice of each on every process; use parallel='ddp' or 'pp'")
    if cfg.parallel != "pp":
        return
    stages = cfg.pp_stages or world_size
    if stages > 1 and model_config.tie_embeddings:
        raise UserError("tie_embeddings=True does not train with parallel='pp': the embedding is on the first stage "
                        "and lm_head on the last, so they cannot share one matrix")
    if stages > model_config.n_layers:
        raise UserError(f"pp_stages={stages} is more stages than the model's {model_config.n_layers} blocks")
    if world_size % stages:
        raise UserError(f"pp_stages={stages} does not divide the {world_size} processes into whole pipelines")


def plan(cfg, rank, world_size, device):
    """This process's Layout (process groups made here: every rank calls this, in the same order)."""
    if world_size == 1:
        return Layout(cfg.parallel)
    if cfg.parallel != "pp":
        return Layout(cfg.parallel, rank, world_size, dp_rank=rank, dp_size=world_size, dp_group=dist.group.WORLD)
    stages = cfg.pp_stages or world_size
    mesh = dist.init_device_mesh(device.type, (world_size // stages, stages), mesh_dim_names=("dp", "pp"))
    return Layout("pp", rank, world_size, dp_rank=rank // stages, dp_size=world_size // stages, stage=rank % stages,
                  n_stages=stages, dp_group=mesh["dp"].get_group(), pp_group=mesh["pp"].get_group())


def shard(model, layout, cfg, dtype):
    """(this rank's part of a whole model, what the loop calls). The part: the model itself (ddp), sharded in place
    (fsdp) or its stage (pp), of a whole model built from the seed, the same on every rank. What the loop calls:
    that part compiled as compile_model does it, before sharding (as torchtitan does), or the part itself. dtype:
    the run's, "auto" resolved."""
    if layout.pipelined:
        model = StageModel(model, layout.stage, layout.n_stages)
    compiled = compile_model(model, layout, cfg.compile_mode) if cfg.compile else model
    if layout.sharded:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        # bf16-mixed: the weights gathered in bf16 (half the traffic; autocast would cast them anyway), the
        # gradients reduced in fp32. cast_forward_inputs=False: FSDP would otherwise cast every block's floating
        # inputs to bf16, the residual stream, RoPE's tables and ALiBi's distances, which DDP with autocast keeps
        # in fp32 (ALiBi's distances are exact in bf16 only up to 256)
        policy = (MixedPrecisionPolicy(torch.bfloat16, torch.float32, cast_forward_inputs=False)
                  if dtype == "bf16-mixed" else MixedPrecisionPolicy())
        for block in model.layers:
            fully_shard(block, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
    return model, compiled


def compile_model(model, layout, mode="default"):
    """torch.compile under one of COMPILE_MODES, for every layout (the one place the project compiles a model):
    under ddp the whole model, as one graph with its loss (returned wrapped; the model's own parameter names are
    unchanged); under fsdp and pp each block in place, so FSDP's gathers and a pipeline's stage edges fall between
    compiled graphs."""
    mode = None if mode == "default" else mode
    if layout.mode == "ddp":
        return torch.compile(model, mode=mode)
    for block in model.layers.values() if layout.pipelined else model.layers:
        block.compile(mode=mode)
    return model


# ----------------------------------------------------------------------------- the pipeline

class StageModel(model_lib.Transformer):
    """The part of a Transformer that one pipeline stage holds: consecutive blocks, with the embedding on the first
    stage and the final norm and lm_head on the last, under the whole model's parameter names ("layers.5.mlp...":
    the blocks sit in a ModuleDict keyed by their index), so its state dict is a slice of the whole model's. It
    takes the parts of a whole model (the same on every rank, from the seed); the rest is freed with that model.
    It borrows Transformer's block_inputs and loss; it trains and evaluates, it does not generate."""

    def __init__(self, model, stage, n_stages):
        nn.Module.__init__(self)  # not Transformer.__init__: the parts come from `model`, already initialised
        self.config, self.rope_cache = model.config, None
        n_layers = model.config.n_layers
        first, end = stage * n_layers // n_stages, (stage + 1) * n_layers // n_stages
        self.first, self.last = stage == 0, stage == n_stages - 1
        self.embed_tokens = model.embed_tokens if self.first else None
        self.layers = nn.ModuleDict({str(i): model.layers[i] for i in range(first, end)})
        self.norm, self.lm_head = (model.norm, model.lm_head) if self.last else (None, None)

    def forward(self, h, doc_ids):
        """h: token ids (B, T) on the first stage, the previous stage's output (B, T, dim) on the others; doc_ids
        (B, T) travels along the pipeline (all zeros: one document a row). Returns the next stage's inputs, or on
        the last stage the final norm's output."""
        # sdpa keeps its causal fast path for a batch without a boundary (which costs a read of the device); flex
        # takes the ids as they are: the same block mask, and no wait
        one_document = self.config.attn != "flex" and not bool(doc_ids.any())
        cos, sin, distance, mask, positions = self.block_inputs(h, None if one_document else doc_ids)
        if self.first:
            h = self.embed(h)
        for block in self.layers.values():
            h = block(h, cos, sin, mask, distance, positions)
        return self.norm(h) if self.last else (h, doc_ids)


@dataclass
class Pipeline:
    """A pipeline stage and its schedule; the loss function's scale and sums change every step."""
    stage_model: StageModel
    schedule: object
    loss_scale: float = 1.0
    loss_sums: list = None


def build_pipeline(stage_model, layout, cfg, device):
    """The schedule that runs this stage."""
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe
    stage = PipelineStage(stage_model, layout.stage, layout.n_stages, device, group=layout.pp_group)
    pipeline = Pipeline(stage_model, None, loss_sums=[])

    def loss_fn(hidden, targets):  # on the last stage, once a micro-batch: scaled as train.train_step does
        loss_sum = stage_model.loss(hidden, targets)
        pipeline.loss_sums.append(loss_sum.detach())
        return loss_sum * pipeline.loss_scale

    schedule_class = {"1f1b": Schedule1F1B, "gpipe": ScheduleGPipe}[cfg.pp_schedule]
    # scale_grads=False: the loss is already divided by the step's target count, as without a pipeline
    pipeline.schedule = schedule_class(stage, n_microbatches=cfg.grad_accum, loss_fn=loss_fn, scale_grads=False)
    return pipeline


def pipeline_step(pipeline, layout, micro_batches, scale):
    """Forward and backward of a step's micro-batches through the pipeline, then the gradients summed over the
    stage's replicas; returns the summed loss (the last stage's, 0 on the others). The schedule cuts the
    concatenated rows back into the same micro-batches."""
    x = torch.cat([batch.x for batch in micro_batches])
    y = torch.cat([batch.y for batch in micro_batches])
    doc_ids = torch.cat([data.document_ids_or_zeros(b.x, b.doc_ids) for b in micro_batches])
    pipeline.loss_scale, pipeline.loss_sums = scale, []
    if layout.first_stage:
        pipeline.schedule.step(x, doc_ids)
    elif layout.last_stage:
        pipeline.schedule.step(target=y)
    else:
        pipeline.schedule.step()
    if layout.dp_size > 1:  # what DDP does, once a step: one flat all-reduce (DDP inside a pipeline stage trips
        # over the schedule's several backward passes a step)
        grads = [p.grad for p in pipeline.stage_model.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, group=layout.dp_group)
        for g, summed in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(summed.view_as(g))
    # the micro-batches' losses are the last grad_accum calls (the first step may call loss_fn once more, on
    # the batch that sets the shapes of what the stages send each other)
    loss_sums = pipeline.loss_sums[-len(micro_batches):]
    return torch.stack(loss_sums).sum() if loss_sums else torch.zeros((), device=x.device)


@torch.no_grad()
def pipeline_eval_loss(pipeline, layout, x, y, doc_ids):
    """The summed loss of one eval batch (on the last stage; 0 on the others): each stage's output handed to the
    next, forward only, whatever the batch's shape (the schedule is built for the training micro-batch)."""
    model = pipeline.stage_model
    doc_ids = data.document_ids_or_zeros(x, doc_ids)
    h = x
    if not layout.first_stage:
        dtype = next(model.parameters()).dtype
        h = torch.empty(*x.shape, model.config.dim, dtype=dtype, device=x.device)
        dist.recv(h, src=layout.rank - 1)
    out = model(h, doc_ids)
    if not layout.last_stage:
        dist.send(out[0].contiguous(), dst=layout.rank + 1)
        return torch.zeros((), device=x.device)
    return model.loss(out, y)


# ----------------------------------------------------------------------------- gradients

def gradient_norm(params, max_norm, layout):
    """Clip the gradients to max_norm, as one vector over the whole model; returns the norm before clipping."""
    params = [p for p in params if p.grad is not None]
    if layout.sharded:  # torch's clip reduces the shards' norms itself
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        return norm.full_tensor() if optim.is_dtensor(norm) else norm
    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if layout.pipelined:  # each stage holds some of the gradients: the sum of their squares over the stages
        squared = norm.square()
        dist.all_reduce(squared, group=layout.pp_group)
        norm = squared.sqrt()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm


# ----------------------------------------------------------------------------- the whole state

def whole(t, keep):
    """A tensor's whole value on the CPU where `keep` (None elsewhere): a DTensor's shards gathered (every rank
    that holds one must call this), one tensor at a time, so no rank ever holds the whole model twice."""
    if optim.is_dtensor(t):
        t = t.full_tensor()
    return t.detach().cpu() if keep else None


def part_of(saved, own):
    """The part of a whole saved tensor that this process holds in place of `own` (its shard, for a DTensor)."""
    if optim.is_dtensor(own):
        from torch.distributed.tensor import distribute_tensor
        return distribute_tensor(saved.to(own.device, own.dtype), own.device_mesh, own.placements, src_data_rank=None)
    return saved


def keeps(layout):
    """Whether this process keeps what it gathers: rank 0, or under pp each stage's first replica (rank 0 then
    collects the stages' parts with gather_stages)."""
    return layout.dp_rank == 0 if layout.pipelined else layout.rank == 0


def gather_stages(part, layout):
    """Each stage's part, from its first replica, in stage order on rank 0; None elsewhere (a collective)."""
    if layout.dp_rank != 0:
        return None
    parts = [None] * layout.n_stages if layout.rank == 0 else None
    dist.gather_object(part, parts, group_dst=0, group=layout.pp_group)
    return parts


def gather_model_state(model, layout):
    """The whole model's state, whole tensors on the CPU keyed by parameter name, on rank 0 (None elsewhere).
    A collective: every rank calls it."""
    if layout.sharded:  # after an eval (no backward) FSDP leaves the root's weights gathered; shard them again
        model.reshard()
    state = {name: whole(t, keeps(layout)) for name, t in model.state_dict().items()}
    if not layout.pipelined:
        return state if layout.rank == 0 else None
    parts = gather_stages(state, layout)
    return {name: t for part in parts for name, t in part.items()} if parts else None


def gather_state(model, optimizer, layout):
    """(model state, optimizer state) of the whole model, with whole tensors keyed by parameter name, on rank 0;
    (None, None) elsewhere. A collective: every rank calls it."""
    keep = keeps(layout)
    model_state = gather_model_state(model, layout)
    names = {p: name for name, p in model.named_parameters()}
    saved = optimizer.state_dict()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    optimizer_state = {key: value for key, value in saved.items() if key not in ("state", "param_groups")}
    optimizer_state["state"] = {names[params[i]]: {k: whole(v, keep) if torch.is_tensor(v) else v for k, v in s.items()}
                                for i, s in saved["state"].items()}
    optimizer_state["param_groups"] = [group | {"params": [names[params[i]] for i in group["params"]]}
                                       for group in saved["param_groups"]]
    if not layout.pipelined:
        return (model_state, optimizer_state) if keep else (None, None)
    parts = gather_stages(optimizer_state, layout)
    if parts is None:
        return None, None
    optimizer_state = parts[0] | {"state": {name: s for part in parts for name, s in part["state"].items()}}
    optimizer_state["param_groups"] = [group | {"params": [name for part in parts
                                                           for name in part["param_groups"][g]["params"]]}
                                       for g, group in enumerate(optimizer_state["param_groups"])]
    return model_state, optimizer_state


def load_state(model, optimizer, model_state, optimizer_state, layout):
    """Put a checkpoint's whole tensors into this process's part of the model and of the optimizer."""
    own = model.state_dict()
    model.load_state_dict({name: part_of(model_state[name], t) for name, t in own.items()})
    params = [p for group in optimizer.param_groups for p in group["params"]]
    saved_groups = optimizer_state["param_groups"]
    if saved_groups and saved_groups[0]["params"] and isinstance(saved_groups[0]["params"][0], int):
        if layout.pipelined:  # a checkpoint from before names: its indices count the whole model's parameters
            raise UserError("this checkpoint was saved before parallel='pp' existed; resume it once under "
                            "parallel='ddp' to save it in the form a pipeline reads")
        optimizer.load_state_dict(optimizer_state)  # its indices are this optimizer's, the whole model's
        return
    names = {p: name for name, p in model.named_parameters()}
    index = {names[p]: i for i, p in enumerate(params)}
    by_param = dict(zip(index.values(), params))
    state = {index[name]: {k: part_of(v, by_param[index[name]]) if torch.is_tensor(v) and v.dim() else v
                           for k, v in s.items()}
             for name, s in optimizer_state["state"].items() if name in index}
    groups, start = [], 0
    for group, saved in zip(optimizer.param_groups, saved_groups):
        groups.append({k: v for k, v in saved.items() if k != "params"} | {"params": list(range(start, start + len(group["params"])))})
        start += len(group["params"])
    rest = {key: value for key, value in optimizer_state.items() if key not in ("state", "param_groups")}
    optimizer.load_state_dict(rest | {"state": state, "param_groups": groups})


def whole_model(model, layout, model_config, device):
    """The whole model on rank 0 (None elsewhere), for samples: the model itself unless it is sharded or cut
    into stages; then gathered into a fresh one (a collective: every rank calls it)."""
    if not (layout.sharded or layout.pipelined):
        return model if layout.rank == 0 else None
    state = gather_model_state(model, layout)
    if state is None:
        return None
    dtype = next(iter(state.values())).dtype if state else torch.float32
    whole_one = model_lib.Transformer(model_config).to(device, dtype)
    whole_one.load_state_dict(state)
    return whole_one


# ----------------------------------------------------------------------------- rank 0's reads, and memory

def from_rank0(layout, compute):
    """compute() on rank 0, its result on every rank (pickled through the process group): only rank 0 reads the
    run directory, so out/ need not be shared between nodes. A UserError or OSError there is raised everywhere."""
    if layout.world_size == 1:
        return compute()
    result = [None]
    if layout.rank == 0:
        try:
            result[0] = ("ok", compute())
        except UserError as e:
            result[0] = ("error", str(e))
        except OSError as e:
            result[0] = ("error", f"{f'{e.filename}: ' if e.filename else ''}{e.strerror or e}")
    dist.broadcast_object_list(result, src=0)
    kind, value = result[0]
    if kind == "error":
        raise UserError(value)
    return value


def check_rank0_holds_the_run(layout, run_dir):
    """Refuse to start over when rank 0's out/ holds no checkpoint of the run but another node's does: out/ is not
    shared between the nodes and rank 0 is now on another node (c10d rendezvous numbers nodes as they arrive)."""
    if layout.world_size == 1:
        return
    newest = files.step_checkpoints(run_dir)
    seen = [None] * layout.world_size
    dist.all_gather_object(seen, (socket.gethostname(), newest[-1].name if newest else ""))
    holders = sorted({host for host, name in seen[1:] if name})
    if not seen[0][1] and holders:
        raise UserError(f"rank 0 (on {seen[0][0]}) finds no checkpoint in {run_dir}, but {', '.join(holders)} holds "
                        f"one: only rank 0 reads and writes the run directory; start the node that holds it as "
                        f"--node_rank=0 (or share out/ between the nodes)")


def memory_line(model, optimizer, layout, device):
    """What this process holds of the weights and the optimizer state, the most any process holds and the sum
    over processes (a collective)."""
    tensors = list(model.parameters()) + [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    local = sum(optim.local(t).nbytes for t in tensors)
    if layout.world_size == 1:
        return f"weights and optimizer state: {local / 2**20:,.1f} MiB"
    most, total = torch.tensor([float(local)], device=device), torch.tensor([float(local)], device=device)
    dist.all_reduce(most, op=dist.ReduceOp.MAX)
    dist.all_reduce(total)
    return (f"weights and optimizer state: {most.item() / 2**20:,.1f} MiB on the fullest of {layout.world_size} "
            f"processes ({layout.mode}), {total.item() / 2**20:,.1f} MiB on all")


def memory_share(estimate, layout, grad_accum, pp_schedule):
    """What one process of this layout holds of a step that memory.memory_estimate measured for one process holding
    the whole model (the same parts, and their sum as the peak). ddp adds the buckets DDP all-reduces the gradients
    in (a second copy of them, kept throughout); fsdp holds 1/N of the weights, gradients and optimizer state (a
    block's gathered weights come and go); a pipeline stage holds its 1/n_stages of them, and the activations of its
    layers for the micro-batches it has in flight: up to one a stage under 1f1b, all of them under gpipe.
    Approximate: the stages differ by the embedding and lm_head."""
    held, in_flight, buckets = 1, 1, 0
    if layout.sharded:
        held = 1 / layout.world_size
    elif layout.pipelined:
        held = 1 / layout.n_stages
        in_flight = (min(grad_accum, layout.n_stages) if pp_schedule == "1f1b" else grad_accum) / layout.n_stages
    elif layout.world_size > 1:
        buckets = estimate["weights"]
    share = {"weights": int(estimate["weights"] * held), "gradients": int(estimate["gradients"] * held) + buckets,
             "optimizer_state": int(estimate["optimizer_state"] * held),
             "activations": int(estimate["activations"] * in_flight)}
    return share | {"peak": sum(share.values())}


# ----------------------------------------------------------------------------- the launcher

# torchrun's options that train.py takes before its config, to start its processes itself (the multi-node ones
# included); either spelling, --nproc-per-node or --nproc_per_node, as torchrun takes them
LAUNCH_OPTIONS = ("--nproc-per-node", "--nnodes", "--node-rank", "--master-addr", "--master-port", "--rdzv-endpoint",
                  "--rdzv-backend", "--rdzv-id", "--standalone")


def split_launch_options(argv):
    """(the launch options, the rest) of a command line: options first, each `--name=value` or `--name value`."""
    options = []
    while argv and argv[0].startswith("--"):
        name = argv[0].split("=", 1)[0].replace("_", "-")
        if name not in LAUNCH_OPTIONS:
            raise UserError(f"unknown option {argv[0]!r}: train.py starts its processes with "
                            f"{', '.join(LAUNCH_OPTIONS)}; for torchrun's other options, use torchrun")
        length = 1 if name == "--standalone" or "=" in argv[0] else 2
        options, argv = options + argv[:length], argv[length:]
    return options, argv


def launch(options, script, script_args):
    """`torchrun OPTIONS script SCRIPT_ARGS`, run by torch's own torchrun code (its options and defaults,
    rendezvous, elastic agent) in this process, without torchrun's ChildFailedError and SignalException tracebacks:
    each worker prints its own line, and the exit status is that of the worker that failed first (0 when all
    finish). SIGINT and SIGTERM go on to the workers as they come (a worker saves and exits 0 on the first and
    stops at once on the second) while the agent goes on watching them. Returns the exit status."""
    from torch.distributed import run as torchrun  # only a launch needs it
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    if not Path("/proc/self/stat").exists():
        raise UserError("train.py finds its workers, to pass signals on to them, in /proc (Linux); launch with "
                        "torchrun here")
    # LOGLEVEL is torch's switch for its launcher's logs; unless it is set, the workers' own lines stand in for the
    # launcher's reports of a failed worker ("failed (exitcode: 2) ...") and of the others it then ends
    if "LOGLEVEL" not in os.environ:
        logging.getLogger("torch.distributed.elastic.multiprocessing.api").setLevel(logging.CRITICAL)
    parser = torchrun.get_args_parser()

    def refuse(message):  # instead of argparse's usage block and exit
        raise UserError(f"{message} (see torchrun --help)")

    parser.error = refuse
    args = parser.parse_args([*options, str(script), *script_args])
    args.signals_to_handle = "SIGHUP,SIGQUIT"  # these end the workers (torch's way); SIGINT and SIGTERM: pass_on
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, pass_on)
    try:
        torchrun.run(args)
        return 0
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        if failure.exitcode > 0:  # one of ours: 2 (an error), 1 (aborted), 130 (interrupted); its line is printed
            return failure.exitcode
        raise UserError(f"rank {rank} (pid {failure.pid}) was killed by {failure.signal_name()}") from None
    except SignalException as e:
        raise UserError(f"{e.sigval.name}: the workers were ended without saving") from None
    except Exception as e:  # torch refused the launch: an option's value, a rendezvous that failed, a port in use
        reason = (str(e).strip() or type(e).__name__).splitlines()[0]
        raise UserError(f"launch failed: {reason}") from None


def pass_on(signum, frame):
    """SIGINT or SIGTERM, to every worker: torchrun starts each in a session of its own, out of reach of a
    terminal's Ctrl-C. Before there are workers, the launch stops at once."""
    workers = child_processes(os.getpid())
    if not workers:
        raise KeyboardInterrupt
    for pid in workers:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:  # it has just ended
            pass


def child_processes(pid):
    """The pids of the children of process pid, from /proc/<pid>/stat: `pid (name) state ppid ...`."""
    parent, children = str(pid), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # a process that ended while we looked
            continue
        if fields[1] == parent:
            children.append(int(stat.parent.name))
    return children
