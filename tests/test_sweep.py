"""sweep.py: grids of train.py runs named from their overrides, checked before anything starts, resumed and skipped."""
import json
import os
import sys

import pytest

import sweep
from config import run_main
from conftest import read_log, run_args


def test_a_grid_lists_exactly_its_runs(tiny_data, tmp_path, capsys):
    argv = run_args(tiny_data, tmp_path, "run_name=g", "lr=1e-3,3e-3", "seed=1,2", "--dry-run")
    assert sweep.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[:-1]] == ["g-lr0.001-seed1", "g-lr0.001-seed2", "g-lr0.003-seed1",
                                                        "g-lr0.003-seed2"]
    assert lines[-1] == "4 run(s), 0 finished"
    assert "lr=1e-3 seed=2 run_name=g-lr0.001-seed2" in lines[1]  # the user's text, then the run's name
    assert not list(tmp_path.iterdir())  # nothing started, nothing written


def test_no_list_is_the_configs_own_run_and_processes_go_to_train_py(tiny_data, tmp_path, capsys):
    argv = run_args(tiny_data, tmp_path, "run_name=g", "seed=3", "--nproc-per-node", "2", "--dry-run")
    assert sweep.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[0] == "g" and lines[-1] == "1 run(s), 0 finished"
    assert "train.py --nproc-per-node=2 " in lines[0] and "seed=3 run_name=g" in lines[0]


@pytest.mark.parametrize("parallel, processes, dp_size", [("ddp", 2, 2), ("pp", 2, 1), ("pp", 4, 2)])
def test_a_run_is_finished_at_its_layouts_last_step(tiny_data, tmp_path, parallel, processes, dp_size):
    """A several-process run's steps are fewer by its data-parallel replicas (a pipeline's stages are one replica)."""
    (_, _, cfg), = sweep.plan(run_args(tiny_data, tmp_path, "run_name=g", f"parallel={parallel}", "pp_stages=2"), None)
    last = sweep.runs.last_step(sweep.runs.make_schedule(cfg, dp_size), cfg.max_steps)
    (tmp_path / "g").mkdir()
    for step, expected in ((last - 1, False), (last, True)):
        (tmp_path / "g" / "log.jsonl").write_text(json.dumps({"step": step, "loss": 1.0}) + "\n")
        assert sweep.finished(cfg, processes) is expected


@pytest.mark.parametrize("extra, message", [
    (["lrr=1e-3,3e-3"], "lrr=1e-3: unknown config key 'lrr' (did you mean 'lr'?)"),
    (["lr=1e-3,"], "lr=1e-3,: an empty value in the list"),
    (["lr=-1,1e-3"], "lr=-1: lr=-1.0 must be greater than 0"),
    (["lr=1e-3,0.001"], "lr=0.001 and lr=1e-3 name the same run"),
    (["lr=1e-3,3e-3", "--parallel", "0"], "--parallel must be at least 1"),
    (["lr=1e-3,3e-3", "--nproc-per-node", "0"], "--nproc-per-node must be at least 1"),
    (["--executor", "pbs"], "argument --executor: invalid choice: 'pbs'"),
    (["--executor", "slurm", "--time", "0"], "--time must be at least 1, got 0"),
    (["--executor", "slurm", "--gpus-per-node", "-1"], "--gpus-per-node must be at least 0, got -1"),
    (["--executor", "slurm", "--partition", " "], "--partition is empty"),
    (["--executor", "slurm", "--nproc-per-node", "2", "--cpus-per-task", "1"],
     "--cpus-per-task 1 is fewer than the 2 processes of a run"),
    (["--executor", "slurm", "--parallel", "2"], "--parallel is the local executor's"),
    (["--partition", "gpu"], "--partition is the Slurm executor's: add --executor slurm"),
    (["--wait"], "--wait is the Slurm executor's"),
])
def test_a_bad_sweep_is_one_line_and_starts_nothing(tiny_data, tmp_path, capsys, extra, message):
    assert run_main(sweep.main, run_args(tiny_data, tmp_path, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1, err
    assert not list(tmp_path.iterdir())


@pytest.mark.integration  # 3 training runs in processes of their own
def test_a_sweep_started_again_trains_only_what_was_left(tiny_data, tmp_path, capsys):
    """A 2 x 2 sweep in which one point finished and another was killed at step 3 (as a kill -9 after its checkpoint
    would leave it): the finished point is skipped, the cut one resumes from its checkpoint, the other two train,
    two at a time; every point ends where an unbroken run ends."""
    common = run_args(tiny_data, tmp_path, "run_name=s", "max_steps=6", "checkpoint_interval=3", "eval_interval=6",
                      "sample_tokens=0")
    import train
    assert train.main(common + ["lr=0.001", "seed=1", "run_name=s-lr0.001-seed1"]) == 0  # finished
    assert train.main(common + ["lr=0.001", "seed=2", "run_name=s-lr0.001-seed2", "max_steps=3"]) == 0  # cut short
    finished_log = (tmp_path / "s-lr0.001-seed1" / "log.jsonl").read_text()

    assert sweep.main(common + ["lr=1e-3,3e-3", "seed=1,2", "--parallel", "2"]) == 0
    out = capsys.readouterr().out
    assert "s-lr0.001-seed1  (finished: skipped)" in out and "s-lr0.001-seed2  (to train)" in out
    assert "finished s-lr0.003-seed2: step      6 | eval loss" in out  # each run's last line of progress
    assert (tmp_path / "s-lr0.001-seed1" / "log.jsonl").read_text() == finished_log  # not touched
    for name in ("s-lr0.001-seed2", "s-lr0.003-seed1", "s-lr0.003-seed2"):
        steps = [r["step"] for r in read_log(tmp_path / name)[0]]
        assert steps[-1] == 6, (name, steps)
    resumed = [r["step"] for r in read_log(tmp_path / "s-lr0.001-seed2")[0]]
    assert resumed == list(range(1, 7))  # steps 4-6 appended to the cut run's 1-3
    # two at a time, each with half the cores
    assert json.loads((tmp_path / "s-lr0.003-seed1" / "config.json").read_text())["lr"] == 0.003
    threads = max(1, len(os.sched_getaffinity(0)) // 2)
    assert f"started s-lr0.003-seed1 ({threads} thread(s)" in out

    assert sweep.main(common + ["lr=1e-3,3e-3", "seed=1,2"]) == 0  # all finished: nothing to do
    assert capsys.readouterr().out.splitlines()[-1] == "4 run(s), 4 finished"


# ----------------------------------------------------------------------------- the Slurm executor, without a cluster

SLURM_DEFAULTS = {"nproc_per_node": 1, "partition": None, "time": None, "cpus_per_task": None, "gpus_per_node": None}


def test_a_slurm_job_is_the_local_command_as_plain_data(tiny_data, tmp_path):
    """What each point submits: one node, one task (train.py, which starts a run's processes itself), a core and on a
    GPU device a GPU a process, the local executor's command, its log folder in sweep-logs."""
    (name, args, cfg), = sweep.plan(run_args(tiny_data, tmp_path, "run_name=g"), None)
    assert sweep.slurm_job(name, args, cfg, SLURM_DEFAULTS) == {
        "parameters": {"job_name": "g", "partition": None, "time": None, "nodes": 1, "ntasks_per_node": 1,
                       "cpus_per_task": 1, "gpus_per_node": None,
                       "setup": ["export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1"],
                       "additional_parameters": {"signal": "TERM@120"}},
        "command": sweep.train_command(args, 1), "cwd": os.getcwd(), "folder": str(tmp_path / "sweep-logs" / "g")}
    assert sweep.train_command(args, 1)[1:] == [str(sweep.ROOT / "train.py"), *args]

    two = dict(SLURM_DEFAULTS, nproc_per_node=2, partition="gpu", time=90, cpus_per_task=16)
    job = sweep.slurm_job(name, args, cfg, two)
    assert job["command"][1:3] == [str(sweep.ROOT / "train.py"), "--nproc-per-node=2"]
    assert {k: job["parameters"][k] for k in ("partition", "time", "nodes", "ntasks_per_node", "cpus_per_task",
                                              "gpus_per_node", "setup")} == {
        "partition": "gpu", "time": 90, "nodes": 1, "ntasks_per_node": 1, "cpus_per_task": 16, "gpus_per_node": None,
        "setup": ["export OMP_NUM_THREADS=8 MKL_NUM_THREADS=8"]}  # the cores split between the 2 processes
    (_, args, cfg), = sweep.plan(run_args(tiny_data, tmp_path, "run_name=g", "device=cuda"), None)
    assert sweep.slurm_job(name, args, cfg, two)["parameters"]["gpus_per_node"] == 2  # a GPU a process
    assert sweep.slurm_job(name, args, cfg, dict(two, gpus_per_node=8))["parameters"]["gpus_per_node"] == 8


def fake_squeue(tmp_path, monkeypatch, script):
    """An squeue on PATH that runs `script` (bash): the Slurm executor's one question to the cluster."""
    bin_dir = tmp_path.parent / f"{tmp_path.name}-bin"
    bin_dir.mkdir()
    (bin_dir / "squeue").write_text("#!/bin/bash\n" + script + "\n")
    (bin_dir / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_slurm_submits_what_is_left_and_never_a_point_whose_job_still_runs(tiny_data, tmp_path, monkeypatch, capsys):
    """Three points: one finished (skipped), one whose earlier job squeue lists as running (not submitted again: two
    jobs would train one run directory) and one whose earlier job has ended (submitted again, to resume)."""
    submitted = []
    monkeypatch.setattr(sweep, "import_submitit", lambda: None)  # the default suite runs without submitit
    monkeypatch.setattr(sweep, "submit_to_slurm", lambda name, job: submitted.append((name, job)) or "77")
    fake_squeue(tmp_path, monkeypatch, 'echo "$@" > "$(dirname "$0")/asked"; echo "41 RUNNING"')
    argv = run_args(tiny_data, tmp_path, "run_name=g", "seed=1,2,3")
    plan = {name: (args, cfg) for name, args, cfg in sweep.plan(argv, None)}
    cfg = plan["g-seed1"][1]
    last = sweep.runs.last_step(sweep.runs.make_schedule(cfg, 1), cfg.max_steps)
    (tmp_path / "g-seed1").mkdir()
    (tmp_path / "g-seed1" / "log.jsonl").write_text(json.dumps({"step": last, "loss": 1.0}) + "\n")
    for name, job_id in (("g-seed2", "41"), ("g-seed3", "40")):
        (tmp_path / "sweep-logs" / name).mkdir(parents=True)
        (tmp_path / "sweep-logs" / name / "slurm-job-id").write_text(job_id + "\n")

    assert sweep.main(argv + ["--executor", "slurm"]) == 0
    out = capsys.readouterr().out
    assert [name for name, _ in submitted] == ["g-seed3"]
    assert submitted[0][1] == sweep.slurm_job("g-seed3", *plan["g-seed3"], SLURM_DEFAULTS)
    assert "g-seed1  (finished: skipped)" in out
    assert "g-seed2: job 41 is running: not submitted again" in out
    assert f"submitted g-seed3: job 77 (output: {tmp_path}/sweep-logs/g-seed3/77_0_log.out and .err)" in out
    assert (tmp_path.parent / f"{tmp_path.name}-bin" / "asked").read_text().split() == [
        "--noheader", "--format=%i", "%T", "--jobs=40,41"]  # one question for every earlier job


def test_slurm_refuses_to_submit_when_squeue_cannot_answer(tiny_data, tmp_path, monkeypatch, capsys):
    """Without squeue's answer a point whose job may still run is not submitted: one line, nothing submitted."""
    monkeypatch.setattr(sweep, "import_submitit", lambda: None)
    monkeypatch.setattr(sweep, "submit_to_slurm", lambda name, job: pytest.fail("submitted"))
    fake_squeue(tmp_path, monkeypatch, 'echo "slurm_load_jobs error: Unable to contact slurm controller" >&2; exit 1')
    (tmp_path / "sweep-logs" / "g").mkdir(parents=True)
    (tmp_path / "sweep-logs" / "g" / "slurm-job-id").write_text("41\n")
    assert run_main(sweep.main, run_args(tiny_data, tmp_path, "run_name=g", "--executor", "slurm")) == 2
    err = capsys.readouterr().err
    assert err == ("error: squeue: slurm_load_jobs error: Unable to contact slurm controller: cannot tell whether "
                   "job(s) 41 still run\n")


def test_slurm_without_submitit_is_one_line_and_writes_nothing(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if not installed: its import raises ImportError
    assert run_main(sweep.main, run_args(tiny_data, tmp_path, "lr=1e-3,3e-3", "--executor", "slurm")) == 2
    err = capsys.readouterr().err
    assert err == "error: the Slurm executor needs submitit: make .venv/.installed-slurm (requirements-slurm.txt)\n"
    assert not list(tmp_path.iterdir())


def test_ctrl_c_while_waiting_leaves_the_jobs_running_and_says_so(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sweep, "import_submitit", lambda: None)
    monkeypatch.setattr(sweep, "submit_to_slurm", lambda name, job: "77")
    fake_squeue(tmp_path, monkeypatch, 'echo "77 RUNNING"')

    def interrupt(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep.time, "sleep", interrupt)
    assert run_main(sweep.main, run_args(tiny_data, tmp_path, "run_name=g", "--executor", "slurm", "--wait")) == 130
    assert capsys.readouterr().err.splitlines()[-1] == ("interrupted: job(s) 77 left running in Slurm; the same "
                                                        "command with --wait waits for them again")


def test_the_costliest_runs_start_first_when_runs_share_the_cores(tiny_data, tmp_path, monkeypatch):
    """Longest first: a big model's run started last would end the sweep alone on one core."""
    started = []

    class Done:  # a run that has already finished, as Popen would return it
        returncode = 0

        def __init__(self, command, **kwargs):
            started.append([a for a in command if a.startswith("run_name=")][-1])

        def poll(self):
            return 0

    monkeypatch.setattr(sweep.subprocess, "Popen", Done)
    monkeypatch.setattr(sweep.time, "sleep", lambda seconds: None)
    planned = sweep.plan(run_args(tiny_data, tmp_path, "run_name=g", "dim=16,64,32", "total_tokens=0.01,0.02"), None)
    costs = {name: sweep.run_cost(args) for name, args, _ in planned}
    assert costs["g-dim64-total_tokens0.02"] > costs["g-dim64-total_tokens0.01"] > costs["g-dim16-total_tokens0.02"]
    assert sweep.run_locally(planned, parallel=2) == []
    assert [s.split("=")[1] for s in started] == sorted(costs, key=costs.get, reverse=True)
    started.clear()
    sweep.run_locally(planned, parallel=1)  # one at a time: the order given
    assert [s.split("=")[1] for s in started] == [name for name, _, _ in planned]
