"""Learning-rate schedules as pure functions of the step, and the token arithmetic behind them.

A schedule never touches the optimizer: train.py asks for the LR of step n and writes it into
the param groups. Being pure, a schedule resumes exactly and can be plotted without training.
"""
import math


def tokens_per_step(seq_len, batch_size, grad_accum, world_size):
    """Tokens in one optimizer step: every process, every micro-batch."""
    return seq_len * batch_size * grad_accum * world_size


def steps_for_tokens(million_tokens, tokens_per_step):
    """Whole steps that fit in a token amount given in millions (as configs state budgets)."""
    return int(million_tokens * 1e6) // tokens_per_step


def warmup_cosine(step, lr, min_lr, warmup_steps, total_steps):
    """Linear warmup from 0 to lr over warmup_steps, then cosine from lr down to min_lr at total_steps.

    Step n uses lr * (n + 1) / warmup_steps during warmup, so the first step already learns.
    Past total_steps the LR stays at min_lr.
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def constant(step, lr, min_lr, warmup_steps, total_steps):
    """Linear warmup, then lr for ever (useful for short ablations)."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    return lr


SCHEDULES = {"cosine": warmup_cosine, "constant": constant}
