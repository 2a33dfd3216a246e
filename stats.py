"""Telling a difference from noise: runs grouped by seed, and Welch's interval for the difference of two groups.

    groups = seed_groups({run: config}, key=...)      # runs that differ only in their seed, together
    low, high = welch_interval(a, b)                   # 95% interval of mean(a) - mean(b), unequal variances
    verdict(low, high)                                 # "better" (lower), "worse" or "within noise"

Plain Python (math and statistics): the t quantile is computed here, from the regularised incomplete beta function,
so that no run of plot.py needs scipy.
"""
import math
import statistics

# keys of a run's config.json that say which run it is, not what it trains: runs differing only in these are the
# same experiment
NAME_KEYS = ("run_name", "out_dir", "seed")


def seed_groups(configs):
    """{group name: [run, ...]} from {run: its config.json}: runs whose configs are equal but for NAME_KEYS, in the
    order given. A group of one is a run alone; a group's name is its first run's, with "-seed<N>" dropped."""
    groups = {}
    for run, config in configs.items():
        key = tuple(sorted((k, repr(v)) for k, v in config.items() if k not in NAME_KEYS))
        groups.setdefault(key, []).append(run)
    return {group_name(runs, configs): runs for runs in groups.values()}


def group_name(runs, configs):
    name = str(runs[0])
    seed = configs[runs[0]].get("seed")
    if len(runs) > 1 and name.endswith(f"-seed{seed}"):
        name = name[: -len(f"-seed{seed}")]
    return name


def mean_std(values):
    """(mean, sample standard deviation (0 for one value), n)."""
    values = list(values)
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values)


def welch_interval(a, b, confidence=0.95):
    """(low, high): the interval of mean(a) - mean(b) at this confidence, by Welch's t (the two groups may have
    different variances); each group needs at least 2 values. None where both variances are 0."""
    (mean_a, sd_a, n_a), (mean_b, sd_b, n_b) = mean_std(a), mean_std(b)
    if n_a < 2 or n_b < 2:
        raise ValueError(f"Welch's interval needs at least 2 runs a group, got {n_a} and {n_b}")
    va, vb = sd_a**2 / n_a, sd_b**2 / n_b
    if va + vb == 0:
        return None
    dof = (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))  # Welch-Satterthwaite
    half = t_quantile(0.5 + confidence / 2, dof) * math.sqrt(va + vb)
    return mean_a - mean_b - half, mean_a - mean_b + half


def verdict(interval):
    """For a loss: "better" when the whole interval of the difference is below 0, "worse" above, else within noise."""
    if interval is None:
        return "within noise"
    low, high = interval
    return "better" if high < 0 else "worse" if low > 0 else "within noise"


# ----------------------------------------------------------------------------- Student's t

def t_cdf(t, dof):
    """P(T <= t) for Student's t with dof degrees of freedom (any real dof > 0)."""
    x = dof / (dof + t * t)
    tail = 0.5 * incomplete_beta(dof / 2, 0.5, x)
    return 1 - tail if t > 0 else tail


def t_quantile(p, dof):
    """The t with t_cdf(t, dof) = p, by bisection (p in (0.5, 1))."""
    low, high = 0.0, 1.0
    while t_cdf(high, dof) < p:
        high *= 2
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if t_cdf(mid, dof) < p else (low, mid)
    return (low + high) / 2


def incomplete_beta(a, b, x):
    """The regularised incomplete beta function I_x(a, b), by its continued fraction (Lentz's method), on the side
    where it converges fast."""
    if x <= 0 or x >= 1:
        return 0.0 if x <= 0 else 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(1 - x))
    if x > (a + 1) / (a + b + 2):
        return 1 - front * beta_fraction(b, a, 1 - x) / b
    return front * beta_fraction(a, b, x) / a


def beta_fraction(a, b, x, tiny=1e-300):
    c, d = 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 300):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1) < 1e-15:
            break
    return result
