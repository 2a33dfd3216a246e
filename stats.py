"""Telling a difference from noise, and what a grid of runs says: runs grouped by seed, Welch's interval for the
difference of two groups, and scaling-law fits.

    groups = seed_groups({run: config})               # runs that differ only in their seed, together
    interval = welch_interval(a, b)                    # 95% interval of mean(a) - mean(b), unequal variances
    verdict(interval)                                  # "better" (lower), "worse" or "within noise"
    fit, intervals = bootstrap_scaling_law(N, D, L)    # L = E + A/N^alpha + B/D^beta, with bootstrap intervals
    n, d = compute_optimal(fit, compute)               # the fitted law's best split of 6 N D FLOPs

Plain Python and numpy: the t quantile is computed here, from the regularised incomplete beta function, and the
fit by variable projection, so that nothing here needs scipy.
"""
import math
import statistics

# keys of a run's config.json that say which run it is, not what it trains: runs differing only in these are the
# same experiment
NAME_KEYS = ("run_name", "out_dir", "seed")


def experiment(config):
    """What a run's config.json says it trains: its keys but NAME_KEYS, and but the keys it leaves empty ("" or None),
    so that a run from before a key existed equals a run that records the key at an empty default."""
    return {k: v for k, v in config.items() if k not in NAME_KEYS and v is not None and v != ""}


def seed_groups(configs):
    """{group name: [run, ...]} from {run: its config.json}: runs whose configs are equal but for NAME_KEYS (and
    empty keys: experiment), in the order given. A group of one is a run alone; a group's name is its first run's,
    with "-seed<N>" dropped."""
    groups = {}
    for run, config in configs.items():
        key = tuple(sorted((k, repr(v)) for k, v in experiment(config).items()))
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


# ----------------------------------------------------------------------------- scaling laws

def fit_scaling_law(N, D, loss, delta=1e-3, exponents=(0.02, 2.0)):
    """Fit L(N, D) = E + A / N^alpha + B / D^beta to runs of N parameters, D tokens and final loss: the law of
    Hoffmann et al. (2022), fitted as their approach 3 (a robust Huber loss, delta 1e-3, on the residuals of log L)
    but by variable projection instead of L-BFGS. For fixed exponents the law is linear in (E, A, B), so every
    (alpha, beta) of a grid gets its best (E, A, B) exactly, by iteratively reweighted least squares on the relative
    residuals (which are the log residuals to first order, with Huber's weights); a finer grid around the best point
    follows. All grid points at once, with numpy: milliseconds, so that a bootstrap can refit hundreds of times.
    Returns {"E", "A", "B", "alpha", "beta", "objective"} (the Huber objective on log residuals)."""
    import numpy as np
    N, D, loss = (np.asarray(x, dtype=np.float64) for x in (N, D, loss))
    low, high = exponents
    best = None
    for step in range(3):  # a coarse grid, then two finer ones around the best point
        if best is None:
            alphas = betas = np.linspace(low, high, 100)
        else:
            width = (high - low) / 100 / 10**(step - 1)
            alphas = np.linspace(best["alpha"] - width, best["alpha"] + width, 41)
            betas = np.linspace(best["beta"] - width, best["beta"] + width, 41)
        alpha, beta = (g.ravel() for g in np.meshgrid(alphas, betas, indexing="ij"))
        # rows of the linear problem a grid point a row: X @ (E, A, B) / L = 1
        X = np.stack([np.ones((len(alpha), len(N))), N[None] ** -alpha[:, None], D[None] ** -beta[:, None]], axis=2)
        X = X / loss[None, :, None]
        weights = np.ones((len(alpha), len(N)))
        for _ in range(4):  # IRLS: Huber's weights min(1, delta / |r|)
            Xw = X * weights[..., None]
            theta = np.linalg.solve(np.einsum("gni,gnj->gij", Xw, X) + 1e-12 * np.eye(3),
                                    np.einsum("gni,gn->gi", Xw, np.ones_like(weights))[..., None])[..., 0]
            fitted = np.einsum("gni,gi->gn", X, theta)
            residual = np.log(np.clip(fitted, 1e-12, None))
            weights = np.minimum(1.0, delta / np.maximum(np.abs(residual), 1e-15))
        huber = np.where(np.abs(residual) <= delta, 0.5 * residual**2, delta * (np.abs(residual) - 0.5 * delta)).sum(1)
        huber[(theta <= 0).any(axis=1)] = np.inf  # E, A, B must be positive
        i = int(np.argmin(huber))
        if not np.isfinite(huber[i]):
            raise ValueError("no positive E, A, B fits these runs: too few runs, or losses that do not fall with N "
                             "and D")
        best = {"E": theta[i, 0], "A": theta[i, 1], "B": theta[i, 2], "alpha": alpha[i], "beta": beta[i],
                "objective": huber[i]}
    return {key: float(value) for key, value in best.items()}


def bootstrap_scaling_law(N, D, loss, samples=200, seed=0):
    """(fit, {parameter: (2.5th, 97.5th percentile)}) of fits to the runs drawn with replacement `samples` times."""
    import random
    rng, draws = random.Random(seed), []
    for _ in range(samples):
        picks = [rng.randrange(len(N)) for _ in N]
        try:
            draws.append(fit_scaling_law([N[i] for i in picks], [D[i] for i in picks], [loss[i] for i in picks]))
        except ValueError:  # a draw without enough distinct runs
            continue
    intervals = {}
    for key in ("E", "A", "B", "alpha", "beta"):
        values = sorted(d[key] for d in draws)
        intervals[key] = (values[int(0.025 * (len(values) - 1))], values[int(0.975 * (len(values) - 1))])
    return fit_scaling_law(N, D, loss), intervals


def compute_optimal(fit, compute):
    """(parameters, tokens) minimising the fitted loss at `compute` FLOPs = 6 N D (Hoffmann et al., eq. 4)."""
    alpha, beta, A, B = fit["alpha"], fit["beta"], fit["A"], fit["B"]
    n = (alpha * A / (beta * B)) ** (1 / (alpha + beta)) * (compute / 6) ** (beta / (alpha + beta))
    return n, compute / 6 / n
