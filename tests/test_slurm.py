"""sweep.py --executor slurm against a real Slurm cluster: opt-in (`make test-slurm`, which starts a one-node cluster
on this machine with tools/slurm-up and sets SMALL_LM_SLURM=1); skipped otherwise, before any set-up."""
import os
import subprocess

import pytest

import sweep
from conftest import read_log, run_args

pytestmark = pytest.mark.skipif(os.environ.get("SMALL_LM_SLURM") != "1",
                                reason="a real Slurm cluster: make test-slurm (tools/slurm-up) sets SMALL_LM_SLURM=1")

PARTITION = "debug"  # tools/slurm-up's one partition


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch):
    monkeypatch.setattr(sweep, "SLURM_POLL_SECONDS", 1)


def set_partition(state):
    subprocess.run(["scontrol", "update", f"PartitionName={PARTITION}", f"State={state}"], check=True)


def queued(name):
    """The states of the jobs named `name` that Slurm has pending or running."""
    result = subprocess.run(["squeue", "--noheader", "--format=%T", f"--name={name}"], capture_output=True, text=True,
                            check=True)
    return result.stdout.split()


def test_each_point_is_one_job_submitted_once_and_trained_to_its_end(tiny_data, tmp_path, capsys):
    """Two points submitted while the partition is down (so that they stay pending, deterministically): the same
    command again submits neither a second time. With the partition up, --wait waits for both, each trained to its
    last step, its job's output in its log folder; a third time, both are finished and nothing is submitted."""
    argv = run_args(tiny_data, tmp_path, "run_name=s", "max_steps=6", "eval_interval=6", "sample_tokens=0", "seed=1,2",
                    "--executor", "slurm", "--partition", PARTITION, "--time", "10")
    set_partition("DOWN")
    try:
        assert sweep.main(argv) == 0
        out = capsys.readouterr().out
        job_ids = {name: (tmp_path / "sweep-logs" / name / "slurm-job-id").read_text().strip()
                   for name in ("s-seed1", "s-seed2")}
        for name, job_id in job_ids.items():
            assert f"submitted {name}: job {job_id} (output: {tmp_path}/sweep-logs/{name}/{job_id}_0_log.out" in out
            assert queued(name) == ["PENDING"]

        assert sweep.main(argv) == 0  # again, both still pending
        out = capsys.readouterr().out
        for name, job_id in job_ids.items():
            assert f"{name}: job {job_id} is pending: not submitted again" in out
            assert queued(name) == ["PENDING"]  # one job a point, not two
        assert "submitted s-" not in out
    finally:
        set_partition("UP")

    assert sweep.main(argv + ["--wait"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == "2 run(s) finished"
    for name, job_id in job_ids.items():
        assert f"{name}: job {job_id} is " in out and "submitted s-" not in out  # waited for, not submitted again
        assert [r["step"] for r in read_log(tmp_path / name)[0]] == list(range(1, 7))
        folder = tmp_path / "sweep-logs" / name
        log = (folder / f"{job_id}_0_log.out").read_text()
        assert f"run_name={name}" in log and "step      6" in log  # train.py's own command line and output
        assert (folder / f"{job_id}_0_log.err").exists()

    assert sweep.main(argv) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "2 run(s), 2 finished"


def test_a_two_process_point_is_one_job_under_torchrun(tiny_data, tmp_path, capsys):
    """--nproc-per-node 2: one job of two cores, in which train.py starts torchrun's two processes (DDP, gloo)."""
    point = run_args(tiny_data, tmp_path, "run_name=d", "parallel=ddp", "max_steps=6", "eval_interval=6",
                     "sample_tokens=0")
    assert sweep.main(point + ["--nproc-per-node", "2", "--executor", "slurm", "--wait"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == "1 run(s) finished"
    (_, _, cfg), = sweep.plan(point, None)
    assert sweep.finished(cfg, 2)
    job_id = (tmp_path / "sweep-logs" / "d" / "slurm-job-id").read_text().strip()
    assert "train.py --nproc-per-node=2 " in (tmp_path / "sweep-logs" / "d" / f"{job_id}_0_log.out").read_text()
    script = (tmp_path / "sweep-logs" / "d" / f"{job_id}_submission.sh").read_text()
    assert "#SBATCH --cpus-per-task=2" in script and "export OMP_NUM_THREADS=1 " in script
