"""A full disk, for real: every writer (checkpoints, prepare.py, export.py, plot.py) run under a file-size limit
(ulimit -f: a write past it fails with EFBIG, as one on a full disk fails with ENOSPC) ends in one line naming the
file and the free space of its disk, exit status 2, the previous file intact and no temp file left. The scripts
ignore SIGXFSZ themselves: the limit's signal would otherwise kill them without a word. (A full training run under
the limit: test_nothing_lost.py.)
"""
import dataclasses
import errno
import json
import subprocess
import sys

import pytest
import torch

import export
import files
import plot
import prepare
from config import UserError
from conftest import ROOT, run_under_file_size_limit, tiny_model, write_corpus

pytestmark = pytest.mark.integration  # scripts in their own processes


def versions(directory):
    """{relative path: (bytes, inode)} of every file below directory: a file written again differs, even with the
    same bytes."""
    return {str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_ino)
            for p in sorted(directory.rglob("*")) if p.is_file()}


def error_line(result):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def full_disk_line(path):
    """The start and the end of the line a write of path past the limit gives."""
    return f"error: could not write {path}: File too large (", " free on its disk); the previous file is left as it was"


SAVE_UNDER_LIMITS = """
import json, resource, signal, sys
import torch
import files
from config import UserError

run_dir, limits = sys.argv[1], json.loads(sys.argv[2])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # as config.run_main does
state = {"model": {"w": torch.arange(3000.0)}, "model_config": {}, "step": 2}
outcomes = []
for limit in limits:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    try:
        files.save_checkpoint(run_dir, state, keep=5)
        outcomes.append("saved")
    except UserError as e:
        outcomes.append(str(e))
    except BaseException as e:
        outcomes.append(f"{type(e).__name__}: {e}")
print(json.dumps(outcomes))
"""


def test_a_checkpoint_cut_short_anywhere_is_one_line(tmp_path):
    """torch.save reports a write the disk refused as an OSError or as a RuntimeError of its zip writer, depending
    on where the file is cut: every cut is the same one line (files.write_atomic)."""
    state = {"model": {"w": torch.arange(3000.0)}, "model_config": {}, "step": 1}
    first = files.save_checkpoint(tmp_path, state, keep=5)
    size = first.stat().st_size
    limits = list(range(0, size, size // 25))
    result = subprocess.run([sys.executable, "-c", SAVE_UNDER_LIMITS, str(tmp_path), json.dumps(limits)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    start, end = full_disk_line(files.checkpoint_path(tmp_path, 2))
    for limit, outcome in zip(limits, json.loads(result.stdout)):
        assert f"error: {outcome}".startswith(start) and outcome.endswith(end), (limit, outcome)
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name]  # no temp file, no half checkpoint
    assert files.read_checkpoint(first)["model"]["w"].equal(state["model"]["w"])


def test_prepare_on_a_full_disk_keeps_the_data_it_had(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    out = prepare.prepare(str(corpus), name="c", tokenizer="bytes", workers=1, out_dir=str(tmp_path / "data"))
    before = versions(out)
    result = run_under_file_size_limit([ROOT / "prepare.py", corpus, "--name", "c", "--tokenizer", "bytes",
                                        "--val-fraction", "0.2", "--workers", "1", "--out-dir", tmp_path / "data"],
                                       (out / "train.bin").stat().st_size // 2)
    line = error_line(result)
    start, end = full_disk_line(out / "train.bin")
    assert line.startswith(start) and line.endswith(end), line
    assert versions(out) == before  # the old token files and meta.json, and no temp file


def test_export_on_a_full_disk_keeps_the_earlier_export(tmp_path):
    checkpoint = tmp_path / "run" / "ckpt_00000010.pt"
    checkpoint.parent.mkdir()
    model = tiny_model()
    torch.save({"model": model.state_dict(), "model_config": dataclasses.asdict(model.config), "tokenizer": "bytes"},
               checkpoint)
    hf = tmp_path / "run" / "hf"
    export.main([str(checkpoint), "--output", str(hf)])
    before = versions(hf)
    result = run_under_file_size_limit([ROOT / "export.py", checkpoint, "--output", hf, "--force"],
                                       (hf / "model.safetensors").stat().st_size // 2)
    line = error_line(result)
    start, end = full_disk_line(hf / "model.safetensors")  # named where it was going, not in the temporary folder
    assert line.startswith(start) and line.endswith(end), line
    assert versions(hf) == before
    assert sorted(p.name for p in hf.parent.iterdir()) == ["ckpt_00000010.pt", "hf"]  # no temporary folder left


def test_plot_on_a_full_disk_keeps_the_previous_figure(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    lines = [{"step": step, "tokens": 4096 * step, "loss": 5.0 - step / 10, "lr": 1e-3, "time": float(step)}
             for step in range(1, 30)] + [{"step": 29, "tokens": 4096 * 29, "eval_loss": 2.5}]
    (run / "log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert plot.main([str(run)]) == 0
    before = versions(run)
    result = run_under_file_size_limit([ROOT / "plot.py", run], (run / "loss.png").stat().st_size // 2)
    line = error_line(result)
    start, end = full_disk_line(run / "loss.png")
    assert line.startswith(start) and line.endswith(end), line
    assert versions(run) == before


def test_a_full_disk_behind_another_error_is_one_line_with_the_free_space(tmp_path):
    """ENOSPC, as a library reports it: wrapped in its own error (torch.save's RuntimeError). A real full disk needs
    a small file system that a test cannot count on mounting; the file-size limit above is the real write."""
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")

    def write(f):
        f.write(b"new, half")
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    with pytest.raises(UserError) as info:
        files.write_atomic(path, write)
    assert str(info.value).startswith(f"could not write {path}: No space left on device (")
    assert str(info.value).endswith(" free on its disk); the previous file is left as it was")
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"] and path.read_bytes() == b"old"
    def bug(f):
        raise RuntimeError("not a write")

    with pytest.raises(RuntimeError, match="not a write"):  # an error with no full disk behind it stays itself
        files.write_atomic(path, bug)
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]
