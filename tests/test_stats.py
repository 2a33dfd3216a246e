"""stats.py: Student's t against closed forms and tables, Welch's interval and verdict against hand-computed values,
and seed groups."""
import math

import pytest

import stats


@pytest.mark.parametrize("t", [-3.0, -0.4, 0.0, 0.7, 2.5, 12.0])
def test_the_t_distribution_matches_its_closed_forms(t):
    assert stats.t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)  # Cauchy
    assert stats.t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)


@pytest.mark.parametrize("dof, quantile", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (10, 2.2281), (30, 2.0423),
                                           (1e7, 1.9600)])  # two-sided 95%, from printed tables
def test_t_quantiles_match_the_tables(dof, quantile):
    assert stats.t_quantile(0.975, dof) == pytest.approx(quantile, abs=1e-4)


def test_welch_interval_and_verdict_by_hand():
    # a: mean 1.1, variance 0.01; b: mean 1.4, variance 0.01; n = 3 each. Standard error sqrt(0.01/3 + 0.01/3) =
    # 0.081650; Welch-Satterthwaite dof = (0.006667)^2 / (2 * 0.003333^2 / 2) = 4; t(0.975, 4) = 2.776445:
    # -0.3 +- 0.226696
    low, high = stats.welch_interval([1.0, 1.2, 1.1], [1.3, 1.5, 1.4])
    assert (low, high) == (pytest.approx(-0.526696, abs=1e-6), pytest.approx(-0.073304, abs=1e-6))
    assert stats.verdict((low, high)) == "better"
    assert stats.verdict(stats.welch_interval([1.3, 1.5, 1.4], [1.0, 1.2, 1.1])) == "worse"
    # b: mean 1.25, variance 0.04: standard error 0.129099, dof 2.941, t = 3.2178: -0.15 +- 0.41540
    low, high = stats.welch_interval([1.0, 1.2, 1.1], [1.05, 1.45, 1.25])
    assert (low, high) == (pytest.approx(-0.56554, abs=1e-4), pytest.approx(0.26554, abs=1e-4))
    assert stats.verdict((low, high)) == "within noise"
    assert stats.verdict(stats.welch_interval([2.0, 2.0], [2.0, 2.0])) == "within noise"  # no spread at all
    with pytest.raises(ValueError, match="at least 2 runs a group"):
        stats.welch_interval([1.0], [1.0, 2.0])


def test_runs_that_differ_only_in_their_seed_are_one_group():
    base = {"lr": 1e-3, "data": "shakespeare", "out_dir": "out"}
    configs = {"a-seed1": base | {"seed": 1, "run_name": "a-seed1"}, "a-seed2": base | {"seed": 2, "run_name": "a-seed2"},
               "b": base | {"seed": 1, "lr": 3e-3, "run_name": "b"}}
    assert stats.seed_groups(configs) == {"a": ["a-seed1", "a-seed2"], "b": ["b"]}
    assert stats.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0, 3)


def chinchilla_grid(noise, seed=0):
    """Losses from Hoffmann et al.'s fitted law (E 1.69, A 406.4, B 410.7, alpha 0.34, beta 0.28) on 4 sizes x 3
    token budgets, each times exp(a normal draw of `noise`)."""
    import random
    rng = random.Random(seed)
    runs = [(n, d) for n in (1e5, 3e5, 1e6, 3e6) for d in (1e7, 3e7, 1e8)]
    return ([n for n, _ in runs], [d for _, d in runs],
            [(1.69 + 406.4 / n**0.34 + 410.7 / d**0.28) * math.exp(rng.gauss(0, noise)) for n, d in runs])


def test_the_scaling_fit_recovers_the_law_it_was_drawn_from():
    N, D, loss = chinchilla_grid(noise=0.0)
    exact = stats.fit_scaling_law(N, D, loss)
    assert (exact["alpha"], exact["beta"]) == (pytest.approx(0.34, abs=2e-3), pytest.approx(0.28, abs=2e-3))
    assert (exact["E"], exact["A"], exact["B"]) == (pytest.approx(1.69, rel=0.02), pytest.approx(406.4, rel=0.05),
                                                     pytest.approx(410.7, rel=0.05))
    fit, intervals = stats.bootstrap_scaling_law(*chinchilla_grid(noise=0.002), samples=20)
    for key, true in (("alpha", 0.34), ("beta", 0.28), ("E", 1.69), ("A", 406.4), ("B", 410.7)):
        low, high = intervals[key]
        assert low <= true <= high and low <= fit[key] <= high, (key, true, fit[key], intervals[key])


def test_the_compute_optimal_split_minimises_the_fitted_loss():
    fit = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
    compute = 1e21

    def law(n):
        return fit["E"] + fit["A"] / n ** fit["alpha"] + fit["B"] / (compute / 6 / n) ** fit["beta"]

    n, d = stats.compute_optimal(fit, compute)
    assert 6 * n * d == pytest.approx(compute)
    assert law(n) < law(n * 1.05) and law(n) < law(n / 1.05)


def test_a_key_a_run_leaves_empty_does_not_split_its_seed_group():
    """A run from before a key existed (init_from, say) and one that records it at its empty default are one
    experiment; a key set to something is not."""
    configs = {"a-seed1": {"lr": 1e-3, "seed": 1}, "a-seed2": {"lr": 1e-3, "seed": 2, "init_from": ""},
               "a-seed3": {"lr": 1e-3, "seed": 3, "min_lr": None}, "b": {"lr": 1e-3, "seed": 1, "init_from": "x"}}
    assert stats.seed_groups(configs) == {"a": ["a-seed1", "a-seed2", "a-seed3"], "b": ["b"]}
