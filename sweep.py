"""Sweeps: one ordinary train.py run per point of a grid, each in a run directory named from its overrides.

    python sweep.py configs/quickstart.py lr=1e-3,3e-3 seed=1,2,3       # a 2 x 3 grid, one run at a time
    python sweep.py configs/quickstart.py lr=1e-3,3e-3 --parallel 2     # two at a time, the cores split between them
    python sweep.py configs/quickstart.py lr=1e-3,3e-3 --dry-run        # list the runs, start nothing
    python sweep.py configs/quickstart.py --runs points.txt             # a file: one line of key=value pairs a run
    python sweep.py configs/mini/pp.py seed=1,2 --nproc-per-node 2      # each run 2 processes (torchrun's)

A key=value whose value holds commas is swept: each comma-separated value is a point, and the points are every
combination of the swept keys (a grid); a key=value without one applies to every run. --runs lists the points
instead, one run a line (they may be combined with swept keys: each line crossed with the grid). Without either,
the sweep is the config's one run, under its own name (so that `make minis SEEDS=1` trains the runs it always did).

Each point is `train.py CONFIG... key=value... run_name=<base>-<key><value>-...` (base: the config's run_name), so
each resumes as any run does and a finished one is skipped: a sweep killed mid-way and started again with the same
command trains only what was left. Every point's config is checked before anything starts (the checks train.py
makes: an unknown key, a value out of its range), as are an empty list and two values that name the same run:
each is one line, exit status 2, nothing started.

Locally (--parallel K, default 1) K runs train at once, each process given cores / (K x processes a run) threads
(OMP_NUM_THREADS), so that their thread pools do not fight over the cores; each run's output goes to out_dir/sweep-logs/<run_name>.log and a
bar shows the sweep's progress. Exit status 0 when every point finished, 1 when one failed (each named).
"""
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

import config
import runs
import train
from config import UserError

ROOT = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------- the points

def read_points(argv, runs_file):
    """(config files, [(run_name, [key=value, ...]), ...]): every point's overrides, in grid order."""
    config_files = [a for a in argv if "=" not in a]
    fixed, swept = [], []
    for arg in (a for a in argv if "=" in a):
        key, text = arg.split("=", 1)
        if "," not in text:
            fixed.append(arg)
            continue
        texts = [v.strip() for v in text.split(",")]
        if "" in texts:
            raise UserError(f"{key}={text}: an empty value in the list")
        swept.append((key, texts))
    lines = [[]]
    if runs_file:
        try:
            text = Path(runs_file).read_text()
        except OSError as e:
            raise UserError(f"--runs {runs_file}: {e.strerror}")
        lines = [line.split() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        if not lines:
            raise UserError(f"--runs {runs_file} lists no runs")
        for line in lines:
            for arg in line:
                if "=" not in arg:
                    raise UserError(f"--runs {runs_file}: expected key=value, got {arg!r}")
    points = []
    for line in lines:
        for values in itertools.product(*[values for _, values in swept]):
            points.append(line + [f"{key}={value}" for (key, _), value in zip(swept, values)])
    return config_files, fixed, points


def run_name(base, point):
    """base-key1value1-key2value2: the point's run directory, named from its overrides."""
    words = []
    for arg in point:
        key, value = arg.split("=", 1)
        value = str(config.parse_value(value))
        words.append(key + "".join(c if c.isalnum() or c in ".+" else "_" for c in value))
    return "-".join([base, *words])


def plan(argv, runs_file):
    """[(run_name, train.py's argv, TrainConfig)], every point checked as train.py would check it."""
    config_files, fixed, points = read_points(argv, runs_file)
    base, _ = train.load_config(config_files + fixed)
    planned, seen = [], {}
    for point in points:
        name = run_name(base.run_name, point)
        if name in seen:
            raise UserError(f"{' '.join(point)} and {' '.join(seen[name])} name the same run, {name}")
        seen[name] = point
        args = config_files + fixed + point + [f"run_name={name}"]
        try:
            cfg, _ = train.load_config(args)
        except UserError as e:
            raise UserError(f"{' '.join(point)}: {e}")
        planned.append((name, args, cfg))
    return planned


def finished(cfg, nproc_per_node=1):
    """Whether the run of cfg has trained to its end (its log's last training step); a run train.py would start or
    resume is not."""
    log = Path(cfg.out_dir) / cfg.run_name / "log.jsonl"
    dp_size = nproc_per_node // (cfg.pp_stages or nproc_per_node) if cfg.parallel == "pp" else nproc_per_node  # parallel.plan's
    end = runs.last_step(runs.make_schedule(cfg, dp_size), cfg.max_steps)
    try:
        records = [json.loads(line) for line in log.read_text().splitlines()]
    except (OSError, ValueError):  # none yet, or a line a kill cut short: train.py decides
        return False
    steps = [r["step"] for r in records if "loss" in r]
    return bool(steps) and steps[-1] >= end


# ----------------------------------------------------------------------------- the local executor

def train_command(args, nproc_per_node):
    """The command line of one run: train.py, which starts its processes itself when a run is several."""
    launch = [f"--nproc-per-node={nproc_per_node}"] if nproc_per_node > 1 else []
    return [sys.executable, str(ROOT / "train.py"), *launch, *args]


def run_locally(planned, parallel, nproc_per_node=1):
    """Train the runs, `parallel` at a time, each process with cores / (parallel x nproc_per_node) threads; returns
    the names that failed."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = max(1, cores // (parallel * nproc_per_node))
    waiting, running, failed = list(planned), {}, []
    bar = tqdm(total=len(planned), unit="run", desc="sweep", dynamic_ncols=True)
    try:
        while waiting or running:
            while waiting and len(running) < parallel:
                name, args, cfg = waiting.pop(0)
                log_path = Path(cfg.out_dir) / "sweep-logs" / f"{name}.log"
                log_path.parent.mkdir(parents=True, exist_ok=True)
                with open(log_path, "a") as log:
                    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
                    process = subprocess.Popen(train_command(args, nproc_per_node), stdout=log,
                                               stderr=subprocess.STDOUT, env=env, cwd=os.getcwd())
                running[name] = (process, log_path)
                bar.write(f"started {name} ({threads} thread(s) a process; output: {log_path})")
            time.sleep(0.5)
            for name, (process, log_path) in list(running.items()):
                if process.poll() is None:
                    continue
                del running[name]
                bar.update(1)
                last = last_line(log_path)
                if process.returncode == 0:
                    bar.write(f"finished {name}: {last}")
                else:
                    failed.append(name)
                    bar.write(f"FAILED {name} (exit status {process.returncode}): {last}")
    except KeyboardInterrupt:  # stop every run as a signal would: each saves and can resume
        for process, _ in running.values():
            process.send_signal(signal.SIGTERM)
        for process, _ in running.values():
            process.wait()
        raise KeyboardInterrupt(f"{len(running)} run(s) saved and stopped; the same command goes on")
    finally:
        bar.close()
    return failed


def last_line(path):
    """What a run's output ended with: its last progress or eval line ("step ..."), else its last line (an error)."""
    lines = [line.strip() for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    if lines and lines[-1].startswith("error"):
        return lines[-1]
    steps = [line for line in lines if line.startswith("step ")]
    return (steps or lines or ["(no output)"])[-1]


# ----------------------------------------------------------------------------- command line

def main(argv):
    parser = config.ArgumentParser(description=__doc__.split("\n")[0], usage="python sweep.py CONFIG... key=v1,v2 ...")
    parser.add_argument("--parallel", type=int, default=1, help="runs at once on this machine (default 1)")
    parser.add_argument("--nproc-per-node", type=int, default=1, help="processes a run, under torchrun (default 1)")
    parser.add_argument("--runs", help="a file of points, one line of key=value pairs a run")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and start nothing")
    args, rest = parser.parse_known_args(argv)
    for option in ("parallel", "nproc_per_node"):
        if getattr(args, option) < 1:
            raise UserError(f"--{option.replace('_', '-')} must be at least 1, got {getattr(args, option)}")
    unknown = [a for a in rest if a.startswith("-")]
    if unknown:
        raise UserError(f"unrecognized arguments: {' '.join(unknown)} (see --help)")
    planned = plan(rest, args.runs)
    done = [name for name, _, cfg in planned if finished(cfg, args.nproc_per_node)]
    for name, args_, _ in planned:
        state = "finished: skipped" if name in done else "to train"
        print(f"{name}  ({state})  {' '.join(train_command(args_, args.nproc_per_node)[1:])}")
    if args.dry_run or len(done) == len(planned):
        print(f"{len(planned)} run(s), {len(done)} finished")
        return 0
    failed = run_locally([run for run in planned if run[0] not in done], args.parallel, args.nproc_per_node)
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"{len(planned)} run(s) finished")
    return 0


if __name__ == "__main__":
    sys.exit(config.run_main(main, sys.argv[1:]))
