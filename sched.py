"""Learning-rate schedules as pure functions of the step, and the token arithmetic behind them.

A schedule never touches the optimizer: train.py asks for the LR of step n and writes it into
the param groups. Being pure, a schedule resumes exactly and can be drawn without training
(`python plot.py lr configs/X.py`).

Budgets are given in millions of tokens and turned into steps here, so that changing the batch
size or the number of GPUs keeps a config's meaning:

    tokens_per_step = seq_len * batch_size * grad_accum * world_size
    lr              = base_lr * (tokens_per_step / base_batch_tokens) ** lr_alpha
    total_steps     = total_tokens // tokens_per_step          (and likewise warmup, annealing)
    cooldown_steps  = max(min_cooldown_tokens // tokens_per_step, cooldown_p * total_steps)

Schedules (W warmup steps; every one starts with lr * n / W):
    cosine    cosine from lr to min_lr, ending at total_steps
    constant  lr for ever
    infinite  Infinite-LR: cosine from lr to constant_lr over the cooldown, then constant_lr;
              annealing from decay_start to min_lr over decay_steps (scheduled, or on request)
    wsd       WSD-S: lr held flat, then from decay_start a decay to min_lr over decay_steps
The decay of infinite and wsd has a shape: rsqrt (1/lr moves linearly: the reference's), linear
or cosine. The formulas and the papers behind them: docs/reference.md, "Schedules" and "Batch size
and learning rate".
"""
import math
from dataclasses import dataclass

SCHEDULES = ("cosine", "constant", "infinite", "wsd")
DECAY_SHAPES = ("rsqrt", "linear", "cosine")


def tokens_per_step(seq_len, batch_size, grad_accum, world_size):
    """Tokens in one optimizer step: every process, every micro-batch."""
    return seq_len * batch_size * grad_accum * world_size


def steps_for_tokens(million_tokens, tokens_per_step):
    """Whole steps that fit in a token amount given in millions (as configs state budgets)."""
    return int(round(million_tokens * 1e6)) // tokens_per_step


def scaled_lr(base_lr, tokens_per_step, base_batch_tokens, lr_alpha):
    """The peak LR for this batch: base_lr was tuned at base_batch_tokens; None means no scaling."""
    if base_batch_tokens is None:
        return base_lr
    return base_lr * (tokens_per_step / base_batch_tokens) ** lr_alpha


def decay(t, start_lr, end_lr, shape):
    """From start_lr (t = 0) to end_lr (t = 1)."""
    if shape == "rsqrt":  # 1/lr moves linearly: fast at first, then a long gentle tail
        if start_lr == 0:  # a decay from warmup's first step: 1/lr starts infinite, so lr is 0 until the end
            return end_lr if t >= 1 else 0.0
        return 1.0 / (t / end_lr + (1.0 - t) / start_lr)
    if shape == "linear":
        return start_lr + (end_lr - start_lr) * t
    if shape == "cosine":
        return end_lr + (start_lr - end_lr) * 0.5 * (1.0 + math.cos(math.pi * t))
    raise ValueError(f"unknown decay shape {shape!r}; known: {', '.join(DECAY_SHAPES)}")


@dataclass(frozen=True)
class Schedule:
    """Everything lr_at needs, in steps and learning rates (see plan())."""
    kind: str                 # one of SCHEDULES
    lr: float                 # the peak, reached at the end of warmup
    min_lr: float             # the end of every decay
    constant_lr: float        # infinite: the plateau after the cooldown
    warmup_steps: int
    cooldown_steps: int       # infinite: length of the cosine from lr to constant_lr
    total_steps: int
    decay_start: int | None   # infinite/wsd: where the final decay begins; None: not (yet)
    decay_steps: int          # infinite/wsd: length of the final decay
    decay_shape: str = "rsqrt"

    @property
    def end_step(self):
        """Where the run ends: the end of its budget, or of an annealing requested part-way (it always completes)."""
        if self.kind in ("infinite", "wsd") and self.decay_start is not None:
            return self.decay_start + self.decay_steps
        return self.total_steps


def lr_before_decay(step, s):
    """The LR of step `step` as if the final decay (annealing) never started."""
    if step < s.warmup_steps:
        return s.lr * step / s.warmup_steps
    if s.kind == "cosine":
        progress = min((step - s.warmup_steps) / max(s.total_steps - s.warmup_steps, 1), 1.0)
        return decay(progress, s.lr, s.min_lr, "cosine")
    if s.kind == "infinite" and step < s.warmup_steps + s.cooldown_steps:
        return decay((step - s.warmup_steps) / s.cooldown_steps, s.lr, s.constant_lr, "cosine")
    if s.kind == "infinite":
        return s.constant_lr
    return s.lr  # constant, and wsd's stable phase


def lr_at(step, s):
    """The learning rate of step `step` (0-based: the update that turns step n into step n + 1)."""
    if s.decay_start is None or step < s.decay_start or s.kind not in ("infinite", "wsd"):
        return lr_before_decay(step, s)
    # The decay starts from wherever the schedule stood, so a decay requested early (during an
    # Infinite-LR cooldown, say) has no jump; after the cooldown that is constant_lr, as in the reference.
    t = min((step - s.decay_start) / max(s.decay_steps, 1), 1.0)
    return decay(t, lr_before_decay(s.decay_start, s), s.min_lr, s.decay_shape)


def plan(kind, tokens_per_step, total_tokens, base_lr, *, warmup_tokens=0.0, base_batch_tokens=None, lr_alpha=0.5,
         min_lr=None, constant_lr=None, cooldown_p=0.3, min_cooldown_tokens=0.0, decay_tokens=0.0,
         decay_start=None, decay_shape="rsqrt"):
    """A Schedule from a config's token amounts (millions of tokens).

    min_lr and constant_lr default to lr/10 and lr/3 of the scaled lr. decay_tokens > 0 schedules
    the final decay of infinite/wsd for the end of the budget (decay_start = total - decay steps);
    a decay_start given here (a step: the annealing was requested) wins over that.
    """
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; known: {', '.join(SCHEDULES)}")
    if decay_shape not in DECAY_SHAPES:
        raise ValueError(f"unknown decay shape {decay_shape!r}; known: {', '.join(DECAY_SHAPES)}")
    lr = scaled_lr(base_lr, tokens_per_step, base_batch_tokens, lr_alpha)
    total_steps = steps_for_tokens(total_tokens, tokens_per_step)
    decay_steps = steps_for_tokens(decay_tokens, tokens_per_step)
    if decay_start is None and decay_steps > 0:
        decay_start = max(total_steps - decay_steps, 0)
    return Schedule(
        kind=kind, lr=lr,
        min_lr=lr / 10 if min_lr is None else min_lr,
        constant_lr=lr / 3 if constant_lr is None else constant_lr,
        warmup_steps=steps_for_tokens(warmup_tokens, tokens_per_step),
        cooldown_steps=max(steps_for_tokens(min_cooldown_tokens, tokens_per_step), int(cooldown_p * total_steps), 1),
        total_steps=total_steps, decay_start=decay_start, decay_steps=decay_steps, decay_shape=decay_shape)
