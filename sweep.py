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

Locally (--parallel K, default 1) K runs train at once, the costliest first (FLOPs: the model's per token times the
run's tokens), each process given cores / (K x processes a run) threads (OMP_NUM_THREADS), so that their thread
pools do not fight over the cores; each run's output goes to out_dir/sweep-logs/<run_name>.log and a bar shows the
sweep's progress. Exit status 0 when every point finished, 1 when one failed (each named).

On Slurm (--executor slurm; submitit, an optional install: make .venv/.installed-slurm), each point not finished is
one job of one node and one task, the same train.py command line as locally (a point of N processes is train.py
--nproc-per-node=N, which starts torchrun's processes itself), with --cpus-per-task cores (default: one a process),
--gpus-per-node GPUs (default: one a process, none when the config's device is cpu), --time minutes (default: the
partition's limit) in --partition (default: the cluster's). The sweep submits, prints each job's id and log, and
returns; --wait waits for the jobs with a bar (Ctrl-C leaves them running) and ends as a local sweep does. A
point's job logs go to out_dir/sweep-logs/<run_name>/ (submitit's <job id>_0_log.out and .err, its pickles) with the
job's id (slurm-job-id); the same command again asks squeue about that job and does not submit the point a second
time while it is pending or running (two jobs writing one run directory lose work). Slurm sends SIGTERM two to three
minutes before the time limit: train.py saves and exits 0, and the same command submits what is left. The repository,
its .venv and out_dir must be on a filesystem the nodes share (as for any Slurm job).

    python sweep.py configs/quickstart.py lr=1e-3,3e-3 --executor slurm --partition gpu --time 120
    python sweep.py configs/mini/pp.py seed=1,2 --nproc-per-node 2 --executor slurm --wait
"""
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

import config
import model as model_lib
import runs
import train
from config import UserError
from files import write_text_atomic

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


def run_cost(args):
    """The FLOPs a run will spend: its model's per token (model.py's count, at its data's vocabulary when that is
    prepared) times its tokens (in millions): what orders the local executor's runs."""
    cfg, model_overrides = train.load_config(args)
    first_data = cfg.data.replace("+", ",").split(",")[0].strip()
    try:
        vocab = json.loads((Path(cfg.data_dir) / first_data / "meta.json").read_text())["vocab_size"]
    except (OSError, ValueError, KeyError):
        vocab = model_lib.PRESETS[cfg.model].vocab_size
    model_config = runs.build_model_config(runs.for_device(cfg, torch.device("cpu")), model_overrides,
                                           model_overrides.get("vocab_size", vocab))
    return model_lib.flops_per_token(model_config, cfg.seq_len) * cfg.total_tokens


def run_locally(planned, parallel, nproc_per_node=1):
    """Train the runs, `parallel` at a time, each process with cores / (parallel x nproc_per_node) threads, the
    costliest first (run_cost): a long run started last would end the sweep alone, on a share of the cores that
    cannot grow once it runs. Returns the names that failed."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = max(1, cores // (parallel * nproc_per_node))
    waiting = sorted(planned, key=lambda run: run_cost(run[1]), reverse=True) if parallel > 1 else list(planned)
    running, failed = {}, []
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


# ----------------------------------------------------------------------------- the Slurm executor

SLURM_OPTIONS = ("nproc_per_node", "partition", "time", "cpus_per_task", "gpus_per_node")
SLURM_POLL_SECONDS = 10  # how often --wait asks squeue: a shared controller is not to be flooded
JOB_ID_FILE = "slurm-job-id"  # in the point's log folder: the last job submitted for it


def slurm_folder(cfg, name):
    return Path(cfg.out_dir) / "sweep-logs" / name


def slurm_job(name, args, cfg, options):
    """One point's job as plain data, all that submit_to_slurm hands to submitit: the executor's parameters (sbatch's
    options; None: Slurm's default), the command (the local executor's), its working directory and the folder of the
    job's logs. options: SLURM_OPTIONS, as the command line gave them."""
    nproc = options["nproc_per_node"]
    cpus = options["cpus_per_task"] or nproc
    gpus = options["gpus_per_node"]
    if gpus is None:
        gpus = 0 if cfg.device == "cpu" else nproc
    threads = max(1, cpus // nproc)  # as locally: the thread pools of a run's processes split its cores
    parameters = {
        "job_name": name, "partition": options["partition"], "time": options["time"],
        "nodes": 1, "ntasks_per_node": 1,  # one task, train.py, which starts the run's processes itself
        "cpus_per_task": cpus, "gpus_per_node": gpus or None,
        "setup": [f"export OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads}"],
        # SIGTERM to every process of the job 2-3 minutes before the time limit (Slurm looks once a minute): train.py
        # saves and exits 0 (submitit's own USR2 would end the command unsaved)
        "additional_parameters": {"signal": "TERM@120"},
    }
    return {"parameters": parameters, "command": train_command(args, nproc), "cwd": os.getcwd(),
            "folder": str(slurm_folder(cfg, name))}


def import_submitit():
    """submitit, the one import of it (an optional install: nothing else needs it)."""
    try:
        import submitit
    except ImportError:
        raise UserError("the Slurm executor needs submitit: make .venv/.installed-slurm (requirements-slurm.txt)")
    return submitit


def submit_to_slurm(name, job):
    """Submit one job (slurm_job's) and record its id in its log folder; returns the id."""
    submitit = import_submitit()
    try:
        executor = submitit.SlurmExecutor(folder=job["folder"])
    except RuntimeError:  # submitit looks for srun
        raise UserError("srun not found: submit from a machine of the Slurm cluster (a login node)")
    executor.update_parameters(**job["parameters"])
    command = submitit.helpers.CommandFunction(job["command"], cwd=job["cwd"])
    try:
        job_id = executor.submit(command).job_id
    except (submitit.core.utils.FailedJobError, submitit.core.utils.FailedSubmissionError) as e:
        raise UserError(f"sbatch refused {name}: {config.one_line(e) or 'no reason given'}")
    write_text_atomic(Path(job["folder"]) / JOB_ID_FILE, job_id + "\n")
    return job_id


def submitted_job(cfg, name):
    """The id of the last job submitted for a point, or None."""
    try:
        return (slurm_folder(cfg, name) / JOB_ID_FILE).read_text().strip() or None
    except FileNotFoundError:
        return None


def slurm_active(job_ids):
    """{job id: state} of those jobs Slurm has pending or running (squeue's listing); a job that ended, or that Slurm
    has forgotten, is not in it."""
    if not job_ids:
        return {}
    try:
        result = subprocess.run(["squeue", "--noheader", "--format=%i %T", f"--jobs={','.join(job_ids)}"],
                                capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UserError(f"squeue: {config.one_line(e)}: cannot tell whether job(s) {', '.join(job_ids)} still run")
    if result.returncode != 0 and "Invalid job id" not in result.stderr:  # its answer for jobs it no longer knows
        raise UserError(f"squeue: {config.one_line(result.stderr) if result.stderr.strip() else 'failed'}: cannot tell "
                        f"whether job(s) {', '.join(job_ids)} still run")
    return dict(line.split()[:2] for line in result.stdout.splitlines() if len(line.split()) >= 2)


def run_on_slurm(planned, options, wait):
    """Submit each point (none whose earlier job is still pending or running); with wait, wait for them all.
    Returns the exit status: 0 submitted (or, waiting, every point finished), 1 when one did not finish."""
    import_submitit()  # before anything is asked or written
    earlier = {name: submitted_job(cfg, name) for name, _, cfg in planned}
    active = slurm_active(sorted({job_id for job_id in earlier.values() if job_id}))
    jobs = []  # (name, job id, cfg)
    for name, args, cfg in planned:
        if earlier[name] in active:
            print(f"{name}: job {earlier[name]} is {active[earlier[name]].lower()}: not submitted again")
            jobs.append((name, earlier[name], cfg))
            continue
        job = slurm_job(name, args, cfg, options)
        job_id = submit_to_slurm(name, job)
        print(f"submitted {name}: job {job_id} (output: {job['folder']}/{job_id}_0_log.out and .err)")
        jobs.append((name, job_id, cfg))
    if not wait:
        print(f"{len(jobs)} job(s) in Slurm's queue; `squeue --me` lists them, the same command with --wait waits")
        return 0
    return wait_for_slurm(jobs, options["nproc_per_node"])


def wait_for_slurm(jobs, nproc_per_node):
    """Wait until Slurm has none of the jobs pending or running, with a bar; 0 when every run finished, else 1."""
    waiting, failed = {job_id: (name, cfg) for name, job_id, cfg in jobs}, []
    bar = tqdm(total=len(jobs), unit="job", desc="slurm", dynamic_ncols=True)
    try:
        while waiting:
            time.sleep(SLURM_POLL_SECONDS)
            active = slurm_active(sorted(waiting))
            for job_id in [job_id for job_id in waiting if job_id not in active]:
                name, cfg = waiting.pop(job_id)
                bar.update(1)
                out, err = (slurm_folder(cfg, name) / f"{job_id}_0_log.{ext}" for ext in ("out", "err"))
                if finished(cfg, nproc_per_node):
                    bar.write(f"finished {name} (job {job_id}): {last_line(out) if out.exists() else '(no output)'}")
                    continue
                failed.append(name)
                errors = [line for line in err.read_text(errors="replace").splitlines()
                          if line.startswith("error")] if err.exists() else []
                # train.py's error, else where it stopped (a time limit's SIGTERM: saved, to resume)
                last = errors[-1] if errors else last_line(out) if out.exists() else f"no output; see {err}"
                bar.write(f"NOT FINISHED {name} (job {job_id}): {last}")
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"job(s) {', '.join(sorted(waiting))} left running in Slurm; the same command with "
                                "--wait waits for them again")
    finally:
        bar.close()
    if failed:
        print(f"{len(failed)} run(s) did not finish: {', '.join(failed)} (the same command submits them again)",
              file=sys.stderr)
        return 1
    print(f"{len(jobs)} run(s) finished")
    return 0


# ----------------------------------------------------------------------------- command line

def main(argv):
    parser = config.ArgumentParser(description=__doc__.split("\n")[0], usage="python sweep.py CONFIG... key=v1,v2 ...")
    parser.add_argument("--parallel", type=int, help="runs at once on this machine (default 1)")
    parser.add_argument("--nproc-per-node", type=int, default=1, help="processes a run, under torchrun (default 1)")
    parser.add_argument("--runs", help="a file of points, one line of key=value pairs a run")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and start nothing")
    parser.add_argument("--executor", choices=["local", "slurm"], default="local",
                        help="where the runs train: here (default) or one Slurm job each")
    parser.add_argument("--partition", help="Slurm: the partition (default: the cluster's)")
    parser.add_argument("--time", type=int, help="Slurm: a job's time limit in minutes (default: the partition's)")
    parser.add_argument("--cpus-per-task", type=int, help="Slurm: cores a job (default: one a process)")
    parser.add_argument("--gpus-per-node", type=int,
                        help="Slurm: GPUs a job (default: one a process; none when the config's device is cpu)")
    parser.add_argument("--wait", action="store_true", help="Slurm: wait for the jobs (default: submit and return)")
    args, rest = parser.parse_known_args(argv)
    check_options(args)
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
    todo = [run for run in planned if run[0] not in done]
    if args.executor == "slurm":
        return run_on_slurm(todo, {option: getattr(args, option) for option in SLURM_OPTIONS}, args.wait)
    failed = run_locally(todo, args.parallel or 1, args.nproc_per_node)
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"{len(planned)} run(s) finished")
    return 0


def check_options(args):
    """Each option's range, and each executor's options with their own executor only."""
    for option, least in (("parallel", 1), ("nproc_per_node", 1), ("time", 1), ("cpus_per_task", 1),
                          ("gpus_per_node", 0)):
        if getattr(args, option) is not None and getattr(args, option) < least:
            raise UserError(f"--{option.replace('_', '-')} must be at least {least}, got {getattr(args, option)}")
    if args.partition is not None and not args.partition.strip():
        raise UserError("--partition is empty")
    if args.executor == "slurm" and args.parallel is not None:
        raise UserError("--parallel is the local executor's: on Slurm every point is a job and the cluster runs as "
                        "many at once as it has room for")
    if args.executor == "slurm" and args.cpus_per_task is not None and args.cpus_per_task < args.nproc_per_node:
        raise UserError(f"--cpus-per-task {args.cpus_per_task} is fewer than the {args.nproc_per_node} processes of a "
                        "run (--nproc-per-node)")
    given = [option for option in ("partition", "time", "cpus_per_task", "gpus_per_node") if getattr(args, option)
             is not None] + ["wait"] * args.wait
    if args.executor == "local" and given:
        raise UserError(f"--{given[0].replace('_', '-')} is the Slurm executor's: add --executor slurm")


if __name__ == "__main__":
    sys.exit(config.run_main(main, sys.argv[1:]))
