"""Optimizers for small-lm: AdamW, Adafactor and Muon, each able to train pure-bf16 weights.

Top to bottom:
- stochastic_round: fp32 -> bf16, rounding up or down at random so that on average nothing is lost.
- param_groups, muon_param_groups: which parameters get weight decay, and which go to Muon.
- StochasticRoundingOptimizer: what the three share: a random generator saved with the state, the
  write-back of bf16 tensors, and the AdamW rule (Muon uses it for the parameters it does not own).
- AdamW, Adafactor, Muon: torch.optim.Optimizer subclasses (docs/reference.md, "Optimizers").
- build_optimizer: the one call the trainer makes.

Precision. Weights may be fp32 or bf16. The maths always runs in fp32: a bf16 weight (and a bf16
optimizer state, with state_dtype=torch.bfloat16) is copied to fp32, updated, and written back
with stochastic rounding. With round-to-nearest instead, any update smaller than half a bf16 unit
in the last place (1/256 of the weight) is lost every time, so late-training updates vanish.

Flat updates. Tensor by tensor, a bf16 step dispatched ~7,300 ops (AdamW) or ~8,800 (Adafactor) for
llama-medium's 147 tensors, each a kernel launch on a GPU. Instead the tensors of a bucket (one dtype, at most
BUCKET_NUMEL weights) are gathered into fp32 rows by one op each (_chunk_cat), updated there, rounded with one
random draw and scattered back by one op (split_with_sizes_copy): ~23 ops a step for AdamW, ~51 for Adafactor
(fp32 AdamW's foreach step: 15); of them 19 and 37 launch a kernel, views aside (fp32 AdamW: 13). The buffers cost, during step(), about 18 bytes per weight of a bucket for
AdamW with bf16 weights and moments (p, m, v and g in fp32, then the random bits), 16 for Adafactor: at most
~600 MB a bucket. AdamW with fp32 weights and state keeps its foreach update in place; Muon's matrices go one at
a time (Newton-Schulz is matmuls per matrix anyway), its other groups through AdamW's flat update.

Determinism. The random bits come from a torch.Generator owned by the optimizer, seeded by `seed`
and saved in state_dict(). Every DDP rank has the same gradients and draws the same sequence, so
ranks round identically and their weights stay bit-identical; a resumed run draws what an
uninterrupted one would have. A bucket takes one draw for all its bf16 tensors, in this order: AdamW each
parameter's p, m, v in turn (groups in order, Muon's matrices first), as tensor by tensor before, so on the CPU,
whose generator yields the same numbers at once or in parts, the results are those of the per-tensor update bit
for bit (on CUDA the draws differ); Adafactor its weights (matrices sorted by column count, then vectors), then
their row_var, variance and col_var, a new order.
"""

import math
import sys
from types import SimpleNamespace

import torch

# -----------------------------------------------------------------------------------------------
# Stochastic rounding


def stochastic_round_(x, generator):
    """fp32 tensor -> bf16 tensor, rounding each element up or down at random: E[result] = x. Overwrites x.

    bf16 is the top 16 bits of fp32. With r uniform in [0, 2^16), adding 0xFFFF - r to the bits carries one unit
    into the kept half (rounds away from zero) exactly when r < low16, i.e. with probability low16 / 2^16, the
    fraction of the way to the next bf16 value: the result is unbiased (docs/reference.md, "Stochastic rounding").
    Clearing the low 16 bits then leaves a bf16 value. r is drawn as the int16 r - 2^15 (half the memory of an
    int32; on the CPU the generator yields the same numbers either way), so the addend is 0x7FFF - (r - 2^15).
    """
    bits = x.view(torch.int32)
    r = torch.randint(-(1 << 15), 1 << 15, x.shape, dtype=torch.int16, device=x.device, generator=generator)
    bits.sub_(r).add_(0x7FFF).bitwise_and_(~0xFFFF)  # int32 arithmetic on the bit pattern, sign bit untouched
    return x.bfloat16()  # exact: the low 16 bits are zero


def stochastic_round(x, generator):
    """stochastic_round_ on an fp32 copy of x."""
    return stochastic_round_(x.to(torch.float32, copy=True), generator)


def is_dtensor(t):
    """Whether t is a DTensor (FSDP2's shard of a weight, parallel.py). Only a sharded run has one, and it has
    imported torch.distributed.tensor to make it: importing that module here would add ~1 s to every start."""
    dtensor = sys.modules.get("torch.distributed.tensor")
    return dtensor is not None and isinstance(t, dtensor.DTensor)


def local(t):
    """The part of t this process holds: a DTensor's local shard (FSDP2, parallel.py), which shares the
    DTensor's storage, or t itself. The AdamW rule is elementwise, so each process updates its shard alone;
    its stochastic rounding draws the bits of its shard (the same generator on every rank: different
    weights, so the draws are not shared by any one weight)."""
    return t.to_local() if is_dtensor(t) else t


# -----------------------------------------------------------------------------------------------
# Parameter groups. model.parameters() lists a tied matrix (embedding = lm_head) once, so every
# parameter lands in exactly one group.


def param_groups(model, weight_decay):
    """Two groups for AdamW/Adafactor: decay on matrices (embeddings and lm_head included), none on 1-D.

    Why no decay on 1-D parameters: a norm's gain exists to set the scale of its output, and decay
    keeps pulling that scale towards 0 for no reason (the next layer's weights absorb the scale
    anyway); biases and scalars (ALiBi slopes) are few and set offsets, not capacity. nanoGPT and
    most Llama recipes do the same.
    """
    params = list(model.parameters())
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def muon_param_groups(model, lr, adamw_lr, weight_decay):
    """Groups for Muon: the 2-D weights inside the blocks go to Muon; the embedding, lm_head and every
    1-D parameter go to the AdamW rule (with decay on the matrices only, as in param_groups).

    Muon orthogonalises a hidden layer's update matrix; an embedding is a lookup table, not a linear
    map between hidden spaces, and vectors have no matrix to orthogonalise.
    """
    hidden = {id(p) for p in model.layers.parameters() if p.dim() == 2}
    params = list(model.parameters())
    return [{"params": [p for p in params if id(p) in hidden], "lr": lr, "weight_decay": weight_decay, "use_muon": True},
            {"params": [p for p in params if id(p) not in hidden and p.dim() >= 2], "lr": adamw_lr,
             "weight_decay": weight_decay, "use_muon": False},
            {"params": [p for p in params if p.dim() < 2], "lr": adamw_lr, "weight_decay": 0.0, "use_muon": False}]


# -----------------------------------------------------------------------------------------------
# Flat updates: weights and states held in bf16, updated a bucket at a time in a few ops

BUCKET_NUMEL = 1 << 25  # weights a flat update takes at most (a larger tensor is a bucket alone): bounds its buffers


def buckets(items, key, numel):
    """items, in order, split by key(item) (e.g. the dtype: one gather takes one dtype) into runs of at most
    BUCKET_NUMEL elements."""
    by_key = {}
    for item in items:
        by_key.setdefault(key(item), []).append(item)
    result = []
    for run in by_key.values():
        result.append([])
        size = 0
        for item in run:
            if result[-1] and size + numel(item) > BUCKET_NUMEL:
                result.append([])
                size = 0
            result[-1].append(item)
            size += numel(item)
    return result


def gather(tensors):
    """A new fp32 row (1, n) holding the tensors (of one dtype, any shapes, none 0-d or empty) one after another: one
    op however many they are (_chunk_cat writes in its out tensor's dtype). The flat update works on such rows, of
    _chunk_cat's shape, so that no op goes on a view to 1-D."""
    flat = torch.empty(1, sum(t.numel() for t in tensors), dtype=torch.float32, device=tensors[0].device)
    torch._chunk_cat(tensors, dim=0, num_chunks=1, out=flat)
    return flat


def grads_of(params):
    """The params' gradients (a 0-d one as 1-D, as gather needs)."""
    return [g if g.dim() else g.view(1) for g in (local(p.grad) for p in params)]


def adamw_moments_(m, v, g, m_weight, v_decay, v_weight):
    """m = lerp(m, g, m_weight); v = v_decay*v + v_weight*g*g (lerp(v, g^2, 1-b2) without a g^2 tensor). In place on
    lists, with foreach ops; each coefficient a number or a list (one per tensor)."""
    torch._foreach_lerp_(m, g, m_weight)
    torch._foreach_mul_(v, v_decay)
    torch._foreach_addcmul_(v, g, g, v_weight)


def adamw_step_(p, m, v, eps, step_sizes):
    """p += step_size * m / (sqrt(v) + eps), in place on lists (see StochasticRoundingOptimizer.adamw_update)."""
    denominators = torch._foreach_sqrt(v)
    torch._foreach_add_(denominators, eps)
    torch._foreach_addcdiv_(p, m, denominators, step_sizes)


# -----------------------------------------------------------------------------------------------
# What the three optimizers share


class StochasticRoundingOptimizer(torch.optim.Optimizer):
    """An Optimizer whose weights and state may be bf16, written back with stochastic rounding."""

    def __init__(self, params, defaults, state_dtype, seed):
        super().__init__(params, defaults)
        name = type(self).__name__
        self.state_dtype = state_dtype or torch.float32  # dtype of the optimizer's moment estimates
        if self.state_dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"{name}: state_dtype must be None, torch.float32 or torch.bfloat16, got {state_dtype}")
        params = [p for group in self.param_groups for p in group["params"]]
        for p in params:
            if p.dtype not in (torch.float32, torch.bfloat16):
                raise ValueError(f"{name}: parameters must be float32 or bfloat16, got {p.dtype}")
        devices = {p.device for p in params}
        if len(devices) > 1:
            raise ValueError(f"{name}: all parameters must be on one device, got {sorted(map(str, devices))}")
        self.generator = torch.Generator(devices.pop()).manual_seed(seed)  # the bits of stochastic rounding
        self.views = {}  # name -> (key, what the flat update keeps from step to step): see flat_views

    def state_dict(self):
        """torch's state dict plus "generator": the random generator's state (a uint8 tensor)."""
        return super().state_dict() | {"generator": self.generator.get_state()}

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        generator_state = state_dict.pop("generator")
        super().load_state_dict(state_dict)
        # torch casts floating-point state to its parameter's dtype (it assumes they match): fp32 moments
        # of bf16 weights would come back rounded to bf16. Put the saved tensors back in our state dtype.
        saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        params = [p for group in self.param_groups for p in group["params"]]
        for i, p in zip(saved_ids, params):
            for key, value in state_dict["state"].get(i, {}).items():
                if torch.is_tensor(value) and value.is_floating_point():
                    self.state[p][key] = value.to(p.device, self.state_dtype)
        self.generator.set_state(generator_state.cpu())

    def write_back(self, stored, working):
        """Store each fp32 working tensor into its stored tensor; bf16 ones get stochastic rounding (one tensor at a
        time: Muon's matrices).

        An fp32 stored tensor is its own working tensor (x.float() returns x), updated in place already.
        """
        for target, value in zip(stored, working):
            if target is not value:
                target.copy_(stochastic_round(value, self.generator))

    def flat_views(self, tensors, name):
        """1-D views of the weights and states of bucket `name`, kept from step to step: making them is one op per
        tensor, which the flat update exists to avoid. Made again where a storage changed (load_state_dict puts in
        new state tensors); comparing storages dispatches nothing."""
        storages = [(t.untyped_storage()._cdata, t.storage_offset(), t.shape) for t in tensors]
        return self.cached(name, storages, lambda: [t.view(1, -1) for t in tensors])

    def cached(self, name, key, make):
        """make()'s result, kept under name while key stays the same."""
        if name not in self.views or self.views[name][0] != key:
            self.views[name] = (key, make())
        return self.views[name][1]

    def working_copies(self, stored, name):
        """fp32 working rows for the stored weights and states (in order), and what put_back needs. An fp32 tensor
        is its own (updated in place); the bf16 ones are copied into one fp32 buffer by one op."""
        views = self.flat_views(stored, name)
        rounded = [t for t in views if t.dtype == torch.bfloat16]
        buffer = gather(rounded)
        pieces = iter(buffer.split_with_sizes([t.numel() for t in rounded], dim=1))
        return [next(pieces) if t.dtype == torch.bfloat16 else t for t in views], (buffer, rounded)

    def put_back(self, buffer, views):
        """Write a gathered fp32 buffer back into the (1-D views of the) tensors it was gathered from, all of one
        dtype: one op, after stochastic rounding with one draw for the whole buffer (in its order) if they are bf16."""
        if views[0].dtype == torch.bfloat16:
            buffer = stochastic_round_(buffer, self.generator)
        torch.split_with_sizes_copy(buffer, [t.numel() for t in views], dim=1, out=views)

    def adamw_state(self, p):
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p, dtype=self.state_dtype)  # m
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=self.state_dtype)  # v
        state["step"] += 1
        return state

    def adamw_update(self, groups):
        """The AdamW rule on the params that have gradients, of groups [(params, lr, betas, eps, weight_decay)].

        p -= lr*wd*p;  m = lerp(m, g, 1-b1);  v = lerp(v, g^2, 1-b2)
        p -= lr * sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + eps*sqrt(1-b2^t))
        The reference writes the last denominator sqrt(v) + eps (docs/reference.md, "Optimizers"). We
        scale eps by sqrt(1-b2^t), which adds it to the bias-corrected sqrt(v / (1-b2^t)) as
        torch.optim.AdamW does, so that eps means what torch's eps means. The two differ only in the
        first ~1/(1-b2) steps, for gradients within a few orders of magnitude of eps.

        fp32 weights with fp32 state update in place, a group at a time with foreach ops. Anything held in bf16
        goes to adamw_flat, every group's together.
        """
        flat = []
        for params, lr, (beta1, beta2), eps, weight_decay in groups:
            params = [p for p in params if p.grad is not None and local(p).numel()]  # FSDP: a shard may be empty
            all_fp32 = [p.dtype == self.state_dtype == torch.float32 for p in params]
            flat += [(p, lr, beta1, beta2, eps, weight_decay) for p, fp32 in zip(params, all_fp32) if not fp32]
            params = [p for p, fp32 in zip(params, all_fp32) if fp32]
            if not params:
                continue
            states = [self.adamw_state(p) for p in params]
            p32 = [local(p) for p in params]
            m32, v32 = [local(s["exp_avg"]) for s in states], [local(s["exp_avg_sq"]) for s in states]
            sqrt_corrections = [math.sqrt(1 - beta2 ** s["step"]) for s in states]
            if weight_decay:
                torch._foreach_mul_(p32, 1 - lr * weight_decay)
            adamw_moments_(m32, v32, [local(p.grad) for p in params], 1 - beta1, beta2, 1 - beta2)
            adamw_step_(p32, m32, v32, [eps * c for c in sqrt_corrections],
                        [-lr * c / (1 - beta1 ** s["step"]) for c, s in zip(sqrt_corrections, states)])
        for i, bucket in enumerate(buckets(flat, lambda item: item[0].dtype, lambda item: local(item[0]).numel())):
            self.adamw_flat(bucket, f"adamw {i}")

    def adamw_flat(self, bucket, name):
        """adamw_update's rule on a bucket of (p, lr, beta1, beta2, eps, weight_decay), some of p, m, v held in bf16:
        ~20 ops however many tensors, the same maths (foreach, with a coefficient per tensor) on fp32 copies."""
        params = [p for p, *_ in bucket]
        states = [self.adamw_state(p) for p in params]
        stored = [local(t) for p, s in zip(params, states) for t in (p, s["exp_avg"], s["exp_avg_sq"])]
        working, copies = self.working_copies(stored, name)
        p32, m32, v32 = working[0::3], working[1::3], working[2::3]
        decay = [1 - lr * weight_decay for _, lr, _, _, _, weight_decay in bucket]
        if any(d != 1 for d in decay):
            torch._foreach_mul_(p32, decay)
        betas = [(beta1, beta2) for _, _, beta1, beta2, _, _ in bucket]
        grads = gather(grads_of(params)).split_with_sizes([local(p).numel() for p in params], dim=1)
        adamw_moments_(m32, v32, grads, [1 - b1 for b1, _ in betas], [b2 for _, b2 in betas], [1 - b2 for _, b2 in betas])
        del grads  # 4 bytes a weight that adamw_step_ can use
        sqrt_corrections = [math.sqrt(1 - beta2 ** s["step"]) for (_, beta2), s in zip(betas, states)]
        adamw_step_(p32, m32, v32, [eps * c for (*_, eps, _), c in zip(bucket, sqrt_corrections)],
                    [-lr * c / (1 - beta1 ** s["step"]) for (_, lr, beta1, *_), c, s in zip(bucket, sqrt_corrections, states)])
        self.put_back(*copies)


# -----------------------------------------------------------------------------------------------
# AdamW


class AdamW(StochasticRoundingOptimizer):
    """AdamW with decoupled weight decay (torch.optim.AdamW's arguments), for fp32 or bf16 weights.

    state_dtype: None keeps m and v in fp32; torch.bfloat16 keeps them in bf16 (stochastically rounded).
    seed: seeds the stochastic rounding; the same on every rank.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, *, state_dtype=None, seed=0):
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"AdamW: need lr, eps, weight_decay >= 0 and betas in [0, 1), got lr={lr}, "
                             f"betas={betas}, eps={eps}, weight_decay={weight_decay}")
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults, state_dtype, seed)

    @torch.no_grad()
    def step(self):
        self.adamw_update([(g["params"], g["lr"], g["betas"], g["eps"], g["weight_decay"]) for g in self.param_groups])


# -----------------------------------------------------------------------------------------------
# Adafactor

GRAD_SQ_EPS = 1e-30  # added to g^2 so that no running mean is ever 0 (then rsqrt would be inf)


class Adafactor(StochasticRoundingOptimizer):
    """Adafactor without a first moment, with a factored second moment for matrices (docs/reference.md,
    "Optimizers").

    Unlike torch.optim.Adafactor, lr is an absolute step size (no relative step, so no eps pair):
    p = p*(1 - lr*wd) - lr*u, where u = g/sqrt(V) clipped to RMS at most d. V is the running mean of
    g^2 with weight 1 - beta2_t, beta2_t = min(1 - t^beta2_decay, beta2): the first step (t = 1)
    takes g^2 whole. A matrix of shape (rows, cols) keeps only the running means of g^2 per row
    (rows,) and per column (cols,): memory O(rows + cols). A tensor of more dimensions is a batch of
    matrices over its last two dimensions; vectors and scalars keep the full V.

    The update is flat (see the module's docstring), whatever the dtypes: the factored means are segment
    reductions over the flat rows (one per column count for the column means), so the maths matches the
    per-matrix formulas to fp32 rounding, not bit for bit.
    """

    def __init__(self, params, lr=1e-3, beta2_decay=-0.8, d=1.0, weight_decay=0.01, *, beta2=0.999,
                 state_dtype=None, seed=0):
        if lr < 0 or beta2_decay > 0 or d <= 0 or weight_decay < 0 or not 0 <= beta2 < 1:
            raise ValueError(f"Adafactor: need lr, weight_decay >= 0, beta2_decay <= 0, d > 0 and beta2 in [0, 1), "
                             f"got lr={lr}, beta2_decay={beta2_decay}, d={d}, weight_decay={weight_decay}, beta2={beta2}")
        defaults = {"lr": lr, "beta2_decay": beta2_decay, "d": d, "weight_decay": weight_decay, "beta2": beta2}
        super().__init__(params, defaults, state_dtype, seed)

    @torch.no_grad()
    def step(self):
        items = []  # (p, lr, d, beta2_t, weight_decay)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None or not p.numel():
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    if p.dim() >= 2:
                        state["row_var"] = p.new_zeros(p.shape[:-1], dtype=self.state_dtype)  # (..., rows)
                        state["col_var"] = p.new_zeros(p.shape[:-2] + p.shape[-1:], dtype=self.state_dtype)  # (..., cols)
                    else:
                        state["variance"] = torch.zeros_like(p, dtype=self.state_dtype)
                state["step"] += 1
                beta2_t = min(1 - state["step"] ** group["beta2_decay"], group["beta2"])
                items.append((p, group["lr"], group["d"], beta2_t, group["weight_decay"]))
        # a bucket shares lr, d and beta2_t (every parameter's, as a rule), so that they are plain numbers in its ops
        for i, bucket in enumerate(buckets(items, lambda item: (item[0].dtype, *item[1:4]), lambda item: item[0].numel())):
            self.update(bucket, f"adafactor {i}")

    def update(self, bucket, name):
        """The rule on a bucket of (p, lr, d, beta2_t, weight_decay), flat: its matrices (sorted by column count)
        then its vectors, one after another in fp32 rows G (gradients), P (weights) and S (state: every matrix's
        row_var, every vector's variance, every matrix's col_var). ~51 ops for llama-medium (two column counts)."""
        bucket = sorted(bucket, key=lambda item: item[0].shape[-1] if item[0].dim() >= 2 else math.inf)
        params = [p for p, *_ in bucket]
        _, lr, d, beta2_t, _ = bucket[0]
        matrices, vectors = [p for p in params if p.dim() >= 2], [p for p in params if p.dim() < 2]
        state_tensors = ([self.state[p]["row_var"] for p in matrices] + [self.state[p]["variance"] for p in vectors]
                         + [self.state[p]["col_var"] for p in matrices])
        views = self.flat_views([local(t) for t in params + state_tensors], name)
        layout = self.cached(f"{name} layout", [p.shape for p in params], lambda: flat_layout(params))
        n = len(params)
        if views[0].dtype == views[-1].dtype:  # weights and state of one dtype: one buffer, one draw
            parts = [(gather(views), views)]
            P, S = parts[0][0].split_with_sizes([layout.numel, layout.state_numel], dim=1)
        else:
            parts = [(gather(views[:n]), views[:n]), (gather(views[n:]), views[n:])]
            P, S = parts[0][0], parts[1][0]

        G = gather(grads_of(params))
        grad_sq = torch.addcmul(layout.eps, G, G)  # g^2 + GRAD_SQ_EPS
        # one 2-D block (rows of all its matrices, cols) per column count: a matrix's column means in one op
        blocks = [block.view(-1, cols) for block, cols in
                  zip(grad_sq.split_with_sizes(layout.block_numels, dim=1), layout.widths)]
        col_means = [torch.segment_reduce(block, "mean", lengths=rows, axis=0)
                     for block, rows in zip(blocks, layout.block_rows)]
        # each row's mean, and each vector element's g^2 (a "row" of one): the state's order
        row_means = torch.segment_reduce(grad_sq, "mean", lengths=layout.row_lengths, axis=1)
        S.lerp_(torch._chunk_cat([row_means, *col_means], dim=0, num_chunks=1), 1 - beta2_t)

        # the factors rsqrt(row_var / mean(row_var)), rsqrt(variance), rsqrt(col_var), as in the docstring
        factors = S.clone()
        row_factors, *col_factors = factors.split_with_sizes([layout.rows + layout.vector_numel, *layout.col_numels], dim=1)
        if matrices:
            row_var_means = torch.segment_reduce(S[:, :layout.rows], "mean", lengths=layout.matrix_rows, axis=1)
            row_factors[:, :layout.rows].div_(row_var_means.index_select(1, layout.matrix_of_row))
        factors.rsqrt_()
        # u = g * row factor * col factor, written over grad_sq, whose blocks then hold u's
        update = torch.mul(G, torch.repeat_interleave(row_factors, layout.row_repeats, dim=1, output_size=layout.numel),
                           out=grad_sq)
        del G
        for block, col_factor, matrix_of_row in zip(blocks, col_factors, layout.matrix_of_block_row):
            block.mul_(col_factor.view(-1, block.shape[1]).index_select(0, matrix_of_row))

        # u /= max(1, rms(u) / d) per tensor, times lr: scale = min(lr, lr * d / rms(u))
        scale = torch.segment_reduce(update.square(), "mean", lengths=layout.numels, axis=1).rsqrt_().mul_(lr * d)
        scale.clamp_(max=lr)
        decay = [1 - lr * weight_decay for *_, weight_decay in bucket]
        if any(x != 1 for x in decay):
            torch._foreach_mul_(P.split_with_sizes([p.numel() for p in params], dim=1), decay)
        P.addcmul_(update, torch.repeat_interleave(scale, layout.numel_repeats, dim=1, output_size=layout.numel), value=-1)
        for buffer, tensors in parts:
            self.put_back(buffer, tensors)


def flat_layout(params):
    """What Adafactor.update needs to know of its tensors' shapes (matrices sorted by column count, then vectors), as
    tensors on their device, made once: lengths of segments (a row (1, n) for segment_reduce, a vector for
    repeat_interleave) and, where it is small (a few bytes a row, not a weight), which matrix each row belongs to.
    A tensor of more than 2 dimensions counts as that many (rows, cols) matrices."""
    matrices, vectors = [p.shape for p in params if p.dim() >= 2], [p.shape for p in params if p.dim() < 2]
    device = params[0].device
    count = [math.prod(s[:-2]) for s in matrices]  # (rows, cols) matrices in each

    def repeat(values, repeats):  # values[i] repeated repeats[i] times
        return torch.tensor(values, dtype=torch.int64, device=device).repeat_interleave(
            torch.tensor(repeats, dtype=torch.int64, device=device), output_size=sum(repeats))

    def matrix_of_row(shapes):
        return repeat(list(range(sum(math.prod(s[:-2]) for s in shapes))), [s[-2] for s in shapes for _ in range(math.prod(s[:-2]))])

    # each row's length: cols for a matrix's rows, 1 for a vector's elements
    row_repeats = repeat([s[-1] for s in matrices] + [1] * len(vectors),
                         [c * s[-2] for c, s in zip(count, matrices)] + [math.prod(s) for s in vectors])
    numel_repeats = torch.tensor([p.numel() for p in params], dtype=torch.int64, device=device)
    widths = list(dict.fromkeys(s[-1] for s in matrices))
    layout = SimpleNamespace(
        numel=sum(p.numel() for p in params), rows=sum(c * s[-2] for c, s in zip(count, matrices)),
        vector_numel=sum(math.prod(s) for s in vectors), widths=widths, eps=torch.tensor(GRAD_SQ_EPS, device=device),
        row_repeats=row_repeats, row_lengths=row_repeats.view(1, -1),
        numel_repeats=numel_repeats, numels=numel_repeats.view(1, -1),
        matrix_rows=repeat([s[-2] for s in matrices], count).view(1, -1), matrix_of_row=matrix_of_row(matrices),
        block_numels=[sum(math.prod(s) for s in matrices if s[-1] == w) for w in widths] + [sum(math.prod(s) for s in vectors)],
        block_rows=[repeat([s[-2] for s in matrices if s[-1] == w], [c for c, s in zip(count, matrices) if s[-1] == w])
                    for w in widths],
        matrix_of_block_row=[matrix_of_row([s for s in matrices if s[-1] == w]) for w in widths],
        col_numels=[sum(c * w for c, s in zip(count, matrices) if s[-1] == w) for w in widths])
    layout.state_numel = layout.rows + layout.vector_numel + sum(layout.col_numels)
    return layout


# -----------------------------------------------------------------------------------------------
# Muon


def newton_schulz(G, coefficients, steps, eps, dtype=torch.bfloat16):
    """Orthogonalise a matrix approximately: U S V^T -> U S' V^T with S' roughly in [0.5, 1.5].

    The quintic iteration X <- a X + (b A + c A^2) X with A = X X^T, in `dtype`, on X / ||X|| (the
    Frobenius norm bounds the spectral norm, so every singular value starts in [0, 1]) -- the same
    operations as torch.optim.Muon, so in bf16 the results agree. A tall matrix is transposed first
    so that A is the smaller Gram matrix.
    """
    a, b, c = coefficients
    tall = G.size(0) > G.size(1)
    X = G.to(dtype)
    X = X.T if tall else X
    X = X / X.norm().clamp(min=eps)
    for _ in range(steps):
        A = X @ X.T
        B = torch.addmm(A, A, A, beta=b, alpha=c)  # b*A + c*A@A
        X = torch.addmm(X, B, X, beta=a)  # a*X + B@X
    return X.T if tall else X


def muon_lr(lr, adjust_lr_fn, shape):
    """The learning rate of one matrix of shape (rows, cols)."""
    rows, cols = shape
    if adjust_lr_fn == "match_rms_adamw":
        # Moonshot's scaling: the orthogonalised update then has the RMS of a typical AdamW update,
        # so Muon can reuse AdamW's learning rate and weight decay.
        return lr * 0.2 * math.sqrt(max(rows, cols))
    return lr * math.sqrt(max(1, rows / cols))  # None / "original": Keller Jordan's scaling


class Muon(StochasticRoundingOptimizer):
    """Muon for 2-D hidden matrices (torch.optim.Muon's arguments and maths); AdamW for the rest.

    Muon: B = lerp(B, g, 1-momentum); the update is lerp(g, B, momentum) with nesterov, else B;
    orthogonalised by newton_schulz; p -= lr*wd*p; p -= muon_lr(lr, adjust_lr_fn, shape) * update.
    A param group with "use_muon": False takes the AdamW rule with adamw_betas, adamw_eps and the
    group's lr and weight_decay: embeddings, lm_head, norms, biases, scalars (see muon_param_groups).
    """

    def __init__(self, params, lr=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True,
                 ns_coefficients=(3.4445, -4.775, 2.0315), eps=1e-7, ns_steps=5, adjust_lr_fn=None, *,
                 adamw_betas=(0.9, 0.95), adamw_eps=1e-8, state_dtype=None, seed=0, ns_dtype=None):
        if adjust_lr_fn not in (None, "original", "match_rms_adamw"):
            raise ValueError(f"Muon: adjust_lr_fn must be None, 'original' or 'match_rms_adamw', got {adjust_lr_fn!r}")
        if lr < 0 or weight_decay < 0 or momentum < 0:
            raise ValueError(f"Muon: need lr, weight_decay, momentum >= 0, got {lr}, {weight_decay}, {momentum}")
        defaults = {"lr": lr, "weight_decay": weight_decay, "momentum": momentum, "nesterov": nesterov,
                    "ns_coefficients": ns_coefficients, "eps": eps, "ns_steps": ns_steps, "adjust_lr_fn": adjust_lr_fn,
                    "use_muon": True, "adamw_betas": adamw_betas, "adamw_eps": adamw_eps}
        super().__init__(params, defaults, state_dtype, seed)
        # Newton-Schulz in bf16 as torch does, where bf16 matmuls are fast (GPUs); in fp32 elsewhere:
        # a CPU has no bf16 matmul path and runs it ~40x slower (llama-small: 130 s a step instead of ~3 s).
        self.ns_dtype = ns_dtype or (torch.bfloat16 if self.generator.device.type == "cuda" else torch.float32)
        for group in self.param_groups:
            for p in group["params"]:
                if group["use_muon"] and p.dim() != 2:
                    raise ValueError(f"Muon: a use_muon group takes only 2-D parameters, got shape {tuple(p.shape)}; "
                                     "put the others in a group with 'use_muon': False")

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            if not group["use_muon"]:
                continue
            lr, weight_decay, momentum = group["lr"], group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["momentum_buffer"] = torch.zeros_like(p, dtype=self.state_dtype)
                stored = [p, state["momentum_buffer"]]
                working = [t.float() for t in stored]
                p32, buffer = working
                g = p.grad.float()
                buffer.lerp_(g, 1 - momentum)
                update = g.lerp(buffer, momentum) if group["nesterov"] else buffer
                update = newton_schulz(update, group["ns_coefficients"], group["ns_steps"], group["eps"], self.ns_dtype)
                p32.mul_(1 - lr * weight_decay)
                p32.add_(update, alpha=-muon_lr(lr, group["adjust_lr_fn"], p.shape))
                self.write_back(stored, working)
        # the other groups, after the matrices (muon_param_groups lists them after), all in one AdamW update
        self.adamw_update([(g["params"], g["lr"], g["adamw_betas"], g["adamw_eps"], g["weight_decay"])
                           for g in self.param_groups if not g["use_muon"]])


# -----------------------------------------------------------------------------------------------
# The trainer's one call

OPTIMIZERS = ("adamw", "adafactor", "muon", "torch_adamw")
SR_OPTIMIZERS = ("adamw", "adafactor", "muon")  # those that can train bf16 weights (stochastic rounding)


def build_optimizer(name, model, lr, weight_decay, betas, eps, seed, state_dtype=None):
    """The optimizer `name` (one of OPTIMIZERS) over model's parameters, grouped as above.

    betas and eps are AdamW's: Muon uses them for its AdamW groups; Adafactor keeps its own defaults
    (beta2 0.999, no eps). Muon takes the same lr as AdamW, scaled per matrix by "match_rms_adamw".
    state_dtype (torch.bfloat16 for pure-bf16 training) applies to ours; torch_adamw has none.
    """
    if name == "adamw":
        return AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, state_dtype=state_dtype, seed=seed)
    if name == "adafactor":
        return Adafactor(param_groups(model, weight_decay), lr=lr, state_dtype=state_dtype, seed=seed)
    if name == "muon":
        return Muon(muon_param_groups(model, lr, lr, weight_decay), adjust_lr_fn="match_rms_adamw",
                    adamw_betas=betas, adamw_eps=eps, state_dtype=state_dtype, seed=seed)
    if name == "torch_adamw":
        if state_dtype not in (None, torch.float32):
            raise ValueError("torch_adamw keeps its state in the parameters' dtype; state_dtype is for our optimizers")
        on_cuda = next(model.parameters()).device.type == "cuda"
        return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps,
                                 fused=on_cuda, foreach=not on_cuda)
    raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")
