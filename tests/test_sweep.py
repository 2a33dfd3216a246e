"""sweep.py: grids of train.py runs named from their overrides, checked before anything starts, resumed and skipped."""
import json
import os

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
