"""One writer at a time: a prepare or a training run that finds a live process writing its directory stops with one
line naming it (pid and command) and changes nothing; a writer killed with kill -9 leaves no lock behind, so the
next one proceeds (files.lock_directory, taken by prepare.py and runs.resume)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import files
import prepare
import train
from config import UserError, run_main
from conftest import ROOT, run_args, wait_for, write_corpus

ENV = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1")


def lock_holder_pid(directory):
    """The pid a directory's lock file names, or None (no file, or not written yet)."""
    path = directory / files.LOCK_FILE
    text = path.read_text() if path.exists() else ""
    return int(text.split()[0]) if text.strip() else None


@pytest.mark.integration  # a second process
def test_a_locked_directory_names_its_holder_until_it_is_killed(tmp_path):
    directory = tmp_path / "out" / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time, files; files.lock_directory(sys.argv[1]); "
                               "print('locked', flush=True); time.sleep(300)", str(directory)],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(UserError) as refused:
            files.lock_directory(directory)
        message = str(refused.value)
        # python -c's command line is "-c" and the arguments after the code
        assert message.startswith(f"{directory} is in use by process {holder.pid} ({Path(sys.executable).name} -c ")
        assert "\n" not in message
    finally:
        holder.kill()
        holder.wait()
    assert (directory / files.LOCK_FILE).exists()  # the killed holder's file stays: its lock does not
    files.lock_directory(directory)
    assert lock_holder_pid(directory) == os.getpid()
    files.lock_directory(directory)  # again from the holder: it holds it
    files.unlock_directory(directory)
    assert list(directory.iterdir()) == []  # the lock file goes with the lock


@pytest.mark.integration  # two prepares
def test_a_second_prepare_of_one_directory_stops_naming_the_first(tmp_path, capsys):
    """The first prepare reads its corpus from a pipe and waits there for its second pass, holding data/c."""
    corpus = write_corpus(tmp_path / "corpus", n_docs=10)
    fifo = tmp_path / "corpus.jsonl"
    os.mkfifo(fifo)
    first = subprocess.Popen([sys.executable, str(ROOT / "prepare.py"), str(fifo), "--name", "c", "--tokenizer",
                              "bytes", "--workers", "1"], cwd=tmp_path, env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = tmp_path / "data" / "c"
    try:
        with open(fifo, "w") as f:  # the first pass (counting); the second never comes
            f.writelines(json.dumps({"text": f"document {i}"}) + "\n" for i in range(20))
        temp = out / f".train.bin.{first.pid}.tmp"  # opened before the second pass reads the pipe
        wait_for(lambda: first.poll() is not None or (lock_holder_pid(out) == first.pid and temp.exists()),
                 what="the first prepare's lock and temp file")
        assert first.poll() is None
        assert run_main(prepare.main, [str(corpus), "--name", "c", "--tokenizer", "bytes", "--out-dir", str(tmp_path / "data")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {out} is in use by process {first.pid} (") and "prepare.py" in err
        assert err.count("\n") == 1  # one line, no traceback
        assert temp.exists() and not (out / "meta.json").exists()  # a live writer's temp file is not stale
    finally:
        first.kill()  # kill -9, in the middle of its work
        first.wait()
    prepare.prepare(str(corpus), "c", "bytes", workers=1, out_dir=str(tmp_path / "data"))
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "train.bin", "val.bin"]


def test_a_second_training_run_stops_naming_the_first(tiny_data, tmp_path, capsys):
    args = run_args(tiny_data, tmp_path, "run_name=busy", "total_tokens=10", "checkpoint_interval=5")
    run_dir = tmp_path / "busy"
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=ENV, stdout=log,
                                 stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: first.poll() is not None or files.step_checkpoints(run_dir), timeout=180,
                 what="the first run's checkpoint")
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-2000:]
        assert run_main(train.main, args) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {run_dir} is in use by process {first.pid} (") and "train.py" in err
        assert err.count("\n") == 1
    finally:
        first.kill()  # kill -9, mid-run
        first.wait()
    assert (run_dir / files.LOCK_FILE).exists()  # left by the killed run, unlocked
    step = int(files.step_checkpoints(run_dir)[-1].stem.split("_")[1])
    assert train.main(args + [f"max_steps={step + 1}"]) == 0  # resumes where the killed run saved
    assert f"resuming from {files.checkpoint_path(run_dir, step)} at step {step}" in capsys.readouterr().out
    assert not (run_dir / files.LOCK_FILE).exists()
