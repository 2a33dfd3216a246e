"""plot.py: the LR curve of a config, drawn without training; plots and summaries of run logs; bad input."""
import subprocess
import sys
from pathlib import Path

import pytest

import config
import files
import plot
import report
from config import run_main
from conftest import ROOT


def test_lr_plot_of_configs(tmp_path, capsys):
    out = tmp_path / "lr.png"
    assert plot.main(["lr", str(ROOT / "configs/ten_chinchilla.py"), str(ROOT / "configs/wsd.py"), "total_tokens=100",
                      "annealing_tokens=10", "--world-size", "4", "--output", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert f"wrote {out}" in capsys.readouterr().out


@pytest.mark.integration  # a script in its own process
def test_plot_imports_no_training_code():
    """plot.py reads logs without importing train.py (and torch with it); only `plot.py lr` needs its defaults."""
    code = "import sys, plot; assert 'train' not in sys.modules, 'train imported'; print(plot.UserError.__module__)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout == "config\n", result.stderr
    assert plot.UserError is config.UserError


def test_lr_plot_bad_key_is_one_line(tmp_path, capsys):
    assert run_main(plot.main, ["lr", str(ROOT / "configs/wsd.py"), "anealing_tokens=3", "--output",
                                str(tmp_path / "x.png")]) == 2
    assert capsys.readouterr().err == "error: unknown config key 'anealing_tokens' (did you mean 'annealing_tokens'?)\n"


# ----------------------------------------------------------------------------- runs: plots and summaries

import json
import math
import random

import numpy as np

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TOKENS_PER_STEP = 4096


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plot.plt.close("all")


def figure(argv):
    """The figure `python plot.py ARGV` would save."""
    return plot.draw_runs(plot.plot_parser().parse_args([str(a) for a in argv]))


def write_run(root, name, steps=200, eval_every=50, log_every=5, seed=0, loss_floor=2.0, warmup_steps=0):
    """A synthetic out/<name>/log.jsonl as train.py writes it: a falling, noisy train loss every
    log_every steps (one hour apart), an eval every eval_every steps whose step-0 value is a spike
    (ln 32000, an untrained model), and one event line. The learning rate rises linearly over warmup_steps,
    then stays at 1e-3. Returns the run directory."""
    rng = random.Random(seed)
    run = root / name
    run.mkdir(parents=True)
    lines = []
    for step in range(0, steps + 1):
        tokens = step * TOKENS_PER_STEP
        if step and step % log_every == 0:
            loss = loss_floor + 3 * math.exp(-step / 40) + rng.gauss(0, 0.05)
            lr = 1e-3 * min(step / warmup_steps, 1) if warmup_steps else 1e-3
            lines.append({"step": step, "tokens": tokens, "loss": loss, "lr": lr, "grad_norm": 0.5 + rng.random(),
                          "tok_per_s": 1000.0 * step, "time": 1e9 + 3600.0 * step})
        if step == 7:
            lines.append({"step": 7, "tokens": tokens, "event": "annealing started on request; the run now ends at "
                                                              f"step {steps}"})
        if step % eval_every == 0:
            eval_loss = math.log(32000) if step == 0 else loss_floor + 3 * math.exp(-step / 40) + 0.1
            lines.append({"step": step, "tokens": tokens, "eval_loss": eval_loss, "eval_bpb": eval_loss / math.log(2)})
    (run / "log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return run


def error_line(capsys):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


def test_single_run_plot_writes_png(tmp_path, capsys):
    run = write_run(tmp_path, "a")
    assert plot.main([str(run)]) == 0
    png = run / "loss.png"
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 20_000
    assert f"wrote {png}" in capsys.readouterr().out
    assert not list(run.glob("*.tmp"))  # the atomic write left nothing behind


def test_three_run_comparison_png_with_every_option(tmp_path, monkeypatch):
    runs = [str(write_run(tmp_path, name, seed=i, loss_floor=2 + i / 4)) for i, name in enumerate("abc")]
    monkeypatch.chdir(tmp_path)
    assert plot.main(runs) == 0
    png = tmp_path / "comparison.png"
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 20_000
    out = tmp_path / "all.png"
    assert plot.main([*runs, "--labels", "x,y,z", "--smooth", "5", "--perplexity", "--log-scale", "--grad-norm",
                      "--x-axis", "tokens", "--x-min", "1e5", "--y-max", "30", "--output", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC and out.stat().st_size > 20_000


def test_one_colour_per_run_and_lr_axis_only_for_one_run(tmp_path):
    runs = [str(write_run(tmp_path, name, seed=i)) for i, name in enumerate("abc")]
    fig = figure(runs)
    lines = [line for line in fig.axes[0].get_lines() if line.get_label() != "_event"]
    assert [line.get_label() for line in lines] == [f"{r}: {m}" for r in "abc" for m in ("train loss", "eval loss")]
    assert [line.get_color() for line in lines] == ["C0", "C0", "C1", "C1", "C2", "C2"]
    assert len(fig.axes) == 1  # no LR axis when comparing runs
    fig = figure(runs[:1])
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "learning rate"


def test_y_limits_by_hand():
    values = [1, 2, 3, 4, 5, 6, 7, 8, 100]
    # numpy's linear quartiles: Q1 = 3, Q3 = 7, IQR 4, fences [-3, 13]: 100 is out, 1..8 is kept, padded 5% of 7
    assert plot.y_limits(values) == pytest.approx((1 - 0.35, 8 + 0.35))
    assert plot.y_limits(values, ignore_outliers=False) == pytest.approx((1 - 4.95, 100 + 4.95))
    # on a log axis the same rule runs on log10(y): 10, 100, ..., 1e8 and a 1e30 spike
    assert plot.y_limits([10.0 ** k for k in [1, 2, 3, 4, 5, 6, 7, 8, 30]], log=True) == pytest.approx(
        (10 ** 0.65, 10 ** 8.35))


def test_outliers_left_out_of_the_y_range_of_a_plot(tmp_path):
    run = write_run(tmp_path, "a")
    records = files.read_log(run)
    spike = math.log(32000)
    curve = ([r["loss"] for r in records if "loss" in r]
             + [r["eval_loss"] for r in records if r["step"] > 0 and "eval_loss" in r])
    low, high = figure([run]).axes[0].get_ylim()
    assert high < spike and low <= min(curve)
    assert np.mean([low <= v <= high for v in curve]) > 0.8  # the spike goes, the curve stays
    low, high = figure([run, "--no-ignore-outliers"]).axes[0].get_ylim()
    assert high > spike and low <= min(curve)
    low, high = figure([run, "--y-min", "0", "--y-max", "12"]).axes[0].get_ylim()
    assert (low, high) == (0, 12)


def test_first_evals_after_the_warmup_stay_in_range(tmp_path):
    """Only the warm-up is trimmed: the evals and train losses after it (the eval at step 25 too, where the
    learning rate peaks; with train lines every 10 steps the warm-up is known to end after step 20 only) stay in
    sight however far above the rest of the curve they lie, while the step-0 spike and the warm-up's own high
    losses still go."""
    run = write_run(tmp_path, "a", steps=400, eval_every=25, log_every=10, warmup_steps=25)
    records = files.read_log(run)
    after = [r[k] for r in records if r["step"] > 20 for k in ("loss", "eval_loss") if k in r]
    first_evals = [r["eval_loss"] for r in records if 0 < r["step"] <= 75 and "eval_loss" in r]
    for x_axis in ("step", "tokens", "time"):
        low, high = figure([run, "--x-axis", x_axis]).axes[0].get_ylim()
        assert low <= min(after) and high >= max(after) >= max(first_evals)
        first_loss = next(r["loss"] for r in records if "loss" in r)
        assert high < first_loss < math.log(32000)  # the warm-up's first train loss and the step-0 spike: out
    assert plot.warmup_end(records, plot.x_positions(records, "step")) == 20  # the peak is first logged at 30
    constant = files.read_log(write_run(tmp_path, "b"))
    assert plot.warmup_end(constant, plot.x_positions(constant, "step")) == 0  # no warm-up: step 0 alone
    no_lr = [{"step": 0, "eval_loss": 9.0}, {"step": 5, "loss": 3.0}]
    assert plot.warmup_end(no_lr, [0, 5]) == 0  # without a learning rate, only the first x may be trimmed


def the_legend(fig):
    [legend] = [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    return legend


def legend_beside_the_axes(fig):
    """Whether the legend lies to the right of the top axes, whole inside the figure."""
    fig.canvas.draw()
    legend = the_legend(fig).get_window_extent()
    return legend.x0 >= fig.axes[0].get_window_extent().x1 and legend.x1 <= fig.bbox.x1


def test_legend_goes_beside_the_axes_past_three_runs_or_six_entries(tmp_path):
    runs = [str(write_run(tmp_path, name, seed=i)) for i, name in enumerate("abcd")]
    assert legend_beside_the_axes(figure(runs))  # 4 runs
    assert not legend_beside_the_axes(figure(runs[:3]))  # 3 runs, 2 metrics: 5 entries
    assert legend_beside_the_axes(figure([*runs[:2], "--metrics", "loss,eval_loss,eval_bpb,grad_norm,tok_per_s"]))
    assert not legend_beside_the_axes(figure(runs[:1]))


def test_one_colour_per_run_one_line_style_per_metric(tmp_path):
    runs = [write_run(tmp_path, name, seed=i) for i, name in enumerate("ab")]
    fig = figure([*runs, "--metrics", "loss,eval_loss,grad_norm"])
    curves = {line.get_label(): line for line in fig.axes[0].get_lines() if line.get_label() != "_event"}
    for run, colour in zip("ab", ["C0", "C1"]):
        train, evals, grad = (curves[f"{run}: {name}"] for name in ("train loss", "eval loss", "grad norm"))
        assert {train.get_color(), evals.get_color(), grad.get_color()} == {colour}
        assert (train.get_linestyle(), train.get_marker()) == ("-", "None")  # train solid
        assert (evals.get_linestyle(), evals.get_marker()) == ("--", "o")  # eval dashed, with dots
        assert (grad.get_linestyle(), grad.get_marker()) == (":", "None")  # the others dotted
    legend = the_legend(fig)  # the runs by colour, then the metrics by style
    assert [text.get_text() for text in legend.get_texts()] == ["a", "b", "train loss", "eval loss", "grad norm"]
    assert [h.get_color() for h in legend.legend_handles[:2]] == ["C0", "C1"]
    assert [h.get_linestyle() for h in legend.legend_handles] == ["-", "-", "-", "--", ":"]
    fig = figure(runs[:1])  # one run: its metrics in its colour, and the learning rate, over every curve
    assert the_legend(fig).axes is fig.axes[-1] and fig.axes[-1].get_ylabel() == "learning rate"
    assert [text.get_text() for text in the_legend(fig).get_texts()] == ["train loss", "eval loss", "learning rate"]


@pytest.mark.parametrize("x_axis, expected", [("step", [7, 20]),
                                              ("tokens", [7 * TOKENS_PER_STEP, 20 * TOKENS_PER_STEP]),
                                              ("time", [2, 15])])  # time: train lines an hour a step from step 5
def test_control_events_are_marked_on_every_x_axis(tmp_path, x_axis, expected):
    run = write_run(tmp_path, "a", steps=20, eval_every=10, log_every=5)  # annealing started at step 7
    with open(run / "log.jsonl", "a") as f:
        f.write(json.dumps({"step": 20, "tokens": 20 * TOKENS_PER_STEP,
                            "event": "stopped by the stop command: saved; the same command resumes"}) + "\n")
    fig = figure([run, "--x-axis", x_axis, "--grad-norm"])
    for ax in fig.axes[:2]:  # the loss panel and the grad-norm panel
        marks = [line for line in ax.get_lines() if line.get_label() == "_event"]
        assert [list(line.get_xdata()) for line in marks] == [[x, x] for x in expected]
    assert [text.get_text().strip() for text in fig.axes[0].texts] == ["anneal", "stop"]
    assert len(fig.axes[1].texts) == 0  # labelled once, at the top
    fig = figure([run, "--x-axis", x_axis, "--x-min", str(expected[0] + 1)])  # an event outside the x range: left out
    assert [text.get_text().strip() for text in fig.axes[0].texts] == ["stop"]


def test_event_labels():
    assert plot.event_label("annealing started on request; the run now ends at step 90") == "anneal"
    assert plot.event_label("stopped by a signal: saved; the same command resumes") == "stop"
    assert plot.event_label("saved on request") == "save"
    assert plot.event_label("aborted: exiting without saving") == "abort"
    assert plot.event_label("anneal ignored: it needs schedule='infinite' or 'wsd'") == "anneal ignored"


def test_moving_average_by_hand():
    assert plot.moving_average([1, 2, 3, 4, 10], 3) == pytest.approx([1, 1.5, 2, 3, 17 / 3])
    assert plot.moving_average([1, 2, 3, 4, 10], 1) == pytest.approx([1, 2, 3, 4, 10])
    assert plot.moving_average([4, 8], 10) == pytest.approx([4, 6])


def test_smoothed_curve_drawn_over_the_raw_one(tmp_path):
    run = write_run(tmp_path, "a")
    fig = figure([run, "--smooth", "4"])
    raw, smoothed = fig.axes[0].get_lines()[:2]
    y = raw.get_ydata()
    assert raw.get_alpha() < 1 and smoothed.get_alpha() in (None, 1)  # raw faint, smoothed opaque
    assert len(raw.get_ydata()) == len(smoothed.get_ydata())
    assert smoothed.get_ydata()[10] == pytest.approx(np.mean(y[7:11]))


def test_x_axis_tokens_and_time(tmp_path):
    run = write_run(tmp_path, "a", steps=20, eval_every=10, log_every=5)
    records = files.read_log(run)
    assert plot.x_positions(records, "tokens") == [r["step"] * TOKENS_PER_STEP for r in records]
    # train lines are 5 hours apart from step 5; evals at steps 0, 10, 20 and the event at step 7 interpolate
    hours = dict(zip([(r["step"], tuple(sorted(r))) for r in records], plot.x_positions(records, "time")))
    assert [h for (step, keys), h in hours.items() if "loss" in keys] == [0, 5, 10, 15]
    assert [h for (step, keys), h in hours.items() if "eval_loss" in keys] == [0, 5, 15]
    assert [h for (step, keys), h in hours.items() if "event" in keys] == [2]
    fig = figure([run, "--x-axis", "tokens"])
    assert list(fig.axes[0].get_lines()[0].get_xdata()) == [5 * TOKENS_PER_STEP * k for k in range(1, 5)]
    assert fig.axes[0].get_xlabel() == "tokens"
    fig = figure([run, "--x-axis", "time"])
    assert list(fig.axes[0].get_lines()[1].get_xdata()) == [0, 5, 15]


def test_perplexity_and_metrics(tmp_path):
    run = write_run(tmp_path, "a")
    records = files.read_log(run)
    fig = figure([run, "--perplexity"])
    train_line = fig.axes[0].get_lines()[0]
    assert train_line.get_ydata() == pytest.approx([math.exp(r["loss"]) for r in records if "loss" in r])
    fig = figure([run, "--metrics", "grad_norm", "--grad-norm"])
    grad_norms = [r["grad_norm"] for r in records if "grad_norm" in r]
    assert fig.axes[0].get_lines()[0].get_ydata() == pytest.approx(grad_norms)
    assert fig.axes[1].get_ylabel() == "grad norm"


def summary_records():
    return [{"step": 0, "tokens": 0, "eval_loss": 10.0},
            {"step": 10, "tokens": 40960, "loss": 3.0, "tok_per_s": 100.0, "mfu": 0.1, "time": 1.0},
            {"step": 10, "tokens": 40960, "eval_loss": 2.5},
            {"step": 20, "tokens": 81920, "loss": 2.6, "tok_per_s": 300.0, "mfu": 0.3, "time": 2.0},
            {"step": 20, "tokens": 81920, "eval_loss": 2.75},
            {"step": 30, "tokens": 122880, "loss": 2.4, "tok_per_s": 200.0, "mfu": 0.2, "time": 3.0}]


def test_summary_numbers_in_both_formats(tmp_path, capsys):
    run = tmp_path / "best"
    run.mkdir()
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in summary_records()))
    assert report.summarize(summary_records()) == {"best_eval_loss": 2.5, "best_eval_ppl": pytest.approx(math.exp(2.5)),
                                                 "best_step": 10, "best_tokens": 40960, "final_loss": 2.4,
                                                 "median_tok_per_s": 200.0, "median_mfu": 0.2}
    (tmp_path / "empty").mkdir()
    assert plot.main(["summary", str(run), str(tmp_path / "empty")]) == 0
    out, err = capsys.readouterr()
    assert err == f"note: skipping {tmp_path / 'empty'}: no log.jsonl\n"
    header, line = out.splitlines()
    assert line.split() == ["best", "2.5000", "12.18", "10", "40,960", "2.4000", "200", "20.0%"]
    assert header.startswith("run") and "best eval loss" in header
    assert plot.main(["summary", str(run), "--format", "md"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "| run | best eval loss | ppl | at step | at tokens | final train loss | median tok/s | median mfu |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        "| best | 2.5000 | 12.18 | 10 | 40,960 | 2.4000 | 200 | 20.0% |"]


def test_summary_pools_seeds_and_compares_groups_with_welch(tmp_path, capsys):
    """Runs whose config.json differ only in the seed are one group: mean ± std of the best and final eval loss;
    --baseline gives each group's difference to it with Welch's 95% interval (test_stats.py computes this one by
    hand: -0.3 +- 0.2267) and the verdict."""
    def write(name, seed, lr, best):
        run = tmp_path / name
        run.mkdir()
        (run / "config.json").write_text(json.dumps({"run_name": name, "seed": seed, "lr": lr, "out_dir": "out"}))
        records = [{"step": 0, "eval_loss": 5.0}, {"step": 10, "loss": 3.0, "tok_per_s": 1.0},
                   {"step": 10, "eval_loss": best}, {"step": 20, "eval_loss": best + 0.05}]
        (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        return str(run)

    runs = [write(f"a-seed{i}", i, 1e-3, best) for i, best in zip((1, 2, 3), (1.0, 1.2, 1.1))]
    runs += [write(f"b-seed{i}", i, 3e-3, best) for i, best in zip((1, 2, 3), (1.3, 1.5, 1.4))]
    runs += [write("c", 1, 1e-2, 2.0)]
    assert plot.main(["summary", *runs, "--baseline", "b"]) == 0
    out = capsys.readouterr().out.split("\n\n")[1].splitlines()
    assert out[0].split()[:2] == ["group", "n"]
    rows = {line.split()[0]: line for line in out[1:]}
    assert rows["a"].split()[1:8] == ["3", "1.1000", "±", "0.1000", "1.1500", "±", "0.1000"]
    assert "-0.3000 [-0.5267, -0.0733]" in rows["a"] and rows["a"].endswith("better")
    assert "baseline" in rows["b"]
    assert rows["c"].endswith("needs 2+ seeds a group")
    assert run_main(plot.main, ["summary", *runs, "--baseline", "nope"]) == 2
    assert "--baseline nope: no such run or group among a, b, c" in capsys.readouterr().err


def test_summary_of_a_run_without_evals(tmp_path, capsys):
    assert report.summarize([{"step": 5, "tokens": 5, "loss": 3.0}]) == {
        "best_eval_loss": None, "best_eval_ppl": None, "best_step": None, "best_tokens": None,
        "final_loss": 3.0, "median_tok_per_s": None, "median_mfu": None}


@pytest.mark.parametrize("case", ["missing", "metric", "malformed", "no_step", "labels", "option", "summary_malformed"])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, case):
    run = write_run(tmp_path, "a")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "log.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": \n')
    argv, expected = {
        "missing": ([str(tmp_path / "nope")], f"error: no log.jsonl in {tmp_path / 'nope'}\n"),
        "metric": ([str(run), "--metrics", "loss,grad_nrom"], "did you mean 'grad_norm'?"),
        "malformed": ([str(broken)], f"error: {broken / 'log.jsonl'} line 2 is not valid JSON\n"),
        "no_step": ([str(broken)], "with a numeric step"),
        "labels": ([str(run), str(run), "--labels", "x"], "error: --labels has 1 names for 2 runs\n"),
        "option": ([str(run), "--x-axis", "wall"], "invalid choice: 'wall'"),
        "summary_malformed": (["summary", str(run), str(broken)], "line 2 is not valid JSON"),
    }[case]
    if case == "no_step":
        (broken / "log.jsonl").write_text('{"step": 1, "loss": 2.0}\n["loss", 2.0]\n')
    assert run_main(plot.main, argv) == 2
    assert expected in error_line(capsys)


def test_a_torn_last_line_is_left_out_with_a_note(tmp_path, capsys):
    run = write_run(tmp_path, "a")
    complete = files.read_log(run)
    with open(run / "log.jsonl", "a") as f:
        f.write('{"step": 201, "tok')  # killed mid-write
    assert files.read_log(run) == complete
    assert capsys.readouterr().err == f"note: {run / 'log.jsonl'} ends in a torn line; left out\n"


def test_summary_of_no_run_at_all(tmp_path, capsys):
    assert run_main(plot.main, ["summary", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err == (f"note: skipping {tmp_path / 'nope'}: no log.jsonl\n"
                                       "error: none of the paths holds a log line (out/<run>/log.jsonl)\n")


def test_figures_go_through_the_one_atomic_write(tmp_path, monkeypatch, capsys):
    written, original = [], files.write_atomic

    def recording(path, write):
        written.append(path)
        return original(path, write)

    monkeypatch.setattr(files, "write_atomic", recording)
    run = write_run(tmp_path, "a")
    assert plot.main([str(run), "--output", str(tmp_path / "a.svg")]) == 0
    assert plot.main(["lr", str(ROOT / "configs/wsd.py"), "total_tokens=100", "annealing_tokens=10", "--output",
                      str(tmp_path / "lr.pdf")]) == 0
    assert [Path(p).name for p in written] == ["a.svg", "lr.pdf"]
    assert (tmp_path / "a.svg").read_bytes().startswith(b"<?xml") and (tmp_path / "lr.pdf").read_bytes()[:4] == b"%PDF"


def test_a_failed_figure_write_keeps_the_previous_figure(tmp_path, monkeypatch, capsys):
    run = write_run(tmp_path, "a")
    assert plot.main([str(run)]) == 0
    before = (run / "loss.png").read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(plot.plt.Figure, "savefig", disk_full)
    capsys.readouterr()
    assert run_main(plot.main, [str(run)]) == 2
    line = error_line(capsys)
    assert line.startswith(f"error: could not write {run / 'loss.png'}: No space left on device (")
    assert line.endswith(" free on its disk); the previous file is left as it was\n")
    assert (run / "loss.png").read_bytes() == before
    assert sorted(p.name for p in run.iterdir()) == ["log.jsonl", "loss.png"]  # no temp file


BAD_LOGS = {  # name: log.jsonl content (None: no log.jsonl; "dir": log.jsonl is a directory)
    "nolog": None,
    "logdir": "dir",
    "empty": "",
    "blank": "\n  \n",
    "notjson": '{"step": 1, "loss": 2.0}\nnot json\n{"step": 2, "loss": 1.0}\n',
    "notutf8": b'{"step": 1, "loss": 2.0}\n\xff\xfe\n',
    "list": '["step", 1]\n',
    "boolstep": '{"step": true, "loss": 2.0}\n',
    "nanloss": '{"step": 1, "tokens": 1, "loss": NaN, "eval_loss": 2.0}\n',
    "infspeed": '{"step": 1, "tokens": 1, "loss": 2.0, "tok_per_s": Infinity}\n',
    "textloss": '{"step": 1, "tokens": 1, "loss": "low", "eval_loss": 2.0}\n',
    "texttokens": '{"step": 1, "tokens": "many", "loss": 2.0}\n',
    "texttime": '{"step": 1, "tokens": 1, "loss": 2.0, "time": "noon"}\n',
    "textevalloss": '{"step": 1, "tokens": 1, "eval_loss": "best"}\n',
    "negative": '{"step": 1, "tokens": 1, "loss": -2.0}\n{"step": 2, "tokens": 2, "loss": 0}\n',
}

BAD_INPUT = [  # (argv with {run}, {out} and {log name} placeholders, what the one error line says)
    ([], "the following arguments are required: runs"),
    (["{nope}"], "no log.jsonl in"),
    (["{nolog}"], "no log.jsonl in"),
    (["{logdir}"], "no log.jsonl in"),
    (["{empty}"], "log.jsonl holds no log line"),
    (["{blank}"], "log.jsonl holds no log line"),
    (["{notjson}"], "log.jsonl line 2 is not valid JSON"),
    (["{notutf8}"], "log.jsonl is not UTF-8 text"),
    (["{list}"], "line 1 is not a JSON object with a numeric step"),
    (["{boolstep}"], "line 1 is not a JSON object with a numeric step"),
    (["{nanloss}"], "line 1: loss is nan, not a finite number"),
    (["{infspeed}", "--metrics", "loss"], "line 1: tok_per_s is inf, not a finite number"),
    (["{textloss}"], "line 1: loss is 'low', not a finite number"),
    (["{texttokens}", "--metrics", "loss"], "line 1: tokens is 'many', not a finite number"),
    (["{texttime}", "--metrics", "loss", "--x-axis", "time"], "line 1: time is 'noon', not a finite number"),
    (["{run}", "--metrics", "loss,grad_nrom"], "did you mean 'grad_norm'?"),
    (["{run}", "--metrics", "loss,,eval_loss"], "--metrics has an empty name"),
    (["{run}", "{run}", "--labels", "x"], "--labels has 1 names for 2 runs"),
    (["{run}", "--labels", ""], "--labels has an empty name"),
    (["{run}", "--smooth", "0"], "--smooth must be at least 1"),
    (["{run}", "--smooth", "x"], "argument --smooth: invalid int value: 'x'"),
    (["{run}", "--x-axis", "wall"], "invalid choice: 'wall'"),
    (["{run}", "--x-min", "nan"], "--x-min must be a finite number, got nan"),
    (["{run}", "--y-max", "inf"], "--y-max must be a finite number, got inf"),
    (["{run}", "--x-min", "5", "--x-max", "1"], "--x-min 5.0 must be below --x-max 1.0"),
    (["{run}", "--y-min", "3", "--y-max", "3"], "--y-min 3.0 must be below --y-max 3.0"),
    (["{run}", "--x-min", "1e9"], "the x axis would run from 1e+09 down to"),
    (["{run}", "--y-min", "100"], "the y axis would run from 100 down to"),
    (["{negative}", "--metrics", "loss", "--log-scale"], "--log-scale: no value above 0 to draw"),
    (["{run}", "--bogus"], "unrecognized arguments: --bogus"),
    (["{run}", "--output", "{out}/x.xyz"], "x.xyz: the suffix names no figure format (png, pdf, svg"),
    (["{run}", "--output", "{out}/x"], "/x: the suffix names no figure format"),
    (["{run}", "--output", ""], "--output : the suffix names no figure format"),
    (["{run}", "--output", "{out}/no/such/dir/x.png"], "could not write"),
    (["{run}", "--output", "{pngdir}"], "could not write"),
    (["summary"], "the following arguments are required: runs"),
    (["summary", "{nope}", "{nolog}", "{empty}"], "none of the paths holds a log line (out/<run>/log.jsonl)"),
    (["summary", "{run}", "{notjson}"], "line 2 is not valid JSON"),
    (["summary", "{run}", "{notutf8}"], "is not UTF-8 text"),
    (["summary", "{nanloss}"], "loss is nan, not a finite number"),
    (["summary", "{infspeed}"], "tok_per_s is inf, not a finite number"),
    (["summary", "{textloss}"], "loss is 'low', not a finite number"),
    (["summary", "{textevalloss}"], "eval_loss is 'best', not a finite number"),
    (["summary", "{texttokens}"], "tokens is 'many', not a finite number"),
    (["summary", "{run}", "--format", "xx"], "invalid choice: 'xx'"),
    (["lr"], "the following arguments are required: configs"),
    (["lr", "{out}/nope.py"], "config file"),
    (["lr", "lr=1e-3"], "name at least one config file"),
    (["lr", "{wsd}", "--world-size", "0"], "--world-size must be at least 1, got 0"),
    (["lr", "{wsd}", "--world-size", "-2"], "--world-size must be at least 1, got -2"),
    (["lr", "{wsd}", "--world-size", "two"], "argument --world-size: invalid int value: 'two'"),
    (["lr", "{wsd}", "--output", "{out}/lr.xyz"], "lr.xyz: the suffix names no figure format"),
    (["lr", "{wsd}", "--output", "{out}/no/dir/lr.png"], "could not write"),
    (["lr", "{wsd}", "--bogus"], "unrecognized arguments: --bogus"),
    (["lr", "{wsd}", "lr=-1"], "lr=-1.0 must be greater than 0"),
]


@pytest.mark.parametrize("argv, message", BAD_INPUT, ids=[" ".join(a) or "none" for a, _ in BAD_INPUT])
def test_every_bad_argument_or_log_value_is_one_line_exit_2(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)  # a case that wrongly succeeds writes its default lr.png or comparison.png here
    paths = {"run": write_run(tmp_path, "run"), "nope": tmp_path / "nope", "out": tmp_path,
             "wsd": ROOT / "configs/wsd.py", "pngdir": tmp_path / "a directory.png"}
    paths["pngdir"].mkdir()
    for name, content in BAD_LOGS.items():
        paths[name] = tmp_path / name
        paths[name].mkdir()
        if content == "dir":
            (paths[name] / "log.jsonl").mkdir()
        elif content is not None:
            log = paths[name] / "log.jsonl"
            log.write_bytes(content) if isinstance(content, bytes) else log.write_text(content)
    capsys.readouterr()
    assert run_main(plot.main, [a.format(**paths) for a in argv]) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert lines and lines[-1].startswith("error: ") and message in lines[-1], err
    assert all(line.startswith("note: skipping") for line in lines[:-1]), err  # summary notes what it skips
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_runs_differing_only_in_seed_are_one_mean_curve_in_a_band(tmp_path):
    """Three seeds of one config are one series: its mean train loss (the mean of the three, point by point) drawn
    over a band of ± one standard deviation; another config stays a run of its own; --each-run draws every run."""
    paths = []
    for seed in (1, 2, 3):
        paths.append(write_run(tmp_path, f"a-seed{seed}", seed=seed))
        (paths[-1] / "config.json").write_text(json.dumps({"run_name": f"a-seed{seed}", "seed": seed, "lr": 1e-3}))
    paths.append(write_run(tmp_path, "b", seed=9))
    (paths[-1] / "config.json").write_text(json.dumps({"run_name": "b", "seed": 9, "lr": 3e-3}))
    ax = figure([*paths, "--metrics", "loss"]).axes[0]
    lines = {line.get_label(): line for line in ax.get_lines() if line.get_label() != "_event"}
    assert set(lines) == {"a (mean of 3 seeds ± std): train loss", "b: train loss"}
    losses = np.array([[r["loss"] for r in files.read_log(p) if "loss" in r] for p in paths[:3]])
    mean = lines["a (mean of 3 seeds ± std): train loss"].get_ydata()
    assert np.allclose(mean, losses.mean(axis=0))
    band, = ax.collections  # one band: b is one run
    low, high = band.get_paths()[0].vertices[:, 1].min(), band.get_paths()[0].vertices[:, 1].max()
    spread = losses.std(axis=0, ddof=1)
    assert low == pytest.approx((losses.mean(axis=0) - spread).min()) and high == pytest.approx(
        (losses.mean(axis=0) + spread).max())
    each = figure([*paths, "--metrics", "loss", "--each-run"]).axes[0]
    assert len([line for line in each.get_lines() if line.get_label() != "_event"]) == 4 and not each.collections
    with pytest.raises(config.UserError, match="--labels has 4 names for 2 series"):
        figure([*paths, "--labels", "w,x,y,z"])
