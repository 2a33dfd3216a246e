"""sched.py: warmup + cosine against its closed form, and the token arithmetic."""
import math

import pytest

import sched


def test_token_arithmetic():
    assert sched.tokens_per_step(seq_len=4096, batch_size=4, grad_accum=1, world_size=4) == 65536
    assert sched.steps_for_tokens(2270, 65536) == 2_270_000_000 // 65536 == 34637
    assert sched.steps_for_tokens(0.004, 128) == 31


@pytest.mark.parametrize("step, expected", [
    (0, 1e-3 * 1 / 10), (4, 1e-3 * 5 / 10), (9, 1e-3),           # warmup: step n uses (n+1)/W
    (10, 1e-3),                                                   # decay starts at the peak
    (55, 1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * 0.5))),    # half way: the mean of peak and floor
    (100, 1e-4), (150, 1e-4),                                     # the floor, and past the end
])
def test_warmup_cosine_closed_form(step, expected):
    assert sched.warmup_cosine(step, lr=1e-3, min_lr=1e-4, warmup_steps=10, total_steps=100) == pytest.approx(expected, rel=1e-12)


def test_constant_after_warmup():
    assert [sched.constant(s, 2.0, 0.1, 2, 10) for s in (0, 1, 2, 9, 50)] == [1.0, 2.0, 2.0, 2.0, 2.0]
    assert sched.warmup_cosine(0, 1.0, 0.1, 0, 10) == 1.0  # no warmup: the first step is at the peak
