"""Runs you can trust: a kill mid-checkpoint, SIGTERM, control commands under torchrun, the divergence guard, stop
signals wherever the run is (eval, checkpoint, sample), and train.py's own launcher (Ctrl-C, SIGTERM, errors)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch._subclasses.fake_tensor import is_fake

import control
import files
import model as model_lib
import parallel
import train
from config import run_main
from conftest import ROOT, last_step, read_log, run_args, wait_for

ENV = dict(os.environ, OMP_NUM_THREADS="1")


def test_kill_9_during_a_checkpoint_write_keeps_the_previous_one(tiny_data, tmp_path):
    """The step-20 checkpoint write is killed half-way (SIGKILL, no clean-up): the first stays loadable and
    the same command resumes from it."""
    args = run_args(tiny_data, tmp_path, "run_name=k", "checkpoint_interval=10")
    killer = (
        "import os, signal, sys, torch\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "import train\n"
        "real_save = torch.save\n"
        "def save(obj, f):\n"
        "    if f.name.endswith('.tmp') and 'ckpt_00000020.pt' in f.name:\n"
        "        f.write(b'half a checkpoint')\n"
        "        f.flush()\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    real_save(obj, f)\n"
        "torch.save = save\n"
        "train.main(sys.argv[2:])\n")
    result = subprocess.run([sys.executable, "-c", killer, str(ROOT), *args], cwd=ROOT, env=ENV, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == -signal.SIGKILL
    run_dir = tmp_path / "k"
    torn, = run_dir.glob(f".ckpt_{20:08d}.pt.*.tmp")  # where the kill struck
    assert torn.read_bytes() == b"half a checkpoint"
    assert files.step_checkpoints(run_dir)[-1].name == f"ckpt_{10:08d}.pt"
    model_lib.load_model(run_dir)  # the previous checkpoint is whole
    assert train.main(args) == 0  # the same command resumes from step 10 and finishes
    lines, _ = read_log(run_dir)
    assert [r["step"] for r in lines] == list(range(1, 32))
    assert not list(run_dir.glob("*.tmp")) and not list(run_dir.glob(".*.tmp"))  # the torn file was cleared


def test_sigterm_saves_exits_0_and_resumes_bit_identically(tiny_data, tmp_path):
    args = run_args(tiny_data, tmp_path, "total_tokens=1.0", "checkpoint_interval=100000", "eval_interval=100000")
    process = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args, "run_name=t"], cwd=ROOT, env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = tmp_path / "t"
    wait_for(lambda: last_step(run_dir) >= 5, what="5 steps")
    signalled_at = last_step(run_dir)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    stopped_at = files.step_checkpoints(run_dir)[-1]
    step = torch.load(stopped_at, weights_only=True)["step"]
    assert signalled_at <= step <= signalled_at + 5 and last_step(run_dir) == step
    assert "received SIGTERM" in err and "stopped by a signal: saved" in out
    # the same command goes on; its losses are those of a run that was never stopped
    assert train.main(args + ["run_name=t", f"max_steps={step + 5}"]) == 0
    assert train.main(args + ["run_name=straight", f"max_steps={step + 5}"]) == 0
    resumed, straight = read_log(run_dir)[0], read_log(tmp_path / "straight")[0]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]


def corrupt_loss_at(monkeypatch, step, factor):
    """Multiply the training loss of `step` (1-based, one micro-step a step) by factor; eval is left alone."""
    real_forward, calls = model_lib.Transformer.forward, []

    def forward(self, idx, doc_ids=None, targets=None):
        loss = real_forward(self, idx, doc_ids, targets)
        if targets is not None and torch.is_grad_enabled() and not is_fake(loss):  # not memory.memory_estimate's step
            calls.append(1)
            if len(calls) == step:
                return loss * factor
        return loss

    monkeypatch.setattr(model_lib.Transformer, "forward", forward)


def test_a_nan_loss_stops_the_run_naming_its_step(tiny_data, tmp_path, monkeypatch, capsys):
    corrupt_loss_at(monkeypatch, 14, float("nan"))
    assert run_main(train.main, run_args(tiny_data, tmp_path, "run_name=n", "checkpoint_interval=10")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: loss diverged at step 14: the gradient norm is nan") and err.count("\n") == 1
    assert "stopped before the update" in err and f"ckpt_{10:08d}.pt" in err
    run_dir = tmp_path / "n"
    assert files.step_checkpoints(run_dir)[-1].name == f"ckpt_{10:08d}.pt"  # nothing saved after the NaN
    before = torch.load(files.step_checkpoints(run_dir)[-1], weights_only=True)
    assert all(torch.isfinite(t).all() for t in before["model"].values())
    assert last_step(run_dir) == 13


def test_a_loss_spike_stops_the_run(tiny_data, tmp_path, monkeypatch, capsys):
    corrupt_loss_at(monkeypatch, 25, 10.0)
    assert run_main(train.main, run_args(tiny_data, tmp_path, "run_name=s")) == 2
    assert "error: loss diverged at step 25:" in capsys.readouterr().err
    corrupt_loss_at(monkeypatch, 25, 10.0)  # the same spike again, with the guard off: the run goes on
    assert train.main(run_args(tiny_data, tmp_path, "run_name=s2", "divergence_factor=0")) == 0
    spiked = [r for r in read_log(tmp_path / "s2")[0] if r["step"] == 25][0]["loss"]
    assert spiked > 3 * read_log(tmp_path / "s2")[0][23]["loss"]  # the spike was there


@pytest.mark.slow
def test_control_commands_act_within_5_steps_under_torchrun(tiny_data, tmp_path):
    """save, anneal and stop on one 2-process run; abort on another."""
    args = run_args(tiny_data, tmp_path, "schedule=infinite", "annealing_tokens=0.1", "total_tokens=1.0",
                    "checkpoint_interval=100000", "eval_interval=100000", "dim=64", "seq_len=64")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(ROOT / "train.py"), *args]

    def control(run_dir, what):
        """(last step before the command was sent, last step once it was written). Writing it fsyncs the file and
        its directory, which on a busy disk takes as long as several of these millisecond steps: the job's
        promise, acting within 5 steps, counts from the command's arrival."""
        before = last_step(run_dir)
        assert train.main(["control", str(run_dir), what]) == 0
        written = last_step(run_dir)
        wait_for(lambda: not (run_dir / "control").exists(), what=f"{what} to be picked up")
        return before, written

    def events(run_dir):
        return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if '"event"' in line]

    def start(run_name):
        process = subprocess.Popen(command + [f"run_name={run_name}"], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        wait_for(lambda: last_step(tmp_path / run_name) >= 3, what="the first steps")
        return process, tmp_path / run_name

    process, run_dir = start("c")
    try:
        sent = control(run_dir, "save")
        wait_for(lambda: any(e["event"] == "saved on request" for e in events(run_dir)), what="the save")
        saved = [e for e in events(run_dir) if e["event"] == "saved on request"][0]["step"]
        assert sent[0] <= saved <= sent[1] + 5 and (run_dir / f"ckpt_{saved:08d}.pt").exists()
        sent = control(run_dir, "anneal")
        wait_for(lambda: any(e["event"].startswith("annealing started") for e in events(run_dir)), what="the anneal")
        annealed = [e for e in events(run_dir) if e["event"].startswith("annealing started")][0]["step"]
        assert sent[0] <= annealed <= sent[1] + 5
        sent = control(run_dir, "stop")
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0, err
    stopped = events(run_dir)[-1]
    assert stopped["event"].startswith("stopped by the stop command") and sent[0] <= stopped["step"] <= sent[1] + 5
    assert torch.load(files.step_checkpoints(run_dir)[-1], weights_only=True)["annealing_start"] == annealed

    process, run_dir = start("a")
    try:
        sent = control(run_dir, "abort")
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode != 0  # torchrun reports the ranks' exit status 1
    aborted = events(run_dir)[-1]
    assert aborted["event"] == "aborted: exiting without saving" and sent[0] <= aborted["step"] <= sent[1] + 5
    assert files.step_checkpoints(run_dir) == []


def test_control_command_errors(tmp_path, capsys):
    assert run_main(train.main, ["control", str(tmp_path), "stop"]) == 2
    assert "is not a run directory" in capsys.readouterr().err
    (tmp_path / "config.json").write_text("{}")
    assert run_main(train.main, ["control", str(tmp_path), "halt"]) == 2
    assert "unknown control command 'halt'" in capsys.readouterr().err


def test_tensorboard_events_when_the_package_is_there(tiny_data, tmp_path, monkeypatch):
    """tensorboard is not a dependency: stand in a recording SummaryWriter where torch looks for it."""
    import types
    scalars = []

    class SummaryWriter:
        def __init__(self, log_dir):
            self.log_dir = log_dir

        def add_scalar(self, key, value, step):
            scalars.append((key, value, step))

        def close(self):
            scalars.append("closed")

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=SummaryWriter))
    assert train.main(run_args(tiny_data, tmp_path, "run_name=tb", "max_steps=5")) == 0
    lines, evals = read_log(tmp_path / "tb")
    assert ("loss", lines[-1]["loss"], 5) in scalars and ("eval_loss", evals[-1]["eval_loss"], 5) in scalars
    assert ("lr", lines[0]["lr"], 1) in scalars and scalars[-1] == "closed"
    assert not any(key == "time" for key, *_ in scalars[:-1])


# ----------------------------------------------------------------------------- stop signals wherever the run is

def start_train(args, patch=""):
    """train.py args in a process of its own, after the Python lines of patch (which may wrap torch or the model)."""
    code = (f"import sys\nsys.path.insert(0, {str(ROOT)!r})\nimport time, torch, config, model, train\n{patch}\n"
            f"sys.exit(config.run_main(train.main, sys.argv[1:]))\n")
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def newest_step(run_dir):
    return torch.load(files.step_checkpoints(run_dir)[-1], weights_only=True)["step"]


def test_a_signal_delivered_twice_at_once_is_one_request(tiny_data, tmp_path):
    """A terminal's Ctrl-C reaches every process of the job, and a launcher passes it on as well: a worker gets two
    signals within milliseconds, and still saves and exits 0."""
    args = run_args(tiny_data, tmp_path, "run_name=d", "total_tokens=1.0", "checkpoint_interval=100000",
                    "eval_interval=100000")
    process = start_train(args)
    run_dir = tmp_path / "d"
    try:
        wait_for(lambda: last_step(run_dir) >= 3, what="3 steps")
        process.send_signal(signal.SIGINT)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert err.count("received SIGINT") == 1 and "interrupted" not in err and "stopped by a signal: saved" in out
    assert newest_step(run_dir) == last_step(run_dir)


def test_a_signal_during_a_checkpoint_write_lets_it_finish_then_stops(tiny_data, tmp_path):
    """The step-10 checkpoint takes 4 s to write; SIGTERM during the write: the write finishes, and the run stops
    there without training another step."""
    slow_save = (
        "real_save = torch.save\n"
        "def save(obj, f):\n"
        "    if f.name.endswith('.tmp') and 'ckpt_00000010.pt' in f.name:\n"
        "        time.sleep(4)\n"
        "    real_save(obj, f)\n"
        "torch.save = save\n")
    args = run_args(tiny_data, tmp_path, "run_name=w", "total_tokens=1.0", "checkpoint_interval=10",
                    "eval_interval=100000")
    process = start_train(args, slow_save)
    run_dir = tmp_path / "w"
    try:
        wait_for(lambda: list(run_dir.glob(f".ckpt_{10:08d}.pt.*.tmp")), what="the step-10 checkpoint write")
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert [p.name for p in files.step_checkpoints(run_dir)] == [f"ckpt_{10:08d}.pt"] and newest_step(run_dir) == 10
    assert last_step(run_dir) == 10 and "stopped by a signal: step 10 is saved already" in out
    assert not list(run_dir.glob(".*.tmp"))


def test_sigterm_during_a_long_eval_abandons_it_and_saves(tiny_data, tmp_path):
    """Every eval batch after the first training step takes 1 s (about 25 s an eval): SIGTERM during the step-10
    eval stops the run at step 10, saved, with no eval line for it (the eval changed nothing)."""
    slow_eval = (
        "real_forward, trained = model.Transformer.forward, []\n"
        "def forward(self, *args, **kwargs):\n"
        "    if torch.is_grad_enabled() and not torch._subclasses.fake_tensor.is_fake(args[0]):  # not the memory check\n"
        "        trained.append(1)\n"
        "    elif trained:\n"
        "        time.sleep(1)\n"
        "    return real_forward(self, *args, **kwargs)\n"
        "model.Transformer.forward = forward\n")
    args = run_args(tiny_data, tmp_path, "run_name=e", "total_tokens=1.0", "checkpoint_interval=100000",
                    "eval_interval=10", "eval_iters=1000")
    process = start_train(args, slow_eval)
    run_dir = tmp_path / "e"
    try:
        wait_for(lambda: last_step(run_dir) >= 10, what="10 steps")
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, err
    lines, evals = read_log(run_dir)
    assert [r["step"] for r in evals] == [0] and lines[-1]["step"] == 10 and newest_step(run_dir) == 10
    assert "stopped by a signal: saved" in out


def test_sigterm_during_a_long_sample_stops_within_seconds(tiny_data, tmp_path):
    """The final sample is 100k tokens (minutes): SIGTERM abandons it; the checkpoint of the last step is there."""
    args = run_args(tiny_data, tmp_path, "run_name=s", "max_steps=3", "sample_tokens=100000")
    process = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = tmp_path / "s"
    try:
        wait_for(lambda: (run_dir / f"ckpt_{3:08d}.pt").exists(), what="the last checkpoint")
        time.sleep(1)  # into the sample
        signalled = time.time()
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert time.time() - signalled < 30 and "stopped by a signal: step 3 is saved already" in out
    assert newest_step(run_dir) == 3 and not (run_dir / "samples.txt").exists()


# ----------------------------------------------------------------------------- train.py's own launcher

def launch(args, env=ENV):
    """python train.py --nproc-per-node=2 args (2 CPU processes, gloo), in a process group of its own, as a
    terminal starts a job."""
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), "--nproc-per-node=2", "--standalone", *args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def kill_launch(process):
    """After a test, whatever happened: the workers (in sessions of their own), then the launcher."""
    for pid in parallel.child_processes(process.pid):
        os.kill(pid, signal.SIGKILL)
    process.kill()
    process.wait()


def assert_no_traceback(out, err):
    for text in ("Traceback", "ChildFailedError", "SignalException"):
        assert text not in out + err, err


@pytest.mark.slow
def test_ctrl_c_to_the_launch_saves_exits_0_and_resumes(tiny_data, tmp_path):
    """SIGINT to the launcher's process group, as a terminal's Ctrl-C: both workers hear it once, the run saves at
    the step it stops, exits 0, without torchrun's traceback; the same command resumes from there, and SIGTERM to
    the launcher alone stops it the same way."""
    args = run_args(tiny_data, tmp_path, "run_name=c", "total_tokens=1.0", "checkpoint_interval=100000",
                    "eval_interval=100000")
    run_dir = tmp_path / "c"
    process = launch(args)
    try:
        wait_for(lambda: last_step(run_dir) >= 3, timeout=300, what="3 steps")
        os.killpg(process.pid, signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        kill_launch(process)
    assert process.returncode == 0, err
    assert_no_traceback(out, err)
    assert err.count("received SIGINT") == 2 and "stopped by a signal: saved" in out
    stopped = newest_step(run_dir)
    assert last_step(run_dir) == stopped

    process = launch(args)
    try:
        wait_for(lambda: last_step(run_dir) >= stopped + 3, timeout=300, what="3 more steps")
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=120)
    finally:
        kill_launch(process)
    assert process.returncode == 0, err
    assert_no_traceback(out, err)
    assert f"at step {stopped}" in out and err.count("received SIGTERM") == 2
    assert newest_step(run_dir) == last_step(run_dir) > stopped


SLOW_CHECKPOINTS = """\
import time
import torch
real_save = torch.save
def save(obj, f, *args, **kwargs):  # a checkpoint write that takes 10 minutes
    if getattr(f, "name", "").endswith(".tmp") and ".ckpt_" in f.name:
        time.sleep(600)
    return real_save(obj, f, *args, **kwargs)
torch.save = save
"""


@pytest.mark.slow
def test_a_second_ctrl_c_stops_the_launch_at_once(tiny_data, tmp_path):
    """Checkpoints take 10 minutes to write (a sitecustomize the workers load): the first Ctrl-C starts the stop's
    write, a second one a moment later stops every worker at once (exit 130), leaving no checkpoint or temp file."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SLOW_CHECKPOINTS)
    args = run_args(tiny_data, tmp_path, "run_name=i", "total_tokens=1.0", "checkpoint_interval=100000",
                    "eval_interval=100000")
    run_dir = tmp_path / "i"
    process = launch(args, dict(ENV, PYTHONPATH=str(site)))
    try:
        wait_for(lambda: last_step(run_dir) >= 3, timeout=300, what="3 steps")
        os.killpg(process.pid, signal.SIGINT)
        wait_for(lambda: list(run_dir.glob(".ckpt_*.tmp")), what="the stop's checkpoint write")
        time.sleep(control.REPEAT_SECONDS + 0.5)
        os.killpg(process.pid, signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        kill_launch(process)
    assert process.returncode == 130, err
    assert_no_traceback(out, err)
    assert "interrupted" in err and files.step_checkpoints(run_dir) == [] and not list(run_dir.glob(".*.tmp"))


@pytest.mark.slow
def test_an_error_under_the_launch_is_each_ranks_line_and_exit_2(tiny_data, tmp_path):
    """A value that only the run finds wrong (data that is not there): each rank's one line, exit 2, no traceback.
    An error on rank 0 alone (its config.json cannot be written: a folder is in its place) leaves rank 1 in a broken
    collective: one line too."""
    process = launch(run_args(tiny_data, tmp_path, "data=missing"))
    try:
        out, err = process.communicate(timeout=300)
    finally:
        kill_launch(process)
    assert process.returncode == 2
    assert_no_traceback(out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("error: data 'missing'") for line in lines), err

    (tmp_path / "out" / "run" / "config.json").mkdir(parents=True)
    process = launch(run_args(tiny_data, tmp_path / "out"))
    try:
        out, err = process.communicate(timeout=300)
    finally:
        kill_launch(process)
    assert process.returncode == 2
    assert_no_traceback(out, err)
    assert f"error: could not write {tmp_path / 'out' / 'run' / 'config.json'}: Is a directory" in err, err
    assert "error: rank 1: a collective failed: " in err, err


def test_launch_option_errors_are_one_line(tmp_path, capsys):
    config = ["model=quickstart", f"out_dir={tmp_path}"]
    assert run_main(train.main, ["--nproc-per-node=2", "--max-restarts=3", *config]) == 2
    assert "unknown option '--max-restarts=3'" in capsys.readouterr().err
    assert run_main(train.main, ["--nproc-per-node=two", *config]) == 2
    assert capsys.readouterr().err == "error: launch failed: Unsupported nproc_per_node value: two\n"
    assert run_main(train.main, ["--nproc_per_node", "2", "--node-rank=first", *config]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: argument --node-rank/--node_rank: invalid int value: 'first'") and err.count("\n") == 1
    assert run_main(train.main, ["--nproc-per-node=2", *config, "lr=-1"]) == 2  # the config is checked before any launch
    assert capsys.readouterr().err.startswith("error: lr=-1")
