"""What a set of runs concludes: their summary table, seeds pooled and compared; a sweep's final loss against its
swept key; a scaling-law fit. The commands are plot.py's (`plot.py summary`, `plot.py sweep`, `plot.py scaling`);
the statistics are stats.py's.

`summary` prints one line per run: the best eval loss, its perplexity, the step and tokens where it was reached,
the final train loss, the median tokens/s and the median MFU. Runs whose config.json differ only in their seed are
then pooled, a line per group: n, mean ± std of the best and the final eval loss; with --baseline, each group's
difference to it (best eval loss) with Welch's 95% interval and a verdict: better, worse, or within noise.

`sweep` draws each run's final eval loss against the key its runs differ in (found from their config.json, or
--key): a point per seed group (its mean, with a bar of ± one standard deviation, each seed a faint dot), and a line
per set of groups that differ in nothing else (an lr x optimizer sweep: a line per optimizer). The learning rate
and any key whose values span 10x or more go on a log axis.

`scaling` fits L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al., 2022, approach 3; stats.py) to runs of N
parameters outside the embeddings (the N of Kaplan et al. and of the 20-tokens-a-parameter rule) trained on D
tokens to a final eval loss L, prints the fit with bootstrap intervals beside Chinchilla's published one, and draws
the loss against training compute C = 6 N D: a line per model size, the fitted law's curves, and the
compute-optimal frontier with the tokens per parameter it implies.
"""
import json
import math
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt
import numpy as np

import stats
from config import ArgumentParser, UserError
from files import figure_format, read_log, save_figure

# Hoffmann et al. (2022), approach 3's fit (their table A3 and eq. 10); tokens and parameters of MassiveText
CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


# ----------------------------------------------------------------------------- reading runs

def final_eval_loss(records):
    """The last eval loss of a log (None without one)."""
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    return evals[-1] if evals else None


def read_runs(paths, need_eval=True):
    """{run name: (config.json, log records)} of the run directories, in order; a path without a log line, or
    without an eval when need_eval, is skipped with a note on stderr. UserError when none is left."""
    runs = {}
    for path in paths:
        has_log = (Path(path) / "log.jsonl").is_file()
        records = read_log(path) if has_log else []
        why = ("no log.jsonl" if not has_log else "its log.jsonl holds no log line yet" if not records
               else "its log has no eval loss" if need_eval and final_eval_loss(records) is None else None)
        if why:
            print(f"note: skipping {path}: {why}", file=sys.stderr)
            continue
        name = Path(path).resolve().name
        config_path = Path(path) / "config.json"
        try:
            config = json.loads(config_path.read_text()) if config_path.is_file() else {"run_name": name}
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {config_path}: {e}") from None
        runs[name] = (config, records)
    if not runs:
        raise UserError("none of the paths holds a log line (out/<run>/log.jsonl)" + (" with an eval loss"
                                                                                       if need_eval else ""))
    return runs


# ----------------------------------------------------------------------------- summary

SUMMARY_COLUMNS = ["run", "best eval loss", "ppl", "at step", "at tokens", "final train loss", "median tok/s",
                   "median mfu"]


def summarize(records):
    """Best eval loss (its perplexity, step, tokens), final train loss, median tokens/s and MFU of one run (None:
    absent; a log from before mfu was logged has none)."""
    evals = [r for r in records if isinstance(r.get("eval_loss"), (int, float)) and math.isfinite(r["eval_loss"])]
    train_lines = [r for r in records if "loss" in r]
    best = min(evals, key=lambda r: r["eval_loss"]) if evals else {}
    speeds = [r["tok_per_s"] for r in train_lines if "tok_per_s" in r]
    mfus = [r["mfu"] for r in train_lines if "mfu" in r]
    return {"best_eval_loss": best.get("eval_loss"),
            "best_eval_ppl": math.exp(best["eval_loss"]) if best else None,
            "best_step": best.get("step"), "best_tokens": best.get("tokens"),
            "final_loss": train_lines[-1]["loss"] if train_lines else None,
            "median_tok_per_s": statistics.median(speeds) if speeds else None,
            "median_mfu": statistics.median(mfus) if mfus else None}


def summary_row(name, s):
    def cell(value, spec):
        return "-" if value is None else format(value, spec)
    return [name, cell(s["best_eval_loss"], ".4f"), cell(s["best_eval_ppl"], ".2f"), cell(s["best_step"], ","),
            cell(s["best_tokens"], ","), cell(s["final_loss"], ".4f"), cell(s["median_tok_per_s"], ",.0f"),
            cell(s["median_mfu"], ".1%")]


def format_table(rows, markdown=False, columns=SUMMARY_COLUMNS):
    """Rows of cells under columns: a Markdown table, or aligned text (names left, numbers right)."""
    if markdown:
        lines = [columns, ["---"] + ["---:"] * (len(columns) - 1), *rows]
        return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)
    widths = [max(len(cells[i]) for cells in [columns, *rows]) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
                     for cells in [columns, *rows])


GROUP_COLUMNS = ["group", "n", "best eval loss", "final eval loss", "vs baseline (95% interval)", "verdict"]


def group_rows(runs, baseline):
    """A row per seed group (stats.seed_groups) of runs {name: (config, records)}: mean ± std of the best and the
    final eval loss, and against the baseline group the difference of the best with Welch's 95% interval."""
    groups = stats.seed_groups({name: config for name, (config, _) in runs.items()})
    best = {g: [summarize(runs[r][1])["best_eval_loss"] for r in members] for g, members in groups.items()}
    final = {g: [final_eval_loss(runs[r][1]) for r in members] for g, members in groups.items()}
    if baseline is not None and baseline not in groups:
        baseline = next((g for g, members in groups.items() if baseline in members), baseline)
        if baseline not in groups:
            raise UserError(f"--baseline {baseline}: no such run or group among {', '.join(groups)}")
    rows = []
    for g in groups:
        compared, word = "", ""
        if baseline is not None and g != baseline:
            if len(best[g]) < 2 or len(best[baseline]) < 2:
                compared, word = "-", "needs 2+ seeds a group"
            else:
                interval = stats.welch_interval(best[g], best[baseline])
                mean = statistics.fmean(best[g]) - statistics.fmean(best[baseline])
                compared = f"{mean:+.4f}" + ("" if interval is None else f" [{interval[0]:+.4f}, {interval[1]:+.4f}]")
                word = stats.verdict(interval)
        rows.append([g, str(len(groups[g])), "{:.4f} ± {:.4f}".format(*stats.mean_std(best[g])[:2]),
                     "{:.4f} ± {:.4f}".format(*stats.mean_std(final[g])[:2]), compared or ("baseline" if g == baseline
                                                                                             else "-"), word])
    return rows


def summary(argv):
    parser = ArgumentParser(prog="plot.py summary", description="one line per run: best eval loss, final loss, speed")
    parser.add_argument("runs", nargs="+", help="run directories (paths without a log line are skipped)")
    parser.add_argument("--format", choices=["text", "md"], default="text")
    parser.add_argument("--baseline", help="a run or seed group: every group's difference to it, with Welch's 95%% "
                                           "interval and a verdict (better, worse, within noise)")
    args = parser.parse_args(argv)
    runs = read_runs(args.runs, need_eval=False)
    rows = [summary_row(name, summarize(records)) for name, (_, records) in runs.items()]
    print(format_table(rows, markdown=args.format == "md"))
    groups = group_rows({name: run for name, run in runs.items() if final_eval_loss(run[1]) is not None},
                        args.baseline)
    if args.baseline is not None or any(row[1] != "1" for row in groups):  # seeds to pool, or a comparison asked for
        print()
        print(format_table(groups, markdown=args.format == "md", columns=GROUP_COLUMNS))
    return 0


# ----------------------------------------------------------------------------- a sweep

def finish(fig, ax, output):
    """Grid, legend and layout of a one-axes figure, then write it (files.save_figure: atomic) and say where."""
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=9)
    fig.tight_layout()
    save_figure(fig, output)
    print(f"wrote {output}")


def swept_key(configs, key=None):
    """The config key the runs differ in (besides stats.NAME_KEYS): `key` when given (it must vary), else the one
    key that varies; UserError naming the keys when that is not one."""
    experiments = [stats.experiment(config) for config in configs]
    varying = sorted({k for e in experiments for k in e if len({repr(other.get(k)) for other in experiments}) > 1})
    if key is not None:
        if key not in varying:
            raise UserError(f"--key {key}: the runs do not differ in it (they differ in: {', '.join(varying) or 'nothing'})")
        return key
    numeric = [k for k in varying if all(isinstance(c.get(k), (int, float)) for c in configs)]
    if len(numeric) != 1:
        raise UserError(f"name the swept key with --key: the runs differ in {', '.join(varying) or 'nothing but seeds'}")
    return numeric[0]


def sweep_lines(runs, key):
    """[(label, [(value, [final eval loss of each seed]), ...]), ...]: the seed groups of runs, a line per set of
    groups equal but for `key` (labelled by what else differs), each line's points in the order of the key."""
    configs = {name: config for name, (config, _) in runs.items()}
    lines = {}
    for group, members in stats.seed_groups(configs).items():
        config = configs[members[0]]
        if not isinstance(config.get(key), (int, float)) or isinstance(config.get(key), bool):
            raise UserError(f"{members[0]}: {key} is {config.get(key)!r}, not a number to draw against")
        rest = tuple(sorted((k, repr(v)) for k, v in stats.experiment(config).items() if k != key))
        losses = [final_eval_loss(runs[r][1]) for r in members]
        lines.setdefault(rest, []).append((config[key], losses))
    differing = sorted({k for rest in lines for k, v in rest if len({dict(r).get(k) for r in lines}) > 1})
    labelled = []
    for rest in sorted(lines, key=lambda rest: [number_or_text(dict(rest).get(k, "")) for k in differing]):
        words = ", ".join(f"{k}={dict(rest)[k]}" for k in differing if k in dict(rest))
        labelled.append((words or "runs", sorted(lines[rest])))
    return labelled


def number_or_text(text):
    """A sort key that puts 32 before 128 and numbers before text."""
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)


def sweep(argv):
    parser = ArgumentParser(prog="plot.py sweep", description="final eval loss against the swept key of a sweep's runs")
    parser.add_argument("runs", nargs="+", help="run directories (a sweep's: out/<base>-*)")
    parser.add_argument("--key", help="the swept config key (default: the one numeric key the runs differ in)")
    parser.add_argument("--output", default="sweep.png")
    args = parser.parse_args(argv)
    figure_format(args.output)
    runs = read_runs(args.runs)
    key = swept_key([config for config, _ in runs.values()], args.key)
    lines = sweep_lines(runs, key)
    values = [value for _, points in lines for value, _ in points]
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (label, points) in enumerate(lines):
        x = [value for value, _ in points]
        means = [statistics.fmean(losses) for _, losses in points]
        stds = [stats.mean_std(losses)[1] for _, losses in points]
        seeds = max(len(losses) for _, losses in points)
        ax.errorbar(x, means, yerr=stds, color=f"C{i % 10}", marker="o", capsize=4, linewidth=1.6,
                    label=f"{label} (mean of {seeds} seeds ± std)" if seeds > 1 else label)
        for value, losses in points:
            if len(losses) > 1:
                ax.scatter([value] * len(losses), losses, color=f"C{i % 10}", alpha=0.35, s=14, zorder=1)
        best = int(np.argmin(means))
        print(f"{label}: best {key}={x[best]:g}, final eval loss {means[best]:.4f}"
              + (f" ± {stds[best]:.4f} (n={len(points[best][1])})" if len(points[best][1]) > 1 else ""))
    if key == "lr" or (min(values) > 0 and max(values) >= 10 * min(values)):
        ax.set_xscale("log")
    ax.set_xlabel(key)
    ax.set_ylabel("final eval loss (nats per token)")
    ax.set_title(f"final eval loss against {key}: {len(runs)} runs")
    finish(fig, ax, args.output)
    return 0


# ----------------------------------------------------------------------------- scaling laws

def scaling_points(runs):
    """[(run, N parameters outside the embeddings, D tokens trained, final eval loss)] of runs {name: (config,
    records)}. N is counted on the model its config.json describes (model.py, imported here and not at the top:
    reading logs needs no torch)."""
    import dataclasses
    import model as model_lib
    fields = {f.name for f in dataclasses.fields(model_lib.ModelConfig)}
    points = []
    for name, (config, records) in runs.items():
        if not fields <= config.keys():
            raise UserError(f"{name}: its config.json does not describe a model (missing "
                            f"{', '.join(sorted(fields - config.keys())[:3])}): a run directory of train.py?")
        n = model_lib.parameter_summary(model_lib.ModelConfig(**{k: config[k] for k in fields}))["non_embedding"]
        tokens = [r["tokens"] for r in records if "loss" in r and "tokens" in r]
        if not tokens:
            raise UserError(f"{name}: its log has no train line with tokens")
        points.append((name, n, tokens[-1], final_eval_loss(records)))
    return points


def fit_table(fit, intervals, compute):
    """Text lines: the fit with its intervals beside Chinchilla's, then the compute-optimal split at `compute`."""
    lines = [f"{'':8}{'fitted':>10}  {'95% bootstrap interval':>24}  {'Chinchilla':>10}"]
    for key in ("E", "A", "B", "alpha", "beta"):
        low, high = intervals[key]
        lines.append(f"{key:8}{fit[key]:10.4g}  {f'[{low:.4g}, {high:.4g}]':>24}  {CHINCHILLA[key]:10.4g}")
    for c in compute:
        n, d = stats.compute_optimal(fit, c)
        n_ref, d_ref = stats.compute_optimal(CHINCHILLA, c)
        lines.append(f"at C = {c:.3g} FLOPs: optimal N = {n:,.0f}, D = {d:,.0f}, {d / n:.1f} tokens a parameter "
                     f"(Chinchilla's law: {d_ref / n_ref:.1f})")
    return lines


def scaling(argv):
    parser = ArgumentParser(prog="plot.py scaling", description="fit L(N, D) = E + A/N^alpha + B/D^beta to runs")
    parser.add_argument("runs", nargs="+", help="run directories: several model sizes, each at several token budgets")
    parser.add_argument("--bootstrap", type=int, default=200, help="refits on resampled runs for the intervals")
    parser.add_argument("--output", default="scaling.png")
    args = parser.parse_args(argv)
    if args.bootstrap < 10:
        raise UserError(f"--bootstrap must be at least 10 refits, got {args.bootstrap}")
    figure_format(args.output)
    points = scaling_points(read_runs(args.runs))
    sizes = sorted({n for _, n, _, _ in points})
    budgets = sorted({d for _, _, d, _ in points})
    if len(points) < 5 or len(sizes) < 2 or len(budgets) < 2:
        raise UserError(f"a fit of 5 parameters needs at least 5 runs over 2+ model sizes and 2+ token budgets; "
                        f"got {len(points)} runs, {len(sizes)} size(s), {len(budgets)} budget(s)")
    N, D, L = (np.array([p[i] for p in points], dtype=float) for i in (1, 2, 3))
    try:
        fit, intervals = stats.bootstrap_scaling_law(N, D, L, samples=args.bootstrap)
    except ValueError as e:
        raise UserError(f"no fit: {e}") from None
    compute = 6 * N * D
    for line in fit_table(fit, intervals, [compute.min(), compute.max()]):
        print(line)
    fig, ax = plt.subplots(figsize=(9, 5.5))
    grid = np.geomspace(compute.min() / 2, compute.max() * 2, 200)
    for i, n in enumerate(sizes):
        mine = np.flatnonzero(N == n)
        mine = mine[np.argsort(D[mine])]  # this size's runs, by tokens
        color = f"C{i % 10}"
        ax.plot(compute[mine], L[mine], "o-", color=color, label=f"N = {n / 1e3:,.0f}K")
        c = np.geomspace(compute[mine].min() / 1.5, compute[mine].max() * 1.5, 50)  # the fit near its runs only
        d = c / (6 * n)
        ax.plot(c, fit["E"] + fit["A"] / n ** fit["alpha"] + fit["B"] / d ** fit["beta"], ":", color=color,
                linewidth=1)
    n_opt, d_opt = stats.compute_optimal(fit, grid)
    frontier = fit["E"] + fit["A"] / n_opt ** fit["alpha"] + fit["B"] / d_opt ** fit["beta"]
    ratio_low, ratio_high = d_opt[0] / n_opt[0], d_opt[-1] / n_opt[-1]
    ax.plot(grid, frontier, "k--", linewidth=1.6,
            label=f"compute-optimal frontier ({ratio_low:.0f} to {ratio_high:.0f} tokens a parameter)")
    ax.set_xscale("log")
    ax.set_xlabel("training compute C = 6 N D (FLOPs)")
    ax.set_ylabel("final eval loss (nats per token)")
    ax.set_title(f"L = {fit['E']:.3f} + {fit['A']:.3g}/N^{fit['alpha']:.2f} + {fit['B']:.3g}/D^{fit['beta']:.2f}"
                 f"   ({len(points)} runs; dotted: the fit at each size)")
    finish(fig, ax, args.output)
    return 0
