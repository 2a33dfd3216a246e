"""report.py through plot.py's commands: a sweep's final loss against its key, seed groups pooled; a scaling-law
fit of runs whose losses follow a known law. (Summaries: test_plot.py; the statistics: test_stats.py.)"""
import dataclasses
import json
import math

import pytest

import model as model_lib
import plot
import report
from config import run_main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plot.plt.close("all")


def write_run(root, name, config, final_loss, tokens=1000):
    """A run directory: config.json, and a log ending in a train line at `tokens` and an eval of final_loss (an
    earlier, better eval first: the final eval is the one read, not the best)."""
    run = root / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"run_name": name, "out_dir": str(root), **config}))
    records = [{"step": 0, "tokens": 0, "eval_loss": 9.0}, {"step": 5, "tokens": tokens // 2, "eval_loss": final_loss - 0.5},
               {"step": 10, "tokens": tokens, "loss": final_loss + 0.1}, {"step": 10, "tokens": tokens,
                                                                          "eval_loss": final_loss}]
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(run)


def test_a_sweep_is_a_line_per_setting_and_a_point_per_seed_group(tmp_path, capsys):
    """An lr x optimizer sweep at 2 seeds: a line per optimizer, its points the seed means in lr order."""
    runs = []
    for optimizer, offset in (("adamw", 0.0), ("muon", -0.2)):
        for lr in (3e-3, 1e-3, 1e-2):
            for seed, noise in ((1, -0.01), (2, 0.01)):
                loss = 2.0 + offset + (math.log10(lr) + 2.5) ** 2 + noise
                runs.append(write_run(tmp_path, f"s-lr{lr}-{optimizer}-seed{seed}",
                                      {"lr": lr, "optimizer": optimizer, "seed": seed, "dim": 64}, loss))
    lines = report.sweep_lines(report.read_runs(runs), "lr")
    assert [label for label, _ in lines] == ["optimizer='adamw'", "optimizer='muon'"]
    label, points = lines[1]
    assert [value for value, _ in points] == [1e-3, 3e-3, 1e-2]
    assert points[1][1] == [pytest.approx(1.8 + (math.log10(3e-3) + 2.5) ** 2 + n) for n in (-0.01, 0.01)]
    output = tmp_path / "sweep.png"
    assert plot.main(["sweep", *runs, "--key", "lr", "--output", str(output)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"optimizer='adamw': best lr=0.003, final eval loss {2 + (math.log10(3e-3) + 2.5) ** 2:.4f} " \
                     "± 0.0141 (n=2)"
    assert output.read_bytes().startswith(PNG_MAGIC)
    # without --key: lr is the one numeric key that varies (optimizer is text)
    assert report.swept_key([json.loads((tmp_path / r / "config.json").read_text()) for r in runs]) == "lr"


@pytest.mark.parametrize("extra, message", [
    (["--key", "dim"], "--key dim: the runs do not differ in it (they differ in: lr, warmup)"),
    ([], "name the swept key with --key: the runs differ in lr, warmup"),
    (["--output", "x.nope"], "the suffix names no figure format"),
])
def test_a_bad_sweep_plot_is_one_line(tmp_path, capsys, extra, message):
    runs = [write_run(tmp_path, f"r{i}", {"lr": lr, "warmup": w, "seed": 1, "dim": 64}, 2.0)
            for i, (lr, w) in enumerate([(1e-3, 10), (3e-3, 20)])]
    assert run_main(plot.main, ["sweep", *runs, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1, err


def scaling_runs(root, truth, noise=0.0):
    """4 model sizes x 3 token budgets whose final eval losses follow the law `truth` (times 1 + noise, alternating
    in sign), with config.json as train.py writes it (the model's fields)."""
    runs, sign = [], 1
    for dim, n_layers in ((32, 2), (48, 3), (64, 4), (96, 4)):
        config = dataclasses.asdict(model_lib.ModelConfig(vocab_size=257, dim=dim, n_layers=n_layers, n_heads=4,
                                                          ffn_dim=dim * 3))
        n = model_lib.parameter_summary(model_lib.ModelConfig(**config))["non_embedding"]
        for tokens in (1_000_000, 2_000_000, 4_000_000):
            loss = (truth["E"] + truth["A"] / n ** truth["alpha"] + truth["B"] / tokens ** truth["beta"])
            sign = -sign
            runs.append(write_run(root, f"d{dim}-t{tokens}", {**config, "seed": 1}, loss * (1 + sign * noise), tokens))
    return runs


def test_a_scaling_fit_of_runs_recovers_their_law(tmp_path, capsys):
    truth = {"E": 1.1, "A": 60.0, "alpha": 0.4, "B": 300.0, "beta": 0.35}
    runs = scaling_runs(tmp_path, truth, noise=0.002)
    output = tmp_path / "scaling.png"
    assert plot.main(["scaling", *runs, "--bootstrap", "10", "--output", str(output)]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in out[1:6]}
    for key in ("alpha", "beta"):  # fitted, [low, high], Chinchilla's
        fitted, low, high = float(rows[key][1]), float(rows[key][2].strip("[,")), float(rows[key][3].strip("]"))
        assert low <= truth[key] <= high and low <= fitted <= high, rows[key]  # 12 runs: intervals of ~0.1
        assert fitted == pytest.approx(truth[key], abs=0.1), rows[key]
        assert float(rows[key][4]) == report.CHINCHILLA[key]
    assert out[6].startswith("at C = ") and "tokens a parameter (Chinchilla's law: " in out[6]
    assert output.read_bytes().startswith(PNG_MAGIC)


def test_a_scaling_fit_needs_sizes_and_budgets(tmp_path, capsys):
    runs = scaling_runs(tmp_path, {"E": 1.1, "A": 60.0, "alpha": 0.4, "B": 300.0, "beta": 0.35})
    one_budget = [r for r in runs if r.endswith("t1000000")]
    assert run_main(plot.main, ["scaling", *one_budget]) == 2
    assert "got 4 runs, 4 size(s), 1 budget(s)" in capsys.readouterr().err
    (tmp_path / "bare").mkdir()
    write_run(tmp_path / "bare", "x", {"lr": 1e-3}, 2.0)
    assert run_main(plot.main, ["scaling", *runs, str(tmp_path / "bare" / "x")]) == 2
    assert "x: its config.json does not describe a model" in capsys.readouterr().err
