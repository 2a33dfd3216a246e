"""Plots and summaries of runs, and of learning-rate schedules.

    python plot.py out/RUN [out/RUN2 ...] [--smooth 10] [--perplexity] [--grad-norm] [--x-axis tokens] [--output x.png]
    python plot.py summary out/* [--format md] [--baseline RUN_OR_GROUP]
    python plot.py lr configs/ten_chinchilla.py configs/wsd.py [key=value ...] [--world-size 4] [--output lr.png]

A plot reads out/<run>/log.jsonl (its keys: docs/training.md) and draws, by default, the train loss and the
eval loss of each run: one colour per run, one line style per metric (the first train metric solid, other
train metrics dotted, eval metrics dashed with markers), and for a single run the learning rate on a second y
axis (grey, dotted). Lines without the plotted metric (eval lines for `loss`, event lines) are skipped. The
legend lists the runs by colour and the metrics by style; past 3 runs or 6 entries it goes to the right of
the axes, off the curves. Control events (event lines: an annealing started, a stop, a save, an abort) are
thin vertical lines in the run's colour, labelled at the top (anneal, stop, save, abort).

The y range ignores outliers of the warm-up unless --no-ignore-outliers: a value drawn in its run's warm-up
(up to the last train line before the first one at the run's highest learning rate, and always at the log's
first x, the untrained model's) is left out when it lies outside Tukey's fences [Q1 - 1.5 IQR, Q3 + 1.5 IQR]
of everything drawn in the x range (quartiles of log10(y) with --log-scale); every value after the warm-up is
kept, so the first evals stay in sight. The range runs from the smallest to the largest value kept, plus 5% either side.
An early spike such as the loss at step 0 (about ln(vocabulary size)) then no longer flattens the rest of
the curve.

`summary` prints one line per run: the best eval loss, its perplexity, the step and tokens where
it was reached, the final train loss, the median tokens/s and the median MFU. Runs whose config.json differ only
in their seed are then pooled, a line per group: n, mean ± std of the best and the final eval loss; with
--baseline, each group's difference to it with Welch's 95% interval and a verdict (stats.py).

`lr` draws the learning rate of each config over its whole budget, without training: the
schedule is a pure function of the step (sched.py), laid out exactly as train.py would lay it
out for --world-size processes. key=value overrides apply to every config.

Figures are written through files.write_atomic, in the format their suffix names. Every mistake (a missing,
empty or damaged log, a value that is not a finite number, a bad option) ends with one line, exit status 2.
"""
import difflib
import json
import math
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.backend_bases import FigureCanvasBase
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogFormatter

import files
import sched
from config import ArgumentParser, UserError, one_line, run_main  # UserError: one line on stderr, exit status 2

TEXT_KEYS = ("event",)  # the log keys whose values are text; every other value is a finite number (train.py logs)
DEFAULT_METRICS = ["loss", "eval_loss"]
NAMES = {"loss": "train loss", "eval_loss": "eval loss", "grad_norm": "grad norm", "lr": "learning rate",
         "tok_per_s": "tokens/s", "mfu": "MFU", "eval_bpb": "eval bits/byte", "eval_ppl": "eval perplexity"}
TRAIN_STYLES = ["-", ":", "-."]  # the line style of each train metric: the first (the loss) solid, the others dotted
EVAL_MARKERS = ["o", "s", "^", "D"]  # eval metrics are dashed, with one marker each
EVENT_LABELS = {"annealing started": "anneal", "stopped": "stop", "saved": "save", "aborted": "abort"}  # by prefix
LEGEND_INSIDE = (3, 6)  # at most this many runs and legend entries keep the legend inside the axes


# ----------------------------------------------------------------------------- reading logs

def read_log(run_dir):
    """The records of run_dir/log.jsonl, in file order (blank lines skipped; [] for an empty log). Every value is
    a finite number, but text under TEXT_KEYS: anything else stops with one line naming the line and the key."""
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        raise UserError(f"no log.jsonl in {run_dir}")
    try:
        lines = path.read_text(encoding="utf-8").split("\n")  # a complete file ends in "\n", so its last piece is ""
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # no newline yet: a write torn by a kill (train.py drops it on resume)
                print(f"note: {path} ends in a torn line; left out", file=sys.stderr)
                break
            raise UserError(f"{path} line {number} is not valid JSON") from None
        if not isinstance(record, dict) or not is_number(record.get("step")):
            raise UserError(f"{path} line {number} is not a JSON object with a numeric step")
        for key, value in record.items():
            if key not in TEXT_KEYS and not (is_number(value) and math.isfinite(value)):
                raise UserError(f"{path} line {number}: {key} is {value!r}, not a finite number")
        records.append(record)
    return records


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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


def draw_panel(ax, runs, labels, metrics, args, log=False, y_min=None, y_max=None):
    """Draw `metrics` of every run on ax (one colour per run, one style per metric) and set its y range."""
    drawn_x, drawn_y, after_warmup = [], [], []
    for i, (records, label) in enumerate(zip(runs, labels)):
        xs = x_positions(records, args.x_axis)
        end = warmup_end(records, xs)
        for metric in metrics:
            x, y = curve(records, xs, metric, args.perplexity)
            if len(x) == 0:
                continue
            name = metric_name(metric, args.perplexity)
            draw(ax, x, y, run_color(i), name if len(runs) == 1 else f"{label}: {name}", metric_style(metric, metrics),
                 args.smooth)
            drawn_x.append(x)
            drawn_y.append(y)
            after_warmup.append(x > end)
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


def draw_events(axes, runs, args):
    """Every event line of every run as a thin vertical line in the run's colour on each of axes, labelled at the
    top of the first; events outside --x-min / --x-max are left out."""
    for i, records in enumerate(runs):
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


def title(labels, metrics, args):
    who = labels[0] if len(labels) == 1 else f"{len(labels)} runs"
    what = ("train and eval " + ("perplexity" if args.perplexity else "loss") if metrics == DEFAULT_METRICS
            else ", ".join(metric_name(m, args.perplexity) for m in metrics))
    smoothing = f" (train curves: mean of {args.smooth} points)" if args.smooth > 1 else ""
    return f"{who}: {what}{smoothing}"


X_LABELS = {"step": "step", "tokens": "tokens", "time": "hours since the first train line"}


def draw_runs(args):
    """The figure of the runs in args (see plot_parser); raises UserError on bad input."""
    check_options(args)
    runs = [read_log(path) for path in args.runs]
    for path, records in zip(args.runs, runs):
        if not records:
            raise UserError(f"{Path(path) / 'log.jsonl'} holds no log line yet")
    labels = args.labels.split(",") if args.labels is not None else [Path(path).resolve().name for path in args.runs]
    if len(labels) != len(runs):
        raise UserError(f"--labels has {len(labels)} names for {len(runs)} runs")
    metrics = args.metrics.split(",") if args.metrics is not None else DEFAULT_METRICS
    for option, names in (("--labels", labels), ("--metrics", metrics)):
        if not all(names):
            raise UserError(f"{option} has an empty name: {','.join(names)!r}")
    for metric in metrics + (["grad_norm"] if args.grad_norm else []):
        check_metric(metric, runs, args.runs)
    lr = len(runs) == 1 and "lr" not in metrics and any("lr" in r for r in runs[0])
    entries = legend_entries(labels, metrics, args.perplexity, lr)
    outside = len(runs) > LEGEND_INSIDE[0] or len(entries) > LEGEND_INSIDE[1]
    width = 11.5 if outside else 9  # the legend takes a column of its own beside the axes
    if args.grad_norm:
        fig, (ax, grad_ax) = plt.subplots(2, 1, figsize=(width, 6.5), sharex=True, height_ratios=[3, 1])
    else:
        fig, ax = plt.subplots(figsize=(width, 5))
    draw_panel(ax, runs, labels, metrics, args, args.log_scale, args.y_min, args.y_max)
    ax.set_ylabel(y_label(metrics, args.perplexity))
    top = draw_lr(ax, runs[0], args) if lr else ax  # the legend goes on the axis drawn last, over every curve
    if outside:
        top.legend(handles=entries, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0, fontsize=9)
    else:
        top.legend(handles=entries, loc="upper right", fontsize=9)
    bottom = ax
    if args.grad_norm:
        draw_panel(grad_ax, runs, labels, ["grad_norm"], args)
        grad_ax.set_ylabel("grad norm")
        bottom = grad_ax
    draw_events([ax, grad_ax] if args.grad_norm else [ax], runs, args)
    bottom.set_xlabel(X_LABELS[args.x_axis])
    if args.x_axis == "tokens":
        bottom.xaxis.set_major_formatter(FuncFormatter(format_count))
    ax.set_xlim(args.x_min, args.x_max)
    check_range(ax.get_xlim(), "x")
    ax.set_title(title(labels, metrics, args))
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


def figure_format(output):
    """The format that the suffix of --output names (png, pdf, svg, ...), or UserError."""
    formats = FigureCanvasBase.get_supported_filetypes()
    suffix = Path(output).suffix.lstrip(".").lower()
    if suffix not in formats:
        raise UserError(f"--output {output}: the suffix names no figure format (png, pdf, svg; all: "
                        f"{', '.join(sorted(formats))})")
    return suffix


def save_figure(fig, path):
    """Write fig through files.write_atomic (a temp file beside it, synced, then a rename); the suffix sets the
    format. A failed write (a full disk) is one line, and leaves no temp file and the previous figure as it was."""
    try:
        files.write_atomic(path, lambda f: fig.savefig(f, format=figure_format(path), dpi=110))
    except (ValueError, RuntimeError) as e:  # a format that needs a missing tool (pgf: LaTeX), say
        raise UserError(f"cannot draw {path}: {one_line(e)}") from None
    finally:
        plt.close(fig)


def plot_parser():
    parser = ArgumentParser(prog="plot.py", description="plot the loss curves of runs (out/<run>/log.jsonl)")
    parser.add_argument("runs", nargs="+", help="run directories")
    parser.add_argument("--output", help="default: <run>/loss.png for one run, comparison.png for several")
    parser.add_argument("--metrics",
                        help="comma list of log keys instead of loss,eval_loss (e.g. loss,eval_loss,grad_norm)")
    parser.add_argument("--labels", help="comma list of legend names, one per run (default: the directory names)")
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
    import stats
    groups = stats.seed_groups({name: config for name, (config, _) in runs.items()})
    best = {g: [summarize(runs[r][1])["best_eval_loss"] for r in members] for g, members in groups.items()}
    final = {g: [[x["eval_loss"] for x in runs[r][1] if "eval_loss" in x][-1] for r in members]
             for g, members in groups.items()}
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
    rows, runs = [], {}
    for path in args.runs:
        has_log = (Path(path) / "log.jsonl").is_file()
        records = read_log(path) if has_log else []
        if not records:
            print(f"note: skipping {path}: {'its log.jsonl holds no log line yet' if has_log else 'no log.jsonl'}",
                  file=sys.stderr)
            continue
        name = Path(path).resolve().name
        rows.append(summary_row(name, summarize(records)))
        config_path = Path(path) / "config.json"
        if any("eval_loss" in r for r in records):
            runs[name] = (json.loads(config_path.read_text()) if config_path.is_file() else {"run_name": name}, records)
    if not rows:
        raise UserError("none of the paths holds a log line (out/<run>/log.jsonl)")
    print(format_table(rows, markdown=args.format == "md"))
    groups = group_rows(runs, args.baseline)
    if args.baseline is not None or any(row[1] != "1" for row in groups):  # seeds to pool, or a comparison asked for
        print()
        print(format_table(groups, markdown=args.format == "md", columns=GROUP_COLUMNS))
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
    if argv[:1] == ["lr"]:
        return plot_lr(argv[1:])
    if argv[:1] == ["summary"]:
        return summary(argv[1:])
    return plot_runs(argv)


if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))
