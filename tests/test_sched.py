"""sched.py: every schedule against its closed form (docs/reference.md, "Schedules"), with the arithmetic
written out here."""
import math

import pytest

import sched

# a schedule small enough to reason about: warmup 10, cooldown 40, total 200, decay 50
BASE, CONST, MIN = 3e-4, 1e-4, 3e-5


def infinite(decay_start=None, shape="rsqrt"):
    return sched.Schedule(kind="infinite", lr=BASE, min_lr=MIN, constant_lr=CONST, warmup_steps=10, cooldown_steps=40,
                          total_steps=200, decay_start=decay_start, decay_steps=50, decay_shape=shape)


def test_token_arithmetic():
    assert sched.tokens_per_step(seq_len=4096, batch_size=4, grad_accum=1, world_size=4) == 65536
    assert sched.steps_for_tokens(2270, 65536) == 2_270_000_000 // 65536 == 34637
    assert sched.steps_for_tokens(0.004, 128) == 31
    assert sched.scaled_lr(1.5e-4, 65536, 16384, 0.5) == pytest.approx(3e-4)
    assert sched.scaled_lr(1.5e-4, 65536, None, 0.5) == 1.5e-4
    assert sched.scaled_lr(1e-3, 4 * 8192, 8192, 1.0) == pytest.approx(4e-3)


def test_reference_figures_of_the_default_run():
    """default.py on 4 processes x 4 x 4096 tokens: the reference reports ~2.9e-4 peak, ~9.7e-5 constant,
    36,460 steps; it multiplied tokens_per_step by a packing density of 0.95. We pack without padding
    (density 1), which gives 3.0e-4, 1.0e-4 and 34,637 steps; with 0.95 the reference's figures come back."""
    ours = sched.plan("infinite", 4096 * 4 * 4, 2270, 1.5e-4, base_batch_tokens=16384, min_cooldown_tokens=6800)
    assert (ours.lr, ours.constant_lr, ours.total_steps) == (pytest.approx(3.0e-4), pytest.approx(1.0e-4), 34637)
    with_density = sched.plan("infinite", int(4096 * 4 * 4 * 0.95), 2270, 1.5e-4, base_batch_tokens=16384,
                              min_cooldown_tokens=6800)
    assert with_density.lr == pytest.approx(2.924e-4, rel=1e-3)  # 1.5e-4 * sqrt(62259 / 16384)
    assert with_density.constant_lr == pytest.approx(9.747e-5, rel=1e-3)
    assert with_density.total_steps == 36460
    # the 6.8B-token cooldown floor is longer than the 1x run: it never reaches constant_lr
    assert with_density.cooldown_steps == 6_800_000_000 // 62259 > with_density.total_steps


@pytest.mark.parametrize("step, expected", [
    (0, 0.0), (5, BASE * 5 / 10),                                    # warmup: base * n / W
    (10, BASE),                                                      # the peak, start of the cooldown
    (30, CONST + (BASE - CONST) / 2 * (1 + math.cos(math.pi * 20 / 40))),  # half way: the mean
    (50, CONST), (120, CONST), (199, CONST), (10_000, CONST),        # the plateau, for ever
])
def test_infinite_lr_without_annealing(step, expected):
    assert sched.lr_at(step, infinite()) == pytest.approx(expected, rel=1e-12, abs=1e-18)


@pytest.mark.parametrize("step, t", [(100, 0.0), (110, 0.2), (125, 0.5), (150, 1.0), (400, 1.0)])
def test_infinite_lr_rsqrt_annealing(step, t):
    expected = 1 / (t / MIN + (1 - t) / CONST)   # linear in 1/lr from constant_lr to min_lr
    assert sched.lr_at(step, infinite(decay_start=100)) == pytest.approx(expected, rel=1e-12)
    assert sched.lr_at(99, infinite(decay_start=100)) == CONST


def test_annealing_requested_during_the_cooldown_starts_where_the_lr_stood():
    s = infinite(decay_start=30)
    at_30 = CONST + (BASE - CONST) / 2 * (1 + math.cos(math.pi * 20 / 40))
    assert sched.lr_at(30, s) == pytest.approx(at_30)
    assert sched.lr_at(55, s) == pytest.approx(1 / (0.5 / MIN + 0.5 / at_30))
    assert sched.lr_at(80, s) == pytest.approx(MIN) and s.end_step == 80


@pytest.mark.parametrize("shape, expected_mid", [
    ("rsqrt", 1 / (0.5 / MIN + 0.5 / BASE)),
    ("linear", (BASE + MIN) / 2),
    ("cosine", (BASE + MIN) / 2),
])
def test_wsd_holds_the_peak_then_decays(shape, expected_mid):
    s = sched.Schedule(kind="wsd", lr=BASE, min_lr=MIN, constant_lr=CONST, warmup_steps=10, cooldown_steps=40,
                       total_steps=200, decay_start=150, decay_steps=50, decay_shape=shape)
    assert sched.lr_at(5, s) == pytest.approx(BASE / 2)
    assert sched.lr_at(10, s) == sched.lr_at(100, s) == sched.lr_at(150, s) == BASE  # stable at the peak
    assert sched.lr_at(175, s) == pytest.approx(expected_mid, rel=1e-12)
    assert sched.lr_at(200, s) == pytest.approx(MIN) and sched.lr_at(300, s) == pytest.approx(MIN)
    if shape == "cosine":  # a cosine differs from linear inside the halves
        assert sched.lr_at(160, s) == pytest.approx(MIN + (BASE - MIN) * 0.5 * (1 + math.cos(math.pi * 0.2)))


def test_wsd_decay_scheduled_at_the_end_of_the_budget():
    s = sched.plan("wsd", 1000, total_tokens=0.2, base_lr=1e-3, warmup_tokens=0.01, decay_tokens=0.05)
    assert (s.total_steps, s.warmup_steps, s.decay_steps, s.decay_start, s.end_step) == (200, 10, 50, 150, 200)
    assert sched.lr_at(149, s) == 1e-3 and sched.lr_at(200, s) == pytest.approx(1e-4)


@pytest.mark.parametrize("step, expected", [
    (0, 0.0), (9, 1e-3 * 9 / 10),
    (10, 1e-3),                                                   # decay starts at the peak
    (55, 1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * 0.5))),    # half way: the mean of peak and floor
    (100, 1e-4), (150, 1e-4),                                     # the floor, and past the end
])
def test_warmup_cosine_closed_form(step, expected):
    s = sched.plan("cosine", 1000, total_tokens=0.1, base_lr=1e-3, warmup_tokens=0.01)
    assert sched.lr_at(step, s) == pytest.approx(expected, rel=1e-12, abs=1e-18)


def test_constant_and_bad_names():
    s = sched.plan("constant", 1000, total_tokens=1, base_lr=2.0, warmup_tokens=0.002)
    assert [sched.lr_at(n, s) for n in (0, 1, 2, 9, 5000)] == [0.0, 1.0, 2.0, 2.0, 2.0]
    with pytest.raises(ValueError, match="unknown schedule 'cosin'"):
        sched.plan("cosin", 1000, 1, 1e-3)
    with pytest.raises(ValueError, match="unknown decay shape"):
        sched.plan("wsd", 1000, 1, 1e-3, decay_shape="exp")


def test_an_rsqrt_decay_from_a_zero_lr_stays_at_zero_until_its_end():
    """A decay placed on warmup's first step starts from lr 0, where 1/lr is infinite: no division by zero."""
    assert sched.decay(0.0, 0.0, 1e-4, "rsqrt") == 0.0
    assert sched.decay(0.5, 0.0, 1e-4, "rsqrt") == 0.0
    assert sched.decay(1.0, 0.0, 1e-4, "rsqrt") == 1e-4
