"""Plots and summaries of runs, and of learning-rate schedules.

    python plot.py out/RUN [out/RUN2 ...] [--smooth 10] [--perplexity] [--grad-norm] [--x-axis tokens] [--output x.png]
    python plot.py summary out/* [--format md] [--baseline RUN_OR_GROUP]
    python plot.py sweep out/lrsweep-* [--key lr] [--output sweep.png]
    python plot.py scaling out/scaling/* [--bootstrap 200] [--output scaling.png]
    python plot.py lr configs/ten_chinchilla.py configs/wsd.py [key=value ...] [--world-size 4] [--output lr.png]

A plot reads out/<run>/log.jsonl (its keys: docs/training.md) and draws, by default, the train loss and the
eval loss of each run: one colour per run, one line style per metric (the first train metric solid, other
train metrics dotted, eval metrics dashed with markers), and for a single run the learning rate on a second y
axis (grey, dotted). Lines without the plotted metric (eval lines for `loss`, event lines) are skipped. The
legend lists the runs by colour and the metrics by style; past 3 runs or 6 entries it goes to the right of
the axes, off the curves. Runs whose config.json differ only in their seed are one series (--each-run: not): its
mean curve in a band of ± one standard deviation across the seeds. Control events (event lines: an annealing
started, a stop, a save, an abort) are thin vertical lines in the run's colour, labelled at the top (anneal, stop,
save, abort).

The y range ignores outliers of the warm-up unless --no-ignore-outliers: a value drawn in its run's warm-up
(up to the last train line before the first one at the run's highest learning rate, and always at the log's
first x, the untrained model's) is left out when it lies outside Tukey's fences [Q1 - 1.5 IQR, Q3 + 1.5 IQR]
of everything drawn in the x range (quartiles of log10(y) with --log-scale); every value after the warm-up is
kept, so the first evals stay in sight. The range runs from the smallest to the largest value kept, plus 5% either side.
An early spike such as the loss at step 0 (about ln(vocabulary size)) then no longer flattens the rest of
the curve.

`summary`, `sweep` and `scaling` are report.py's: what a set of runs concludes (tables, seeds pooled and compared
with Welch's interval, a sweep's loss against its key, a scaling-law fit).

`lr` draws the learning rate of each config over its whole budget, without training: the
schedule is a pure function of the step (sched.py), laid out exactly as train.py would lay it
out for --world-size processes. key=value overrides apply to every config.

Figures are written through files.write_atomic, in the format their suffix names. Every mistake (a missing,
empty or damaged log, a value that is not a finite number, a bad option) ends with one line, exit status 2.
"""
import difflib
import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogFormatter

import report
import stats
from files import figure_format, is_number, read_log, save_figure
import sched
from config import ArgumentParser, UserError, run_main  # UserError: one line on stderr, exit status 2

DEFAULT_METRICS = ["loss", "eval_loss"]
NAMES = {"loss": "train loss", "eval_loss": "eval loss", "grad_norm": "grad norm", "lr": "learning rate",
         "tok_per_s": "tokens/s", "mfu": "MFU", "eval_bpb": "eval bits/byte", "eval_ppl": "eval perplexity"}
TRAIN_STYLES = ["-", ":", "-."]  # the line style of each train metric: the first (the loss) solid, the others dotted
EVAL_MARKERS = ["o", "s", "^", "D"]  # eval metrics are dashed, with one marker each
EVENT_LABELS = {"annealing started": "anneal", "stopped": "stop", "saved": "save", "aborted": "abort"}  # by prefix
LEGEND_INSIDE = (3, 6)  # at most this many runs and legend entries keep the legend inside the axes


# ----------------------------------------------------------------------------- reading logs

def check_metric(metric, runs, paths):
    """Stop, naming the closest known key, when no run logs `metric` at all (a typo, most likely)."""
    if any(metric in record for records in runs for record in records):
        return
    known = sorted({key for records in runs for record in records for key in record})
    close = difflib.get_close_matches(metric, known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else f" (keys there: {', '.join(known)})"
    raise UserError(f"metric '{metric}' is in no line of {', '.join(paths)}{hint}")


# ----------------------------------------------------------------------------- curves

def x_positions(records, x_axis):
    """The x of every record: its step, its tokens, or hours since the run's first train line.

    Only train lines carry a time; eval and event lines take the time of their step,
    interpolated between the train lines around it (clamped at the ends)."""
    if x_axis in ("step", "tokens"):
        if any(x_axis not in r for r in records):
            raise UserError(f"a line of the log has no '{x_axis}'")
        return [r[x_axis] for r in records]
    timed = [r for r in records if "time" in r]
    if not timed:
        raise UserError("the log has no train line with a time")
    start = timed[0]["time"]
    steps = [r["step"] for r in timed]
    hours = [(r["time"] - start) / 3600 for r in timed]
    return [(r["time"] - start) / 3600 if "time" in r else float(np.interp(r["step"], steps, hours)) for r in records]


def curve(records, xs, metric, perplexity=False):
    """(x, y) arrays of the records that carry `metric`; exp(y) for a loss when perplexity is asked."""
    points = [(x, r[metric]) for x, r in zip(xs, records) if metric in r]
    if not all(is_number(y) for _, y in points):  # a text key (read_log checks every other one)
        raise UserError(f"metric '{metric}' is not a number in every line that has it")
    x, y = np.array([p[0] for p in points], dtype=float), np.array([p[1] for p in points], dtype=float)
    if perplexity and metric.endswith("loss"):
        y = np.exp(np.minimum(y, 50))  # a loss above 50 nats is off any useful scale anyway
    return x, y


def moving_average(values, n):
    """Trailing mean over the last n points (fewer at the start), so the curve keeps every x and never looks ahead."""
    values = np.asarray(values, dtype=float)
    sums = np.cumsum(np.insert(values, 0, 0.0))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - n, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def warmup_end(records, xs):
    """The x after which a run is surely past its warm-up: every schedule of sched.py peaks where its warm-up
    ends, which lies after the last train line before the first one at the run's highest learning rate, so
    that line's x; and at least the log's first x (step 0: the untrained model's eval)."""
    rates = [r["lr"] if "lr" in r else -math.inf for r in records]
    peak = int(np.argmax(rates))  # the first of equal maxima; 0 in a log without a learning rate
    warming = [x for x, r in zip(xs[:peak], records[:peak]) if "lr" in r]
    return max([xs[0], *warming[-1:]])


def y_limits(values, ignore_outliers=True, log=False, kept=None):
    """(low, high) of the y axis: Tukey's fences, then min..max of what is kept, padded 5% (module docstring).
    kept: True for a value that stays whatever the fences say (one drawn after its run's warm-up)."""
    values = np.asarray(values, dtype=float)
    kept = np.zeros(len(values), dtype=bool) if kept is None else np.asarray(kept, dtype=bool)
    usable = np.isfinite(values) & (values > 0) if log else np.isfinite(values)
    values, kept = values[usable], kept[usable]
    if len(values) == 0:
        return None
    if log:
        values = np.log10(values)
    if ignore_outliers:
        q1, q3 = np.percentile(values, [25, 75])
        values = values[(values >= q1 - 1.5 * (q3 - q1)) & (values <= q3 + 1.5 * (q3 - q1)) | kept]
    low, high = values.min(), values.max()
    pad = 0.05 * (high - low) if high > low else (0.05 * abs(high) or 1.0)  # a flat curve still gets a range
    low, high = low - pad, high + pad
    return (10 ** low, 10 ** high) if log else (low, high)


# ----------------------------------------------------------------------------- plotting runs

def format_count(value, _position=None):
    """Tick labels for token counts: 500k, 2.5M, 1.2B."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def metric_name(metric, perplexity):
    if perplexity and metric == "loss":
        return "train perplexity"
    if perplexity and metric == "eval_loss":
        return "eval perplexity"
    return NAMES.get(metric, metric)


def run_color(i):
    return f"C{i % 10}"


def metric_style(metric, metrics):
    """The line style and marker of `metric` in every run (module docstring): the colour says which run, this
    says which metric."""
    evals = [m for m in metrics if m.startswith("eval_")]
    if metric in evals:
        return {"linestyle": "--", "marker": EVAL_MARKERS[evals.index(metric) % len(EVAL_MARKERS)]}
    trains = [m for m in metrics if m not in evals]
    return {"linestyle": TRAIN_STYLES[trains.index(metric) % len(TRAIN_STYLES)], "marker": None}


def draw(ax, x, y, color, label, style, smooth):
    """One curve in style (metric_style). Train curves are smoothed over `smooth` points with the raw curve faint
    behind; eval curves are drawn on top, thicker, with white-edged markers: the few points that matter most."""
    if style["marker"]:
        ax.plot(x, y, color=color, **style, markersize=6, markeredgecolor="white", linewidth=1.6, label=label,
                zorder=3)
    elif smooth > 1:
        ax.plot(x, y, color=color, **style, linewidth=0.8, alpha=0.25)
        ax.plot(x, moving_average(y, smooth), color=color, **style, linewidth=1.2, label=label)
    else:
        ax.plot(x, y, color=color, **style, linewidth=1.2, label=label)


def in_x_range(x, args):
    """Whether x lies within --x-min .. --x-max (True where no limit is set)."""
    low = -np.inf if args.x_min is None else args.x_min
    high = np.inf if args.x_max is None else args.x_max
    return (x >= low) & (x <= high)


def group_curve(members, metric, args):
    """(x, mean, std) of a seed group's curves: each member's (smoothed, for a train metric) curve, taken at the
    first member's x within the x range every member reached, then the mean and standard deviation across them."""
    curves = []
    for records in members:
        x, y = curve(records, x_positions(records, args.x_axis), metric, args.perplexity)
        if len(x) and args.smooth > 1 and not metric.startswith("eval_"):
            y = moving_average(y, args.smooth)
        curves.append((x, y))
    if any(len(x) == 0 for x, _ in curves):
        return np.array([]), np.array([]), np.array([])
    end = min(x[-1] for x, _ in curves)
    x = curves[0][0][curves[0][0] <= end]
    ys = np.stack([np.interp(x, xm, ym) for xm, ym in curves])
    return x, ys.mean(axis=0), ys.std(axis=0, ddof=1)


def draw_panel(ax, series, labels, metrics, args, log=False, y_min=None, y_max=None):
    """Draw `metrics` of every series (a run, or a seed group: its mean curve in a band of ± one standard deviation)
    on ax, one colour per series and one style per metric, and set its y range."""
    drawn_x, drawn_y, after_warmup = [], [], []
    for i, (members, label) in enumerate(zip(series, labels)):
        end = warmup_end(members[0], x_positions(members[0], args.x_axis))
        for metric in metrics:
            name = metric_name(metric, args.perplexity)
            name = name if len(series) == 1 else f"{label}: {name}"
            style = metric_style(metric, metrics)
            if len(members) == 1:
                x, y = curve(members[0], x_positions(members[0], args.x_axis), metric, args.perplexity)
                low = high = y
                if len(x):
                    draw(ax, x, y, run_color(i), name, style, args.smooth)
            else:
                x, y, std = group_curve(members, metric, args)
                low, high = y - std, y + std
                if len(x):
                    ax.fill_between(x, low, high, color=run_color(i), alpha=0.2, linewidth=0)
                    draw(ax, x, y, run_color(i), name, style, 1)
            if len(x) == 0:
                continue
            drawn_x += [x, x, x]
            drawn_y += [y, low, high]
            after_warmup += [x > end] * 3
    limits = None
    if drawn_y:
        x, y, kept = np.concatenate(drawn_x), np.concatenate(drawn_y), np.concatenate(after_warmup)
        in_range = in_x_range(x, args)
        limits = y_limits(y[in_range], args.ignore_outliers, log, kept[in_range])
    if log and limits is None:
        raise UserError("--log-scale: no value above 0 to draw in the x range")
    if log:  # plain numbers (9, 10, 20) rather than 2x10^1, and minor ticks labelled over narrow ranges
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(LogFormatter())
        ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 1)))
    if limits:
        ax.set_ylim(limits)
    low, high = ax.get_ylim()
    ax.set_ylim(low if y_min is None else y_min, high if y_max is None else y_max)
    check_range(ax.get_ylim(), "y")
    ax.grid(alpha=0.3)


def draw_lr(ax, records, args):
    """The learning rate of one run on a second y axis (grey, dotted); returns that axis."""
    lr_axis = ax.twinx()
    x, y = curve(records, x_positions(records, args.x_axis), "lr")
    lr_axis.plot(x, y, color="0.45", linestyle=":", linewidth=1.2, label="learning rate")
    lr_axis.set_ylabel("learning rate")
    lr_axis.set_ylim(bottom=0)
    lr_axis.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    return lr_axis


def event_label(event):
    """The short name of a control event (EVENT_LABELS), else its text up to the first ':' or ';'."""
    for prefix, label in EVENT_LABELS.items():
        if event.startswith(prefix):
            return label
    return event.split(":")[0].split(";")[0]


def draw_events(axes, series, args):
    """Every event line of every run as a thin vertical line in its series' colour on each of axes, labelled at the
    top of the first; events outside --x-min / --x-max are left out."""
    for i, records in ((i, records) for i, members in enumerate(series) for records in members):
        xs = np.array(x_positions(records, args.x_axis), dtype=float)
        for x, record in zip(xs, records):
            if "event" not in record or not in_x_range(x, args):
                continue
            for ax in axes:
                ax.axvline(x, color=run_color(i), linewidth=0.8, alpha=0.7, zorder=1, label="_event")
            axes[0].text(x, 0.99, f"{event_label(record['event'])} ", transform=axes[0].get_xaxis_transform(),
                         rotation=90, ha="right", va="top", fontsize=8, color=run_color(i))


def legend_entries(labels, metrics, perplexity, lr):
    """The legend's handles: one per run in its colour (several runs), then one per metric in its style (grey
    for several runs, the run's colour for one), and the learning rate's (lr: one run drawing its lr axis)."""
    several = len(labels) > 1
    runs = [Line2D([], [], color=run_color(i), linewidth=2, label=label) for i, label in enumerate(labels)]
    styles = [Line2D([], [], color="0.3" if several else run_color(0), markeredgecolor="white",
                     label=metric_name(m, perplexity), **metric_style(m, metrics)) for m in metrics]
    rate = [Line2D([], [], color="0.45", linestyle=":", label="learning rate")] if lr else []
    return (runs if several else []) + styles + rate


def y_label(metrics, perplexity):
    if set(metrics) <= {"loss", "eval_loss"}:
        return "perplexity (exp of the loss)" if perplexity else "loss (nats per token)"
    return ", ".join(metric_name(m, perplexity) for m in metrics)


def title(labels, metrics, args, n_runs):
    who = labels[0] if n_runs == 1 else f"{n_runs} runs" + ("" if len(labels) == n_runs else f" in {len(labels)} "
                                                                                              "seed groups")
    what = ("train and eval " + ("perplexity" if args.perplexity else "loss") if metrics == DEFAULT_METRICS
            else ", ".join(metric_name(m, args.perplexity) for m in metrics))
    smoothing = f" (train curves: mean of {args.smooth} points)" if args.smooth > 1 else ""
    return f"{who}: {what}{smoothing}"


def seed_series(paths, runs, each_run=False):
    """([records of each member] per series, names): the runs grouped by seed (stats.seed_groups on their
    config.json: runs that differ only in seed, a group drawn as its mean and band), or a series a run with
    --each-run or where a run has no config.json. A group is named as stats names it, with its n."""
    names = [Path(path).resolve().name for path in paths]
    config_paths = [Path(path) / "config.json" for path in paths]
    if each_run or len(set(names)) < len(names) or not all(p.is_file() for p in config_paths):
        return [[records] for records in runs], names
    configs = {}
    for name, config_path in zip(names, config_paths):
        try:
            configs[name] = json.loads(config_path.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {config_path}: {e}") from None
    groups = stats.seed_groups(configs)
    by_name = dict(zip(names, runs))
    return ([[by_name[m] for m in members] for members in groups.values()],
            [g if len(members) == 1 else f"{g} (mean of {len(members)} seeds ± std)" for g, members in groups.items()])


X_LABELS = {"step": "step", "tokens": "tokens", "time": "hours since the first train line"}


def draw_runs(args):
    """The figure of the runs in args (see plot_parser); raises UserError on bad input."""
    check_options(args)
    runs = [read_log(path) for path in args.runs]
    for path, records in zip(args.runs, runs):
        if not records:
            raise UserError(f"{Path(path) / 'log.jsonl'} holds no log line yet")
    series, names = seed_series(args.runs, runs, args.each_run)
    labels = args.labels.split(",") if args.labels is not None else names
    if len(labels) != len(series):
        raise UserError(f"--labels has {len(labels)} names for {len(series)} "
                        + ("runs" if len(series) == len(runs) else "series (runs, seeds pooled; --each-run: none)"))
    metrics = args.metrics.split(",") if args.metrics is not None else DEFAULT_METRICS
    for option, names in (("--labels", labels), ("--metrics", metrics)):
        if not all(names):
            raise UserError(f"{option} has an empty name: {','.join(names)!r}")
    for metric in metrics + (["grad_norm"] if args.grad_norm else []):
        check_metric(metric, runs, args.runs)
    lr = len(series) == 1 and "lr" not in metrics and any("lr" in r for r in runs[0])
    entries = legend_entries(labels, metrics, args.perplexity, lr)
    outside = len(series) > LEGEND_INSIDE[0] or len(entries) > LEGEND_INSIDE[1]
    width = 11.5 if outside else 9  # the legend takes a column of its own beside the axes
    if args.grad_norm:
        fig, (ax, grad_ax) = plt.subplots(2, 1, figsize=(width, 6.5), sharex=True, height_ratios=[3, 1])
    else:
        fig, ax = plt.subplots(figsize=(width, 5))
    draw_panel(ax, series, labels, metrics, args, args.log_scale, args.y_min, args.y_max)
    ax.set_ylabel(y_label(metrics, args.perplexity))
    top = draw_lr(ax, runs[0], args) if lr else ax  # the legend goes on the axis drawn last, over every curve
    if outside:
        top.legend(handles=entries, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0, fontsize=9)
    else:
        top.legend(handles=entries, loc="upper right", fontsize=9)
    bottom = ax
    if args.grad_norm:
        draw_panel(grad_ax, series, labels, ["grad_norm"], args)
        grad_ax.set_ylabel("grad norm")
        bottom = grad_ax
    draw_events([ax, grad_ax] if args.grad_norm else [ax], series, args)
    bottom.set_xlabel(X_LABELS[args.x_axis])
    if args.x_axis == "tokens":
        bottom.xaxis.set_major_formatter(FuncFormatter(format_count))
    ax.set_xlim(args.x_min, args.x_max)
    check_range(ax.get_xlim(), "x")
    ax.set_title(title(labels, metrics, args, len(runs)))
    fig.tight_layout()
    return fig


def check_options(args):
    """The numeric options of a run plot, before any log is read."""
    if args.smooth < 1:
        raise UserError("--smooth must be at least 1 (1: no smoothing)")
    for axis in ("x", "y"):
        low, high = getattr(args, f"{axis}_min"), getattr(args, f"{axis}_max")
        for name, value in ((f"--{axis}-min", low), (f"--{axis}-max", high)):
            if value is not None and not math.isfinite(value):
                raise UserError(f"{name} must be a finite number, got {value}")
        if low is not None and high is not None and low >= high:
            raise UserError(f"--{axis}-min {low} must be below --{axis}-max {high}")


def check_range(limits, axis):
    """Stop where --x-min / --y-max and the like leave an axis running backwards (past the other end of the data)."""
    if not limits[0] < limits[1]:
        raise UserError(f"the {axis} axis would run from {limits[0]:g} down to {limits[1]:g}: "
                        f"--{axis}-min or --{axis}-max lies past the other end of what is drawn")


def plot_parser():
    parser = ArgumentParser(prog="plot.py", description="plot the loss curves of runs (out/<run>/log.jsonl)")
    parser.add_argument("runs", nargs="+", help="run directories")
    parser.add_argument("--output", help="default: <run>/loss.png for one run, comparison.png for several")
    parser.add_argument("--metrics",
                        help="comma list of log keys instead of loss,eval_loss (e.g. loss,eval_loss,grad_norm)")
    parser.add_argument("--labels", help="comma list of legend names, one per run or seed group (default: the "
                                         "directory names)")
    parser.add_argument("--each-run", action="store_true",
                        help="a curve for every run (default: runs that differ only in seed drawn as a mean and band)")
    parser.add_argument("--smooth", type=int, default=1, help="moving average over N points of the train curves")
    parser.add_argument("--perplexity", action="store_true", help="plot exp(loss) for the train and eval loss")
    parser.add_argument("--log-scale", action="store_true", help="logarithmic y axis")
    parser.add_argument("--no-ignore-outliers", dest="ignore_outliers", action="store_false",
                        help="y range over every value (default: outside Tukey's fences left out)")
    parser.add_argument("--grad-norm", action="store_true", help="add the grad norm on a lower panel")
    parser.add_argument("--x-axis", choices=["step", "tokens", "time"], default="step",
                        help="time: hours since the first train line")
    for limit in ("--x-min", "--x-max", "--y-min", "--y-max"):
        parser.add_argument(limit, type=float, help="axis limit, in the units of the axis")
    return parser


def plot_runs(argv):
    args = plot_parser().parse_args(argv)
    output = args.output if args.output is not None else (
        Path(args.runs[0]) / "loss.png" if len(args.runs) == 1 else "comparison.png")
    figure_format(output)  # a mistyped suffix stops before any work
    save_figure(draw_runs(args), output)
    print(f"wrote {output}")
    return 0


# ----------------------------------------------------------------------------- learning-rate schedules

def plot_lr(argv):
    parser = ArgumentParser(prog="plot.py lr", description="draw the LR schedule of configs, without training")
    parser.add_argument("configs", nargs="+", help="config files (.py), then key=value overrides for all of them")
    parser.add_argument("--world-size", type=int, default=1, help="processes the run would use (sets tokens per step)")
    parser.add_argument("--output", default="lr.png")
    args = parser.parse_args(argv)
    if args.world_size < 1:
        raise UserError(f"--world-size must be at least 1, got {args.world_size}")
    figure_format(args.output)
    config_files = [a for a in args.configs if "=" not in a]
    overrides = [a for a in args.configs if "=" in a]
    if not config_files:
        raise UserError("name at least one config file (.py); key=value pairs apply to the configs named")
    # train.py declares the defaults and lays out the schedule (TrainConfig, make_schedule), once: imported here
    # and not at the top, so that reading and plotting logs never loads the training code
    import train
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for path in config_files:
        cfg, _ = train.load_config([path, *overrides])
        schedule = train.make_schedule(cfg, args.world_size)
        tokens_per_step = sched.tokens_per_step(cfg.seq_len, cfg.batch_size, cfg.grad_accum, args.world_size)
        steps = range(0, schedule.end_step + 1, max(schedule.end_step // 4000, 1))  # ~4000 points are plenty
        ax.plot([n * tokens_per_step / 1e9 for n in steps], [sched.lr_at(n, schedule) for n in steps],
                label=f"{Path(path).stem} ({cfg.schedule}, {schedule.end_step:,} steps)")
    ax.set_xlabel("tokens (billions)")
    ax.set_ylabel("learning rate")
    ax.set_title(f"learning-rate schedules, {args.world_size} process(es)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, args.output)
    print(f"wrote {args.output}")
    return 0


def main(argv):
    commands = {"lr": plot_lr, "summary": report.summary, "sweep": report.sweep, "scaling": report.scaling}
    if argv[:1] and argv[0] in commands:
        return commands[argv[0]](argv[1:])
    return plot_runs(argv)


if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))
